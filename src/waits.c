/*-------------------------------------------------------------------------
 *
 * waits.c
 *	  Shared memory of the consumers (0.2): the wake-ups of long polls and
 *	  the attempt counts of the shards' next events.
 *
 *	  Long poll.  A consumer that found nothing to return and may wait
 *	  sleeps on one of EVS_WAIT_SLOTS condition variables, chosen by the
 *	  topic's OID, after counting itself in that slot's `waiters`.  A
 *	  producing transaction, once its slot in offsets.c is cleared (the
 *	  stable id of its topics may have moved), broadcasts on the slots of
 *	  its topics whose `waiters` is not zero: with nobody waiting a producer
 *	  pays one atomic read per topic.
 *	  Why no wake-up is lost: the waiter increments `waiters` (a full
 *	  barrier) and prepares to sleep *before* it looks for events with a
 *	  new snapshot; the producer clears its slot, issues a full barrier and
 *	  then reads `waiters`.  Either the producer reads a count that includes
 *	  the waiter, and its broadcast finds the waiter prepared (or the
 *	  waiter's sleep returns at once), or the waiter's increment came after
 *	  the producer's read, hence its look for events came after the
 *	  producer's clear and sees the new stable id.  A waiter whose prepared
 *	  sleep was cancelled by a condition variable used inside its look (e.g.
 *	  buffer I/O) has ConditionVariableTimedSleep return at once and looks
 *	  again.  Slots are shared by topics (and databases) of equal hash:
 *	  that costs spurious wake-ups, never lost ones.
 *	  Events can also become deliverable without a producer: a transaction
 *	  that moved a shard's position or set or ended a lease (consume,
 *	  member poll, seek, release) ends, committed or not.  It broadcasts on
 *	  the topic's slot too (never the database's: transform workers wait
 *	  for commits only, and their own batches would wake them forever),
 *	  after its locks are released (groups.c, from xact.c's resource
 *	  release callback), with the same protocol.  A member's lease that
 *	  expires wakes nobody: a look that skipped a shard under a live lease
 *	  (EvsWaitRecheckAt) sleeps no longer than until the lease ends.
 *
 *	  Attempts.  A hash table keyed by (database, group id, shard) holds,
 *	  for the shard's last EVS_ATTEMPT_HEADS delivery positions, the id of
 *	  the event at the head of deliveries from there and how many started
 *	  with it.  A delivery that commits moves the position,
 *	  so the next one starts a new count: the count is the number of
 *	  deliveries that did not commit past the event (rolled back, or a
 *	  member lease that expired or was released), plus the current one.
 *	  Only groups with max_attempts are counted.  The table has a fixed
 *	  size (EVS_ATTEMPT_ENTRIES, HASH_FIXED_SIZE: it never takes shared
 *	  memory others need); when it is full a new shard is not counted (no
 *	  dead-lettering for it until entries free up) rather than evicting
 *	  others.  Counts do not survive a restart (SPEC).
 *	  The table is shared by the databases, and anyone who may consume a
 *	  topic can make entries (a group of her own with max_attempts, one
 *	  entry per shard it delivers from).  So that no role can turn counting
 *	  off for others:
 *	  - a role holds at most EVS_ATTEMPT_OWNER_ENTRIES entries (a
 *		sixteenth of the table), whatever their databases (an entry is the
 *		role's whose delivery made it, not the group owner's: a topic's
 *		owner may consume anyone's group on it), and a database
 *		at most EVS_ATTEMPT_DB_ENTRIES (a quarter): filling the table takes
 *		sixteen roles in four databases, filling a database's share four
 *		roles; the shares are counted only once the table holds a role's;
 *	  - entries go with their group: drop_group and seek free them at
 *		once; those of groups that vanished otherwise (created in a
 *		transaction or subtransaction that rolled back, dropped with their
 *		topic) are swept by the database's worker, a pass a second
 *		(EvsSweepAttempts: gone even to a dirty snapshot in two passes in
 *		a row, so a group an open transaction is creating keeps its
 *		counts); DROP EXTENSION
 *		frees its database's (group ids start again at 1 after it); those
 *		of databases that no longer exist are swept by any worker.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/waits.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "evstream.h"

#define EVS_WAIT_SLOTS 64
#define EVS_DB_WAIT_SLOTS 16		/* after the topic slots: per database */
#define EVS_ATTEMPT_ENTRIES 8192
#define EVS_ATTEMPT_DB_ENTRIES (EVS_ATTEMPT_ENTRIES / 4)
#define EVS_ATTEMPT_OWNER_ENTRIES (EVS_ATTEMPT_ENTRIES / 16)

typedef struct EvsWaitSlot
{
	pg_atomic_uint32 waiters;
	ConditionVariable cv;
} EvsWaitSlot;

typedef struct EvsWaits
{
	LWLock	   *lock;			/* protects the attempts table */
	EvsWaitSlot slots[EVS_WAIT_SLOTS + EVS_DB_WAIT_SLOTS];
} EvsWaits;

typedef struct EvsAttemptKey
{
	Oid			dboid;
	int32		group_id;
	int32		shard;
} EvsAttemptKey;

#define EVS_ATTEMPT_HEADS 8

/*
 * A shard's recent heads: the event delivered first from a position, and
 * how often.  Several are kept because one transaction can dead-letter a
 * head and deliver the next one, then roll back: both counts must survive
 * (a single slot made two adjacent poison events retry forever).
 */
typedef struct EvsAttempt
{
	EvsAttemptKey key;
	Oid			owner;			/* who made it (for the share of a role) */
	int32		n;
	int64		position[EVS_ATTEMPT_HEADS];	/* the shard's position at delivery */
	int64		event_id[EVS_ATTEMPT_HEADS];	/* the event at its head */
	int32		count[EVS_ATTEMPT_HEADS];
	uint32		used[EVS_ATTEMPT_HEADS];	/* last use, for replacement */
	uint32		clock;
} EvsAttempt;

static EvsWaits *evs_waits = NULL;
static HTAB *evs_attempts = NULL;

Size
EvsWaitsShmemSize(void)
{
	return add_size(MAXALIGN(sizeof(EvsWaits)),
					hash_estimate_size(EVS_ATTEMPT_ENTRIES, sizeof(EvsAttempt)));
}

/* Called from the shmem startup hook, under AddinShmemInitLock */
void
EvsWaitsShmemInit(void)
{
	bool		found;
	HASHCTL		ctl;

	evs_waits = ShmemInitStruct("evstream waits", sizeof(EvsWaits), &found);
	if (!found)
	{
		evs_waits->lock = &(GetNamedLWLockTranche("evstream attempts"))->lock;
		for (int i = 0; i < EVS_WAIT_SLOTS + EVS_DB_WAIT_SLOTS; i++)
		{
			pg_atomic_init_u32(&evs_waits->slots[i].waiters, 0);
			ConditionVariableInit(&evs_waits->slots[i].cv);
		}
	}
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(EvsAttemptKey);
	ctl.entrysize = sizeof(EvsAttempt);
	evs_attempts = ShmemInitHash("evstream attempts", EVS_ATTEMPT_ENTRIES,
								 EVS_ATTEMPT_ENTRIES, &ctl,
								 HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
}

static EvsWaitSlot *
evs_wait_slot(Oid topic)
{
	return &evs_waits->slots[topic % EVS_WAIT_SLOTS];
}

static EvsWaitSlot *
evs_db_wait_slot(void)
{
	return &evs_waits->slots[EVS_WAIT_SLOTS + MyDatabaseId % EVS_DB_WAIT_SLOTS];
}

/*
 * Producer side (offsets.c), after this transaction's slot was cleared:
 * wake the long polls of a topic whose stable id may have moved, and the
 * database's transform workers.
 */
void
EvsWakeWaiters(Oid topic)
{
	EvsWaitSlot *slot;
	EvsWaitSlot *db;

	if (evs_waits == NULL)
		return;
	slot = evs_wait_slot(topic);
	db = evs_db_wait_slot();
	pg_memory_barrier();
	if (pg_atomic_read_u32(&slot->waiters) > 0)
		ConditionVariableBroadcast(&slot->cv);
	if (pg_atomic_read_u32(&db->waiters) > 0)
		ConditionVariableBroadcast(&db->cv);
}

/*
 * Transform workers (transforms.c): any commit to any topic of the
 * database.  Begin registers and prepares to sleep before the worker's
 * pass over its transforms (the same protocol as EvsWaitFor: a commit
 * after Begin either finds the worker prepared or is seen by the pass),
 * Sleep waits unless a broadcast came meanwhile, End unregisters.  A
 * broadcast the worker makes itself (it produces to output topics)
 * cancels its prepared sleep; Sleep then returns at once and the worker
 * makes one more pass: no wake-up is lost.
 */
void
EvsDatabaseWaitBegin(void)
{
	EvsWaitSlot *db = evs_db_wait_slot();

	pg_atomic_fetch_add_u32(&db->waiters, 1);
	ConditionVariablePrepareToSleep(&db->cv);
}

void
EvsDatabaseWaitSleep(long timeout_ms)
{
	(void) ConditionVariableTimedSleep(&evs_db_wait_slot()->cv, timeout_ms, PG_WAIT_EXTENSION);
}

void
EvsDatabaseWaitEnd(void)
{
	ConditionVariableCancelSleep();
	pg_atomic_fetch_sub_u32(&evs_db_wait_slot()->waiters, 1);
}

/*
 * Consumer side (groups.c), after a transaction that moved or leased
 * shards of the topic released its locks: wake the topic's long polls
 * only.  Not the transform workers: nothing new was committed for them,
 * and a worker whose own batches woke it would never sleep.
 */
void
EvsWakeTopicWaiters(Oid topic)
{
	EvsWaitSlot *slot;

	if (evs_waits == NULL)
		return;
	slot = evs_wait_slot(topic);
	pg_memory_barrier();
	if (pg_atomic_read_u32(&slot->waiters) > 0)
		ConditionVariableBroadcast(&slot->cv);
}

/* The same for every topic (too many topics to name) */
void
EvsWakeAllTopicWaiters(void)
{
	if (evs_waits == NULL)
		return;
	pg_memory_barrier();
	for (int i = 0; i < EVS_WAIT_SLOTS; i++)
		if (pg_atomic_read_u32(&evs_waits->slots[i].waiters) > 0)
			ConditionVariableBroadcast(&evs_waits->slots[i].cv);
}

/*
 * A look found events it may not deliver before `t` (a member's live
 * lease ends then): the waiter looks again by then, whether or not
 * anybody wakes it.
 */
static TimestampTz wait_recheck_at = 0;

void
EvsWaitRecheckAt(TimestampTz t)
{
	if (wait_recheck_at == 0 || t < wait_recheck_at)
		wait_recheck_at = t;
}

/*
 * Waiter side: call look() until it returns true or `timeout_ms` passed;
 * returns look()'s last result.  look() runs at least once after the
 * waiter is registered.  Cancellable (statement_timeout and query cancel
 * raise from ConditionVariableTimedSleep's CHECK_FOR_INTERRUPTS); the
 * waiter count is restored on any exit.
 */
bool
EvsWaitFor(Oid topic, int64 timeout_ms, bool (*look) (void *), void *arg)
{
	EvsWaitSlot *slot = evs_wait_slot(topic);
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	volatile bool found = false;

	pg_atomic_fetch_add_u32(&slot->waiters, 1);
	PG_TRY();
	{
		ConditionVariablePrepareToSleep(&slot->cv);
		for (;;)
		{
			long		remaining;

			CHECK_FOR_INTERRUPTS();
			wait_recheck_at = 0;
			if (look(arg))
			{
				found = true;
				break;
			}
			remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
			if (remaining <= 0)
				break;
			if (wait_recheck_at != 0)
				remaining = Min(remaining,
								TimestampDifferenceMilliseconds(GetCurrentTimestamp(), wait_recheck_at) + 1);
			(void) ConditionVariableTimedSleep(&slot->cv, remaining, PG_WAIT_EXTENSION);
		}
	}
	PG_FINALLY();
	{
		ConditionVariableCancelSleep();
		pg_atomic_fetch_sub_u32(&slot->waiters, 1);
	}
	PG_END_TRY();
	return found;
}

/*
 * Attempts of the event delivered first from position `position` of a
 * shard: the count of such deliveries so far (0 when none is recorded),
 * and that event's id.
 */
int32
EvsAttemptsOf(int32 group_id, int32 shard, int64 position, int64 *event_id)
{
	EvsAttemptKey key;
	EvsAttempt *e;
	int32		n = 0;

	memset(&key, 0, sizeof(key));
	key.dboid = MyDatabaseId;
	key.group_id = group_id;
	key.shard = shard;
	LWLockAcquire(evs_waits->lock, LW_SHARED);
	e = hash_search(evs_attempts, &key, HASH_FIND, NULL);
	if (e != NULL)
		for (int i = 0; i < e->n; i++)
			if (e->position[i] == position)
			{
				n = e->count[i];
				if (event_id)
					*event_id = e->event_id[i];
				break;
			}
	LWLockRelease(evs_waits->lock);
	return n;
}

/*
 * May this database, for a delivery by role owner, add an entry?  (Caller
 * holds the lock.)  Counted only once the table holds a role's share.
 */
static bool
evs_attempt_room(Oid owner)
{
	HASH_SEQ_STATUS seq;
	EvsAttempt *e;
	long		db = 0;
	long		own = 0;

	if (hash_get_num_entries(evs_attempts) < EVS_ATTEMPT_OWNER_ENTRIES)
		return true;
	hash_seq_init(&seq, evs_attempts);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (e->key.dboid == MyDatabaseId)
			db++;
		if (e->owner == owner)
			own++;
	}
	return db < EVS_ATTEMPT_DB_ENTRIES && own < EVS_ATTEMPT_OWNER_ENTRIES;
}

/* A delivery of `event_id` from `position` starts: count it */
void
EvsCountAttempt(int32 group_id, Oid role, int32 shard, int64 position, int64 event_id)
{
	EvsAttemptKey key;
	EvsAttempt *e;
	bool		found;

	memset(&key, 0, sizeof(key));
	key.dboid = MyDatabaseId;
	key.group_id = group_id;
	key.shard = shard;
	LWLockAcquire(evs_waits->lock, LW_EXCLUSIVE);
	e = hash_search(evs_attempts, &key, HASH_FIND, &found);
	if (e == NULL && evs_attempt_room(role))
		e = hash_search(evs_attempts, &key, HASH_ENTER_NULL, &found);
	if (e != NULL)
	{
		int			k = -1;

		if (!found)
		{
			e->n = e->clock = 0;
			e->owner = role;
		}
		for (int i = 0; i < e->n && k < 0; i++)
			if (e->position[i] == position)
				k = i;
		if (k < 0)
		{
			if (e->n < EVS_ATTEMPT_HEADS)
				k = e->n++;
			else
			{
				/* replace the least recently used head */
				k = 0;
				for (int i = 1; i < e->n; i++)
					if (e->used[i] < e->used[k])
						k = i;
			}
			e->position[k] = position;
			e->event_id[k] = event_id;
			e->count[k] = 0;
		}
		else if (e->event_id[k] != event_id)
		{
			/* the position's head changed (retention dropped it) */
			e->event_id[k] = event_id;
			e->count[k] = 0;
		}
		e->count[k]++;
		e->used[k] = ++e->clock;
	}
	LWLockRelease(evs_waits->lock);
}

/* Forget the counts of a database's group (group_id 0: of all its groups) */
static void
evs_forget(Oid dboid, int32 group_id)
{
	HASH_SEQ_STATUS seq;
	EvsAttempt *e;

	LWLockAcquire(evs_waits->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, evs_attempts);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (e->key.dboid == dboid && (group_id == 0 || e->key.group_id == group_id))
			hash_search(evs_attempts, &e->key, HASH_REMOVE, NULL);
	}
	LWLockRelease(evs_waits->lock);
}

/* Forget a group's counts (seek, drop_group) */
void
EvsForgetAttempts(int32 group_id)
{
	evs_forget(MyDatabaseId, group_id);
}

/* Forget every count of this database (DROP EXTENSION) */
void
EvsForgetDatabaseAttempts(void)
{
	evs_forget(MyDatabaseId, 0);
}

/* (group ids are positive, so they sort as database OIDs do) */
static int
evs_cmp_u32(const void *a, const void *b)
{
	uint32		x = *(const uint32 *) a;
	uint32		y = *(const uint32 *) b;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * The worker's sweep (see the header): forget the counts of this
 * database's groups that are gone and of databases that are, in one pass
 * over the table.  The lookups run without the lock, on keys collected
 * under it; an entry made since for a group found gone belongs to a group
 * that is gone too (only a transaction that saw its row counts for it).
 * Needs a transaction.
 */
static uint32 *sweep_missed = NULL;	/* groups the last sweep found gone */
static int	sweep_nmissed = 0;

void
EvsSweepAttempts(void)
{
	HASH_SEQ_STATUS seq;
	EvsAttempt *e;
	uint32	   *groups;
	uint32	   *dbs;
	uint32	   *exist;
	int			ngroups = 0;
	int			ndbs = 0;
	int			nexist = 0;
	int			ngone = 0;
	int			ndbsgone = 0;

	groups = palloc(sizeof(uint32) * EVS_ATTEMPT_ENTRIES);
	dbs = palloc(sizeof(uint32) * EVS_ATTEMPT_ENTRIES);
	LWLockAcquire(evs_waits->lock, LW_SHARED);
	hash_seq_init(&seq, evs_attempts);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		/* (HASH_FIXED_SIZE: never more than EVS_ATTEMPT_ENTRIES entries) */
		if (e->key.dboid == MyDatabaseId)
			groups[ngroups++] = (uint32) e->key.group_id;
		else
			dbs[ndbs++] = e->key.dboid;
	}
	LWLockRelease(evs_waits->lock);

	/* this database's groups that are gone, then databases that are */
	if (ngroups > 0)
	{
		exist = (uint32 *) EvsGroupIds(&nexist);
		qsort(exist, nexist, sizeof(uint32), evs_cmp_u32);
		qsort(groups, ngroups, sizeof(uint32), evs_cmp_u32);
		for (int i = 0; i < ngroups; i++)
			if ((i == 0 || groups[i] != groups[i - 1]) &&
				bsearch(&groups[i], exist, nexist, sizeof(uint32), evs_cmp_u32) == NULL)
				groups[ngone++] = groups[i];
		pfree(exist);
	}

	/*
	 * Forget only groups that the last sweep missed too: a scan with a
	 * dirty snapshot can miss a row whose update commits while it runs
	 * (the new version on a page already read, the old one dead when
	 * reached; dead-lettering updates the group's row); twice in a row
	 * only at far smaller odds.
	 */
	{
		uint32	   *missed = MemoryContextAlloc(TopMemoryContext, sizeof(uint32) * Max(ngone, 1));
		int			k = 0;

		memcpy(missed, groups, sizeof(uint32) * ngone);
		for (int i = 0; i < ngone; i++)
			if (sweep_nmissed > 0 &&
				bsearch(&groups[i], sweep_missed, sweep_nmissed, sizeof(uint32), evs_cmp_u32) != NULL)
				groups[k++] = groups[i];
		if (sweep_missed)
			pfree(sweep_missed);
		sweep_missed = missed;
		sweep_nmissed = ngone;
		ngone = k;
	}
	qsort(dbs, ndbs, sizeof(uint32), evs_cmp_u32);
	for (int i = 0; i < ndbs; i++)
		if ((i == 0 || dbs[i] != dbs[i - 1]) &&
			!SearchSysCacheExists1(DATABASEOID, ObjectIdGetDatum(dbs[i])))
			dbs[ndbsgone++] = dbs[i];

	if (ngone > 0 || ndbsgone > 0)
	{
		LWLockAcquire(evs_waits->lock, LW_EXCLUSIVE);
		hash_seq_init(&seq, evs_attempts);
		while ((e = hash_seq_search(&seq)) != NULL)
		{
			uint32		g = (uint32) e->key.group_id;
			uint32		d = e->key.dboid;

			if (e->key.dboid == MyDatabaseId ?
				bsearch(&g, groups, ngone, sizeof(uint32), evs_cmp_u32) != NULL :
				bsearch(&d, dbs, ndbsgone, sizeof(uint32), evs_cmp_u32) != NULL)
				hash_search(evs_attempts, &e->key, HASH_REMOVE, NULL);
		}
		LWLockRelease(evs_waits->lock);
	}
	pfree(groups);
	pfree(dbs);
}

PG_FUNCTION_INFO_V1(evstream_attempts);

/*
 * evstream._attempts(group_id, shard, after_id): deliveries of the shard's
 * next event after position after_id that have not committed (0: none).
 */
Datum
evstream_attempts(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	PG_RETURN_INT32(EvsAttemptsOf(PG_GETARG_INT32(0), PG_GETARG_INT32(1),
								  PG_GETARG_INT64(2), NULL));
}
