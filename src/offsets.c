/*-------------------------------------------------------------------------
 *
 * offsets.c
 *	  Id assignment and the stable offset (Kafka's last stable offset).
 *
 *	  Every topic owns a sequence (<topic>_id_seq, CACHE 1, owned by its id
 *	  column); a topic's id column defaults to evstream._next_id(topic), and
 *	  guards.c forces that default on every INSERT.  The sequence gives
 *	  unique, increasing, never reused ids that survive crashes (it is WAL
 *	  logged like any sequence) and dump/restore (pg_dump saves its value).
 *
 *	  stable_id(T) is the highest id such that every smaller id of T is
 *	  visible or will never appear.  Producers commit out of id order, so
 *	  the highest id handed out is not stable while a smaller id's
 *	  transaction is still open.  The protocol:
 *
 *	  Writer, on its transaction's first id from topic T:
 *		W1. take nextval's lock on the sequence (RowExclusiveLock, kept:
 *			nothing below waits for a lock while announced as pending);
 *		W2. store min_id[i] := 0 ("pending"), write barrier, store
 *			relid[i] := T, write barrier, store nused := i + 1 in the
 *			backend's shared slot, full barrier;
 *		W3. X := nextval, the transaction's first id of T; store
 *			min_id[i] := X.  Later ids of T in the transaction are > X.
 *	  Should that nextval fail (no id taken), the entry is withdrawn
 *	  (relid[i] := 0) when the subtransaction aborts: an entry left pending
 *	  inside a transaction that goes on after a rolled-back subtransaction
 *	  would stall every reader until it ends.  (min_id is 0 only while
 *	  pending: ids and the supplied-ids bound are >= 1.)
 *	  At COMMIT/ABORT (after ProcArrayEndTransaction: the rows are already
 *	  visible to new snapshots, or will never be) the slot is cleared.
 *
 *	  Reader:
 *		R1. H := last value of T's sequence (buffer lock);
 *		R2. full barrier; M := min over the entries [0, nused) of every
 *			slot with relid = T of min_id (nused read before the entries,
 *			relid before min_id, read barriers between).  An entry still
 *			pending (min_id = 0) is waited for until it holds its X or no
 *			longer holds T;
 *		R3. stable := min(H, M - 1).
 *
 *	  Why no id is ever skipped: take an id Y <= stable of T that is not
 *	  visible yet, taken by writer W whose transaction is open, with first
 *	  id X <= Y.  X <= Y <= H, so W's nextval for X came before R1 in the
 *	  sequence's buffer-lock order.  W published relid = T (W2) before that
 *	  nextval, and the buffer lock release/acquire chain orders W2 before
 *	  R2, so R2 saw relid = T (relid is written before nused; a reader that
 *	  read an older nused read it before W2 completed, hence before W's
 *	  nextval, so X > H — not our case), then min_id either X or pending,
 *	  and a pending entry is waited for until it shows X (the entry cannot
 *	  be withdrawn or cleared: W's nextval succeeded and W is open).  So
 *	  M <= X and stable <= X - 1 < Y, a contradiction.  A slot being
 *	  cleared or reused concurrently can only make a reader more
 *	  conservative, or concerns a transaction that has already ended.
 *	  After a crash the slots are empty and the sequence's recovered value
 *	  is at least every id ever handed out.
 *
 *	  Why the stable id never goes back (consumers were given ids up to
 *	  it, and commit() refuses ids beyond it): a later reader's M is the
 *	  first id of a transaction either open at the earlier read — whose X
 *	  the earlier read counted, or whose nextval came after its R1, so
 *	  X > H — or started since, whose X is above that H too; and H only
 *	  grows.  This is why each entry holds the transaction's exact first
 *	  id rather than an older lower bound (such as the backend's last id
 *	  from T): a lagging bound published after a reader computed stable
 *	  would make the next reader's stable smaller.  Waiting for a pending
 *	  entry costs readers at most the length of one nextval; writers pay
 *	  no read of the sequence page for it.
 *
 *	  Ids supplied rather than taken (logical replication, see
 *	  EvsNoteSuppliedIds) publish min(H + 1, smallest supplied id) at once,
 *	  read from the sequence page, never pending.
 *
 *	  Consumers must read rows with a snapshot taken after computing the
 *	  stable offset (consumer.c): a READ COMMITTED statement snapshot.
 *
 *	  Cost: W1-W3 once per topic per transaction (a lock re-granted to
 *	  nextval, atomic stores); stable_id is one buffer read plus a scan of
 *	  MaxBackends slots — O(backends), never O(events).
 *
 *	  At transaction end (called from xact.c), the notifying topics whose
 *	  stable offset may have moved (at commit, and at abort too: an aborted
 *	  lowest id unblocks others' events) are marked, after the slot is
 *	  cleared, in the database's shared entry, and the worker is woken when
 *	  that is news.
 *	  Why no event goes unannounced: the mark is made after our slot is
 *	  cleared; the worker takes the marks (bumping take_gen) under the lock
 *	  before computing stable_id, so a mark it takes yields a stable_id that
 *	  covers our ids.  A commit that finds its topics already marked skips
 *	  the lock only if take_gen did not move while it looked, i.e. the
 *	  worker has yet to take those marks, hence takes them after our clear.
 *
 *	  Logical replication: see EvsNoteSuppliedIds.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/offsets.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xact.h"
#include "commands/sequence.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/fmgrprotos.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "evstream.h"

/* topics this transaction has taken ids from, in slot order */
static Oid	xact_topics[EVS_MAX_XACT_TOPICS];
static bool xact_notify[EVS_MAX_XACT_TOPICS];
static Oid	xact_seq[EVS_MAX_XACT_TOPICS];
static int64 xact_supplied_max[EVS_MAX_XACT_TOPICS];	/* replication */
static int	xact_ntopics = 0;
static bool xact_deltas = false;	/* this transaction wrote aggregate deltas */
static bool xact_register_db = false; /* CREATE EXTENSION committing */
static bool xact_transforms = false;	/* transforms created/resumed/dropped */

static EvsDatabase *my_db = NULL;

/*
 * The last value handed out by a sequence (0 if none), read from its page
 * under lockmode, released at once or kept until the transaction ends.
 */
static int64
evs_sequence_last_value(Oid seqrelid, LOCKMODE lockmode, bool keep_lock)
{
	Relation	rel = relation_open(seqrelid, lockmode);
	Buffer		buf;
	Page		page;
	ItemId		lp;
	HeapTupleData tup;
	Form_pg_sequence_data seq;
	int64		last;

	if (rel->rd_rel->relkind != RELKIND_SEQUENCE)
		elog(ERROR, "relation %u is not a sequence", seqrelid);
	buf = ReadBuffer(rel, 0);
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	page = BufferGetPage(buf);
	lp = PageGetItemId(page, FirstOffsetNumber);
	tup.t_data = (HeapTupleHeader) PageGetItem(page, lp);
	tup.t_len = ItemIdGetLength(lp);
	seq = (Form_pg_sequence_data) GETSTRUCT(&tup);
	last = seq->is_called ? seq->last_value : seq->last_value - 1;
	UnlockReleaseBuffer(buf);
	relation_close(rel, keep_lock ? NoLock : lockmode);
	return last;
}

/* Last value handed out by a sequence (0 if none), read from its page */
int64
EvsSequenceLastValue(Oid seqrelid)
{
	return evs_sequence_last_value(seqrelid, AccessShareLock, false);
}

/* Shared entry of a database (created on demand when create is true) */
EvsDatabase *
EvsDatabaseEntry(Oid dboid, bool create)
{
	EvsDatabase *found = NULL;
	EvsDatabase *free_entry = NULL;
	int			i;

	LWLockAcquire(evs_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < EVS_MAX_DATABASES; i++)
	{
		EvsDatabase *d = &evs_shared->databases[i];

		if (d->dboid == dboid)
		{
			found = d;
			break;
		}
		if (!OidIsValid(d->dboid) && free_entry == NULL)
			free_entry = d;
	}
	if (found == NULL && create && free_entry != NULL)
	{
		memset(free_entry, 0, sizeof(EvsDatabase));
		free_entry->dboid = dboid;
		free_entry->worker_procno = -1;
		pg_atomic_init_u32(&free_entry->take_gen, 0);
		found = free_entry;
	}
	LWLockRelease(evs_shared->lock);
	return found;
}

/* Wake a database's worker, if it runs */
void
EvsWakeWorker(EvsDatabase *db)
{
	int			procno = db->worker_procno;

	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/*
 * Does the worker already know everything this transaction's end would
 * tell it: all its notifying topics marked, and pending deltas flagged if
 * it wrote any?  Read without the lock; valid only if the worker did not
 * take the marks in between (take_gen unchanged), in which case it takes
 * them later, after our slot was cleared, and sees our events in its
 * stable_id.  It was woken when the marks were set.
 */
static bool
evs_already_marked(EvsDatabase *db, bool deltas)
{
	uint32		gen = pg_atomic_read_u32(&db->take_gen);
	int			n;
	int			i;

	pg_read_barrier();
	if (deltas && !*((volatile bool *) &db->deltas_pending))
		return false;
	n = *((volatile int *) &db->ndirty);
	if (!*((volatile bool *) &db->dirty_overflow))
	{
		for (i = 0; i < xact_ntopics; i++)
		{
			int			k;

			if (!xact_notify[i])
				continue;
			for (k = 0; k < n && k < EVS_DIRTY_TOPICS; k++)
				if (((volatile Oid *) db->dirty)[k] == xact_topics[i])
					break;
			if (k >= n || k >= EVS_DIRTY_TOPICS)
				return false;
		}
	}
	pg_read_barrier();
	return pg_atomic_read_u32(&db->take_gen) == gen;
}

/*
 * Publish this transaction's slot entry for a topic with lower bound low
 * (0: pending, W2; else a bound read from the sequence, for supplied ids)
 * and return its index.
 */
static int
evs_publish(Oid topic, Oid seqrelid, bool notify, uint64 low)
{
	EvsBackendSlot *slot = &evs_shared->slots[EVS_MY_PROCNO];
	int			i = xact_ntopics;

	if (i >= EVS_MAX_XACT_TOPICS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("a transaction can produce to at most %d evstream topics",
						EVS_MAX_XACT_TOPICS),
				 errhint("Split the transaction.")));
	if (pg_atomic_read_u32(&slot->dboid) != MyDatabaseId)
		pg_atomic_write_u32(&slot->dboid, MyDatabaseId);
	pg_atomic_write_u64(&slot->min_id[i], low);
	pg_write_barrier();
	pg_atomic_write_u32(&slot->relid[i], topic);
	pg_write_barrier();
	pg_atomic_write_u32(&slot->nused, i + 1);
	pg_memory_barrier();
	/* counted at once: the entry is cleared at transaction end whatever */
	xact_topics[i] = topic;
	xact_notify[i] = notify;
	xact_seq[i] = seqrelid;
	xact_supplied_max[i] = 0;
	xact_ntopics = i + 1;
	return i;
}

/*
 * Steps W1-W3: the transaction's first id of a topic, published exactly.
 */
static int64
evs_first_id(Oid topic, Oid seqrelid, bool notify)
{
	EvsBackendSlot *slot = &evs_shared->slots[EVS_MY_PROCNO];
	int			i;
	int64		id;

	LockRelationOid(seqrelid, RowExclusiveLock);
	i = evs_publish(topic, seqrelid, notify, 0);
	/* should it fail, the entry is withdrawn at the abort (below) */
	id = nextval_internal(seqrelid, false);
	pg_atomic_write_u64(&slot->min_id[i], (uint64) id);
	return id;
}

/*
 * SUBXACT_EVENT_ABORT_SUB (xact.c): an entry still pending is one whose
 * first nextval failed (no id taken): withdraw it, so that readers do not
 * wait for it while the transaction goes on, and the topic's next row
 * takes the first-id path again.  (A top-level abort clears the slot.)
 */
void
EvsOffsetsAtSubXactAbort(void)
{
	EvsBackendSlot *slot;

	if (xact_ntopics == 0)
		return;
	slot = &evs_shared->slots[EVS_MY_PROCNO];
	for (int i = 0; i < xact_ntopics; i++)
		if (OidIsValid(xact_topics[i]) && pg_atomic_read_u64(&slot->min_id[i]) == 0)
		{
			pg_atomic_write_u32(&slot->relid[i], InvalidOid);
			xact_topics[i] = InvalidOid;
			xact_notify[i] = false;
		}
}

PG_FUNCTION_INFO_V1(evstream_next_id);

/*
 * evstream._next_id(topic regclass): the default of a topic's id column.
 */
Datum
evstream_next_id(PG_FUNCTION_ARGS)
{
	Oid			topic = PG_GETARG_OID(0);
	EvsTopic   *t;
	int			i;

	/* fast path: every row after the transaction's first for this topic */
	for (i = xact_ntopics - 1; i >= 0; i--)
		if (xact_topics[i] == topic)
			PG_RETURN_INT64(nextval_internal(xact_seq[i], false));

	t = EvsRequireTopic(topic, "_next_id");
	{
		/* only producers may hold back the topic's stable offset */
		AclResult	acl = pg_class_aclcheck(topic, GetUserId(), ACL_INSERT);

		if (acl != ACLCHECK_OK)
			aclcheck_error(acl, OBJECT_TABLE, get_rel_name(topic));
		/* refused before an id is taken, on an older catalog (catalog.c) */
		(void) EvsTopicAggregates(t);
	}
	PG_RETURN_INT64(evs_first_id(topic, t->seqrelid, t->notify));
}

/*
 * Rows applied by logical replication keep the publisher's ids, which the
 * local sequence never handed out.  The applying transaction publishes a
 * slot bounded by the smallest id it stores (rows of one publisher
 * transaction arrive in id order per topic), and before committing moves
 * the sequence past the largest (evs_advance_sequences), so stable_id
 * covers the rows exactly when they become visible.  A publisher
 * transaction that committed after a later id was already applied and
 * consumed here can still arrive behind it: consume on the publisher when
 * that matters (README, Limitations).
 */
void
EvsNoteSuppliedIds(Relation rel, TupleTableSlot **slots, int nslots)
{
	EvsTopic   *t = EvsLookupTopic(RelationGetRelid(rel));
	int64		lo = PG_INT64_MAX;
	int64		hi = 0;
	int			i;
	int			k;

	if (!OidIsValid(t->topic) || !OidIsValid(t->seqrelid))
		return;
	for (i = 0; i < nslots; i++)
	{
		bool		isnull;
		Datum		d = slot_getattr(slots[i], 1, &isnull);

		if (isnull)
			continue;
		lo = Min(lo, DatumGetInt64(d));
		hi = Max(hi, DatumGetInt64(d));
	}
	if (hi == 0)
		return;
	for (k = xact_ntopics - 1; k >= 0; k--)
		if (xact_topics[k] == t->topic)
			break;
	if (k < 0)
	{
		/* kept: the lock nextval would take (see W1) */
		int64		low = Min(evs_sequence_last_value(t->seqrelid, RowExclusiveLock,
													  true) + 1, lo);

		k = evs_publish(t->topic, t->seqrelid, t->notify, (uint64) Max(low, 1));
	}
	xact_supplied_max[k] = Max(xact_supplied_max[k], hi);
}

/* Before commit: sequences past every supplied id (see above) */
static void
evs_advance_sequences(void)
{
	int			i;

	for (i = 0; i < xact_ntopics; i++)
		if (xact_supplied_max[i] > 0 &&
			xact_supplied_max[i] > EvsSequenceLastValue(xact_seq[i]))
		{
			EvsUserState su;

			/*
			 * Nobody holds UPDATE on a topic's sequence (topics.c), and the
			 * apply worker may run as the table's owner: setval runs no user
			 * code, so run it as the superuser.
			 */
			EvsBecomeSuperuser(&su);
			DirectFunctionCall2(setval_oid, ObjectIdGetDatum(xact_seq[i]),
								Int64GetDatum(xact_supplied_max[i]));
			EvsRestoreUser(&su);
		}
}

/*
 * Step R2: the lowest in-flight id of the topic over every backend's slot
 * (PG_UINT64_MAX: none), and the slot it is in.
 */
static uint64
evs_lowest_in_flight(Oid topic, int *who)
{
	uint64		low = PG_UINT64_MAX;

	*who = -1;
	pg_memory_barrier();
	for (int i = 0; i < MaxBackends; i++)
	{
		EvsBackendSlot *s = &evs_shared->slots[i];
		uint32		n;

		if (pg_atomic_read_u32(&s->dboid) != MyDatabaseId)
			continue;
		n = pg_atomic_read_u32(&s->nused);
		pg_read_barrier();
		for (uint32 j = 0; j < n && j < EVS_MAX_XACT_TOPICS; j++)
		{
			if (pg_atomic_read_u32(&s->relid[j]) == topic)
			{
				uint64		m;

				pg_read_barrier();
				m = pg_atomic_read_u64(&s->min_id[j]);
				/* pending (W2 done, W3 not): wait for its first id */
				for (int spins = 0; m == 0; spins++)
				{
					if (spins < 100)
						pg_spin_delay();
					else
					{
						pg_usleep(20L);
						CHECK_FOR_INTERRUPTS();
					}
					if (pg_atomic_read_u32(&s->relid[j]) != topic)
						break;	/* ended or withdrawn: no id of T here */
					pg_read_barrier();
					m = pg_atomic_read_u64(&s->min_id[j]);
				}
				if (m != 0 && m < low)
				{
					low = m;
					*who = i;
				}
			}
		}
	}
	return low;
}

/* Steps R1-R3 */
int64
EvsStableId(Oid topic)
{
	EvsTopic   *t = EvsRequireTopic(topic, "stable_id");
	int64		high = EvsSequenceLastValue(t->seqrelid);
	int			who;
	uint64		low = evs_lowest_in_flight(topic, &who);

	if (low != PG_UINT64_MAX && (int64) low - 1 < high)
		high = (int64) low - 1;
	return high;
}

PG_FUNCTION_INFO_V1(evstream_held_by);

/*
 * evstream._held_by(topic): the pid of the backend whose open transaction
 * has the lowest in-flight id of the topic (what bounds its stable id),
 * NULL when no transaction is producing to it.  A snapshot of moving
 * state, for monitoring.
 */
Datum
evstream_held_by(PG_FUNCTION_ARGS)
{
	int			who;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	(void) evs_lowest_in_flight(PG_GETARG_OID(0), &who);
	if (who < 0)
		PG_RETURN_NULL();
	{
		int			pid = ProcGlobal->allProcs[who].pid;

		if (pid == 0)
			PG_RETURN_NULL();
		PG_RETURN_INT32(pid);
	}
}

PG_FUNCTION_INFO_V1(evstream_stable_id);

Datum
evstream_stable_id(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("topic must not be NULL")));
	PG_RETURN_INT64(EvsStableId(PG_GETARG_OID(0)));
}

/* Called by aggregates.c when this transaction wrote deltas */
void
EvsMarkDeltasCommitted(void)
{
	xact_deltas = true;
}

/*
 * Called by evstream._wake_launcher() from the install script: at commit,
 * give this database its shared entry (databases get one only when they
 * have the extension) and wake the launcher to start its worker.
 */
void
EvsRegisterDatabaseAtCommit(void)
{
	xact_register_db = true;
}

/*
 * Called by transforms.c: at commit, tell the database's maintenance
 * worker (it starts transform workers) and its transform workers (they
 * reload their list) at once, instead of at their next once-a-second look.
 */
void
EvsTransformsChangedAtCommit(void)
{
	xact_transforms = true;
}

/*
 * At transaction end: record the notifying topics whose stable offset may
 * have advanced, and wake the worker.  After a commit that is every topic
 * produced to; after an abort too, since an aborted transaction holding the
 * lowest in-flight id was holding back events others committed.
 */
static void
evs_after_end(bool committed)
{
	bool		wake = false;
	bool		any = committed && xact_deltas;
	int			i;

	for (i = 0; i < xact_ntopics && !any; i++)
		any = xact_notify[i];
	if (!any)
		return;					/* nothing to push: stay off the lock */
	if (my_db == NULL || my_db->dboid != MyDatabaseId)
		my_db = EvsDatabaseEntry(MyDatabaseId, true);
	if (my_db == NULL)
		return;					/* too many databases: no push, nothing else lost */

	/* the common case under load: the worker knows already, skip the lock */
	pg_memory_barrier();
	if (evs_already_marked(my_db, committed && xact_deltas))
		return;

	/* wake the worker only for news: at most once per push it makes */
	LWLockAcquire(evs_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < xact_ntopics; i++)
	{
		int			k;

		if (!xact_notify[i])
			continue;
		for (k = 0; k < my_db->ndirty; k++)
			if (my_db->dirty[k] == xact_topics[i])
				break;
		if (k < my_db->ndirty)
			continue;
		if (my_db->ndirty < EVS_DIRTY_TOPICS)
			my_db->dirty[my_db->ndirty++] = xact_topics[i];
		else if (!my_db->dirty_overflow)
			my_db->dirty_overflow = true;
		else
			continue;
		wake = true;
	}
	if (committed && xact_deltas && !my_db->deltas_pending)
	{
		my_db->deltas_pending = true;
		wake = true;
	}
	LWLockRelease(evs_shared->lock);
	if (wake)
		EvsWakeWorker(my_db);
}

/* Clear this backend's slot entries */
static void
evs_clear_slot(void)
{
	EvsBackendSlot *slot = &evs_shared->slots[EVS_MY_PROCNO];
	int			i;

	for (i = 0; i < xact_ntopics; i++)
	{
		pg_atomic_write_u32(&slot->relid[i], InvalidOid);
		pg_atomic_write_u64(&slot->min_id[i], 0);
	}
	pg_write_barrier();
	pg_atomic_write_u32(&slot->nused, 0);
}

/* PRE_COMMIT (xact.c): sequences past every supplied id */
void
EvsOffsetsPreCommit(void)
{
	if (xact_ntopics > 0)
		evs_advance_sequences();
}

/* PRE_PREPARE (xact.c) */
void
EvsOffsetsPrePrepare(void)
{
	if (xact_ntopics > 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot PREPARE a transaction that has produced evstream events"),
				 errdetail("A prepared transaction would hold back the stable offset of its topics indefinitely.")));
}

/* COMMIT, ABORT or PREPARE (xact.c) */
void
EvsOffsetsAtEnd(bool committed, bool aborted)
{
	/* clear first: the worker and long polls must see our ids as stable */
	if (xact_ntopics > 0)
	{
		evs_clear_slot();
		if (committed || aborted)
			for (int i = 0; i < xact_ntopics; i++)
				if (OidIsValid(xact_topics[i]))
					EvsWakeWaiters(xact_topics[i]);
	}
	if (committed && (xact_ntopics > 0 || xact_deltas))
		evs_after_end(true);
	else if (aborted && xact_ntopics > 0)
		evs_after_end(false);
	xact_ntopics = 0;
	xact_deltas = false;
	if (committed && xact_transforms && evs_shared)
	{
		EvsDatabase *db = EvsDatabaseEntry(MyDatabaseId, false);

		if (db != NULL)
		{
			pg_atomic_fetch_add_u32(&db->transforms_gen, 1);
			EvsWakeWorker(db);
			EvsWakeWaiters(InvalidOid);
		}
	}
	xact_transforms = false;
	if (committed && xact_register_db && evs_shared)
	{
		int			procno;

		(void) EvsDatabaseEntry(MyDatabaseId, true);
		evs_shared->rescan = true;
		procno = evs_shared->launcher_procno;
		if (procno >= 0)
			SetLatch(&ProcGlobal->allProcs[procno].procLatch);
	}
	xact_register_db = false;
}
