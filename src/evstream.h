/*-------------------------------------------------------------------------
 *
 * evstream.h
 *	  Declarations shared by the modules of evstream.
 *
 * Module map (one responsibility a file; calls go down this list, never up):
 *	  evstream.c	_PG_init: GUCs, shared memory, hooks and callbacks in order
 *	  xact.c		the one transaction/subtransaction callback, dispatching
 *	  -- SQL entry points and hooks --
 *	  tableam.c		the append-only table access method of topic partitions
 *	  guards.c		planner and utility hooks (ids, append-only, DDL, databases)
 *	  topics.c		create_topic, drop_topic, set_retention, topic views' helpers
 *	  consumer.c	poll, consume, commit, seek; group ownership
 *	  aggregates.c	create/drop_aggregate, per-statement count deltas, merge
 *	  worker.c		launcher, per-database maintenance/notify workers
 *	  -- core --
 *	  offsets.c		id assignment, the stable offset, push marks
 *	  catalog.c		backend-local cache of topics and aggregates (no SQL)
 *	  -- base --
 *	  extension.c	"is evstream created here?", catalog relids
 *	  util.c		argument checks, run-as-owner, SPI with a pinned path
 *	  compat.h		PostgreSQL version differences
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

#include "compat.h"

#include "access/tableam.h"
#include "fmgr.h"
#include "datatype/timestamp.h"
#include "executor/tuptable.h"
#include "nodes/pg_list.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "lib/stringinfo.h"
#include "utils/acl.h"
#include "utils/relcache.h"

/* The version of the SQL objects this library goes with (evstream.control) */
#define EVS_VERSION "0.2"

/* Topics a single transaction may produce to (see offsets.c). */
#define EVS_MAX_XACT_TOPICS 32

/* Databases with the extension that can have a maintenance worker. */
#define EVS_MAX_DATABASES 64

/* Time one tenant's work may take in a background worker (ms) */
#define EVS_TENANT_BUDGET_MS 30000
/* ... and how long its code may go on after the cancel before the worker exits */
#define EVS_TENANT_GRACE_MS 5000
/* Work that made its worker exit so, skipped for a while (util.c) */
#define EVS_QUARANTINE_SLOTS 8
#define EVS_QUARANTINE_MIN_S 600

/* Transform workers a database can have (evstream.max_transform_workers) */
#define EVS_MAX_TRANSFORM_WORKERS 16

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
	TimestampTz blocked_until;	/* DROP/ALTER DATABASE in progress: no worker
								 * until then (or until it ends) */
	TimestampTz last_maintenance;
	char		last_error[1024];	/* several tenants' failures fit */
	int			transform_pids[EVS_MAX_TRANSFORM_WORKERS];	/* 0: free */
	pg_atomic_uint32 transforms_gen;	/* bumped when transforms change */
	/* topics with newly committed events, for push (worker.c) */
	pg_atomic_uint32 take_gen;	/* bumped each time the worker takes them */
	int			ndirty;
	bool		dirty_overflow; /* "every topic may have advanced" */
	bool		deltas_pending; /* aggregate deltas committed since last merge */
	Oid			dirty[EVS_DIRTY_TOPICS];
	/* work whose code ignored the budget's cancel (util.c), under lock */
	struct
	{
		Oid			owner;		/* whose work; InvalidOid: free */
		char		what[NAMEDATALEN * 2];	/* the work that made it exit */
		int			times;		/* how often it happened (doubles the wait) */
		TimestampTz until;
	}			quarantine[EVS_QUARANTINE_SLOTS];
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

/* xact.c */
extern void EvsXactInit(void);

/* tableam.c */
extern const TableAmRoutine *EvsTableAm(void);
extern bool EvsIsTopicPartition(Relation rel);

/* guards.c */
extern void EvsGuardsInit(void);
extern Oid	evs_copy_restore;	/* topic a COPY listing id restores into */
extern int64 evs_copy_max_id;	/* highest id such a COPY stored */
extern int64 evs_copy_min_id;	/* and the lowest (0: none yet) */

/* topics.c */
extern void EvsCheckTopicNameLength(const char *name);
extern void EvsTopicDropAggregates(Oid relid, bool cascade, List *going_too);
extern Oid	EvsCreateTopic(const char *name, Interval *ivl, Interval *ret, bool notify, int shards);
extern int	EvsShardOf(const char *key, int len, int64 id, int shards);

/* aggregates.c */
extern void EvsAggregatesInit(void);
extern void EvsAccumulate(Relation rel, TupleTableSlot **slots, int nslots);
extern void EvsFlushDeltas(void);
extern void EvsCountsPreCommit(void);
extern void EvsCountsAtEnd(void);
extern void EvsCountsAtSubXactEnd(bool commit);
extern void EvsDropAggregate(Oid view, bool cascaded);
#define EVS_MERGE_RETENTION		0x01	/* also apply window_retention */
#define EVS_MERGE_FINAL_ONLY	0x02	/* only aggregates with emit 'final' */
extern int	EvsMergeDeltas(int32 only_agg, StringInfo errors, int flags);

/* consumer.c: SQL functions only */

/* groups.c */
typedef struct EvsGroup
{
	int32		id;
	Oid			topic;
	const char *name;
	Oid			owner;
	int			shards;			/* the topic's */
	int32		max_attempts;	/* 0: retry forever */
	Oid			dead_letter;	/* InvalidOid: skip poison events */
} EvsGroup;

typedef struct EvsShardState
{
	int			shard;
	int64		position;		/* id of the last event consumed (0: none) */
	int64		version;		/* of the position row (0: none yet) */
	char	   *member;			/* last claimant, NULL: none or a consume */
	TimestampTz expires;		/* its lease, if has_expiry */
	bool		has_expiry;
} EvsShardState;

extern bool EvsGroupLookup(Oid topic, const char *name, EvsGroup *g);
extern bool EvsGroupOpen(Oid topic, const char *name, bool create, bool nowait, EvsGroup *g);
extern void EvsDropOwnedGroups(Oid role);
extern void EvsGroupsAfterLocks(void);
extern void EvsRequireGroupOwner(Oid owner);
extern void EvsReassignGroups(Oid role, Oid newrole);
extern bool EvsTryLockShard(EvsGroup *g, int shard);
extern void EvsLockShard(EvsGroup *g, int shard);
extern void EvsUnlockShard(EvsGroup *g, int shard);
extern bool EvsHoldsShard(EvsGroup *g, int shard);
extern void EvsLockAllShards(EvsGroup *g, bool fence);
extern void EvsShardStates(EvsGroup *g, int from, int to, EvsShardState *out);
extern bool EvsLeasedByOther(EvsShardState *s, const char *member, TimestampTz now);
extern void EvsSetShardPosition(EvsGroup *g, EvsShardState *s, int64 position);
extern void EvsSetLease(EvsGroup *g, int shard, const char *member, TimestampTz expires);
extern void EvsEndLease(EvsGroup *g, int shard);
extern void EvsReleaseMember(EvsGroup *g, const char *member);
extern void EvsCountDeadLettered(EvsGroup *g);
extern void EvsSetGroupOptions(EvsGroup *g, int32 max_attempts, Oid dead_letter);
extern void EvsDropGroup(EvsGroup *g);
extern void EvsPrunePositions(void);

/* transforms.c */
extern int	evs_transform_max_attempts;
extern int	evs_max_transform_workers;
extern PGDLLEXPORT void EvsTransformWorkerMain(Datum arg);
extern void EvsTransformWorkersCheck(EvsDatabase *db);
extern void EvsDropOwnedTransforms(Oid role);
extern void EvsReassignTransforms(Oid role, Oid newrole);

/* waits.c */
extern Size EvsWaitsShmemSize(void);
extern void EvsWaitsShmemInit(void);
extern void EvsWakeWaiters(Oid topic);
extern void EvsWakeTopicWaiters(Oid topic);
extern void EvsWakeAllTopicWaiters(void);
extern void EvsWaitRecheckAt(TimestampTz t);
extern void EvsDatabaseWaitBegin(void);
extern void EvsDatabaseWaitSleep(long timeout_ms);
extern void EvsDatabaseWaitEnd(void);
extern bool EvsWaitFor(Oid topic, int64 timeout_ms, bool (*look) (void *), void *arg);
extern int32 EvsAttemptsOf(int32 group_id, int32 shard, int64 position, int64 *event_id);
extern void EvsCountAttempt(int32 group_id, Oid role, int32 shard, int64 position, int64 event_id);
extern void EvsForgetAttempts(int32 group_id);
extern void EvsForgetDatabaseAttempts(void);
extern void EvsSweepAttempts(void);

/* worker.c */
extern void EvsWorkerRegisterLauncher(void);
extern void EvsStopDatabaseWorker(Oid dboid);
extern void EvsAllowDatabaseWorker(Oid dboid);
extern PGDLLEXPORT void EvsLauncherMain(Datum arg);
extern PGDLLEXPORT void EvsWorkerMain(Datum arg);

/* offsets.c */
extern int64 EvsStableId(Oid topic);
extern int64 EvsSequenceLastValue(Oid seqrelid);
extern EvsDatabase *EvsDatabaseEntry(Oid dboid, bool create);
extern void EvsWakeWorker(EvsDatabase *db);
extern void EvsMarkDeltasCommitted(void);
extern void EvsRegisterDatabaseAtCommit(void);
extern void EvsTransformsChangedAtCommit(void);
extern void EvsNoteSuppliedIds(Relation rel, TupleTableSlot **slots, int nslots);
extern void EvsOffsetsPreCommit(void);
extern void EvsOffsetsAtSubXactAbort(void);
extern void EvsOffsetsPrePrepare(void);
extern void EvsOffsetsAtEnd(bool committed, bool aborted);

/* catalog.c */
/* columns of evstream._aggregate (catalog.c and aggregates.c read them) */
#define EVS_AGG_ID				1
#define EVS_AGG_VIEW			2
#define EVS_AGG_TOPIC			3
#define EVS_AGG_GROUP_BY		4
#define EVS_AGG_BUCKET			5
#define EVS_AGG_OUTPUT			6
#define EVS_AGG_NOTIFY			8
#define EVS_AGG_M_KINDS			10
#define EVS_AGG_M_NAMES			11
#define EVS_AGG_M_EXPRS			12
#define EVS_AGG_M_TYPES			13
#define EVS_AGG_M_COLLS			14
#define EVS_AGG_HOP				15
#define EVS_AGG_EVENT_TIME		16
#define EVS_AGG_GRACE			17
#define EVS_AGG_EMIT			18
#define EVS_AGG_RETENTION		19
#define EVS_AGG_FINALIZED		20
#define EVS_AGG_FUNCTIONS		21

#define EVS_MAX_MEASURES		32

typedef enum EvsMeasureKind
{
	EVS_M_COUNT,				/* count(expr): one int8 state */
	EVS_M_SUM,					/* sum: one state of the result type */
	EVS_M_MIN,
	EVS_M_MAX,
	EVS_M_AVG					/* two states: sum (numeric/float8), int8 */
} EvsMeasureKind;

extern EvsMeasureKind EvsMeasureKindOf(const char *name);
extern const char *EvsMeasureKindName(EvsMeasureKind kind);

typedef struct EvsMeasure
{
	EvsMeasureKind kind;
	struct ExprState *input;	/* coerced to type */
	Oid			type;			/* input and state type (avg: the sum's) */
	Oid			collation;		/* min/max of a collatable type */
	FmgrInfo	fn;				/* sum/avg: type + type; min/max: btree cmp */
	int			slot;			/* its first state slot */
} EvsMeasure;

/* An aggregate's windows; bucket NULL: all time */
typedef struct EvsWindows
{
	Interval   *bucket;
	int64		bucket_usecs;
	int64		hop_usecs;		/* == bucket_usecs for tumbling windows */
	int64		grace_usecs;
} EvsWindows;

typedef struct EvsAggregate
{
	int32		id;
	Oid			view;
	Oid			owner;			/* the aggregate view's owner */
	EvsWindows	windows;
	Oid			output_topic;	/* InvalidOid: none */
	bool		notify;
	bool		as_owner;		/* an expression calls non-built-in functions */
	struct ExprState *expr;		/* group_by, text-valued unless key_out */
	FmgrInfo   *key_out;		/* its type's output function, when that
								 * depends on settings (EvsFixedText) */
	struct ExprState *event_time;	/* NULL: created_at */
	int			nmeasures;
	EvsMeasure *measures;
	int			nslots;			/* state slots of all measures */
} EvsAggregate;

typedef struct EvsPlan
{
	const char *sql;
	int			nargs;
	Oid			types[6];
	int			cursor_options;
	struct _SPI_plan *plan;		/* prepared on first use, kept */
} EvsPlan;

typedef enum EvsTopicPlanKind
{
	EVS_PLAN_READ,
	EVS_PLAN_READ_SHARD,
	EVS_PLAN_READ_ALL,
	EVS_PLAN_NEXT,
	EVS_PLAN_EVENT,
	EVS_PLAN_FIRST
} EvsTopicPlanKind;
#define EVS_NUM_TOPIC_PLANS 6

/* Events EVS_PLAN_FIRST looks at before consumer.c probes shard by shard */
#define EVS_FIRST_WINDOW 4096

typedef struct EvsTopic
{
	Oid			relid;			/* hash key: topic or one of its partitions */
	Oid			topic;			/* InvalidOid: not a topic */
	Oid			seqrelid;
	Oid			owner;
	bool		notify;
	bool		aggs_loaded;
	List	   *aggregates;		/* EvsAggregate *, in the cache's context */
	int			shards;			/* key shards (1 to 256) */
	EvsPlan		plans[EVS_NUM_TOPIC_PLANS]; /* reads of consumer.c */
	char	   *plan_name;		/* the topic name the plans were made for */
	Node	   *id_default;		/* defaults forced on INSERT (guards.c) */
	Node	   *created_default;
} EvsTopic;

extern void EvsCatalogInit(void);
extern void EvsCachePin(void);
extern void EvsCacheUnpin(void);
extern void EvsCatalogAtEnd(void);
extern EvsTopic *EvsLookupTopic(Oid relid);
extern EvsTopic *EvsRequireTopic(Oid relid, const char *fn);
extern Oid	EvsTopicOf(Oid relid);
extern List *EvsAllTopics(void);
extern bool EvsGroupRowPending(Oid topic, const char *name);
extern int32 *EvsGroupIds(int *n);
extern bool EvsTopicFeeds(Oid from, Oid to);
extern List *EvsTopicAggregates(EvsTopic *t);
extern void EvsAggregateWindows(struct HeapTupleData *tup, TupleDesc desc, MemoryContext cxt,
								EvsWindows *w);
extern int	EvsAggregateMeasures(struct HeapTupleData *tup, TupleDesc desc, int text_att,
								 EvsMeasureKind *kinds, char **texts, Oid *types, Oid *colls);
extern Node *EvsParseStoredExpr(Relation rel, const char *text, Oid target,
								 const char *aggname);
extern char *EvsDeparseExpr(Relation rel, Node *expr);
extern void EvsCollectFunctions(Node *expr, List **sigs);
extern List *EvsFunctionSignatures(List *sigs);
extern List *EvsParseAggregateTexts(Relation rel, const char *group_by, const char *event_time,
									 char **exprs, Oid *types, int n, const char *aggname,
									 Node **parsed);
extern bool EvsIsTopicSequence(Oid seqrelid, Oid *topic);
extern struct _SPI_plan *EvsTopicPlan(EvsTopic *t, EvsTopicPlanKind kind);
extern void EvsTopicSetDefaults(EvsTopic *t, Node *id_default, Node *created_default);

/*
 * heap_getattr for evstream's catalog rows, which may be of an older
 * catalog layout (a new library before ALTER EXTENSION evstream UPDATE):
 * a column the relation does not have reads as NULL.  heap_getattr itself
 * must not be asked for a column beyond the descriptor.
 */
static inline Datum
EvsGetAttr(HeapTuple tup, int attnum, TupleDesc desc, bool *isnull)
{
	if (attnum > desc->natts)
	{
		*isnull = true;
		return (Datum) 0;
	}
	return heap_getattr(tup, attnum, desc, isnull);
}

/* extension.c */
typedef enum EvsCatalogRel
{
	EVS_REL_TOPIC,
	EVS_REL_TOPIC_PKEY,
	EVS_REL_GROUP,
	EVS_REL_GROUP_PKEY,
	EVS_REL_AGGREGATE,
	EVS_REL_COUNT,
	EVS_REL_DELTA
} EvsCatalogRel;
#define EVS_NUM_CATALOG_RELS 7

extern void EvsExtensionInit(void);
extern bool EvsExtensionPresent(void);
extern bool EvsWorkerLockExtension(void);
extern bool EvsLockExtensionExclusive(void);
extern Oid	EvsCatalogRelid(EvsCatalogRel which);
extern bool EvsCatalogIsCurrent(char **installed);
extern void EvsRequireCurrentCatalog(const char *fn);
extern void EvsRequireCurrentCatalogFor(const char *what);
extern bool EvsCatalogIsCurrentCached(void);

/* util.c */
typedef struct EvsUserState
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} EvsUserState;

extern void EvsArgNotNull(FunctionCallInfo fcinfo, int argno, const char *name);
struct BackgroundWorkerHandle;
extern bool EvsStartDatabaseWorker(const char *function, const char *type, Oid dboid,
								   struct BackgroundWorkerHandle **handle);
EVS_NORETURN_BEFORE extern void EvsAppendOnlyError(const char *topic, const char *verb,
												const char *detail) EVS_NORETURN_AFTER;
extern int	EvsPinSearchPath(void);
extern void EvsUnpinSearchPath(int level);
extern void EvsBecomeOwner(Oid role, EvsUserState *st);
extern void EvsBecomeSuperuser(EvsUserState *st);
extern void EvsRestoreUser(EvsUserState *st);
extern int64 EvsSpiInt64(const char *sql, int nargs, Oid *types, Datum *values,
						 bool *isnull);
extern uint64 EvsSpiExec(const char *sql, int nargs, Oid *types, Datum *values,
					   int expect);
extern struct _SPI_plan *EvsPrepare(EvsPlan *p);
extern int	EvsExecPlan(EvsPlan *p, Datum *values, const char *nulls,
						bool read_only, long count);
extern char *EvsQualifiedName(Oid relid);
extern void EvsCheckName(const char *what, const char *value);
extern Oid	EvsRelOwner(Oid relid);
extern Oid	EvsRelOwnerIfAny(Oid relid);
extern void EvsRequireOwner(Oid relid);
extern void EvsRequirePrivilege(Oid relid, AclMode mode);
extern int64 EvsBucketUsecs(Interval *ivl, const char *what);
extern int64 EvsIntervalUsecs(Interval *ivl, const char *what);
extern char *EvsCollationName(Oid coll);
extern Oid	EvsCollationOid(const char *name);
extern void EvsRequireReadCommitted(const char *fn);
extern char *EvsFixedText(FmgrInfo *out, Datum value);
extern void EvsCheckNameLength(const char *name, const char *what);
extern bool EvsTrySubxact(void (*fn) (void *), void *arg, Oid object, const char *what,
						  StringInfo errors);
extern bool EvsBudgetStart(Oid object, Oid owner, const char *what, StringInfo errors);
extern void EvsBudgetEnd(void);
extern int	EvsBudgetRank(Oid object);
extern void EvsBudgetNewPass(void);
extern void EvsBudgetPassEnd(void);
extern int64 EvsBudgetOwnerUsed(Oid owner);
extern bool EvsBudgetOwnerSlow(Oid owner);
extern List *EvsBudgetOrder(List *jobs, Oid (*object_of) (void *job));
extern bool EvsInWorker;

/*
 * True while evstream's own topic upkeep runs (worker.c), which may detach
 * and replace a topic's default partition (guards.c refuses that to users).
 */
extern bool evs_in_topic_upkeep;

#endif							/* EVSTREAM_H */
