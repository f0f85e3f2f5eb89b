/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  Background workers: one launcher per cluster, one maintenance worker
 *	  per database that has the extension.
 *
 *	  Launcher ("evstream launcher", registered at preload): connected to
 *	  no database, it scans pg_database and keeps exactly one worker per
 *	  database with evstream installed.  Shared entries exist only for
 *	  databases with the extension: CREATE EXTENSION gives its database one
 *	  at commit and wakes the launcher (evstream._wake_launcher()); other
 *	  databases are probed once, one at a time, by a worker that exits
 *	  without claiming anything when it finds no extension (the launcher
 *	  remembers them in its own memory until the next rescan).  Workers are
 *	  dynamic, with the launcher as bgw_notify_pid, so the launcher wakes
 *	  when one stops and starts it again (a terminated worker is restarted
 *	  within a second).  DROP/ALTER/CREATE DATABASE keep a database's worker
 *	  away while they run (guards.c).  In binary-upgrade mode nothing starts.
 *
 *	  Worker ("evstream worker"): one per database, guaranteed by claiming
 *	  the database's shared entry under the evstream LWLock (a second one
 *	  exits).  It loops on its latch (WL_EXIT_ON_PM_DEATH, no busy loops):
 *	  - push: producers' commit callbacks record the topics that advanced
 *		(and whether aggregate deltas were written) in the database entry and
 *		set the worker's latch; the worker announces a topic at once when its
 *		last notification is at least a gap (a tenth of
 *		evstream.notify_interval, growing up to all of it for a busy topic)
 *		old, else at the end of that gap, coalescing what commits meanwhile
 *		(leading and trailing edge, see SentEntry): one NOTIFY per advanced
 *		topic, channel = topic name,
 *		payload {"topic": name, "last_id": stable_id}.  stable_id is
 *		computed after the producers' commits are visible, so a listener
 *		that polls on a notification always finds every announced event.
 *		Aggregate deltas are folded into counts (EvsMergeDeltas, which also
 *		sends the new count of each changed group on the aggregate's
 *		channel and publishes output-topic change events as the
 *		aggregate's owner).  Only the worker ever NOTIFYs, so producers
 *		never take the cluster-wide notify commit lock.
 *	  - maintenance: every evstream.maintenance_interval, one pass
 *		(evs_maintain_database): each topic's upkeep as the topic's owner
 *		under SECURITY_RESTRICTED_OPERATION in its own subtransaction, then
 *		the delta merge (each aggregate in its own subtransaction), lock
 *		waits bounded by lock_timeout.  One tenant's error is logged, kept
 *		in evstream.workers.last_error, and the others go on.
 *	  - search_path is pinned for the whole process: the database's own
 *		ALTER DATABASE SET search_path is its owner's to set.
 *	  - every second it checks that the extension still exists, and exits
 *		when it was dropped.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/worker.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "catalog/pg_authid_d.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "evstream.h"


/* ---------------------------------------------------------------- launcher */

void
EvsWorkerRegisterLauncher(void)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = 5;
	snprintf(bgw.bgw_library_name, BGW_MAXLEN, "evstream");
	snprintf(bgw.bgw_function_name, BGW_MAXLEN, "EvsLauncherMain");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "evstream launcher");
	snprintf(bgw.bgw_type, BGW_MAXLEN, "evstream launcher");
	RegisterBackgroundWorker(&bgw);
}

typedef struct LauncherWorker
{
	Oid			dboid;
	BackgroundWorkerHandle *handle;
} LauncherWorker;

static LauncherWorker launched[EVS_MAX_DATABASES];

/* Start a worker for a database; false when no slot was free */
static bool
evs_start_worker(Oid dboid)
{
	BackgroundWorkerHandle *handle;
	int			i;

	/* the handle is kept across loops: not in the per-loop context */
	if (!EvsStartDatabaseWorker("EvsWorkerMain", "evstream worker", dboid, &handle))
		return false;
	for (i = 0; i < EVS_MAX_DATABASES; i++)
		if (!OidIsValid(launched[i].dboid))
		{
			launched[i].dboid = dboid;
			launched[i].handle = handle;
			return true;
		}
	return true;
}

/* Is a worker we launched for dboid still starting or running? */
static bool
evs_launched_alive(Oid dboid)
{
	int			i;

	for (i = 0; i < EVS_MAX_DATABASES; i++)
	{
		pid_t		pid;

		if (launched[i].dboid != dboid)
			continue;
		if (GetBackgroundWorkerPid(launched[i].handle, &pid) != BGWH_STOPPED)
			return true;
		pfree(launched[i].handle);
		launched[i].dboid = InvalidOid;
		launched[i].handle = NULL;
	}
	return false;
}

/*
 * Databases probed and found without the extension, kept in the
 * launcher's own memory: shared entries are only for databases that have
 * it.  A database gets its entry when CREATE EXTENSION commits there
 * (offsets.c), or when a probe worker finds the extension (after a
 * restart, or for a database copied from a template that had it).
 */
static List *probed_absent = NIL;

/* One pass: make sure every database that needs a worker has one */
static void
evs_launcher_scan(bool rescan)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	List	   *dbs = NIL;
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext cxt = CurrentMemoryContext;	/* outlives the transaction */
	int			i;
	bool		probing = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);
		MemoryContext old;

		if (db->datistemplate || !db->datallowconn)
			continue;
		old = MemoryContextSwitchTo(cxt);
		dbs = lappend_oid(dbs, db->oid);
		MemoryContextSwitchTo(old);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();

	/* forget entries of databases that no longer exist */
	LWLockAcquire(evs_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < EVS_MAX_DATABASES; i++)
	{
		EvsDatabase *d = &evs_shared->databases[i];

		if (OidIsValid(d->dboid) && !list_member_oid(dbs, d->dboid) &&
			d->worker_pid == 0 && d->blocked_until < now)
			d->dboid = InvalidOid;
	}
	LWLockRelease(evs_shared->lock);
	/*
	 * A rescan is asked for when CREATE EXTENSION (or a database command)
	 * commits: probe again.  A worker that exits because the extension was
	 * dropped can free the entry a concurrent CREATE EXTENSION had just
	 * found, so "stopped without an entry" may be stale by then.
	 */
	if (rescan)
	{
		list_free(probed_absent);
		probed_absent = NIL;
	}
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		List	   *keep = NIL;

		foreach(lc, probed_absent)
			if (list_member_oid(dbs, lfirst_oid(lc)))
				keep = lappend_oid(keep, lfirst_oid(lc));
		list_free(probed_absent);
		probed_absent = keep;
		MemoryContextSwitchTo(old);
	}

	foreach(lc, dbs)
	{
		Oid			dboid = lfirst_oid(lc);
		EvsDatabase *d = EvsDatabaseEntry(dboid, false);

		if (d == NULL)
		{
			/* unknown: probe it (one probe at a time), unless known absent */
			if (list_member_oid(probed_absent, dboid) || probing)
				continue;
			if (evs_launched_alive(dboid))
			{
				probing = true;
				continue;
			}
			if (!evs_start_worker(dboid))
				break;
			probing = true;
			continue;
		}
		if (d->blocked_until > now)
			continue;
		if (d->worker_pid != 0 && kill(d->worker_pid, 0) == 0)
			continue;
		if (evs_launched_alive(dboid))
			continue;
		if (!evs_start_worker(dboid))
			break;				/* out of worker slots; retry later */
	}
	list_free(dbs);
}

/* A launched worker stopped without claiming its database: no extension */
static void
evs_note_probe_results(void)
{
	int			i;

	for (i = 0; i < EVS_MAX_DATABASES; i++)
	{
		pid_t		pid;
		Oid			dboid = launched[i].dboid;

		if (!OidIsValid(dboid) ||
			GetBackgroundWorkerPid(launched[i].handle, &pid) != BGWH_STOPPED)
			continue;
		if (EvsDatabaseEntry(dboid, false) == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			probed_absent = lappend_oid(probed_absent, dboid);
			MemoryContextSwitchTo(old);
		}
		pfree(launched[i].handle);
		launched[i].dboid = InvalidOid;
		launched[i].handle = NULL;
	}
}

static void
evs_launcher_exit(int code, Datum arg)
{
	if (evs_shared)
		evs_shared->launcher_procno = -1;
}

void
EvsLauncherMain(Datum arg)
{
	TimestampTz last_scan = 0;
	MemoryContext launcher_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	if (IsBinaryUpgrade)
		proc_exit(0);			/* pg_upgrade's server: leave it alone */

	before_shmem_exit(evs_launcher_exit, (Datum) 0);
	evs_shared->launcher_procno = EVS_MY_PROCNO;
	evs_shared->rescan = true;

	launcher_cxt = AllocSetContextCreate(TopMemoryContext, "evstream launcher",
										 ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		TimestampTz now;
		bool		rescan;

		CHECK_FOR_INTERRUPTS();
		MemoryContextSwitchTo(launcher_cxt);
		MemoryContextReset(launcher_cxt);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		now = GetCurrentTimestamp();
		rescan = evs_shared->rescan;
		evs_shared->rescan = false;
		evs_note_probe_results();
		if (rescan || TimestampDifferenceExceeds(last_scan, now, 1000))
		{
			evs_launcher_scan(rescan);
			last_scan = now;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * A DROP/ALTER/CREATE DATABASE needs dboid without connections (guards.c,
 * after checking the caller may run it): stop its worker and keep it away
 * until EvsAllowDatabaseWorker, or 30 s at most.
 */
void
EvsStopDatabaseWorker(Oid dboid)
{
	EvsDatabase *d = EvsDatabaseEntry(dboid, false);
	int			pid;
	int			waited;

	if (d == NULL)
		return;
	d->blocked_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 30000);
	/* the transform workers connected to it too (they do not come back while blocked) */
	for (int i = 0; i < EVS_MAX_TRANSFORM_WORKERS; i++)
	{
		int			tpid = d->transform_pids[i];

		if (tpid != 0)
			kill(tpid, SIGTERM);
	}
	for (waited = 0; waited < 5000; waited += 10)
	{
		bool		any = false;

		for (int i = 0; i < EVS_MAX_TRANSFORM_WORKERS; i++)
			any |= d->transform_pids[i] != 0;
		if (!any)
			break;
		CHECK_FOR_INTERRUPTS();
		pg_usleep(10000L);
	}
	pid = d->worker_pid;
	if (pid == 0)
		return;
	kill(pid, SIGTERM);
	/* DROP DATABASE waits for connections too; leave less to chance */
	for (waited = 0; waited < 5000 && d->worker_pid == pid; waited += 10)
	{
		CHECK_FOR_INTERRUPTS();
		pg_usleep(10000L);
	}
}

/* The command that needed the database has ended: let the worker back */
void
EvsAllowDatabaseWorker(Oid dboid)
{
	EvsDatabase *d = EvsDatabaseEntry(dboid, false);
	int			procno;

	if (d == NULL)
		return;
	d->blocked_until = 0;
	evs_shared->rescan = true;
	procno = evs_shared->launcher_procno;
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/* ---------------------------------------------------------------- worker */

static EvsDatabase *worker_db = NULL;
static bool worker_ext_gone = false;	/* free the entry at exit */
static bool push_merge = false;	/* evs_worker_push: also merge deltas */
static int	last_merge_changed = 0; /* groups the last push merge changed */
static HTAB *sent_ids = NULL;	/* topic oid -> what was announced, when */
static int	npending_local = 0; /* SentEntry.pending set */

/*
 * Push, per topic (leading and trailing edge).  A topic whose last
 * notification went out at least its gap ago is announced as soon as the
 * worker sees its mark (the first commit after a quiet moment goes out at
 * once); one announced more recently waits, coalesced with whatever else
 * commits meanwhile, until its gap has passed since its last notification
 * (one notification at the end of it).  So a topic gets at most one
 * notification per gap, and nothing waits longer than the gap plus the
 * push itself.
 *
 * The gap adapts to the topic's rate: a tenth of evstream.notify_interval
 * (1 ms by default) while notifications announce few events each, halved
 * back after each notification whose events came at fewer than
 * EVS_PUSH_QUIET_EVENTS per least gap (2,000 events a second by default: a
 * rate, so that a grown gap comes back down whatever grew it), else
 * doubled (up to the whole interval) after one that announced
 * EVS_PUSH_BUSY_EVENTS or more (see evs_notify_topic).  A trickle is
 * announced within about a millisecond; a flood of single-row commits once per interval,
 * because each notification wakes every listener and costs them and the
 * worker as much as a few dozen producer commits: about 200 us of CPU in
 * all with one listener (70-100 in the worker, 30-50 in the listener's
 * backend, 70 in a psycopg2 client), so at half the interval a flood's
 * 200 notifications a second took 2% of a 2-CPU machine, and at 9,000
 * commits a second one notification per millisecond took 6% of the
 * producers' throughput.
 * The interval stays the longest wait, as evstream.notify_interval says.
 *
 * Marks stay in shared memory until a push is due: while they are there,
 * producers see them and neither take the lock nor wake us again.  A push
 * takes all marks; topics not yet due go to the local pending set
 * (SentEntry.pending) and are sent when due.  Nothing is lost: a mark is
 * only cleared by a push that then sends the topic or keeps it pending,
 * and evs_notify_topic reads the stable id in the push's own transaction,
 * after the marking commits (offsets.c: marks are set after the slot is
 * cleared), so an announced last_id is always consumable.
 */
typedef struct SentEntry
{
	Oid			topic;
	int64		last_id;		/* last announced stable id */
	TimestampTz sent_at;		/* when (0: never) */
	int64		gap_us;			/* least time until the next one */
	bool		pending;		/* marked, waiting for its gap */
} SentEntry;

#define EVS_PUSH_BUSY_EVENTS 8
#define EVS_PUSH_QUIET_EVENTS 2

/* A topic's gap bounds: a tenth of evstream.notify_interval, and all of it */
static int64
evs_push_gap_min(void)
{
	return Max((int64) evs_notify_interval * 100, 100);
}

static int64
evs_push_gap_max(void)
{
	return Max((int64) evs_notify_interval * 1000, evs_push_gap_min());
}

static int64
evs_push_gap(SentEntry *e)
{
	return Min(Max(e->gap_us, evs_push_gap_min()), evs_push_gap_max());
}

/* When a topic may be notified next (0: at once) */
static TimestampTz
evs_entry_due(SentEntry *e)
{
	return e->sent_at == 0 ? 0 : e->sent_at + evs_push_gap(e);
}

static TimestampTz
evs_topic_due(Oid topic)
{
	SentEntry  *e = hash_search(sent_ids, &topic, HASH_FIND, NULL);

	return e == NULL ? 0 : evs_entry_due(e);
}

/*
 * The earliest time a topic push is due (DT_NOBEGIN: none pending), from
 * the marks in shared memory (read, not taken) and the local pending set.
 */
static TimestampTz
evs_push_due_at(void)
{
	TimestampTz due = DT_NOEND;
	Oid			dirty[EVS_DIRTY_TOPICS];
	int			ndirty;
	bool		overflow;
	int			i;

	LWLockAcquire(evs_shared->lock, LW_SHARED);
	ndirty = worker_db->ndirty;
	memcpy(dirty, worker_db->dirty, sizeof(Oid) * ndirty);
	overflow = worker_db->dirty_overflow;
	LWLockRelease(evs_shared->lock);
	if (overflow)
		return 0;
	for (i = 0; i < ndirty; i++)
		due = Min(due, evs_topic_due(dirty[i]));
	if (npending_local > 0)
	{
		HASH_SEQ_STATUS seq;
		SentEntry  *e;

		hash_seq_init(&seq, sent_ids);
		while ((e = hash_seq_search(&seq)) != NULL)
			if (e->pending)
				due = Min(due, evs_entry_due(e));
	}
	return due == DT_NOEND ? DT_NOBEGIN : due;
}

static void
evs_worker_exit(int code, Datum arg)
{
	if (worker_db == NULL)
		return;
	LWLockAcquire(evs_shared->lock, LW_EXCLUSIVE);
	if (worker_db->worker_pid == MyProcPid)
	{
		worker_db->worker_pid = 0;
		worker_db->worker_procno = -1;
		if (worker_ext_gone)
			worker_db->dboid = InvalidOid;	/* no extension: no slot */
	}
	LWLockRelease(evs_shared->lock);
}

/* Record an error for evstream.workers */
static void
evs_worker_error(const char *msg)
{
	LWLockAcquire(evs_shared->lock, LW_EXCLUSIVE);
	strlcpy(worker_db->last_error, msg, sizeof(worker_db->last_error));
	LWLockRelease(evs_shared->lock);
}

static bool worker_catalog_current = false;	/* else wait for the UPDATE */
static bool worker_catalog_checked = false;

/*
 * Is the extension (still) installed here, and is its catalog the
 * library's version?  A new library before ALTER EXTENSION ... UPDATE only
 * sends notifications (maintenance and merge need the current catalog).
 */
static bool
evs_extension_present(void)
{
	bool		present;
	char	   *installed = NULL;
	bool		was_current = worker_catalog_current;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	present = EvsExtensionPresent();
	worker_catalog_current = present && EvsCatalogIsCurrent(&installed);
	if (present && !worker_catalog_current && (was_current || !worker_catalog_checked))
		ereport(LOG,
				(errmsg("evstream worker: waiting for ALTER EXTENSION evstream UPDATE"),
				 errdetail("The installed extension is version %s; the library is version %s.",
						   installed ? installed : "?", EVS_VERSION)));
	worker_catalog_checked = true;
	CommitTransactionCommand();
	return present;
}

/* A marked topic: pending until its gap has passed */
static void
evs_mark_topic(Oid topic)
{
	SentEntry  *e;
	bool		found;

	e = hash_search(sent_ids, &topic, HASH_ENTER, &found);
	if (!found)
	{
		e->last_id = 0;
		e->sent_at = 0;
		e->gap_us = 0;
		e->pending = false;
	}
	if (!e->pending)
		npending_local++;
	e->pending = true;
}

/*
 * Send one pending topic's notification if its gap has passed (else keep
 * it pending) and its stable id moved (else there is nothing new to read
 * yet: the transaction holding it back marks the topic again when it ends).
 */
static void
evs_notify_topic(SentEntry *e, TimestampTz now)
{
	Oid			topic = e->topic;
	char	   *name;
	EvsTopic   *t;
	int64		stable;
	StringInfoData payload;

	if (evs_entry_due(e) > now)
		return;					/* trailing edge: at the end of its gap */
	e->pending = false;
	npending_local--;
	name = get_rel_name(topic);
	if (name == NULL)
		return;
	t = EvsLookupTopic(topic);
	if (t->topic != topic || !t->notify)
		return;
	stable = EvsStableId(topic);
	if (stable <= e->last_id)
		return;					/* nothing new to read (yet) */
	/*
	 * Quiet (the events since the last notification came at fewer than
	 * EVS_PUSH_QUIET_EVENTS per least gap): back towards the least gap.
	 * Else busy (this one announces EVS_PUSH_BUSY_EVENTS or more): coalesce
	 * longer next time.  In between the gap stays.  The rate is checked
	 * first: a grown gap itself gathers 8 events at 1000 events a second
	 * (10 per 10 ms), so with the count checked first a topic at that rate
	 * stayed at the longest gap once a stall had grown it (bench 4.3: a
	 * round at 92 notifications a second, 10.8 events each, p99 10 ms).
	 * And a stall cannot grow the gap of a slow topic: the events it held
	 * back count over the time since the last notification, stall
	 * included.
	 */
	if (e->last_id == 0 ||
		(stable - e->last_id) * evs_push_gap_min() < EVS_PUSH_QUIET_EVENTS * (now - e->sent_at))
		e->gap_us = Max(evs_push_gap(e) / 2, evs_push_gap_min());
	else if (stable - e->last_id >= EVS_PUSH_BUSY_EVENTS)
		e->gap_us = Min(evs_push_gap(e) * 2, evs_push_gap_max());
	e->last_id = stable;
	e->sent_at = now;
	initStringInfo(&payload);
	appendStringInfoString(&payload, "{\"topic\": ");
	escape_json(&payload, name);
	appendStringInfo(&payload, ", \"last_id\": " INT64_FORMAT "}", stable);
	Async_Notify(name, payload.data);
}

/*
 * Lock waits of the worker's transaction end after 200 ms (a busy object
 * is retried at the next pass): a user's DDL on a topic or aggregate that
 * the worker waits for is not held up behind the worker for long.  And the
 * worker checks for a deadlock after 10 ms of waiting, not the server's
 * deadlock_timeout (1 s by default): in a cycle with a user's DDL the
 * worker is the one that finds it and gives way (its subtransaction is
 * retried at the next pass, EvsTrySubxact), unless the DDL's own check
 * comes within those 10 ms.  With the lock_timeout bound alone, the DDL
 * found the cycle first whenever the worker's wait began in the last
 * 200 ms before the DDL's check.  (DROP and ALTER EXTENSION are ordered
 * with the worker by evstream's extension lock instead, evs_worker_begin.)
 */
static void
evs_bound_lock_waits(void)
{
	(void) set_config_option("lock_timeout", "200ms", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
	(void) set_config_option("deadlock_timeout", "10ms", PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * Fold deltas into counts (aggregates.c: notifies the changed groups and
 * publishes output-topic changes, each aggregate on its own), with lock
 * waits bounded; returns the groups changed.
 */
static int
evs_merge_step(int flags)
{
	StringInfoData errors;
	int			changed;

	evs_bound_lock_waits();
	initStringInfo(&errors);
	changed = EvsMergeDeltas(0, &errors, flags);
	if (errors.len > 0)
		evs_worker_error(errors.data);
	pfree(errors.data);
	return changed;
}

/*
 * Begin one of the worker's transactions: true when the extension is still
 * here, its lock taken before any other (extension.c: DROP or ALTER
 * EXTENSION and the worker never wait for each other in a cycle); else
 * the transaction is ended again and the step has nothing to do.
 */
static bool
evs_worker_begin(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (!EvsWorkerLockExtension())
	{
		CommitTransactionCommand();
		return false;
	}
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
	return true;
}

/* End one of the worker's transactions begun by evs_worker_begin */
static void
evs_worker_end(void)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Send pending notifications in one short transaction */
static void
evs_worker_push(void)
{
	Oid			dirty[EVS_DIRTY_TOPICS];
	int			ndirty;
	bool		overflow;
	bool		deltas;
	int			i;

	LWLockAcquire(evs_shared->lock, LW_EXCLUSIVE);
	pg_atomic_fetch_add_u32(&worker_db->take_gen, 1);
	ndirty = worker_db->ndirty;
	memcpy(dirty, worker_db->dirty, sizeof(Oid) * ndirty);
	overflow = worker_db->dirty_overflow;
	deltas = worker_db->deltas_pending && push_merge;
	worker_db->ndirty = 0;
	worker_db->dirty_overflow = false;
	if (deltas)
		worker_db->deltas_pending = false;
	LWLockRelease(evs_shared->lock);

	for (i = 0; i < ndirty; i++)
		evs_mark_topic(dirty[i]);
	if (npending_local == 0 && !overflow && !deltas)
		return;

	if (!evs_worker_begin("evstream: push"))
		return;
	SPI_connect();

	if (overflow &&
		SPI_execute("SELECT t.topic::pg_catalog.oid FROM evstream._topic t WHERE t.notify", true, 0) == SPI_OK_SELECT)
	{
		uint64		k;
		bool		isnull;

		for (k = 0; k < SPI_processed; k++)
			evs_mark_topic(DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[k],
														  SPI_tuptable->tupdesc, 1, &isnull)));
	}
	if (npending_local > 0)
	{
		HASH_SEQ_STATUS seq;
		SentEntry  *e;
		TimestampTz now = GetCurrentTimestamp();

		hash_seq_init(&seq, sent_ids);
		while ((e = hash_seq_search(&seq)) != NULL)
			if (e->pending)
				evs_notify_topic(e, now);
	}
	if (deltas)
		last_merge_changed = evs_merge_step(0);

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Milliseconds from now until since + gap (at least 1) */
static long
evs_ms_until(TimestampTz now, TimestampTz since, int gap)
{
	long		secs;
	int			usecs;

	TimestampDifference(now, TimestampTzPlusMilliseconds(since, gap), &secs, &usecs);
	return Max(1, secs * 1000 + usecs / 1000);
}

typedef struct TopicJob
{
	Oid			topic;
	Oid			owner;
	int			premake;
	bool		allow_drop;
} TopicJob;

static Oid
evs_topic_job_object(void *arg)
{
	return ((TopicJob *) arg)->topic;
}

/* One topic's upkeep, as its owner (evstream._maintain_topic) */
static void
evs_maintain_topic(void *arg)
{
	TopicJob   *j = arg;
	Oid			types[3] = {REGCLASSOID, INT4OID, BOOLOID};
	Datum		values[3] = {ObjectIdGetDatum(j->topic), Int32GetDatum(j->premake),
	BoolGetDatum(j->allow_drop)};
	EvsUserState st;

	/*
	 * Never wait for a topic while holding the topics maintained before it
	 * in this pass (their subtransactions' locks stay to our end): a DDL
	 * holding this one and waiting for one of those would be in a cycle
	 * with us that our deadlock check, done once when our wait began, had
	 * not seen yet, and the DDL's later check would make it the one that
	 * fails.  A busy topic waits for the next pass.
	 */
	if (!ConditionalLockRelationOid(j->topic, AccessShareLock))
		return;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EvsBecomeOwner(j->owner, &st);
	evs_in_topic_upkeep = true;
	PG_TRY();
	{
		if (SPI_execute_with_args("SELECT evstream._maintain_topic($1, $2, $3)",
								  3, types, values, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "maintenance of topic \"%s\" failed", get_rel_name(j->topic));
	}
	PG_FINALLY();
	{
		evs_in_topic_upkeep = false;
	}
	PG_END_TRY();
	EvsRestoreUser(&st);
	SPI_finish();
}

/*
 * One maintenance pass over the database: forget catalog rows of
 * relations dropped without the event trigger (e.g. under
 * session_replication_role = replica), then each topic's upkeep (rehome,
 * premake, retention, empty old partitions) as the topic's owner, each in
 * its own subtransaction, then the delta merge.  Lock waits are bounded
 * by lock_timeout (a busy topic is retried at the next pass).  Returns
 * the errors met, or NULL.
 *
 * With own_xacts (the worker, outside a transaction) the first step, each
 * topic and the merge each run in a transaction of their own: a topic's
 * upkeep takes its ACCESS EXCLUSIVE lock to make or drop a partition, and
 * the producers of that topic wait for it only while that topic is
 * maintained, not while every other topic and the merge are too.  Without
 * (evstream.run_maintenance) all of it runs in the caller's transaction.
 */
static char *
evs_maintain_database(int premake, bool own_xacts)
{
	StringInfoData errors;
	List	   *jobs = NIL;
	ListCell   *lc;
	bool		dump;
	uint64		i;
	EvsUserState su;
	MemoryContext cxt = CurrentMemoryContext;	/* jobs and errors outlive
												 * SPI_finish and our
												 * transactions */

	initStringInfo(&errors);
	if (own_xacts && !evs_worker_begin("evstream: maintenance"))
		return NULL;
	evs_bound_lock_waits();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EvsBecomeSuperuser(&su);
	if (SPI_execute("DELETE FROM evstream._delta d USING evstream._aggregate a "
					"WHERE a.id OPERATOR(pg_catalog.=) d.agg AND (NOT EXISTS (SELECT FROM pg_catalog.pg_class c "
					"WHERE c.oid OPERATOR(pg_catalog.=) a.aggregate::pg_catalog.oid) OR NOT EXISTS "
					"(SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) a.topic::pg_catalog.oid));"
					"DELETE FROM evstream._count d USING evstream._aggregate a "
					"WHERE a.id OPERATOR(pg_catalog.=) d.agg AND (NOT EXISTS (SELECT FROM pg_catalog.pg_class c "
					"WHERE c.oid OPERATOR(pg_catalog.=) a.aggregate::pg_catalog.oid) OR NOT EXISTS "
					"(SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) a.topic::pg_catalog.oid));"
					"DELETE FROM evstream._aggregate a WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_class c "
					"WHERE c.oid OPERATOR(pg_catalog.=) a.aggregate::pg_catalog.oid) OR NOT EXISTS "
					"(SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) a.topic::pg_catalog.oid);"
					"UPDATE evstream._aggregate a SET output_topic = NULL WHERE a.output_topic IS NOT NULL "
					"AND NOT EXISTS (SELECT FROM pg_catalog.pg_class c "
					"WHERE c.oid OPERATOR(pg_catalog.=) a.output_topic::pg_catalog.oid);"
					"DELETE FROM evstream._topic t WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_class c "
					"WHERE c.oid OPERATOR(pg_catalog.=) t.topic::pg_catalog.oid)",
					false, 0) < 0)
		elog(ERROR, "could not forget dropped topics");

	/*
	 * pg_dump reads the catalog first and locks the tables one by one: a
	 * partition dropped in between makes it fail.  No drops meanwhile —
	 * for dumps of the database owner or a superuser only: anyone can name
	 * a session "pg_dump", and must not freeze everyone's retention.
	 */
	if (SPI_execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_stat_activity a "
					"WHERE a.datname OPERATOR(pg_catalog.=) pg_catalog.current_database() "
					"AND a.application_name OPERATOR(pg_catalog.=) ANY (ARRAY['pg_dump', 'pg_dumpall']) "
					"AND (a.usesysid OPERATOR(pg_catalog.=) (SELECT d.datdba FROM pg_catalog.pg_database d "
					"WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()) "
					"OR EXISTS (SELECT FROM pg_catalog.pg_authid r WHERE r.oid OPERATOR(pg_catalog.=) a.usesysid AND r.rolsuper)))",
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_stat_activity");
	{
		bool		isnull;

		dump = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	if (SPI_execute("SELECT t.topic::pg_catalog.oid, c.relowner FROM evstream._topic t "
					"JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.topic::pg_catalog.oid "
					"ORDER BY 1", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read evstream._topic");
	for (i = 0; i < SPI_processed; i++)
	{
		TopicJob   *j = MemoryContextAlloc(cxt, sizeof(TopicJob));
		bool		isnull;
		MemoryContext old;

		j->topic = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		j->owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		j->premake = premake;
		j->allow_drop = !dump;
		old = MemoryContextSwitchTo(cxt);
		jobs = lappend(jobs, j);
		MemoryContextSwitchTo(old);
	}
	EvsRestoreUser(&su);
	SPI_finish();

	/* in the order the tenants' budgets ask for (util.c) */
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		jobs = EvsBudgetOrder(jobs, evs_topic_job_object);
		MemoryContextSwitchTo(old);
	}
	foreach(lc, jobs)
	{
		TopicJob   *j = lfirst(lc);
		char	   *name;

		CHECK_FOR_INTERRUPTS();
		if (own_xacts)
		{
			evs_worker_end();
			if (!evs_worker_begin("evstream: maintenance"))
				return NULL;	/* the extension is gone */
			evs_bound_lock_waits();
		}
		name = get_rel_name(j->topic);
		if (name != NULL)
			(void) EvsTrySubxact(evs_maintain_topic, j, j->topic, psprintf("topic %s", name),
								 &errors);
	}
	if (own_xacts)
	{
		evs_worker_end();
		if (!evs_worker_begin("evstream: maintenance"))
			return NULL;
		evs_bound_lock_waits();
	}
	(void) EvsMergeDeltas(0, &errors, EVS_MERGE_RETENTION);
	if (own_xacts)
		evs_worker_end();
	if (errors.len == 0)
		return NULL;
	ereport(WARNING, (errmsg("evstream maintenance: %s", errors.data)));
	return errors.data;
}

/* One maintenance pass of the worker, in transactions of its own */
static void
evs_worker_maintain(void)
{
	MemoryContext pass_cxt = AllocSetContextCreate(TopMemoryContext,
												   "evstream maintenance pass",
												   ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(pass_cxt);
	char	   *volatile errors = NULL;

	Assert(!IsTransactionState());
	EvsBudgetNewPass();			/* one pass over several transactions */
	PG_TRY();
	{
		errors = evs_maintain_database(evs_premake, true);
		if (errors != NULL)
			errors = MemoryContextStrdup(TopMemoryContext, errors);
	}
	PG_FINALLY();
	{
		EvsBudgetPassEnd();
		MemoryContextSwitchTo(old);
		MemoryContextDelete(pass_cxt);
	}
	PG_END_TRY();
	pgstat_report_stat(false);

	LWLockAcquire(evs_shared->lock, LW_EXCLUSIVE);
	worker_db->last_maintenance = GetCurrentTimestamp();
	if (errors)
		strlcpy(worker_db->last_error, errors, sizeof(worker_db->last_error));
	else
		worker_db->last_error[0] = '\0';
	LWLockRelease(evs_shared->lock);
	if (errors)
		pfree(errors);
}

/*
 * Delete superseded group positions (groups.c), in a transaction of its
 * own, about once a second: positions are insert-only.
 */
static void
evs_worker_prune(void)
{
	if (!evs_worker_begin("evstream: pruning group positions"))
		return;
	/* a user's DROP of groups (their rows) waiting for us: we give way */
	evs_bound_lock_waits();
	EvsPrunePositions();
	evs_worker_end();
}

/*
 * The attempt-count sweep (waits.c) and the transform workers' start, in
 * a transaction of their own after the prune: whatever holds the prune
 * up or makes it fail, these still run.
 */
static void
evs_worker_sweep(void)
{
	if (!evs_worker_begin("evstream: sweeping attempt counts"))
		return;
	EvsSweepAttempts();
	EvsTransformWorkersCheck(worker_db);
	evs_worker_end();
}

/*
 * Windows close with time: emit the final results of aggregates with
 * emit 'final' also when no new deltas arrive (once a second, after the
 * prune).  Its own transaction, with lock waits bounded as maintenance's
 * are: a DROP of an aggregate waits for it briefly at most.
 */
static void
evs_worker_finals(void)
{
	if (!evs_worker_begin("evstream: final results of closed windows"))
		return;
	(void) evs_merge_step(EVS_MERGE_FINAL_ONLY);
	evs_worker_end();
}

/* Run a step; on error log it, keep it for evstream.workers, go on */
static void
evs_worker_step(void (*step) (void))
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		step();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		evs_worker_error(edata->message);
		ereport(LOG,
				(errmsg("evstream worker: %s", edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
}

void
EvsWorkerMain(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	TimestampTz last_merge = 0;
	TimestampTz last_check = 0;
	TimestampTz last_prune = 0;
	uint32		seen_transforms_gen = 0;
	TimestampTz next_maintenance = 0;
	MemoryContext loop_cxt;
	HASHCTL		ctl;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	EvsInWorker = true;			/* tenants' work here has budgets (util.c) */

	/*
	 * The database's ALTER DATABASE SET search_path is its owner's to set:
	 * nothing this superuser process parses may depend on it.
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	/* a probe of a database without the extension ends here, taking no slot */
	if (!evs_extension_present())
		proc_exit(0);

	/* claim the database: exactly one worker each */
	worker_db = EvsDatabaseEntry(dboid, true);
	if (worker_db == NULL)
		proc_exit(0);
	LWLockAcquire(evs_shared->lock, LW_EXCLUSIVE);
	if (worker_db->worker_pid != 0 && worker_db->worker_pid != MyProcPid &&
		kill(worker_db->worker_pid, 0) == 0)
	{
		LWLockRelease(evs_shared->lock);
		worker_db = NULL;
		proc_exit(0);
	}
	worker_db->worker_pid = MyProcPid;
	worker_db->worker_procno = EVS_MY_PROCNO;
	LWLockRelease(evs_shared->lock);
	before_shmem_exit(evs_worker_exit, (Datum) 0);
	pgstat_report_appname("evstream worker");

	/*
	 * Our transactions need no durability of their own: a lost push only
	 * loses notifications (never durable anyway), a lost merge or
	 * maintenance pass is redone whole from what is still there.  Not
	 * waiting for the WAL flush keeps pushes fast.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(SentEntry);
	sent_ids = hash_create("evstream sent ids", 64, &ctl, HASH_ELEM | HASH_BLOBS);
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "evstream worker loop",
									 ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		TimestampTz now;
		long		timeout = 1000;
		int64		wait_us = 0;	/* until a topic push is due */
		bool		topics_pending;
		bool		deltas_pending;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			next_maintenance = Min(next_maintenance,
								   TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															   (int64) evs_maintenance_interval * 1000));
		}
		MemoryContextSwitchTo(loop_cxt);
		MemoryContextReset(loop_cxt);
		now = GetCurrentTimestamp();

		if (TimestampDifferenceExceeds(last_check, now, 1000))
		{
			if (!evs_extension_present())
			{
				worker_ext_gone = true;
				proc_exit(0);
			}
			last_check = now;
		}

		/*
		 * A topic push is due as the leading and trailing edge rule above
		 * says (evs_push_due_at).  Aggregate deltas are folded (and their
		 * changes pushed) at most every max(notify_interval, 100 ms), so a
		 * change reaches the output topic well within 300 ms of its commit;
		 * when the last merge changed many groups (bulk load), every 250
		 * ms: a merge costs about one upsert per changed group, so folding
		 * a quarter second of deltas at once saves most of the merge work
		 * under load.  Reads stay exact meanwhile: views combine the
		 * deltas.
		 */
		topics_pending = worker_db->ndirty > 0 || worker_db->dirty_overflow ||
			npending_local > 0;
		deltas_pending = worker_db->deltas_pending;
		{
			int			merge_gap = Max(evs_notify_interval,
											last_merge_changed > 256 ? 250 : 100);
			TimestampTz push_at = topics_pending ? evs_push_due_at() : DT_NOBEGIN;
			bool		push_due = push_at != DT_NOBEGIN && push_at <= now;
			bool		merge_due = deltas_pending && worker_catalog_current &&
				TimestampDifferenceExceeds(last_merge, now, merge_gap);

			if (push_due || merge_due)
			{
				push_merge = merge_due;
				evs_worker_step(evs_worker_push);
				if (merge_due)
					last_merge = GetCurrentTimestamp();
				continue;		/* more may have arrived meanwhile */
			}
			if (push_at != DT_NOBEGIN)
				wait_us = push_at - now;
			if (deltas_pending)
				timeout = Min(timeout, evs_ms_until(now, last_merge, merge_gap));
		}

		if (worker_catalog_current &&
			(TimestampDifferenceExceeds(last_prune, now, 1000) ||
			 pg_atomic_read_u32(&worker_db->transforms_gen) != seen_transforms_gen))
		{
			seen_transforms_gen = pg_atomic_read_u32(&worker_db->transforms_gen);
			evs_worker_step(evs_worker_prune);
			evs_worker_step(evs_worker_sweep);
			evs_worker_step(evs_worker_finals);
			last_prune = GetCurrentTimestamp();
			continue;
		}

		if (now >= next_maintenance && !worker_catalog_current)
			next_maintenance = TimestampTzPlusMilliseconds(now, 1000);
		else if (now >= next_maintenance)
		{
			evs_worker_step(evs_worker_maintain);
			next_maintenance = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														   (int64) evs_maintenance_interval * 1000);
			continue;
		}
		else
		{
			long		secs;
			int			usecs;

			TimestampDifference(now, next_maintenance, &secs, &usecs);
			timeout = Min(timeout, Max(1, secs * 1000 + usecs / 1000));
		}

		/*
		 * A topic push due in less than a millisecond (the latch's
		 * resolution): sleep just that long.  Marks that arrive meanwhile
		 * are seen right after it.
		 */
		if (wait_us > 0 && wait_us < 1000 && timeout > 1)
		{
			pgstat_report_wait_start(PG_WAIT_EXTENSION);
			pg_usleep(wait_us);
			pgstat_report_wait_end();
			continue;
		}
		if (wait_us > 0)
			timeout = Min(timeout, (wait_us + 999) / 1000);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* ---------------------------------------------------------------- SQL */

PG_FUNCTION_INFO_V1(evstream_workers);

/* evstream._workers(): the running workers, for the evstream.workers view */
Datum
evstream_workers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	for (i = 0; i < EVS_MAX_DATABASES; i++)
	{
		EvsDatabase d;
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};
		char	   *dbname;

		LWLockAcquire(evs_shared->lock, LW_SHARED);
		d = evs_shared->databases[i];
		LWLockRelease(evs_shared->lock);
		if (!OidIsValid(d.dboid) || d.worker_pid == 0)
			continue;
		dbname = get_database_name(d.dboid);
		if (dbname == NULL)
			continue;
		values[0] = DirectFunctionCall1(namein, CStringGetDatum(dbname));
		values[1] = Int32GetDatum(d.worker_pid);
		if (d.last_maintenance == 0)
			nulls[2] = true;
		else
			values[2] = TimestampTzGetDatum(d.last_maintenance);
		/*
		 * Errors name every tenant's objects and carry their code's
		 * messages: like other sessions' queries in pg_stat_activity, for
		 * superusers and pg_read_all_stats only.
		 */
		if (d.last_error[0] == '\0' ||
			!has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS))
			nulls[3] = true;
		else
			values[3] = CStringGetTextDatum(d.last_error);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(evstream_wake_launcher);

Datum
evstream_wake_launcher(PG_FUNCTION_ARGS)
{
	EvsRegisterDatabaseAtCommit();
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(evstream_run_maintenance);

/* evstream.run_maintenance(premake): one pass now; superuser only */
Datum
evstream_run_maintenance(PG_FUNCTION_ARGS)
{
	char	   *errors;

	EvsArgNotNull(fcinfo, 0, "premake");
	if (PG_GETARG_INT32(0) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("premake must not be negative")));
	errors = evs_maintain_database(PG_GETARG_INT32(0), false);
	if (errors == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(errors));
}
