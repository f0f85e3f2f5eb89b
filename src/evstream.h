/*-------------------------------------------------------------------------
 *
 * evstream.h
 *	  Declarations shared by the modules of evstream.
 *
 * Module map (one responsibility a file):
 *	  evstream.c	_PG_init, GUCs, shared memory, hook installation
 *	  tableam.c		the append-only table access method of topic partitions
 *	  offsets.c		id assignment and the stable offset (stable_id)
 *	  catalog.c		backend-local cache of topics and their aggregates,
 *					SPI helpers, running catalog work as the superuser
 *	  topics.c		create_topic, drop_topic, set_retention
 *	  consumer.c	poll, consume, commit, seek
 *	  aggregates.c	create/drop_aggregate, per-statement count deltas
 *	  guards.c		parse-analysis and utility hooks (ids, append-only, DDL)
 *	  worker.c		launcher, per-database maintenance/notify workers
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/evstream.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVSTREAM_H
#define EVSTREAM_H

#include "postgres.h"

#include "access/tableam.h"
#include "datatype/timestamp.h"
#include "executor/tuptable.h"
#include "nodes/pg_list.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "utils/relcache.h"

/* Topics a single transaction may produce to (see offsets.c). */
#define EVS_MAX_XACT_TOPICS 32

/* Databases that can have a maintenance worker at once. */
#define EVS_MAX_DATABASES 64

/* Topics whose "advanced" flag the dirty set can hold before overflowing. */
#define EVS_DIRTY_TOPICS 256

/* GUCs */
extern int	evs_maintenance_interval;	/* seconds */
extern int	evs_premake;
extern int	evs_notify_interval;	/* milliseconds */
extern bool evs_restore_mode;

/*
 * Per-backend slot of the stable-offset protocol (offsets.c): for each topic
 * the backend's open transaction has taken ids from, a lower bound of those
 * ids.  Indexed by pgprocno.
 */
typedef struct EvsBackendSlot
{
	pg_atomic_uint32 dboid;
	pg_atomic_uint32 nused;		/* entries [0, nused) may be in use */
	pg_atomic_uint32 relid[EVS_MAX_XACT_TOPICS];
	pg_atomic_uint64 min_id[EVS_MAX_XACT_TOPICS];
} EvsBackendSlot;

/* Per-database state shared by producers, the worker and the launcher. */
typedef struct EvsDatabase
{
	Oid			dboid;			/* InvalidOid: free entry */
	int			worker_pid;		/* 0 when none is running */
	int			worker_procno;	/* latch to wake, -1 when none */
	bool		ext_absent;		/* worker found no extension: don't restart */
	TimestampTz blocked_until;	/* DROP DATABASE in progress: don't start */
	TimestampTz last_maintenance;
	char		last_error[256];
	/* topics with newly committed events, for push (worker.c) */
	pg_atomic_uint32 take_gen;	/* bumped each time the worker takes them */
	int			ndirty;
	bool		dirty_overflow; /* "every topic may have advanced" */
	bool		deltas_pending; /* aggregate deltas committed since last merge */
	Oid			dirty[EVS_DIRTY_TOPICS];
} EvsDatabase;

typedef struct EvsShared
{
	LWLock	   *lock;			/* protects databases[] */
	int			launcher_procno;	/* -1 when no launcher */
	bool		rescan;			/* launcher: re-check databases */
	EvsDatabase databases[EVS_MAX_DATABASES];
	EvsBackendSlot slots[FLEXIBLE_ARRAY_MEMBER];	/* MaxBackends of them */
} EvsShared;

extern EvsShared *evs_shared;

/* evstream.c */
extern Size EvsShmemSize(void);

/* tableam.c */
extern const TableAmRoutine *EvsTableAm(void);
extern bool EvsIsTopicPartition(Relation rel);

/* offsets.c */
extern void EvsOffsetsInit(void);
extern int64 EvsStableId(Oid topic);
extern int64 EvsSequenceLastValue(Oid seqrelid);
extern EvsDatabase *EvsDatabaseEntry(Oid dboid, bool create);
extern void EvsWakeWorker(EvsDatabase *db);
extern void EvsMarkDeltasCommitted(void);
extern void EvsWakeLauncherAtCommit(void);
extern void EvsNoteSuppliedIds(Relation rel, TupleTableSlot **slots, int nslots);

/* catalog.c */
typedef struct EvsAggregate
{
	int32		id;
	Oid			view;
	Interval   *bucket;			/* NULL: all time */
	int64		bucket_usecs;
	Oid			output_topic;	/* InvalidOid: none */
	bool		notify;
	struct ExprState *expr;		/* group_by, text-valued */
} EvsAggregate;

typedef struct EvsPlan
{
	const char *sql;
	int			nargs;
	Oid			types[4];
	int			cursor_options;
	struct _SPI_plan *plan;		/* prepared on first use, kept */
} EvsPlan;

typedef struct EvsTopic
{
	Oid			relid;			/* hash key: topic or one of its partitions */
	Oid			topic;			/* InvalidOid: not a topic */
	Oid			seqrelid;
	bool		notify;
	bool		aggs_loaded;
	List	   *aggregates;		/* EvsAggregate *, in CacheMemoryContext */
	EvsPlan		read_plan;		/* events after a position (consumer.c) */
	char	   *read_name;		/* the topic name read_plan was made for */
	Node	   *id_default;		/* defaults forced on INSERT (guards.c) */
	Node	   *created_default;
} EvsTopic;

extern void EvsCatalogInit(void);
extern EvsTopic *EvsLookupTopic(Oid relid);
extern EvsTopic *EvsRequireTopic(Oid relid, const char *fn);
extern List *EvsTopicAggregates(EvsTopic *t);
extern void EvsCheckName(const char *what, const char *value);

typedef struct EvsSuperuserState
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} EvsSuperuserState;
extern void EvsBecomeSuperuser(EvsSuperuserState *st);
extern void EvsRestoreUser(EvsSuperuserState *st);
extern void EvsBecomeSuperuserLight(EvsSuperuserState *st);
extern void EvsRestoreUserLight(EvsSuperuserState *st);
extern struct _SPI_plan *EvsPrepare(EvsPlan *p);
extern struct _SPI_plan *EvsTopicReadPlan(EvsTopic *t);
extern void EvsTopicSetDefaults(EvsTopic *t, Node *id_default, Node *created_default);
extern int64 EvsSpiInt64(const char *sql, int nargs, Oid *types, Datum *values,
						 bool *isnull);
extern void EvsSpiExec(const char *sql, int nargs, Oid *types, Datum *values,
					   int expect);
extern char *EvsQualifiedName(Oid relid);

/* consumer.c */
extern void EvsRequireReadCommitted(const char *fn);

/* aggregates.c */
extern void EvsAggregatesInit(void);
extern void EvsAccumulate(Relation rel, TupleTableSlot **slots, int nslots);
extern void EvsFlushDeltas(void);
extern int64 EvsBucketUsecs(Interval *ivl, const char *what);
extern void EvsDropAggregate(Oid view);

/* guards.c */
extern void EvsGuardsInit(void);
extern bool evs_copy_restore;	/* a COPY listing id runs (restore path) */
extern int64 evs_copy_max_id;	/* highest id such a COPY stored */

/* worker.c */
extern void EvsWorkerRegisterLauncher(void);
extern PGDLLEXPORT void EvsLauncherMain(Datum arg);
extern PGDLLEXPORT void EvsWorkerMain(Datum arg);

#endif							/* EVSTREAM_H */
