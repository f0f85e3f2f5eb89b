/*-------------------------------------------------------------------------
 *
 * aggregates.c
 *	  Continuous aggregates: create_aggregate, drop_aggregate, the
 *	  per-statement deltas producers write, and the merge that folds them
 *	  (change events, notifications, final results, window retention).
 *
 *	  Storage: evstream._count holds merged values (count and measure
 *	  states per group and window), evstream._delta the deltas producers
 *	  append, and the relation users query is a view combining both per
 *	  group.  Producers only ever INSERT delta rows, so producers of one hot
 *	  group never wait for each other; the worker folds committed deltas
 *	  into _count in one transaction (DELETE ... RETURNING feeding an
 *	  upsert), so the view's result is the same before and after, and exact
 *	  at every instant.  Topics are append-only, so every value only grows
 *	  by combination: count and count(expr) add, sum adds (NULL inputs
 *	  ignored), min/max keep the least/greatest, avg keeps a sum and a count.
 *
 *	  Delta rows are chunks: one row carries up to ~7 kB of (group, window,
 *	  count, states) entries of one aggregate, packed by evs_pack_entry and
 *	  read back by evstream._unpack(), so a 1000-row statement with 1000
 *	  groups writes a handful of rows, not 1000.  Measure states are stored
 *	  in their types' binary send format (evstream._send/_recv), which does
 *	  not depend on any setting of the session that wrote them.
 *
 *	  Counting: the access method's insert paths (tableam.c) call
 *	  EvsAccumulate for every row stored in a topic partition — INSERT,
 *	  COPY, logical replication alike, triggers or not.  Each row's group
 *	  (group_by, evaluated as text), windows and measure inputs are folded
 *	  into a backend-local hash; the hash is written as delta rows when the
 *	  statement finishes (ExecutorFinish hook, after COPY, and at PRE_COMMIT
 *	  for paths without either), or earlier when it grows past
 *	  EVS_PENDING_MAX entries (memory stays bounded for any input).  Rows
 *	  become visible to the transaction together with their delta rows (both
 *	  are written by the same command), and roll back together.
 *
 *	  Windows: an event's time is created_at (its transaction's start) or
 *	  its event_time; it counts in each of the bucket/hop windows containing
 *	  that time (hop = bucket: tumbling).  With event_time, a window that
 *	  ended more than grace before the event's created_at is late for it:
 *	  not counted there, counted in the aggregate's late_events (a delta
 *	  entry with group NULL and bucket -infinity, a window no event has).
 *
 *	  Subtransactions: pending entries are keyed by the nesting level at
 *	  which the rows were inserted; a statement end writes only the entries
 *	  of its own level (and deeper), never an enclosing statement's.  A
 *	  subtransaction abort drops the entries of its level and deeper (their
 *	  rows are gone); a subtransaction commit hands them to its parent.
 *	  Entries already written as delta rows follow their subtransaction
 *	  like any row.
 *
 *	  Privileges: only a topic's owner may create an aggregate on it (its
 *	  expressions run inside every producer's INSERT).  Expressions that
 *	  call non-built-in functions run as the aggregate's owner with
 *	  SECURITY_RESTRICTED_OPERATION and the pinned search_path.  Measure
 *	  states are of base (or enum) types only, so combining them in the
 *	  merge (as the superuser) runs no user-written code: no domain checks,
 *	  and send/receive/comparison functions only a superuser can create;
 *	  enum values reach jsonb as their output function's text, never
 *	  through a cast (which the enum's owner could create).
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/aggregates.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "common/int.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "libpq/pqformat.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parse_coerce.h"
#include "parser/parse_collate.h"
#include "parser/parse_expr.h"
#include "parser/parse_func.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "parser/parser.h"
#include "pgstat.h"
#include "rewrite/rewriteManip.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/timestamp.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/typcache.h"
#include "utils/varlena.h"
#include "access/relation.h"
#include "commands/async.h"
#include "commands/extension.h"
#include "utils/json.h"
#include "utils/datetime.h"

#include "evstream.h"

/* longest group key: _count indexes it (btree rows <= 2704 bytes) */
#define EVS_MAX_GROUP_KEY 2000

/* 1970-01-01 00:00:00+00 in Postgres timestamps: buckets align on it */
#define EVS_UNIX_EPOCH_TS ((int64) -946684800 * USECS_PER_SEC)

/* most windows one event may count in (bucket / hop) */
#define EVS_MAX_WINDOWS 1000

/* pending entries (groups x windows) before a statement flushes early */
#define EVS_PENDING_MAX 16384

/* ... or past this much memory (large min/max states) */
#define EVS_PENDING_BYTES (64 * 1024 * 1024)

/* delta rows one merge statement folds, at most (by stored size) */
#define EVS_MERGE_BATCH_BYTES 16777216	/* 16 MB, a literal: it is spliced into SQL */
#define EVS_MERGE_MAX_BATCHES 64

/* target size of one delta row's packed entries */
#define EVS_CHUNK_BYTES 7000

/* the late-events entry's window: no event's window starts there */
#define EVS_LATE_BUCKET DT_NOBEGIN

#define EVS_PACK_VERSION 1

/*
 * What a pending entry needs of its aggregate after the statement (flush,
 * subtransaction end), when the topic cache may have been reset: the state
 * slots' types and functions, copied into the pending context.
 */
typedef struct EvsSlot
{
	EvsMeasureKind kind;		/* EVS_M_COUNT, _SUM, _MIN or _MAX */
	Oid			type;
	int16		typlen;
	bool		typbyval;
	Oid			collation;
	FmgrInfo	fn;				/* sum: +; min/max: cmp */
	FmgrInfo	send;
} EvsSlot;

typedef struct EvsLayout
{
	int32		agg;
	bool		bucketed;
	int			nslots;
	EvsSlot    *slots;
} EvsLayout;

typedef struct DeltaKey
{
	int32		agg;
	int32		level;			/* transaction nesting level of the rows */
	bool		has_bucket;		/* false: bucket_start NULL */
	TimestampTz bucket;
	bool		isnull;
	int32		glen;			/* the group's length in bytes */
	const char *group;			/* not NUL-terminated; NULL when isnull */
} DeltaKey;

typedef struct DeltaEntry
{
	DeltaKey	key;
	int64		count;
	EvsLayout  *layout;
	Datum	   *states;
	bool	   *snulls;
} DeltaEntry;

static HTAB *pending = NULL;
static MemoryContext pending_cxt = NULL;
static MemoryContext scratch_cxt = NULL;	/* combining by-reference states */
static List *layouts = NIL;		/* EvsLayout *, in pending_cxt */
static int64 pending_n = 0;		/* rows counted and not yet written */
static ExprContext *accum_econtext = NULL;
static bool accumulating = false;	/* inside EvsAccumulate: no nesting */

static ExecutorFinish_hook_type prev_ExecutorFinish = NULL;

static const char *const measure_names[] = {"count", "sum", "min", "max", "avg"};

EvsMeasureKind
EvsMeasureKindOf(const char *name)
{
	int			i;

	for (i = 0; i < lengthof(measure_names); i++)
		if (strcmp(name, measure_names[i]) == 0)
			return (EvsMeasureKind) i;
	return (EvsMeasureKind) -1;
}

const char *
EvsMeasureKindName(EvsMeasureKind kind)
{
	return measure_names[kind];
}

/* Hash of a DeltaKey, including the group text */
static uint32
delta_hash(const void *key, Size keysize)
{
	const DeltaKey *k = key;
	uint32		h = hash_bytes((const unsigned char *) &k->agg, sizeof(int32));

	h = hash_combine(h, hash_bytes((const unsigned char *) &k->level, sizeof(int32)));
	if (k->has_bucket)
		h = hash_combine(h, hash_bytes((const unsigned char *) &k->bucket, sizeof(TimestampTz)));
	if (!k->isnull)
		h = hash_combine(h, hash_bytes((const unsigned char *) k->group, k->glen));
	return h;
}

static int
delta_match(const void *key1, const void *key2, Size keysize)
{
	const DeltaKey *a = key1;
	const DeltaKey *b = key2;

	if (a->agg != b->agg || a->level != b->level || a->has_bucket != b->has_bucket ||
		(a->has_bucket && a->bucket != b->bucket) || a->isnull != b->isnull)
		return 1;
	if (a->isnull)
		return 0;
	if (a->glen != b->glen)
		return 1;
	return memcmp(a->group, b->group, a->glen);
}

/* Forget every pending entry */
static void
pending_reset(void)
{
	HASHCTL		ctl;

	/* lives in the transaction: freed with it whatever happens */
	if (pending_cxt == NULL)
	{
		pending_cxt = AllocSetContextCreate(TopTransactionContext,
											"evstream pending deltas",
											ALLOCSET_DEFAULT_SIZES);
		scratch_cxt = AllocSetContextCreate(pending_cxt,
											"evstream delta scratch",
											ALLOCSET_SMALL_SIZES);
	}
	else
	{
		MemoryContextReset(pending_cxt);
		scratch_cxt = AllocSetContextCreate(pending_cxt,
											"evstream delta scratch",
											ALLOCSET_SMALL_SIZES);
	}
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(DeltaKey);
	ctl.entrysize = sizeof(DeltaEntry);
	ctl.hash = delta_hash;
	ctl.match = delta_match;
	ctl.hcxt = pending_cxt;
	pending = hash_create("evstream pending deltas", 256, &ctl,
						  HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	layouts = NIL;
	pending_n = 0;
}

/* The aggregate's slot layout for this transaction's pending entries */
static EvsLayout *
evs_layout(EvsAggregate *a)
{
	ListCell   *lc;
	EvsLayout  *l;
	MemoryContext old;
	int			i;

	foreach(lc, layouts)
	{
		l = lfirst(lc);
		if (l->agg == a->id)
			return l;
	}
	old = MemoryContextSwitchTo(pending_cxt);
	l = palloc0(sizeof(EvsLayout));
	l->agg = a->id;
	l->bucketed = a->windows.bucket != NULL;
	l->nslots = a->nslots;
	l->slots = palloc0(sizeof(EvsSlot) * (a->nslots + 1));
	for (i = 0; i < a->nmeasures; i++)
	{
		EvsMeasure *m = &a->measures[i];
		EvsSlot    *s = &l->slots[m->slot];

		if (m->kind == EVS_M_COUNT)
		{
			s->kind = EVS_M_COUNT;
			s->type = INT8OID;
		}
		else
		{
			s->kind = m->kind == EVS_M_AVG ? EVS_M_SUM : m->kind;
			s->type = m->type;
			s->collation = m->collation;
			fmgr_info_copy(&s->fn, &m->fn, pending_cxt);
			if (m->kind == EVS_M_AVG)
			{
				l->slots[m->slot + 1].kind = EVS_M_COUNT;
				l->slots[m->slot + 1].type = INT8OID;
			}
		}
	}
	for (i = 0; i < l->nslots; i++)
	{
		EvsSlot    *s = &l->slots[i];
		Oid			sendfn;
		bool		varlena;

		get_typlenbyval(s->type, &s->typlen, &s->typbyval);
		getTypeBinaryOutputInfo(s->type, &sendfn, &varlena);
		fmgr_info_cxt(sendfn, &s->send, pending_cxt);
	}
	layouts = lappend(layouts, l);
	MemoryContextSwitchTo(old);
	return l;
}

/*
 * Fold a value into a state slot: an input value (one event's), or another
 * state of the same slot (is_state: a subtransaction's entry).  States live
 * in pending_cxt; by-reference results are computed in scratch memory and
 * copied, so an entry's memory does not grow with its rows.
 */
static void
evs_slot_add(EvsSlot *s, Datum *state, bool *snull, Datum v, bool vnull, bool is_state)
{
	Datum		r;
	MemoryContext old;

	if (s->kind == EVS_M_COUNT)
	{
		if (is_state)
			*state = Int64GetDatum(DatumGetInt64(*state) + DatumGetInt64(v));
		else if (!vnull)
			*state = Int64GetDatum(DatumGetInt64(*state) + 1);
		return;
	}
	if (vnull)
		return;
	if (*snull)
	{
		old = MemoryContextSwitchTo(pending_cxt);
		*state = datumCopy(v, s->typbyval, s->typlen);
		MemoryContextSwitchTo(old);
		*snull = false;
		return;
	}
	old = MemoryContextSwitchTo(s->typbyval ? CurrentMemoryContext : scratch_cxt);
	if (s->kind == EVS_M_SUM)
		r = FunctionCall2Coll(&s->fn, InvalidOid, *state, v);
	else
	{
		int32		c = DatumGetInt32(FunctionCall2Coll(&s->fn, s->collation, v, *state));

		if ((s->kind == EVS_M_MIN && c >= 0) || (s->kind == EVS_M_MAX && c <= 0))
		{
			MemoryContextSwitchTo(old);
			return;
		}
		r = v;
	}
	MemoryContextSwitchTo(old);
	if (s->typbyval)
		*state = r;
	else
	{
		Datum		prev = *state;

		old = MemoryContextSwitchTo(pending_cxt);
		*state = datumCopy(r, false, s->typlen);
		MemoryContextSwitchTo(old);
		pfree(DatumGetPointer(prev));
		MemoryContextReset(scratch_cxt);
	}
}

/* The pending entry of a key, made (with empty states) when missing */
static DeltaEntry *
evs_entry(DeltaKey *key, EvsLayout *l)
{
	bool		found;
	DeltaEntry *e = hash_search(pending, key, HASH_ENTER, &found);
	int			i;

	if (found)
		return e;
	/* the key pointed into the row: give the entry a copy of its own */
	if (!key->isnull)
	{
		char	   *g = MemoryContextAlloc(pending_cxt, key->glen + 1);

		memcpy(g, key->group, key->glen);
		g[key->glen] = '\0';
		e->key.group = g;
	}
	e->count = 0;
	e->layout = l;
	e->states = NULL;
	e->snulls = NULL;
	if (l->nslots == 0)
		return e;
	e->states = MemoryContextAlloc(pending_cxt, sizeof(Datum) * l->nslots);
	e->snulls = MemoryContextAlloc(pending_cxt, sizeof(bool) * l->nslots);
	for (i = 0; i < l->nslots; i++)
	{
		e->snulls[i] = l->slots[i].kind != EVS_M_COUNT;
		e->states[i] = Int64GetDatum(0);
	}
	return e;
}

/*
 * date_bin(stride, ts, 'epoch'), without forming ts - epoch: for times
 * near the end of the timestamp range that overflows (the remainders are
 * each less than stride apart from zero, so their difference cannot).
 */
static TimestampTz
evs_bin(TimestampTz ts, int64 stride)
{
	int64		rem = (ts % stride) - (EVS_UNIX_EPOCH_TS % stride);

	rem %= stride;
	if (rem < 0)
		rem += stride;
	return ts - rem;
}

/* Does the partition still have a topic's columns (names aside)? */
static void
evs_check_shape(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	static const Oid types[4] = {INT8OID, TEXTOID, JSONBOID, TIMESTAMPTZOID};
	int			i;

	if (desc->natts != 4)
		goto bad;
	for (i = 0; i < 4; i++)
		if (TupleDescAttr(desc, i)->attisdropped ||
			TupleDescAttr(desc, i)->atttypid != types[i])
			goto bad;
	return;
bad:
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("partition \"%s\" does not have the columns of an evstream topic",
					RelationGetRelationName(rel)),
			 errhint("Recreate the topic with evstream.create_topic().")));
}

/* Count one event (its measure inputs vals) in the entry of key */
static void
evs_count_in(DeltaKey *key, EvsLayout *l, EvsAggregate *a, Datum *vals, bool *vnulls)
{
	DeltaEntry *e = evs_entry(key, l);
	int			i;

	e->count++;
	for (i = 0; i < a->nmeasures; i++)
	{
		EvsMeasure *m = &a->measures[i];

		evs_slot_add(&l->slots[m->slot], &e->states[m->slot], &e->snulls[m->slot],
					 vals[i], vnulls[i], false);
		if (m->kind == EVS_M_AVG)
			evs_slot_add(&l->slots[m->slot + 1], &e->states[m->slot + 1],
						 &e->snulls[m->slot + 1], vals[i], vnulls[i], false);
	}
}

/* Count a batch of rows in one aggregate's pending entries */
static void
evs_accumulate_agg(EvsAggregate *a, TupleTableSlot **slots, int nslots, int level)
{
	EvsLayout  *l = evs_layout(a);
	Datum		vals[EVS_MAX_MEASURES];
	bool		vnulls[EVS_MAX_MEASURES];
	int			i;

	for (i = 0; i < nslots; i++)
	{
		TupleTableSlot *slot = slots[i];
		DeltaKey	key;
		bool		isnull;
		Datum		d;
		int			k;

		CHECK_FOR_INTERRUPTS();
		ResetExprContext(accum_econtext);
		accum_econtext->ecxt_scantuple = slot;
		d = ExecEvalExprSwitchContext(a->expr, accum_econtext, &isnull);
		key.agg = a->id;
		key.level = level;
		key.isnull = isnull;
		key.group = NULL;
		key.glen = 0;
		if (!isnull && a->key_out != NULL)
		{
			/* a value whose text depends on settings: under fixed ones */
			MemoryContext old = MemoryContextSwitchTo(accum_econtext->ecxt_per_tuple_memory);

			key.group = EvsFixedText(a->key_out, d);
			key.glen = strlen(key.group);
			MemoryContextSwitchTo(old);
		}
		else if (!isnull)
		{
			/* the text's bytes as they are (detoasted in per-row memory) */
			MemoryContext old = MemoryContextSwitchTo(accum_econtext->ecxt_per_tuple_memory);
			text	   *g = (text *) PG_DETOAST_DATUM_PACKED(d);

			MemoryContextSwitchTo(old);
			key.group = VARDATA_ANY(g);
			key.glen = VARSIZE_ANY_EXHDR(g);
		}
		if (key.glen > EVS_MAX_GROUP_KEY)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("group key of aggregate \"%s\" is too long (%d bytes)",
							get_rel_name(a->view), key.glen),
					 errdetail("Group keys are limited to %d bytes.", EVS_MAX_GROUP_KEY),
					 errhint("Group by a shorter expression, for example md5() of it.")));
		for (k = 0; k < a->nmeasures; k++)
			vals[k] = ExecEvalExprSwitchContext(a->measures[k].input, accum_econtext, &vnulls[k]);
		key.has_bucket = false;
		key.bucket = 0;
		if (a->windows.bucket == NULL)
			evs_count_in(&key, l, a, vals, vnulls);
		else
		{
			bool		tsnull;
			bool		cnull;
			Datum		created = slot_getattr(slot, 4, &cnull);
			TimestampTz ts;
			int64		late = 0;

			if (a->event_time)
				ts = DatumGetTimestampTz(ExecEvalExprSwitchContext(a->event_time, accum_econtext, &tsnull));
			else
				ts = DatumGetTimestampTz(slot_getattr(slot, 4, &tsnull));
			if (tsnull || TIMESTAMP_NOT_FINITE(ts))
				evs_count_in(&key, l, a, vals, vnulls);	/* window NULL */
			else
			{
				TimestampTz start = evs_bin(ts, a->windows.hop_usecs);
				int64		nwin = a->windows.bucket_usecs / a->windows.hop_usecs;
				int64		w;

				key.has_bucket = true;
				for (w = 0; w < nwin; w++)
				{
					TimestampTz s;
					TimestampTz deadline;

					if (pg_sub_s64_overflow(start, w * a->windows.hop_usecs, &s) ||
						!IS_VALID_TIMESTAMP(s))
						break;
					/* late: the window ended more than grace before created_at */
					if (a->event_time && !cnull &&
						!pg_add_s64_overflow(s, a->windows.bucket_usecs, &deadline) &&
						!pg_add_s64_overflow(deadline, a->windows.grace_usecs, &deadline) &&
						deadline < DatumGetTimestampTz(created))
					{
						late++;
						continue;
					}
					key.bucket = s;
					evs_count_in(&key, l, a, vals, vnulls);
				}
			}
			if (late > 0)
			{
				DeltaKey	lk;
				DeltaEntry *e;

				lk.agg = a->id;
				lk.level = level;
				lk.has_bucket = true;
				lk.bucket = EVS_LATE_BUCKET;
				lk.isnull = true;
				lk.group = NULL;
				lk.glen = 0;
				e = evs_entry(&lk, l);
				e->count += late;
			}
		}
		pending_n++;
	}
}

/*
 * Count stored rows in the pending deltas of their topic's aggregates.
 *
 * An expression that calls functions a user wrote runs as the aggregate's
 * owner under SECURITY_RESTRICTED_OPERATION with the safe search_path
 * (expressions of built-in functions only cannot run anyone's code, and
 * are evaluated as they are, at no cost).  Producing events from inside an
 * aggregate expression is refused: it would re-enter the counting.
 * only_agg (non-zero): count in that aggregate only (create_aggregate's
 * backfill).
 */
static void
evs_accumulate(Relation rel, TupleTableSlot **slots, int nslots, int32 only_agg)
{
	EvsTopic   *t;
	List	   *aggs;
	int			level;

	if (evs_restore_mode)
		return;
	if (accumulating)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("an aggregate's group_by expression must not produce events"),
				 errdetail("Relation \"%s\" received a row while an aggregate expression was being evaluated.",
						   RelationGetRelationName(rel))));
	t = EvsLookupTopic(RelationGetRelid(rel));
	if (!OidIsValid(t->topic))
		return;
	if (OidIsValid(evs_copy_restore) && t->topic == evs_copy_restore)
	{
		int			i;

		/*
		 * The owner's restore COPY into this topic: remember the lowest
		 * and highest ids, count nothing (the counts come with the
		 * catalog).  Rows that triggers send to other topics meanwhile
		 * count as usual.
		 */
		for (i = 0; i < nslots; i++)
		{
			bool		isnull;
			Datum		id = slot_getattr(slots[i], 1, &isnull);

			if (isnull)
				continue;
			if (DatumGetInt64(id) < 1)
				ereport(ERROR,
						(errcode(ERRCODE_CHECK_VIOLATION),
						 errmsg("COPY cannot give topic \"%s\" the event id " INT64_FORMAT,
								get_rel_name(t->topic), DatumGetInt64(id)),
						 errdetail("Event ids are positive.")));
			if (DatumGetInt64(id) > evs_copy_max_id)
				evs_copy_max_id = DatumGetInt64(id);
			if (evs_copy_min_id == 0 || DatumGetInt64(id) < evs_copy_min_id)
				evs_copy_min_id = DatumGetInt64(id);
		}
		return;
	}
	aggs = EvsTopicAggregates(t);
	if (aggs == NIL)
		return;
	evs_check_shape(rel);

	if (pending == NULL)
		pending_reset();
	if (accum_econtext == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		accum_econtext = CreateStandaloneExprContext();
		MemoryContextSwitchTo(old);
	}
	level = GetCurrentTransactionNestLevel();

	accumulating = true;
	EvsCachePin();
	PG_TRY();
	{
		ListCell   *lc;

		foreach(lc, aggs)
		{
			EvsAggregate *a = lfirst(lc);

			if (only_agg != 0 && a->id != only_agg)
				continue;
			if (a->as_owner)
			{
				EvsUserState st;

				EvsBecomeOwner(a->owner, &st);
				evs_accumulate_agg(a, slots, nslots, level);
				EvsRestoreUser(&st);
			}
			else
				evs_accumulate_agg(a, slots, nslots, level);
		}
	}
	PG_FINALLY();
	{
		accumulating = false;
		EvsCacheUnpin();
	}
	PG_END_TRY();

	/*
	 * Bounded memory: a statement with very many groups, or with large
	 * min/max states, writes as it goes.
	 */
	if (hash_get_num_entries(pending) >= EVS_PENDING_MAX ||
		MemoryContextMemAllocated(pending_cxt, true) > EVS_PENDING_BYTES)
		EvsFlushDeltas();
}

void
EvsAccumulate(Relation rel, TupleTableSlot **slots, int nslots)
{
	evs_accumulate(rel, slots, nslots, 0);
}

/* ------------------------------------------------------------ packing */

/*
 * A delta row's data: a version byte, then entries of
 *	int32 key length (-1: NULL) and the key's bytes,
 *	uint8 1 when a window start follows (else bucket_start NULL), int64 start,
 *	int64 count,
 *	int16 number of states, each int32 length (-1: NULL) and its bytes in
 *	the state type's binary send format.
 * Integers in network order (pq_sendint*).
 */
static void
evs_pack_entry(StringInfo buf, DeltaEntry *e, MemoryContext tmp)
{
	EvsLayout  *l = e->layout;
	int			i;

	if (e->key.isnull)
		pq_sendint32(buf, (uint32) -1);
	else
	{
		pq_sendint32(buf, e->key.glen);
		pq_sendbytes(buf, e->key.group, e->key.glen);
	}
	pq_sendbyte(buf, e->key.has_bucket ? 1 : 0);
	if (e->key.has_bucket)
		pq_sendint64(buf, e->key.bucket);
	pq_sendint64(buf, e->count);
	pq_sendint16(buf, l->nslots);
	for (i = 0; i < l->nslots; i++)
	{
		if (e->snulls[i])
			pq_sendint32(buf, (uint32) -1);
		else
		{
			MemoryContext old = MemoryContextSwitchTo(tmp);
			bytea	   *b = SendFunctionCall(&l->slots[i].send, e->states[i]);

			MemoryContextSwitchTo(old);
			pq_sendint32(buf, VARSIZE(b) - VARHDRSZ);
			pq_sendbytes(buf, VARDATA(b), VARSIZE(b) - VARHDRSZ);
		}
	}
}

/* Reading packed entries back (evstream._unpack); any input is checked */
typedef struct EvsUnpacked
{
	bool		knull;
	const char *key;
	int			keylen;
	bool		has_bucket;
	int64		bucket;
	int64		count;
	int			nstates;
} EvsUnpacked;

static void
evs_unpack_fail(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
			 errmsg("invalid evstream delta data")));
}

static int32
evs_get_int32(StringInfo in)
{
	if (in->cursor + 4 > in->len)
		evs_unpack_fail();
	return (int32) pq_getmsgint(in, 4);
}

static const char *
evs_get_bytes(StringInfo in, int32 len)
{
	if (len < 0 || len > in->len - in->cursor)
		evs_unpack_fail();
	return pq_getmsgbytes(in, len);
}

PG_FUNCTION_INFO_V1(evstream_unpack);

/*
 * evstream._unpack(data bytea) RETURNS TABLE (group_key text,
 *		bucket_start timestamptz, n bigint, m bytea[])
 */
Datum
evstream_unpack(PG_FUNCTION_ARGS)
{
	bytea	   *data = PG_GETARG_BYTEA_PP(0);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	StringInfoData in;

	InitMaterializedSRF(fcinfo, 0);
	in.data = VARDATA_ANY(data);
	in.len = VARSIZE_ANY_EXHDR(data);
	in.maxlen = in.len;
	in.cursor = 0;
	if (in.len < 1 || in.data[0] != EVS_PACK_VERSION)
		evs_unpack_fail();
	in.cursor = 1;
	while (in.cursor < in.len)
	{
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};
		int32		len = evs_get_int32(&in);
		int			nstates;
		Datum	   *states;
		bool	   *snulls;
		int			dims[1];
		int			lbs[1] = {1};
		int			i;

		CHECK_FOR_INTERRUPTS();
		if (len == -1)
			nulls[0] = true;
		else
		{
			const char *k = evs_get_bytes(&in, len);

			if (!pg_verifymbstr(k, len, true))
				evs_unpack_fail();
			values[0] = PointerGetDatum(cstring_to_text_with_len(k, len));
		}
		if (in.cursor + 1 > in.len)
			evs_unpack_fail();
		if (pq_getmsgbyte(&in))
		{
			int64		b;

			if (in.cursor + 8 > in.len)
				evs_unpack_fail();
			b = pq_getmsgint64(&in);
			values[1] = TimestampTzGetDatum(b);
		}
		else
			nulls[1] = true;
		if (in.cursor + 10 > in.len)
			evs_unpack_fail();
		values[2] = Int64GetDatum(pq_getmsgint64(&in));
		nstates = pq_getmsgint(&in, 2);
		if (nstates > 2 * EVS_MAX_MEASURES)
			evs_unpack_fail();
		states = palloc(sizeof(Datum) * (nstates + 1));
		snulls = palloc(sizeof(bool) * (nstates + 1));
		for (i = 0; i < nstates; i++)
		{
			int32		slen = evs_get_int32(&in);

			snulls[i] = slen == -1;
			if (!snulls[i])
			{
				const char *b = evs_get_bytes(&in, slen);
				bytea	   *v = palloc(slen + VARHDRSZ);

				SET_VARSIZE(v, slen + VARHDRSZ);
				memcpy(VARDATA(v), b, slen);
				states[i] = PointerGetDatum(v);
			}
		}
		dims[0] = nstates;
		values[3] = PointerGetDatum(construct_md_array(states, snulls, 1, dims, lbs,
													   BYTEAOID, -1, false, TYPALIGN_INT));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(evstream_recv);

/* evstream._recv(state bytea, type_of anyelement): a state as its type */
Datum
evstream_recv(PG_FUNCTION_ARGS)
{
	Oid			type = get_fn_expr_argtype(fcinfo->flinfo, 1);
	typedef struct
	{
		Oid			type;
		Oid			ioparam;
		FmgrInfo	recv;
	}			RecvCache;
	RecvCache  *c = fcinfo->flinfo->fn_extra;
	bytea	   *b;
	StringInfoData in;
	Datum		r;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	if (!OidIsValid(type))
		elog(ERROR, "could not determine the type of evstream._recv's result");
	if (c == NULL || c->type != type)
	{
		Oid			fn;

		c = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(RecvCache));
		getTypeBinaryInputInfo(type, &fn, &c->ioparam);
		fmgr_info_cxt(fn, &c->recv, fcinfo->flinfo->fn_mcxt);
		c->type = type;
		fcinfo->flinfo->fn_extra = c;
	}
	b = PG_GETARG_BYTEA_PP(0);
	in.data = palloc(VARSIZE_ANY_EXHDR(b) + 1);
	memcpy(in.data, VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b));
	in.len = VARSIZE_ANY_EXHDR(b);
	in.data[in.len] = '\0';
	in.maxlen = in.len + 1;
	in.cursor = 0;
	r = ReceiveFunctionCall(&c->recv, &in, c->ioparam, -1);
	if (in.cursor != in.len)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("incorrect binary data format in an evstream state")));
	PG_RETURN_DATUM(r);
}

PG_FUNCTION_INFO_V1(evstream_send);

/* evstream._send(v anyelement) RETURNS bytea: a state in send format */
Datum
evstream_send(PG_FUNCTION_ARGS)
{
	Oid			type = get_fn_expr_argtype(fcinfo->flinfo, 0);
	FmgrInfo   *fn = fcinfo->flinfo->fn_extra;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	if (fn == NULL)
	{
		Oid			sendfn;
		bool		varlena;

		getTypeBinaryOutputInfo(type, &sendfn, &varlena);
		fn = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(FmgrInfo));
		fmgr_info_cxt(sendfn, fn, fcinfo->flinfo->fn_mcxt);
		fcinfo->flinfo->fn_extra = fn;
	}
	PG_RETURN_BYTEA_P(SendFunctionCall(fn, PG_GETARG_DATUM(0)));
}

/* ------------------------------------------------------------ flushing */

/*
 * Append delta rows straight into evstream._delta with heap_insert and
 * index_insert: no parsing, planning or permission checks on the
 * producer's path (the caller was allowed to insert into the topic, and
 * the rows only describe that insert).  Columns by name: a database
 * updated from 0.1 keeps dropped columns in the table.
 */
static void
evs_insert_delta_rows(int32 *aggs, bytea **datas, int n)
{
	Relation	rel;
	TupleDesc	desc;
	List	   *indexes;
	ListCell   *lc;
	int			nidx = 0;
	Relation   *irels;
	IndexInfo **iinfos;
	int			i;
	int			att_agg = 0;
	int			att_data = 0;
	Datum	   *values;
	bool	   *nulls;

	rel = table_open(EvsCatalogRelid(EVS_REL_DELTA), RowExclusiveLock);
	desc = RelationGetDescr(rel);
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		if (strcmp(NameStr(att->attname), "agg") == 0)
			att_agg = i + 1;
		else if (strcmp(NameStr(att->attname), "data") == 0)
			att_data = i + 1;
	}
	if (att_agg == 0 || att_data == 0)
		elog(ERROR, "evstream._delta lacks its columns");
	values = palloc0(sizeof(Datum) * desc->natts);
	nulls = palloc(sizeof(bool) * desc->natts);
	memset(nulls, true, sizeof(bool) * desc->natts);
	nulls[att_agg - 1] = nulls[att_data - 1] = false;

	indexes = RelationGetIndexList(rel);
	irels = palloc(sizeof(Relation) * (list_length(indexes) + 1));
	iinfos = palloc(sizeof(IndexInfo *) * (list_length(indexes) + 1));
	foreach(lc, indexes)
	{
		irels[nidx] = index_open(lfirst_oid(lc), RowExclusiveLock);
		iinfos[nidx] = BuildIndexInfo(irels[nidx]);
		nidx++;
	}

	for (i = 0; i < n; i++)
	{
		HeapTuple	tup;
		int			k;

		values[att_agg - 1] = Int32GetDatum(aggs[i]);
		values[att_data - 1] = PointerGetDatum(datas[i]);
		tup = heap_form_tuple(desc, values, nulls);
		simple_heap_insert(rel, tup);
		for (k = 0; k < nidx; k++)
		{
			Datum		ivalues[INDEX_MAX_KEYS];
			bool		inulls[INDEX_MAX_KEYS];
			int			a;

			for (a = 0; a < iinfos[k]->ii_NumIndexAttrs; a++)
			{
				AttrNumber	att = iinfos[k]->ii_IndexAttrNumbers[a];

				ivalues[a] = values[att - 1];
				inulls[a] = nulls[att - 1];
			}
			index_insert(irels[k], ivalues, inulls, &tup->t_self, rel,
						 UNIQUE_CHECK_NO, false, iinfos[k]);
		}
		heap_freetuple(tup);
	}
	for (i = 0; i < nidx; i++)
		index_close(irels[i], RowExclusiveLock);
	table_close(rel, RowExclusiveLock);
}

static int
evs_cmp_entry_agg(const void *a, const void *b)
{
	int32		x = (*(DeltaEntry *const *) a)->key.agg;
	int32		y = (*(DeltaEntry *const *) b)->key.agg;

	return (x > y) - (x < y);
}

/*
 * Write the pending entries of the current nesting level (and deeper) as
 * delta rows, packed per aggregate.  Entries of outer levels belong to
 * statements still running in an enclosing subtransaction: written here,
 * inside a subtransaction that may roll back, they would be lost with it
 * while their events stay, so they wait for their own level.
 */
void
EvsFlushDeltas(void)
{
	HASH_SEQ_STATUS seq;
	DeltaEntry *e;
	DeltaEntry **mine;
	int32	   *aggs;
	bytea	  **datas;
	int			nrows = 0;
	int			n = 0;
	int			i;
	int			level = GetCurrentTransactionNestLevel();
	MemoryContext tmp;
	MemoryContext old;
	StringInfoData buf;

	if (pending == NULL || hash_get_num_entries(pending) == 0)
		return;
	tmp = AllocSetContextCreate(CurrentMemoryContext, "evstream delta flush",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(tmp);
	mine = palloc(sizeof(DeltaEntry *) * (hash_get_num_entries(pending) + 1));
	hash_seq_init(&seq, pending);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->key.level >= level && e->count != 0)
			mine[n++] = e;
	if (n == 0)
	{
		MemoryContextSwitchTo(old);
		MemoryContextDelete(tmp);
		return;
	}
	qsort(mine, n, sizeof(DeltaEntry *), evs_cmp_entry_agg);
	aggs = palloc(sizeof(int32) * n);
	datas = palloc(sizeof(bytea *) * n);
	initStringInfo(&buf);
	for (i = 0; i < n; i++)
	{
		if (buf.len == 0)
		{
			appendStringInfoSpaces(&buf, VARHDRSZ);
			pq_sendbyte(&buf, EVS_PACK_VERSION);
		}
		evs_pack_entry(&buf, mine[i], tmp);
		if (i == n - 1 || buf.len >= EVS_CHUNK_BYTES ||
			mine[i + 1]->key.agg != mine[i]->key.agg)
		{
			bytea	   *b = palloc(buf.len);

			memcpy(b, buf.data, buf.len);
			SET_VARSIZE(b, buf.len);
			aggs[nrows] = mine[i]->key.agg;
			datas[nrows++] = b;
			resetStringInfo(&buf);
		}
	}
	MemoryContextSwitchTo(old);
	evs_insert_delta_rows(aggs, datas, nrows);
	if (n == hash_get_num_entries(pending) &&
		(n > 64 || MemoryContextMemAllocated(pending_cxt, true) > 1024 * 1024))
		pending_reset();		/* all written, many: start afresh */
	else
	{
		/* keys and states of removed entries stay until a reset */
		for (i = 0; i < n; i++)
			hash_search(pending, &mine[i]->key, HASH_REMOVE, NULL);
	}
	MemoryContextDelete(tmp);

	/*
	 * The worker folds soon whatever aggregate wrote: a read of the view
	 * costs time in proportion to the entries not folded yet, so not only
	 * aggregates that notify or publish should be folded every 100-250 ms.
	 */
	EvsMarkDeltasCommitted();
}

static void
evs_executor_finish(QueryDesc *queryDesc)
{
	if (prev_ExecutorFinish)
		prev_ExecutorFinish(queryDesc);
	else
		standard_ExecutorFinish(queryDesc);
	if (pending_n > 0)
		EvsFlushDeltas();
}

/* PRE_COMMIT / PRE_PREPARE (xact.c): write what is still pending */
void
EvsCountsPreCommit(void)
{
	bool		pushed = false;

	if (pending == NULL || hash_get_num_entries(pending) == 0)
		return;
	if (!ActiveSnapshotSet())
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		pushed = true;
	}
	EvsFlushDeltas();
	if (pushed)
		PopActiveSnapshot();
}

/* COMMIT / ABORT / PREPARE (xact.c): the context went with the transaction */
void
EvsCountsAtEnd(void)
{
	pending = NULL;
	pending_cxt = NULL;
	scratch_cxt = NULL;
	layouts = NIL;
	pending_n = 0;
	accumulating = false;
}

/* Subtransaction end (xact.c): drop or hand over the entries of its level */
void
EvsCountsAtSubXactEnd(bool commit)
{
	HASH_SEQ_STATUS seq;
	DeltaEntry *e;
	int			level;
	List	   *moved = NIL;
	ListCell   *lc;

	if (pending == NULL || hash_get_num_entries(pending) == 0)
		return;
	level = GetCurrentTransactionNestLevel();

	hash_seq_init(&seq, pending);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (e->key.level < level)
			continue;
		if (commit)
		{
			DeltaEntry *copy = palloc(sizeof(DeltaEntry));

			*copy = *e;
			moved = lappend(moved, copy);
		}
		hash_search(pending, &e->key, HASH_REMOVE, NULL);
	}
	foreach(lc, moved)
	{
		DeltaEntry *m = lfirst(lc);
		EvsLayout  *l = m->layout;
		int			i;

		m->key.level = level - 1;
		e = evs_entry(&m->key, l);
		e->count += m->count;
		for (i = 0; i < l->nslots; i++)
			evs_slot_add(&l->slots[i], &e->states[i], &e->snulls[i],
						 m->states[i], m->snulls[i], true);
	}
	list_free_deep(moved);
	if (hash_get_num_entries(pending) == 0)
		pending_n = 0;
}

void
EvsAggregatesInit(void)
{
	prev_ExecutorFinish = ExecutorFinish_hook;
	ExecutorFinish_hook = evs_executor_finish;
}

/* ---------------------------------------------------------------- SQL text */

/*
 * An aggregate's definition as the view, the merge and the final results
 * need it (built from the arguments at creation, from the catalog row in
 * the merge).  The SQL built from it is fixed text over evstream's own
 * tables, with every name and operator schema-qualified.
 */
typedef struct EvsAggDef
{
	int32		id;
	Oid			view;
	Oid			output_topic;
	bool		notify;
	EvsWindows	w;				/* w.bucket NULL: not windowed */
	bool		final;			/* emit => 'final' */
	bool		has_retention;
	int64		retention_usecs;
	bool		has_finalized;
	TimestampTz finalized_upto; /* windows ending before it were emitted */
	int			nmeasures;
	EvsMeasureKind kinds[EVS_MAX_MEASURES];
	char	   *names[EVS_MAX_MEASURES];
	Oid			types[EVS_MAX_MEASURES];	/* input/state type (avg: the sum's) */
	Oid			colls[EVS_MAX_MEASURES];
	int			changed;		/* out of the merge */
	bool		quiet;			/* merge: no notifications, no events */
} EvsAggDef;

/*
 * avg's result type for its sum's state type: the sum of smallint/integer
 * inputs is kept as bigint (as PostgreSQL's avg does), the average is
 * numeric; of real/double precision, double precision.
 */
static Oid
evs_avg_type(Oid sumtype)
{
	return sumtype == FLOAT8OID ? FLOAT8OID : NUMERICOID;
}

/* evstream._recv(<elem>, NULL::type) [COLLATE coll] */
static void
evs_append_recv(StringInfo buf, const char *alias, int slot, Oid type, Oid coll)
{
	appendStringInfo(buf, "evstream._recv(%s.m[%d], NULL::%s)", alias, slot + 1,
					 format_type_be_qualified(type));
	if (OidIsValid(coll) && coll != DEFAULT_COLLATION_OID)
		appendStringInfo(buf, " COLLATE %s", generate_collation_name(coll));
}

/* Each measure's final value over state columns of alias (one row) */
static void
evs_append_final(StringInfo buf, EvsAggDef *d, int i, int slot, const char *alias)
{
	if (d->kinds[i] == EVS_M_AVG)
	{
		const char *r = format_type_be_qualified(evs_avg_type(d->types[i]));

		appendStringInfoChar(buf, '(');
		evs_append_recv(buf, alias, slot, d->types[i], InvalidOid);
		appendStringInfo(buf, "::%s OPERATOR(pg_catalog./) NULLIF(", r);
		evs_append_recv(buf, alias, slot + 1, INT8OID, InvalidOid);
		appendStringInfo(buf, ", 0::pg_catalog.int8)::%s)", r);
	}
	else
		evs_append_recv(buf, alias, slot, d->kinds[i] == EVS_M_COUNT ? INT8OID : d->types[i],
						d->colls[i]);
}

/* jsonb_build_object('name', value, ...) of the measures of alias's row */
static void
evs_append_values(StringInfo buf, EvsAggDef *d, const char *alias)
{
	int			i;
	int			slot = 0;

	if (d->nmeasures == 0)
	{
		appendStringInfoString(buf, "'{}'::pg_catalog.jsonb");
		return;
	}
	appendStringInfoString(buf, "pg_catalog.jsonb_build_object(");
	for (i = 0; i < d->nmeasures; i++)
	{
		/*
		 * jsonb_build_object converts a value of a non-built-in type through
		 * a cast to json if one exists, and an enum's owner may create one:
		 * an enum goes in as its output function's text (what jsonb makes
		 * of it without a cast), so the merge runs no user code.
		 */
		bool		as_text = d->kinds[i] != EVS_M_AVG && d->kinds[i] != EVS_M_COUNT &&
			type_is_enum(d->types[i]);

		appendStringInfo(buf, "%s%s, %s", i > 0 ? ", " : "", quote_literal_cstr(d->names[i]),
						 as_text ? "pg_catalog.textin(pg_catalog.enum_out(" : "");
		evs_append_final(buf, d, i, slot, alias);
		if (as_text)
			appendStringInfoString(buf, "))");
		slot += d->kinds[i] == EVS_M_AVG ? 2 : 1;
	}
	appendStringInfoChar(buf, ')');
}

/*
 * One state slot combined over many rows of alias (GROUP BY): sum for
 * counts and sums, min/max; as_final: the view's column (no _send).
 */
static void
evs_append_slot_agg(StringInfo buf, EvsMeasureKind kind, Oid type, Oid coll,
					const char *alias, int slot)
{
	if (kind == EVS_M_COUNT || kind == EVS_M_SUM)
	{
		appendStringInfoString(buf, "pg_catalog.sum(");
		evs_append_recv(buf, alias, slot, type, InvalidOid);
		appendStringInfo(buf, ")::%s", format_type_be_qualified(type));
	}
	else
	{
		appendStringInfo(buf, "pg_catalog.%s(", kind == EVS_M_MIN ? "min" : "max");
		evs_append_recv(buf, alias, slot, type, coll);
		appendStringInfoChar(buf, ')');
	}
}

/* The slots of a definition: kind (count/sum/min/max), type, collation */
static int
evs_def_slots(EvsAggDef *d, EvsMeasureKind *kinds, Oid *types, Oid *colls)
{
	int			i;
	int			n = 0;

	for (i = 0; i < d->nmeasures; i++)
	{
		kinds[n] = d->kinds[i] == EVS_M_AVG ? EVS_M_SUM : d->kinds[i];
		types[n] = d->kinds[i] == EVS_M_COUNT ? INT8OID : d->types[i];
		colls[n++] = d->colls[i];
		if (d->kinds[i] == EVS_M_AVG)
		{
			kinds[n] = EVS_M_COUNT;
			types[n] = INT8OID;
			colls[n++] = InvalidOid;
		}
	}
	return n;
}

#define EVS_NOT_LATE(alias) \
	"(" alias ".bucket_start IS NULL OR " alias ".bucket_start OPERATOR(pg_catalog.<>) '-infinity'::pg_catalog.timestamptz)"

/* The aggregate's view: merged values plus pending deltas, per group */
static char *
evs_view_sql(EvsAggDef *d, const char *qview)
{
	StringInfoData sql;
	int			i;
	int			slot = 0;

	initStringInfo(&sql);
	appendStringInfo(&sql, "CREATE VIEW %s AS SELECT s.group_key, %spg_catalog.sum(s.n)::pg_catalog.int8 AS count",
					 qview, d->w.bucket ? "s.bucket_start, " : "");
	for (i = 0; i < d->nmeasures; i++)
	{
		appendStringInfoString(&sql, ", ");
		if (d->kinds[i] == EVS_M_AVG)
		{
			const char *r = format_type_be_qualified(evs_avg_type(d->types[i]));

			appendStringInfoString(&sql, "((");
			evs_append_slot_agg(&sql, EVS_M_SUM, d->types[i], InvalidOid, "s", slot);
			appendStringInfo(&sql, ")::%s OPERATOR(pg_catalog./) NULLIF(", r);
			evs_append_slot_agg(&sql, EVS_M_COUNT, INT8OID, InvalidOid, "s", slot + 1);
			appendStringInfo(&sql, ", 0::pg_catalog.int8)::%s)", r);
		}
		else
			evs_append_slot_agg(&sql, d->kinds[i], d->kinds[i] == EVS_M_COUNT ? INT8OID : d->types[i],
								d->colls[i], "s", slot);
		appendStringInfo(&sql, " AS %s", quote_identifier(d->names[i]));
		slot += d->kinds[i] == EVS_M_AVG ? 2 : 1;
	}
	appendStringInfo(&sql,
					 " FROM (SELECT c.group_key, c.bucket_start, c.count AS n, c.m FROM evstream._count c "
					 "WHERE c.agg OPERATOR(pg_catalog.=) %d AND " EVS_NOT_LATE("c")
					 " UNION ALL SELECT u.group_key, u.bucket_start, u.n, u.m FROM evstream._delta d "
					 "CROSS JOIN LATERAL evstream._unpack(d.data) u "
					 "WHERE d.agg OPERATOR(pg_catalog.=) %d AND " EVS_NOT_LATE("u") ") s "
					 "GROUP BY s.group_key%s",
					 d->id, d->id, d->w.bucket ? ", s.bucket_start" : "");
	return sql.data;
}

/*
 * The merge of one aggregate ($1): committed deltas deleted and folded into
 * _count, returning each changed group's (group_key, bucket_start, count,
 * measures jsonb), late events excluded.
 */
static char *
evs_merge_sql(EvsAggDef *d)
{
	StringInfoData sql;
	EvsMeasureKind kinds[2 * EVS_MAX_MEASURES];
	Oid			types[2 * EVS_MAX_MEASURES];
	Oid			colls[2 * EVS_MAX_MEASURES];
	int			n = evs_def_slots(d, kinds, types, colls);
	int			k;

	initStringInfo(&sql);
	appendStringInfoString(&sql,
						   "WITH d AS (DELETE FROM evstream._delta x WHERE x.ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
						   "    SELECT y.ctid FROM (SELECT z.ctid, pg_catalog.sum(pg_catalog.pg_column_size(z.data)) "
						   "      OVER (ORDER BY z.ctid ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before "
						   "      FROM evstream._delta z WHERE z.agg OPERATOR(pg_catalog.=) $1) y "
						   "    WHERE COALESCE(y.before, 0) OPERATOR(pg_catalog.<) " CppAsString2(EVS_MERGE_BATCH_BYTES) ")) "
						   "  RETURNING x.data), "
						   "e AS (SELECT u.group_key, u.bucket_start, u.n, u.m FROM d "
						   "  CROSS JOIN LATERAL evstream._unpack(d.data) u), "
						   "s AS (SELECT e.group_key, e.bucket_start, pg_catalog.sum(e.n)::pg_catalog.int8 AS n, ");
	if (n == 0)
		appendStringInfoString(&sql, "'{}'::pg_catalog.bytea[]");
	else
	{
		appendStringInfoString(&sql, "ARRAY[");
		for (k = 0; k < n; k++)
		{
			appendStringInfoString(&sql, k > 0 ? ", evstream._send(" : "evstream._send(");
			evs_append_slot_agg(&sql, kinds[k], types[k], colls[k], "e", k);
			appendStringInfoChar(&sql, ')');
		}
		appendStringInfoString(&sql, "]::pg_catalog.bytea[]");
	}
	appendStringInfoString(&sql,
						   " AS m FROM e GROUP BY 1, 2), "
						   "u AS (INSERT INTO evstream._count AS c (agg, group_key, bucket_start, count, m) "
						   "  SELECT $1, s.group_key, s.bucket_start, s.n, s.m FROM s "
						   "  ON CONFLICT ON CONSTRAINT _count_key DO UPDATE "
						   "  SET count = c.count OPERATOR(pg_catalog.+) excluded.count, m = ");
	if (n == 0)
		appendStringInfoString(&sql, "c.m");
	else
	{
		appendStringInfoString(&sql, "ARRAY[");
		for (k = 0; k < n; k++)
		{
			StringInfoData a;
			StringInfoData b;

			initStringInfo(&a);
			initStringInfo(&b);
			evs_append_recv(&a, "c", k, types[k], colls[k]);
			evs_append_recv(&b, "excluded", k, types[k], InvalidOid);
			appendStringInfoString(&sql, k > 0 ? ", evstream._send(" : "evstream._send(");
			if (kinds[k] == EVS_M_COUNT)
				appendStringInfo(&sql, "%s OPERATOR(pg_catalog.+) %s", a.data, b.data);
			else if (kinds[k] == EVS_M_SUM)
				appendStringInfo(&sql, "COALESCE(%s OPERATOR(pg_catalog.+) %s, %s, %s)",
								 a.data, b.data, a.data, b.data);
			else
				appendStringInfo(&sql, "%s(%s, %s)", kinds[k] == EVS_M_MIN ? "LEAST" : "GREATEST",
								 a.data, b.data);
			appendStringInfoChar(&sql, ')');
		}
		appendStringInfoString(&sql, "]::pg_catalog.bytea[]");
	}
	appendStringInfoString(&sql,
						   "  RETURNING c.group_key, c.bucket_start, c.count, c.m) "
						   "SELECT u.group_key, u.bucket_start, u.count, ");
	evs_append_values(&sql, d, "u");
	appendStringInfoString(&sql,
						   ", (SELECT pg_catalog.sum(pg_catalog.pg_column_size(d.data)) FROM d) "
						   "OPERATOR(pg_catalog.>=) " CppAsString2(EVS_MERGE_BATCH_BYTES) " AS more"
						   " FROM u WHERE " EVS_NOT_LATE("u") " ORDER BY 1, 2");
	return sql.data;
}

/* ---------------------------------------------------------------- DDL */

/* Errors while parsing an expression: point into it, not into the caller's query */
typedef struct EvsExprContext
{
	const char *what;
	const char *text;
} EvsExprContext;

static void
evs_expr_errcontext(void *arg)
{
	EvsExprContext *c = arg;
	int			pos = geterrposition();

	if (pos > 0)
	{
		errposition(0);
		internalerrposition(pos);
		internalerrquery(c->text);
	}
	errcontext("%s expression \"%s\"", c->what, c->text);
}

/* Raw-tree walker: is there a "*" (as in "*" or "t.*") anywhere? */
static bool
evs_has_star(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, ColumnRef) && IsA(llast(((ColumnRef *) node)->fields), A_Star))
		return true;
	return raw_expression_tree_walker(node, evs_has_star, context);
}

/* Does the expression read a whole row or a system column? */
static bool
evs_has_special_var(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, Var) && ((Var *) node)->varattno <= 0)
		return true;
	return expression_tree_walker(node, evs_has_special_var, context);
}

/* Parse text as a SELECT target list (a plpgsql expression); NULL if not */
static SelectStmt *
evs_parse_targets(const char *text)
{
	List	   *raw = raw_parser(text, RAW_PARSE_PLPGSQL_EXPR);
	RawStmt    *rs = list_length(raw) == 1 ? linitial_node(RawStmt, raw) : NULL;
	SelectStmt *sel = (rs && IsA(rs->stmt, SelectStmt)) ? (SelectStmt *) rs->stmt : NULL;

	if (sel == NULL || sel->fromClause ||
		sel->whereClause || sel->groupClause || sel->havingClause ||
		sel->windowClause || sel->sortClause || sel->limitCount ||
		sel->limitOffset || sel->lockingClause || sel->distinctClause ||
		sel->withClause || sel->intoClause || sel->valuesLists ||
		sel->op != SETOP_NONE)
		return NULL;
	return sel;
}

/*
 * Check one expression over the topic's columns (raw tree val) and return
 * it analysed: no "*", aggregates, window functions, subqueries, sets,
 * whole rows or system columns; immutable (stable allowed with
 * allow_stable).  what names it in errors.
 */
static Node *
evs_check_expr(Relation rel, Node *val, const char *what, const char *text,
			   bool allow_stable)
{
	ParseState *pstate;
	ParseNamespaceItem *nsitem;
	Node	   *expr;

	if (evs_has_star(val, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not use \"*\"", what),
				 errhint("Use an expression over id, key, payload and created_at, for example payload->>'word'.")));
	pstate = make_parsestate(NULL);
	pstate->p_sourcetext = NULL;	/* positions come from the callback */
	nsitem = addRangeTableEntryForRelation(pstate, rel, AccessShareLock,
										   NULL, false, true);
	addNSItemToQuery(pstate, nsitem, false, true, true);
	expr = transformExpr(pstate, val, EXPR_KIND_SELECT_TARGET);
	assign_expr_collations(pstate, expr);
	if (pstate->p_hasAggs || pstate->p_hasWindowFuncs)
		ereport(ERROR,
				(errcode(ERRCODE_GROUPING_ERROR),
				 errmsg("%s must not contain aggregate or window functions", what)));
	if (evs_has_special_var(expr, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must use only the columns id, key, payload and created_at", what),
				 errdetail("Whole-row references and system columns are not allowed.")));
	if (checkExprHasSubLink(expr))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s must not contain subqueries", what)));
	if (expression_returns_set(expr))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s must not return a set", what)));
	if (allow_stable ? contain_volatile_functions(expr) : contain_mutable_functions(expr))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("%s must %s: \"%s\"", what, allow_stable ? "not be volatile" : "be immutable", text),
				 errdetail("Counts must not change when the same event is evaluated again."),
				 allow_stable ? errhint("Functions used in %s must be marked STABLE or IMMUTABLE.", what) :
				 errhint("Functions used in %s must be marked IMMUTABLE.", what)));
	return expr;
}

/* Coerce an analysed expression, or fail naming what */
static Node *
evs_coerce(Node *expr, Oid target, const char *what)
{
	Node	   *r = coerce_to_target_type(NULL, expr, exprType(expr), target, -1,
										  COERCION_EXPLICIT, COERCE_EXPLICIT_CAST, -1);

	if (r == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("%s cannot be converted to %s", what, format_type_be(target))));
	return r;
}

/*
 * Parse and check a one-expression parameter (group_by, event_time) and
 * return it analysed; errors point into its text.
 */
static Node *
evs_check_one_expr(Relation rel, const char *text, const char *what, const char *hint,
				   bool allow_stable)
{
	ErrorContextCallback errcallback;
	EvsExprContext ctx = {what, text};
	SelectStmt *sel;
	Node	   *expr;

	errcallback.callback = evs_expr_errcontext;
	errcallback.arg = &ctx;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	sel = evs_parse_targets(text);
	if (sel == NULL || list_length(sel->targetList) != 1 ||
		((ResTarget *) linitial(sel->targetList))->name != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a single SQL expression, not \"%s\"", what, text),
				 errhint("%s", hint)));
	expr = evs_check_expr(rel, ((ResTarget *) linitial(sel->targetList))->val,
						  what, text, allow_stable);
	error_context_stack = errcallback.previous;
	return expr;
}

/*
 * Does a type's text depend on session settings (DateStyle, TimeZone,
 * IntervalStyle, extra_float_digits, bytea_output, lc_monetary)?  Rows,
 * and types not built in, are assumed to.
 */
static bool
evs_text_needs_settings(Oid type)
{
	Oid			elem;

	type = getBaseType(type);
	elem = get_element_type(type);
	if (OidIsValid(elem))
		return evs_text_needs_settings(elem);
	if (type_is_range(type))
		return evs_text_needs_settings(get_range_subtype(type));
	switch (TypeCategory(type))
	{
		case TYPCATEGORY_DATETIME:
		case TYPCATEGORY_TIMESPAN:
		case TYPCATEGORY_COMPOSITE:
			return true;
		default:
			break;
	}
	return type == FLOAT4OID || type == FLOAT8OID || type == BYTEAOID ||
		type == CASHOID || type == RECORDOID || get_typtype(type) == TYPTYPE_COMPOSITE ||
		(type >= FirstNormalObjectId && get_typtype(type) != TYPTYPE_ENUM);
}

static bool
evs_inner_settings_text(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, CoerceViaIO) &&
		evs_text_needs_settings(exprType((Node *) ((CoerceViaIO *) node)->arg)))
		return true;
	return expression_tree_walker(node, evs_inner_settings_text, context);
}

/*
 * group_by: checked, text-valued, deparsed.  Its final conversion to text
 * runs under fixed settings (catalog.c evs_compile_expr); one inside the
 * expression would run under each producer's, so it is refused.
 */
static char *
evs_check_group_by(Relation rel, const char *group_by)
{
	Node	   *expr = evs_check_one_expr(rel, group_by, "group_by",
										  "Use an expression over id, key, payload and created_at, for example payload->>'word'.",
										  false);
	Node	   *inner = expr;

	if (IsA(inner, CoerceViaIO) && ((CoerceViaIO *) inner)->resulttype == TEXTOID)
		inner = (Node *) ((CoerceViaIO *) inner)->arg;
	if (evs_inner_settings_text(inner, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("group_by \"%s\" converts a value to text inside the expression", group_by),
				 errdetail("That text depends on the producing session's DateStyle, TimeZone, extra_float_digits or bytea_output, so one value would make several groups."),
				 errhint("Convert to text only at the end (the group is the expression's value as text, converted the same way in every session).")));
	return EvsDeparseExpr(rel, evs_coerce(expr, TEXTOID, "group_by"));
}

/* event_time: checked (timestamptz-valued, not volatile), deparsed */
static char *
evs_check_event_time(Relation rel, const char *event_time)
{
	Node	   *expr = evs_check_one_expr(rel, event_time, "event_time",
										  "For example $$(payload->>'ts')::timestamptz$$.", true);

	if (getBaseType(exprType(expr)) != TIMESTAMPTZOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("event_time must be of type timestamp with time zone, not %s",
						format_type_be(exprType(expr))),
				 errhint("Cast it, for example $$(payload->>'ts')::timestamptz$$.")));
	return EvsDeparseExpr(rel, evs_coerce(expr, TIMESTAMPTZOID, "event_time"));
}

/* The state type of sum/avg of a type, or InvalidOid */
static Oid
evs_sum_type(EvsMeasureKind kind, Oid type)
{
	switch (type)
	{
		case INT2OID:
		case INT4OID:
			return INT8OID;
		case INT8OID:
		case NUMERICOID:
			return NUMERICOID;
		case FLOAT4OID:
			return kind == EVS_M_SUM ? FLOAT4OID : FLOAT8OID;
		case FLOAT8OID:
			return FLOAT8OID;
		default:
			return InvalidOid;
	}
}

/* Can min/max keep states of this type (see the file header)? */
static bool
evs_orderable_state_type(Oid type)
{
	char		typtype = get_typtype(type);
	TypeCacheEntry *tc;
	Oid			fn;
	Oid			ioparam;
	bool		varlena;

	if ((typtype != TYPTYPE_BASE && typtype != TYPTYPE_ENUM) || type_is_array(type) ||
		type == UNKNOWNOID || get_typisdefined(type) == false)
		return false;
	tc = lookup_type_cache(type, TYPECACHE_CMP_PROC);
	if (!OidIsValid(tc->cmp_proc))
		return false;
	/* the view combines states with SQL's min/max (jsonb has none) */
	if (typtype != TYPTYPE_ENUM && !IsBinaryCoercible(type, TEXTOID) &&
		!OidIsValid(LookupFuncName(list_make2(makeString("pg_catalog"), makeString("min")),
								   1, &type, true)))
		return false;
	getTypeBinaryInputInfo(type, &fn, &ioparam);
	getTypeBinaryOutputInfo(type, &fn, &varlena);
	return true;
}

/*
 * Parse and check measures into d; the canonical text (deparsed) is
 * returned, exprs gets each input expression's text (coerced to its state
 * type).
 */
static char *
evs_check_measures(Relation rel, const char *measures, EvsAggDef *d, char **exprs)
{
	ErrorContextCallback errcallback;
	EvsExprContext ctx = {"measures", measures};
	SelectStmt *sel;
	ListCell   *lc;
	StringInfoData canon;
	int			i = 0;

	errcallback.callback = evs_expr_errcontext;
	errcallback.arg = &ctx;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	sel = evs_parse_targets(measures);
	if (sel == NULL || sel->targetList == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("measures must be a comma list of measures, not \"%s\"", measures),
				 errhint("For example 'sum((payload->>''amount'')::numeric) AS revenue, max((payload->>''amount'')::numeric) AS biggest'.")));
	if (list_length(sel->targetList) > EVS_MAX_MEASURES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("an aggregate can have at most %d measures", EVS_MAX_MEASURES)));
	initStringInfo(&canon);
	foreach(lc, sel->targetList)
	{
		ResTarget  *rt = lfirst(lc);
		FuncCall   *fc = IsA(rt->val, FuncCall) ? (FuncCall *) rt->val : NULL;
		char	   *fname = NULL;
		EvsMeasureKind kind;
		Node	   *expr;
		Oid			type;
		int			j;
		char	   *written;

		if (fc != NULL)
		{
			char	   *schema;

			DeconstructQualifiedName(fc->funcname, &schema, &fname);
			if (schema != NULL && strcmp(schema, "pg_catalog") != 0)
				fname = NULL;
		}
		kind = fname ? EvsMeasureKindOf(fname) : (EvsMeasureKind) -1;
		if (fc == NULL || (int) kind < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("measure %d must be sum(), min(), max(), avg() or count() of an expression", i + 1),
					 errhint("For example 'sum((payload->>''amount'')::numeric) AS revenue'.")));
		if (fc->agg_star || fc->agg_distinct || fc->agg_filter || fc->agg_order ||
			fc->over || fc->func_variadic || list_length(fc->args) != 1 ||
			fc->agg_within_group)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("measure %s() must have exactly one argument, without *, DISTINCT, ORDER BY, FILTER or OVER",
							fname),
					 errhint("The count of events is the aggregate's count column; count(expr) counts non-NULL values.")));
		if (rt->name == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("measure %d (%s) needs a name", i + 1, fname),
					 errhint("Write it as %s(...) AS name.", fname)));
		if (strcmp(rt->name, "group_key") == 0 || strcmp(rt->name, "bucket_start") == 0 ||
			strcmp(rt->name, "count") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_COLUMN),
					 errmsg("measure name \"%s\" is taken by a column of the aggregate", rt->name)));
		for (j = 0; j < i; j++)
			if (strcmp(d->names[j], rt->name) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_DUPLICATE_COLUMN),
						 errmsg("measure name \"%s\" is used twice", rt->name)));
		expr = evs_check_expr(rel, linitial(fc->args), "measure", measures, false);
		type = exprType(expr);
		if (type == UNKNOWNOID)
		{
			expr = evs_coerce(expr, TEXTOID, "measure");
			type = TEXTOID;
		}
		type = getBaseType(type);
		if (kind == EVS_M_SUM || kind == EVS_M_AVG)
		{
			Oid			st = evs_sum_type(kind, type);

			if (!OidIsValid(st))
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_FUNCTION),
						 errmsg("measure %s(%s) is not supported", fname, format_type_be(type)),
						 errhint("sum and avg take smallint, integer, bigint, numeric, real or double precision: cast the expression, for example (payload->>'amount')::numeric.")));
			type = st;
		}
		else if (kind != EVS_M_COUNT && !evs_orderable_state_type(type))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("measure %s(%s) is not supported", fname, format_type_be(type)),
					 errhint("min and max take base types with an ordering (numbers, text, timestamps, ...): cast the expression.")));
		written = EvsDeparseExpr(rel, expr);
		expr = evs_coerce(expr, type, "measure");
		d->kinds[i] = kind;
		d->names[i] = pstrdup(rt->name);
		d->types[i] = type;
		d->colls[i] = (kind == EVS_M_MIN || kind == EVS_M_MAX) ? exprCollation(expr) : InvalidOid;
		exprs[i] = EvsDeparseExpr(rel, expr);
		appendStringInfo(&canon, "%s%s(%s) AS %s", i > 0 ? ", " : "", fname, written,
						 quote_identifier(rt->name));
		i++;
	}
	d->nmeasures = i;
	error_context_stack = errcallback.previous;
	return canon.data;
}

/* Resolve a relation name to create (schema, name); error if it exists */
static RangeVar *
evs_new_relation_name(const char *what, const char *name, Oid *nspid)
{
	RangeVar   *rv;

	EvsCheckNameLength(name, what);
	rv = makeRangeVarFromNameList(evs_string_to_qualified_name_list(name));
	if (rv->relname[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("%s must not be empty", what)));
	*nspid = RangeVarGetCreationNamespace(rv);
	if (isAnyTempNamespace(*nspid))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s \"%s\" must not be temporary", what, rv->relname),
				 errdetail("evstream's catalog outlives sessions; temporary relations do not.")));
	if (evs_namespace_aclcheck(*nspid, GetUserId(), ACL_CREATE) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_SCHEMA, get_namespace_name(*nspid));
	return rv;
}

/* An array of Datums as a catalog array value */
static Datum
evs_array(Datum *elems, int n, Oid type)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_array(elems, n, type, typlen, typbyval, typalign));
}

static void evs_merge_one(void *arg);

/*
 * Backfill: the topic's existing events through the same counting as
 * inserts (as the creator: its expressions may call the creator's
 * functions), then folded into _count at once, announcing nothing.
 */
static void
evs_backfill(Oid topic, EvsAggDef *d)
{
	char	   *sql = psprintf("SELECT e.id, e.key, e.payload, e.created_at FROM %s e",
							   EvsQualifiedName(topic));
	Relation	rel = relation_open(topic, AccessShareLock);
	TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsHeapTuple);
	Portal		portal;
	SPIPlanPtr	plan;
	int			level;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	level = EvsPinSearchPath();
	plan = SPI_prepare(sql, 0, NULL);
	if (plan == NULL)
		elog(ERROR, "could not read topic \"%s\"", get_rel_name(topic));
	/* not read-only: a new snapshot, taken after the lock above was granted */
	portal = SPI_cursor_open(NULL, plan, NULL, NULL, false);
	for (;;)
	{
		uint64		i;

		SPI_cursor_fetch(portal, true, 1000);
		if (SPI_processed == 0)
			break;
		for (i = 0; i < SPI_processed; i++)
		{
			ExecStoreHeapTuple(SPI_tuptable->vals[i], slot, false);
			evs_accumulate(rel, &slot, 1, d->id);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	EvsUnpinSearchPath(level);
	SPI_finish();
	ExecDropSingleTupleTableSlot(slot);
	relation_close(rel, AccessShareLock);

	EvsFlushDeltas();
	CommandCounterIncrement();
	d->quiet = true;
	evs_merge_one(d);
}

PG_FUNCTION_INFO_V1(evstream_create_aggregate);

/*
 * evstream.create_aggregate(name text, topic regclass, group_by text,
 *		bucket interval, output_topic text, notify boolean, measures text,
 *		hop interval, event_time text, grace interval, emit text,
 *		window_retention interval) RETURNS regclass
 */
Datum
evstream_create_aggregate(PG_FUNCTION_ARGS)
{
	char	   *name;
	Oid			topic;
	char	   *group_by;
	Interval   *bucket = NULL;
	bool		notify;
	Oid			nspid;
	RangeVar   *rv;
	Relation	rel;
	char	   *expr;
	char	   *qview;
	Oid			output = InvalidOid;
	bool		output_created = false;
	int32		id;
	Oid			view;
	EvsUserState su;
	int			i;
	EvsAggDef  *d = palloc0(sizeof(EvsAggDef));
	char	   *measures = NULL;
	char	   *mexprs[EVS_MAX_MEASURES];
	char	   *event_time = NULL;
	Interval   *hop = NULL;
	Interval   *grace = NULL;
	Interval   *retention = NULL;
	char	   *emit;
	List	   *functions;
	const char *argnames[] = {"name", "topic", "group_by", "bucket", "output_topic", "notify",
	"measures", "hop", "event_time", "grace", "emit", "window_retention"};

	EvsRequireCurrentCatalog("create_aggregate");
	EvsArgNotNull(fcinfo, 0, argnames[0]);
	EvsArgNotNull(fcinfo, 1, argnames[1]);
	EvsArgNotNull(fcinfo, 2, argnames[2]);
	EvsArgNotNull(fcinfo, 5, argnames[5]);
	EvsArgNotNull(fcinfo, 10, argnames[10]);
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	topic = PG_GETARG_OID(1);
	group_by = text_to_cstring(PG_GETARG_TEXT_PP(2));
	notify = PG_GETARG_BOOL(5);
	emit = text_to_cstring(PG_GETARG_TEXT_PP(10));

	/* windows: every parameter checked before anything is created */
	if (!PG_ARGISNULL(3))
	{
		bucket = PG_GETARG_INTERVAL_P(3);
		d->w.bucket_usecs = EvsBucketUsecs(bucket, "bucket");
		d->w.hop_usecs = d->w.bucket_usecs;
	}
	for (i = 7; i <= 11; i++)
		if (i != 10 && !PG_ARGISNULL(i) && bucket == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s needs bucket", argnames[i]),
					 errhint("Windows are defined by bucket (their length).")));
	if (strcmp(emit, "changes") != 0 && strcmp(emit, "final") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("emit must be 'changes' or 'final', not \"%s\"", emit)));
	d->final = strcmp(emit, "final") == 0;
	if (d->final && (bucket == NULL || PG_ARGISNULL(4)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("emit => 'final' needs bucket and output_topic"),
				 errhint("Final results are events of the output topic, one per group and window.")));
	if (!PG_ARGISNULL(7))
	{
		hop = PG_GETARG_INTERVAL_P(7);
		d->w.hop_usecs = EvsBucketUsecs(hop, "hop");
		if (d->w.hop_usecs > d->w.bucket_usecs || d->w.bucket_usecs % d->w.hop_usecs != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("hop must divide bucket"),
					 errhint("For example bucket => '1 hour', hop => '1 minute'.")));
		if (d->w.bucket_usecs / d->w.hop_usecs > EVS_MAX_WINDOWS)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("bucket / hop must be at most %d windows per event", EVS_MAX_WINDOWS)));
	}
	if (!PG_ARGISNULL(9))
	{
		grace = PG_GETARG_INTERVAL_P(9);
		d->w.grace_usecs = EvsIntervalUsecs(grace, "grace");
	}
	if (!PG_ARGISNULL(11))
	{
		retention = PG_GETARG_INTERVAL_P(11);
		d->retention_usecs = EvsIntervalUsecs(retention, "window_retention");
		d->has_retention = true;
	}

	(void) EvsRequireTopic(topic, "create_aggregate");
	/* the backfill must see every event committed before the lock */
	EvsRequireReadCommitted("create_aggregate");
	/* its expressions run inside every producer's INSERT: owners only */
	EvsRequireOwner(topic);

	rv = evs_new_relation_name("aggregate name", name, &nspid);
	if (OidIsValid(get_relname_relid(rv->relname, nspid)))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_TABLE),
				 errmsg("relation \"%s\" already exists", rv->relname)));

	rel = relation_open(topic, AccessShareLock);
	expr = evs_check_group_by(rel, group_by);
	if (!PG_ARGISNULL(6))
		measures = evs_check_measures(rel, text_to_cstring(PG_GETARG_TEXT_PP(6)), d, mexprs);
	if (!PG_ARGISNULL(8))
		event_time = evs_check_event_time(rel, text_to_cstring(PG_GETARG_TEXT_PP(8)));

	/*
	 * The functions the stored texts call, found by parsing them as every
	 * load does (catalog.c): each load checks that they are still the ones
	 * called, so that no function created later can capture a call.
	 */
	{
		Node	   *parsed[EVS_MAX_MEASURES + 2];

		functions = EvsParseAggregateTexts(rel, expr, event_time, mexprs, d->types,
										   d->nmeasures, name, parsed);
	}
	relation_close(rel, AccessShareLock);

	/* output topic: an existing topic, or created now */
	if (!PG_ARGISNULL(4))
	{
		char	   *oname = text_to_cstring(PG_GETARG_TEXT_PP(4));
		Oid			onsp;
		RangeVar   *orv = evs_new_relation_name("output_topic", oname, &onsp);

		output = get_relname_relid(orv->relname, onsp);
		if (!OidIsValid(output))
		{
			Oid			types[1] = {TEXTOID};
			Datum		values[1] = {CStringGetTextDatum(quote_qualified_identifier(get_namespace_name(onsp), orv->relname))};
			bool		isnull;

			output = (Oid) EvsSpiInt64("SELECT evstream.create_topic($1)::pg_catalog.oid", 1, types, values, &isnull);
			output_created = true;
			CommandCounterIncrement();
		}
		else
		{
			(void) EvsRequireTopic(output, "create_aggregate");
			EvsRequirePrivilege(output, ACL_INSERT);
		}
		if (output == topic)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("output_topic must differ from the aggregate's topic \"%s\"", get_rel_name(topic))));
		if (EvsTopicFeeds(output, topic))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("aggregate \"%s\" would feed its own topic \"%s\"", name, get_rel_name(topic)),
					 errdetail("Its output topic leads through transforms or aggregates to its topic.")));
	}

	/* producers wait while we register and backfill: nothing is missed */
	LockRelationOid(topic, ShareLock);
	(void) find_all_inheritors(topic, ShareLock, NULL);

	EvsBecomeSuperuser(&su);
	id = (int32) EvsSpiInt64("SELECT pg_catalog.nextval('evstream._aggregate_id_seq')::pg_catalog.int4",
							 0, NULL, NULL, NULL);
	EvsRestoreUser(&su);
	d->id = id;
	d->w.bucket = bucket;
	d->output_topic = output;
	d->notify = notify;

	/* the relation users query: merged values plus pending deltas */
	qview = quote_qualified_identifier(get_namespace_name(nspid), rv->relname);
	{
		int			level = EvsPinSearchPath();
		char	   *vsql = evs_view_sql(d, qview);

		EvsUnpinSearchPath(level);
		EvsSpiExec(vsql, 0, NULL, NULL, 0);
	}
	CommandCounterIncrement();
	view = get_relname_relid(rv->relname, nspid);
	d->view = view;

	EvsBecomeSuperuser(&su);
	{
		Oid			types[20] = {INT4OID, OIDOID, OIDOID, TEXTOID, INTERVALOID, OIDOID, BOOLOID, BOOLOID,
			TEXTOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, OIDARRAYOID, TEXTARRAYOID,
		INTERVALOID, TEXTOID, INTERVALOID, TEXTOID, INTERVALOID, TEXTARRAYOID};
		Datum		values[20];
		char		nulls[20];
		Datum	   *fns = palloc(sizeof(Datum) * (list_length(functions) + 1));
		ListCell   *lc;
		Datum		kinds[EVS_MAX_MEASURES];
		Datum		names[EVS_MAX_MEASURES];
		Datum		exprs[EVS_MAX_MEASURES];
		Datum		mtypes[EVS_MAX_MEASURES];
		Datum		colls[EVS_MAX_MEASURES];

		memset(nulls, ' ', sizeof(nulls));
		for (i = 0; i < d->nmeasures; i++)
		{
			kinds[i] = CStringGetTextDatum(EvsMeasureKindName(d->kinds[i]));
			names[i] = CStringGetTextDatum(d->names[i]);
			exprs[i] = CStringGetTextDatum(mexprs[i]);
			mtypes[i] = ObjectIdGetDatum(d->types[i]);
			colls[i] = CStringGetTextDatum(EvsCollationName(d->colls[i]));
		}
		values[0] = Int32GetDatum(id);
		values[1] = ObjectIdGetDatum(view);
		values[2] = ObjectIdGetDatum(topic);
		values[3] = CStringGetTextDatum(expr);
		values[4] = bucket ? IntervalPGetDatum(bucket) : (Datum) 0;
		nulls[4] = bucket ? ' ' : 'n';
		values[5] = ObjectIdGetDatum(output);
		nulls[5] = OidIsValid(output) ? ' ' : 'n';
		values[6] = BoolGetDatum(output_created);
		values[7] = BoolGetDatum(notify);
		values[8] = measures ? CStringGetTextDatum(measures) : (Datum) 0;
		nulls[8] = measures ? ' ' : 'n';
		values[9] = evs_array(kinds, d->nmeasures, TEXTOID);
		values[10] = evs_array(names, d->nmeasures, TEXTOID);
		values[11] = evs_array(exprs, d->nmeasures, TEXTOID);
		values[12] = evs_array(mtypes, d->nmeasures, OIDOID);
		values[13] = evs_array(colls, d->nmeasures, TEXTOID);
		values[14] = hop ? IntervalPGetDatum(hop) : (Datum) 0;
		nulls[14] = hop ? ' ' : 'n';
		values[15] = event_time ? CStringGetTextDatum(event_time) : (Datum) 0;
		nulls[15] = event_time ? ' ' : 'n';
		values[16] = grace ? IntervalPGetDatum(grace) : (Datum) 0;
		nulls[16] = grace ? ' ' : 'n';
		values[17] = CStringGetTextDatum(emit);
		values[18] = retention ? IntervalPGetDatum(retention) : (Datum) 0;
		nulls[18] = retention ? ' ' : 'n';
		i = 0;
		foreach(lc, functions)
			fns[i++] = CStringGetTextDatum(lfirst(lc));
		values[19] = evs_array(fns, i, TEXTOID);

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_with_args("INSERT INTO evstream._aggregate (id, aggregate, topic, group_by, bucket, "
								  "output_topic, output_created, notify, measures, m_kinds, m_names, m_exprs, "
								  "m_types, m_colls, hop, event_time, grace, emit, window_retention, functions) "
								  "VALUES ($1, $2::pg_catalog.regclass, $3::pg_catalog.regclass, $4, $5, "
								  "$6::pg_catalog.regclass, $7, $8, $9, $10, $11, $12, "
								  "$13::pg_catalog.regtype[], $14, $15, $16, $17, $18, $19, $20)",
								  20, types, values, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not record aggregate");
		SPI_finish();
	}
	EvsRestoreUser(&su);

	/* this backend's cache knows the new aggregate from here on */
	CacheInvalidateRelcacheByRelid(topic);
	CommandCounterIncrement();
	evs_backfill(topic, d);

	PG_RETURN_OID(view);
}

/*
 * Drop an aggregate's view (the event trigger forgets the rest), and the
 * output topic it made.  By its owner (drop_aggregate); or cascaded from
 * a drop of the topic it reads or writes to, as PostgreSQL's CASCADE drops
 * dependents whoever owns them and wherever they are (else a role allowed
 * to write into another's topic could keep her from ever dropping it):
 * then as the bootstrap superuser, like the rest of a cascade, with what
 * depends on the view (another role's view on it cannot pin it either),
 * and with the output topic it made (while its owner may still drop it)
 * and that topic's own aggregates.  No tenant code runs
 * in a DROP VIEW or a drop of a topic (no row triggers fire, nothing is
 * evaluated).
 */
void
EvsDropAggregate(Oid view, bool cascaded)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(view)};
	bool		isnull;
	int64		topic;
	int64		output;
	EvsUserState st;

	topic = EvsSpiInt64("SELECT a.topic::pg_catalog.oid FROM evstream._aggregate a "
						"WHERE a.aggregate OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
						1, types, values, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("relation \"%s\" is not an evstream aggregate", get_rel_name(view)),
				 errhint("Create aggregates with evstream.create_aggregate().")));
	if (!cascaded)
		EvsRequireOwner(view);
	output = EvsSpiInt64("SELECT a.output_topic::pg_catalog.oid FROM evstream._aggregate a "
						 "WHERE a.aggregate OPERATOR(pg_catalog.=) $1::pg_catalog.regclass AND a.output_created",
						 1, types, values, &isnull);

	/*
	 * The output topic it made goes with it only while the aggregate's
	 * owner (the caller, without cascade) may still drop it: one handed to
	 * another role (ALTER TABLE ... OWNER TO) is hers now, and stays.
	 */
	if (!isnull && (get_rel_name((Oid) output) == NULL ||
					!has_privs_of_role(cascaded ? EvsRelOwner(view) : GetUserId(),
									   EvsRelOwner((Oid) output))))
		isnull = true;

	if (cascaded)
		EvsBecomeSuperuser(&st);
	EvsSpiExec(psprintf("DROP VIEW %s%s", EvsQualifiedName(view), cascaded ? " CASCADE" : ""),
			   0, NULL, NULL, 0);
	CacheInvalidateRelcacheByRelid((Oid) topic);
	if (!isnull && get_rel_name((Oid) output) != NULL)	/* (the view's cascade may drop it) */
	{
		Oid			otypes[2] = {OIDOID, BOOLOID};
		Datum		ovalues[2] = {ObjectIdGetDatum((Oid) output), BoolGetDatum(cascaded)};

		CommandCounterIncrement();
		EvsSpiExec("SELECT evstream.drop_topic($1::pg_catalog.regclass, $2)", 2, otypes, ovalues, SPI_OK_SELECT);
	}
	if (cascaded)
		EvsRestoreUser(&st);
}

PG_FUNCTION_INFO_V1(evstream_drop_aggregate);

/* evstream.drop_aggregate(name regclass) */
Datum
evstream_drop_aggregate(PG_FUNCTION_ARGS)
{
	EvsArgNotNull(fcinfo, 0, "name");
	EvsDropAggregate(PG_GETARG_OID(0), false);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(evstream_invalidate);

/* evstream._invalidate(topic regclass): make backends reload the topic */
Datum
evstream_invalidate(PG_FUNCTION_ARGS)
{
	if (!PG_ARGISNULL(0))
		CacheInvalidateRelcacheByRelid(PG_GETARG_OID(0));
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------- merge */

/*
 * Folding committed deltas into _count (the worker, every 100 ms at most
 * under load and at every maintenance pass; evstream._merge_deltas()).
 *
 * Per aggregate, in its own subtransaction, so one aggregate's failure
 * (its output topic's trigger raises, a lock it cannot get) stays its own:
 *	1. as the superuser, fixed SQL on evstream's tables only: the
 *	   aggregate's committed delta rows are deleted and combined into
 *	   _count (one upsert per group and window), returning each changed
 *	   group's new values;
 *	2. the new values are announced on the aggregate's channel (split to
 *	   stay under the 8000-byte payload limit);
 *	3. with an output topic and emit 'changes', one change event per
 *	   changed group is inserted into it as the aggregate's owner under
 *	   SECURITY_RESTRICTED_OPERATION (its triggers, defaults and policies
 *	   run as their owner; INSERT is checked for the aggregate's owner);
 *	4. with emit 'final', the windows closed since the last merge are
 *	   emitted (below), and with window_retention old closed windows are
 *	   deleted (maintenance passes and _merge_deltas() only).
 * They commit together.  Ordered changelog: a group's values only grow by
 * combination, and two merges touching one group serialize on its _count
 * row (the second's upsert waits for the first to commit, so its event
 * gets a higher id and commits later): per group, change events carry
 * values in commit order, never going back or repeating (a merge that
 * changed nothing of a group returns no row for it), and the latest is
 * exact.
 *
 * Closed windows.  A window [s, e) gets no more events once every
 * transaction that could still add one has ended: an event of a
 * transaction counts in the window only if its created_at (the
 * transaction's start) is at most e + grace (with event_time later ones
 * are late; without it created_at < e).  So with H the older of "now" and
 * the start of the oldest transaction open in this database (any
 * transaction: one that has not inserted yet may still insert), every
 * window with e + grace < H is closed.  H is read from the backend status
 * array before the merge statement takes its snapshot; a transaction
 * absent from it has ended, and being committed it is visible to that
 * snapshot, so the merge folds all of a closed window's deltas before its
 * final values are read.  A backend reports its transaction's start a
 * moment after taking it, so H stays EVS_CLOSE_MARGIN_MS behind the clock.
 * The windows emitted are those ending in [finalized_upto, H - grace),
 * and finalized_upto moves to H - grace in the same transaction as the
 * final events: after a crash either both happened or neither (exactly
 * one final event per group and window).  Prepared transactions are not
 * in the status array: one prepared before its window closed and
 * committed after would add to an emitted window.
 */
#define EVS_CLOSE_MARGIN_MS 1000

/* Send one aggregate's changes, split under the payload limit */
static void
evs_notify_changes(const char *channel, SPITupleTable *tt, uint64 n)
{
	StringInfoData head;
	StringInfoData buf;
	StringInfoData one;
	uint64		i;

	initStringInfo(&head);
	appendStringInfoString(&head, "{\"aggregate\": ");
	escape_json(&head, channel);
	appendStringInfoString(&head, ", \"changes\": [");
	initStringInfo(&buf);
	initStringInfo(&one);
	for (i = 0; i < n; i++)
	{
		bool		knull,
					bnull,
					cnull,
					vnull;
		Datum		k = SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &knull);
		Datum		b = SPI_getbinval(tt->vals[i], tt->tupdesc, 2, &bnull);
		Datum		c = SPI_getbinval(tt->vals[i], tt->tupdesc, 3, &cnull);
		char	   *v = SPI_getvalue(tt->vals[i], tt->tupdesc, 4);

		(void) SPI_getbinval(tt->vals[i], tt->tupdesc, 4, &vnull);
		resetStringInfo(&one);
		appendStringInfoString(&one, "{\"group_key\": ");
		if (knull)
			appendStringInfoString(&one, "null");
		else
			escape_json(&one, TextDatumGetCString(k));
		appendStringInfoString(&one, ", \"bucket_start\": ");
		if (bnull)
			appendStringInfoString(&one, "null");
		else
		{
			char		ts[MAXDATELEN + 1];

			appendStringInfo(&one, "\"%s\"", JsonEncodeDateTime(ts, b, TIMESTAMPTZOID, NULL));
		}
		appendStringInfo(&one, ", \"count\": " INT64_FORMAT, DatumGetInt64(c));
		/* the measures: the jsonb object's members, after its "{" */
		if (!vnull && v != NULL && strlen(v) > 2)
			appendStringInfo(&one, ", %s", v + 1);
		else
			appendStringInfoChar(&one, '}');
		if (head.len + one.len + 2 > 7900)
		{
			ereport(WARNING,
					(errmsg("evstream: change of a group of aggregate %s is too large to notify",
							channel)));
			continue;
		}
		if (buf.len > 0 && head.len + buf.len + one.len + 4 > 7900)
		{
			Async_Notify(channel, psprintf("%s%s]}", head.data, buf.data));
			resetStringInfo(&buf);
		}
		if (buf.len > 0)
			appendStringInfoString(&buf, ", ");
		appendBinaryStringInfo(&buf, one.data, one.len);
	}
	if (buf.len > 0)
		Async_Notify(channel, psprintf("%s%s]}", head.data, buf.data));
}

/*
 * Insert change (or final) events into the output topic, as the
 * aggregate's owner: rows of (group_key, bucket_start, count, measures).
 */
static void
evs_publish_changes(EvsAggDef *d, SPITupleTable *tt, uint64 n)
{
	Datum	   *ks = palloc(sizeof(Datum) * n);
	bool	   *knulls = palloc(sizeof(bool) * n);
	Datum	   *bs = palloc(sizeof(Datum) * n);
	bool	   *bnulls = palloc(sizeof(bool) * n);
	Datum	   *cs = palloc(sizeof(Datum) * n);
	Datum	   *vs = palloc(sizeof(Datum) * n);
	int			dims[1] = {(int) n};
	int			lbs[1] = {1};
	Oid			types[4] = {TEXTARRAYOID, TIMESTAMPTZARRAYOID, INT8ARRAYOID, JSONBARRAYOID};
	Datum		values[4];
	EvsUserState st;
	char	   *sql;
	uint64		i;

	for (i = 0; i < n; i++)
	{
		bool		cnull;
		bool		vnull;

		ks[i] = SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &knulls[i]);
		bs[i] = SPI_getbinval(tt->vals[i], tt->tupdesc, 2, &bnulls[i]);
		cs[i] = SPI_getbinval(tt->vals[i], tt->tupdesc, 3, &cnull);
		vs[i] = SPI_getbinval(tt->vals[i], tt->tupdesc, 4, &vnull);
	}
	values[0] = PointerGetDatum(construct_md_array(ks, knulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
	values[1] = PointerGetDatum(construct_md_array(bs, bnulls, 1, dims, lbs, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = PointerGetDatum(construct_md_array(cs, NULL, 1, dims, lbs, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[3] = PointerGetDatum(construct_md_array(vs, NULL, 1, dims, lbs, JSONBOID, -1, false, TYPALIGN_INT));
	sql = psprintf("INSERT INTO %s (key, payload) "
				   "SELECT u.k, pg_catalog.jsonb_build_object('count', u.n) OPERATOR(pg_catalog.||) u.v%s "
				   "FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
				   "pg_catalog.unnest($4)) WITH ORDINALITY AS u(k, b, n, v, o) ORDER BY u.o",
				   EvsQualifiedName(d->output_topic),
				   d->w.bucket ?
				   " OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('bucket_start', u.b)" : "");
	EvsBecomeOwner(EvsRelOwner(d->view), &st);
	if (SPI_execute_with_args(sql, 4, types, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not publish the changes of aggregate \"%s\"", get_rel_name(d->view));
	EvsRestoreUser(&st);
}

/* H (see above): the start of the oldest open transaction here, or now */
static TimestampTz
evs_close_horizon(void)
{
	TimestampTz h = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), -EVS_CLOSE_MARGIN_MS);
	int			n;
	int			i;

	pgstat_clear_backend_activity_snapshot();
	n = pgstat_fetch_stat_numbackends();
	for (i = 1; i <= n; i++)
	{
		LocalPgBackendStatus *l = evs_local_beentry(i);

		if (l == NULL || l->backendStatus.st_databaseid != MyDatabaseId)
			continue;
		if (l->backendStatus.st_xact_start_timestamp != 0 &&
			l->backendStatus.st_xact_start_timestamp < h)
			h = l->backendStatus.st_xact_start_timestamp;
	}
	return h;
}

/* Emit the final events of the windows closed since the last merge */
static void
evs_emit_finals(EvsAggDef *d, TimestampTz horizon)
{
	TimestampTz upto;
	Oid			types[4] = {INT4OID, INTERVALOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	StringInfoData sql;
	EvsUserState su;
	int			ret;

	/* a grace reaching before the first valid timestamp closes nothing */
	if (pg_sub_s64_overflow(horizon, d->w.grace_usecs, &upto) || !IS_VALID_TIMESTAMP(upto))
		return;
	if (d->has_finalized)
	{
		/* the first window end at or after finalized_upto (ends are on the hop grid) */
		TimestampTz next = evs_bin(d->finalized_upto, d->w.hop_usecs);

		if (next < d->finalized_upto)
			next += d->w.hop_usecs;
		if (upto <= next)
			return;				/* no window ended in between */
	}
	/*
	 * Another merge (the worker's, a _merge_deltas() call) may be emitting
	 * the same windows: the aggregate's row lock orders them, and the
	 * second re-reads what the first recorded (READ COMMITTED: the newest
	 * version) before emitting anything.
	 */
	values[0] = Int32GetDatum(d->id);
	EvsBecomeSuperuser(&su);
	ret = SPI_execute_with_args("SELECT a.finalized_upto FROM evstream._aggregate a "
								"WHERE a.id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
								1, types, values, NULL, false, 0);
	EvsRestoreUser(&su);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		return;					/* dropped meanwhile */
	{
		bool		isnull;
		Datum		f = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		d->has_finalized = !isnull;
		d->finalized_upto = isnull ? 0 : DatumGetTimestampTz(f);
	}
	if (d->has_finalized && upto <= d->finalized_upto)
		return;
	values[1] = IntervalPGetDatum(d->w.bucket);
	values[2] = TimestampTzGetDatum(upto);
	values[3] = TimestampTzGetDatum(d->finalized_upto);
	nulls[3] = d->has_finalized ? ' ' : 'n';
	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT c.group_key, c.bucket_start, c.count, ");
	evs_append_values(&sql, d, "c");
	appendStringInfoString(&sql,
						   " FROM evstream._count c WHERE c.agg OPERATOR(pg_catalog.=) $1 "
						   "AND c.bucket_start OPERATOR(pg_catalog.>) '-infinity'::pg_catalog.timestamptz "
						   "AND (c.bucket_start OPERATOR(pg_catalog.+) $2) OPERATOR(pg_catalog.<) $3 "
						   "AND ($4 IS NULL OR (c.bucket_start OPERATOR(pg_catalog.+) $2) OPERATOR(pg_catalog.>=) $4) "
						   "ORDER BY 2, 1");
	EvsBecomeSuperuser(&su);
	/* not read-only: a snapshot that sees what the merge just folded */
	ret = SPI_execute_with_args(sql.data, 4, types, values, nulls, false, 0);
	EvsRestoreUser(&su);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read the final values of aggregate %d", d->id);
	if (SPI_processed > 0 && OidIsValid(d->output_topic) && get_rel_name(d->output_topic) != NULL)
		evs_publish_changes(d, SPI_tuptable, SPI_processed);
	EvsBecomeSuperuser(&su);
	ret = SPI_execute_with_args("UPDATE evstream._aggregate SET finalized_upto = $3 WHERE id OPERATOR(pg_catalog.=) $1",
								4, types, values, nulls, false, 0);
	EvsRestoreUser(&su);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not record the final values of aggregate %d", d->id);
	d->finalized_upto = upto;
	d->has_finalized = true;
}

/* window_retention: delete closed windows that ended long enough ago */
static void
evs_drop_old_windows(EvsAggDef *d, TimestampTz horizon)
{
	TimestampTz upto;
	TimestampTz old;
	Oid			types[3] = {INT4OID, INTERVALOID, TIMESTAMPTZOID};
	Datum		values[3];
	EvsUserState su;

	if (pg_sub_s64_overflow(horizon, d->w.grace_usecs, &upto) || !IS_VALID_TIMESTAMP(upto) ||
		pg_sub_s64_overflow(GetCurrentTimestamp(), d->retention_usecs, &old) ||
		!IS_VALID_TIMESTAMP(old))
		return;					/* nothing is that old */

	if (d->final)
		upto = d->has_finalized ? Min(upto, d->finalized_upto) : DT_NOBEGIN;
	values[0] = Int32GetDatum(d->id);
	values[1] = IntervalPGetDatum(d->w.bucket);
	values[2] = TimestampTzGetDatum(Min(upto, old));
	EvsBecomeSuperuser(&su);
	EvsSpiExec("DELETE FROM evstream._count c WHERE c.agg OPERATOR(pg_catalog.=) $1 "
			   "AND c.bucket_start OPERATOR(pg_catalog.>) '-infinity'::pg_catalog.timestamptz "
			   "AND (c.bucket_start OPERATOR(pg_catalog.+) $2) OPERATOR(pg_catalog.<) $3",
			   3, types, values, SPI_OK_DELETE);
	EvsRestoreUser(&su);
}

typedef struct MergeJob
{
	EvsAggDef  *def;			/* without its measures until the job runs */
	HeapTuple	tup;			/* the _aggregate row */
	TupleDesc	desc;
	int			flags;
	TimestampTz horizon;
} MergeJob;

static Oid
evs_merge_job_object(void *arg)
{
	return ((MergeJob *) arg)->def->view;
}

static void
evs_merge_job(void *arg)
{
	MergeJob   *j = arg;
	EvsAggDef  *d = j->def;

	/*
	 * The output topic is taken without waiting, as maintenance takes its
	 * topics (worker.c): the aggregates merged before this one keep their
	 * output topics locked to the merge's end, and a DDL holding this one
	 * while waiting for one of those must not be the one a deadlock check
	 * fails.  Busy: the deltas wait for the next merge.
	 */
	if (OidIsValid(d->output_topic) &&
		!ConditionalLockRelationOid(d->output_topic, RowExclusiveLock))
		return;

	/*
	 * Measures name their collations, which their owner can rename or
	 * drop: resolved here, in the aggregate's own subtransaction, so that
	 * failing stays this aggregate's.
	 */
	d->nmeasures = EvsAggregateMeasures(j->tup, j->desc, EVS_AGG_M_NAMES, d->kinds, d->names,
										d->types, d->colls);
	evs_merge_one(j->def);
	if (j->def->w.bucket && j->def->final)
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		evs_emit_finals(j->def, j->horizon);
		SPI_finish();
	}
	if (j->def->w.bucket && j->def->has_retention && (j->flags & EVS_MERGE_RETENTION))
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		evs_drop_old_windows(j->def, j->horizon);
		SPI_finish();
	}
}

static void
evs_merge_one(void *arg)
{
	EvsAggDef  *d = arg;
	Oid			types[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(d->id)};
	EvsUserState su;
	SPITupleTable *tt;
	uint64		n;
	int			ret;
	int			batch;
	char	   *sql;
	bool		full;
	bool		isnull;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	sql = evs_merge_sql(d);
	d->changed = 0;

	/*
	 * In batches of about EVS_MERGE_BATCH_BYTES of delta rows, so the
	 * changes a statement returns stay bounded whatever the backlog (large
	 * min/max states); what is left after EVS_MERGE_MAX_BATCHES waits for
	 * the next merge.  Per group, later batches only add to earlier ones.
	 */
	for (batch = 0; d->quiet || batch < EVS_MERGE_MAX_BATCHES; batch++)
	{
		CHECK_FOR_INTERRUPTS();
		EvsBecomeSuperuser(&su);
		ret = SPI_execute_with_args(sql, 1, types, values, NULL, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not merge the deltas of aggregate %d", d->id);
		EvsRestoreUser(&su);
		tt = SPI_tuptable;
		n = SPI_processed;
		if (n == 0 && d->quiet)
		{
			/* the backfill folds all (a batch of late entries only returns nothing) */
			bool		more;

			EvsBecomeSuperuser(&su);
			more = EvsSpiInt64("SELECT pg_catalog.count(*) FROM (SELECT FROM evstream._delta z "
							   "WHERE z.agg OPERATOR(pg_catalog.=) $1 LIMIT 1) x",
							   1, types, values, NULL) > 0;
			EvsRestoreUser(&su);
			if (!more)
				break;
			continue;
		}
		if (n == 0)
			break;
		d->changed += (int) n;
		if (!d->quiet && get_rel_name(d->view) != NULL)
		{
			if (d->notify)
				evs_notify_changes(get_rel_name(d->view), tt, n);
			if (OidIsValid(d->output_topic) && !d->final && get_rel_name(d->output_topic) != NULL)
				evs_publish_changes(d, tt, n);
		}
		full = DatumGetBool(SPI_getbinval(tt->vals[0], tt->tupdesc, 5, &isnull));
		SPI_freetuptable(tt);

		/*
		 * A batch below the byte bound took every delta row its snapshot
		 * saw: what committed since waits for the next merge.  Going on
		 * would chase the producers batch by batch, upserting every busy
		 * group again for each few statements committed meanwhile (30k
		 * upserts a second for 1000 groups under a multi-row load, the
		 * worker busy all the time) instead of once per merge.
		 */
		if (!d->quiet && !isnull && !full)
			break;
	}
	SPI_finish();
}

/*
 * The merge's view of an _aggregate row; its measures only when measures
 * is set (resolving their collations can fail: see EvsMergeDeltas).
 */
static EvsAggDef *
evs_read_def(HeapTuple tup, TupleDesc desc, bool measures)
{
	EvsAggDef  *d = palloc0(sizeof(EvsAggDef));
	bool		isnull;
	Datum		v;

	d->id = DatumGetInt32(EvsGetAttr(tup, EVS_AGG_ID, desc, &isnull));
	d->view = DatumGetObjectId(EvsGetAttr(tup, EVS_AGG_VIEW, desc, &isnull));
	EvsAggregateWindows(tup, desc, CurrentMemoryContext, &d->w);
	if (d->w.bucket)
	{
		v = EvsGetAttr(tup, EVS_AGG_RETENTION, desc, &isnull);
		if (!isnull)
		{
			d->retention_usecs = EvsIntervalUsecs(DatumGetIntervalP(v), "window_retention");
			d->has_retention = true;
		}
		v = EvsGetAttr(tup, EVS_AGG_FINALIZED, desc, &isnull);
		d->has_finalized = !isnull;
		d->finalized_upto = isnull ? 0 : DatumGetTimestampTz(v);
	}
	v = EvsGetAttr(tup, EVS_AGG_OUTPUT, desc, &isnull);
	d->output_topic = isnull ? InvalidOid : DatumGetObjectId(v);
	d->notify = DatumGetBool(EvsGetAttr(tup, EVS_AGG_NOTIFY, desc, &isnull));
	v = EvsGetAttr(tup, EVS_AGG_EMIT, desc, &isnull);
	d->final = !isnull && strcmp(TextDatumGetCString(v), "final") == 0;

	if (measures)
		d->nmeasures = EvsAggregateMeasures(tup, desc, EVS_AGG_M_NAMES, d->kinds, d->names,
											d->types, d->colls);
	return d;
}

/*
 * Merge every aggregate's deltas (or only_agg's); returns the number of
 * groups that changed.  flags: EVS_MERGE_RETENTION also applies
 * window_retention; EVS_MERGE_FINAL_ONLY handles only aggregates with
 * emit 'final' (the worker's once-a-second pass for windows closing with
 * time).  Failures are appended to errors (when not NULL).  Needs a
 * transaction with an active snapshot.
 */
int
EvsMergeDeltas(int32 only_agg, StringInfo errors, int flags)
{
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tup;
	TupleDesc	desc;
	List	   *jobs = NIL;
	ListCell   *lc;
	int			changed = 0;
	TimestampTz horizon = 0;
	bool		need_horizon = false;
	int			level;

	rel = table_open(EvsCatalogRelid(EVS_REL_AGGREGATE), AccessShareLock);
	desc = CreateTupleDescCopy(RelationGetDescr(rel));
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		EvsAggDef  *d = evs_read_def(tup, desc, false);
		MergeJob   *j;

		if (only_agg != 0 && d->id != only_agg)
			continue;
		if ((flags & EVS_MERGE_FINAL_ONLY) && !d->final)
			continue;
		j = palloc0(sizeof(MergeJob));
		j->def = d;
		j->tup = heap_copytuple(tup);
		j->desc = desc;
		j->flags = flags;
		jobs = lappend(jobs, j);
		if (d->w.bucket && (d->final || (d->has_retention && (flags & EVS_MERGE_RETENTION))))
			need_horizon = true;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	/* before any statement below takes its snapshot (see above) */
	if (need_horizon)
		horizon = evs_close_horizon();

	/* the merge SQL names types and collations as seen from the pinned path */
	level = EvsPinSearchPath();

	/*
	 * Delta rows are deleted as soon as they are merged, faster than
	 * autovacuum (a minute apart) removes them: a bitmap scan of _delta's
	 * index would visit every page of every dead row since the last vacuum
	 * at each merge, while an index scan marks the dead entries it meets
	 * (once no snapshot needs them) and skips them from then on.
	 */
	(void) set_config_option("enable_bitmapscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	/* in the order the tenants' budgets ask for (util.c) */
	jobs = EvsBudgetOrder(jobs, evs_merge_job_object);
	foreach(lc, jobs)
	{
		MergeJob   *j = lfirst(lc);
		char	   *name = get_rel_name(j->def->view);

		CHECK_FOR_INTERRUPTS();
		j->horizon = horizon;
		if (EvsTrySubxact(evs_merge_job, j, j->def->view,
						  psprintf("aggregate %s", name ? name : "(dropped)"), errors))
			changed += j->def->changed;
	}
	EvsUnpinSearchPath(level);
	return changed;
}

PG_FUNCTION_INFO_V1(evstream_merge_deltas);

/* evstream._merge_deltas(): fold now (tests, maintenance); superuser only */
Datum
evstream_merge_deltas(PG_FUNCTION_ARGS)
{
	StringInfoData errors;
	int			changed;

	initStringInfo(&errors);
	changed = EvsMergeDeltas(PG_ARGISNULL(0) ? 0 : PG_GETARG_INT32(0), &errors,
							 EVS_MERGE_RETENTION);
	if (errors.len > 0)
		ereport(WARNING, (errmsg("evstream merge: %s", errors.data)));
	PG_RETURN_INT32(changed);
}

PG_FUNCTION_INFO_V1(evstream_rebuild_views);

/*
 * evstream._rebuild_views(): the update script from 0.1 rebuilds every
 * aggregate's view over the 0.2 tables (same columns), as the view's
 * owner.  The views are the users' objects, not the extension's: they are
 * replaced as outside the script, or PostgreSQL would refuse to replace
 * them (or make them members).
 */
Datum
evstream_rebuild_views(PG_FUNCTION_ARGS)
{
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tup;
	List	   *volatile defs = NIL;
	ListCell   *lc;
	bool		save_creating = creating_extension;
	Oid			save_ext = CurrentExtensionObject;

	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only the extension's update script rebuilds aggregate views")));
	PG_TRY();
	{
		creating_extension = false;
		CurrentExtensionObject = InvalidOid;
		rel = table_open(EvsCatalogRelid(EVS_REL_AGGREGATE), AccessShareLock);
		scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
		while (HeapTupleIsValid(tup = systable_getnext(scan)))
			defs = lappend(defs, evs_read_def(tup, RelationGetDescr(rel), true));
		systable_endscan(scan);
		table_close(rel, AccessShareLock);
		foreach(lc, defs)
		{
			EvsAggDef  *d = lfirst(lc);
			EvsUserState st;
			int			level;
			char	   *sql;

			if (get_rel_name(d->view) == NULL)
				continue;
			level = EvsPinSearchPath();
			sql = evs_view_sql(d, EvsQualifiedName(d->view));
			EvsUnpinSearchPath(level);
			/* CREATE VIEW ... -> CREATE OR REPLACE VIEW ... */
			sql = psprintf("CREATE OR REPLACE %s", sql + strlen("CREATE "));
			EvsBecomeOwner(EvsRelOwner(d->view), &st);
			EvsSpiExec(sql, 0, NULL, NULL, 0);
			EvsRestoreUser(&st);
		}
	}
	PG_FINALLY();
	{
		creating_extension = save_creating;
		CurrentExtensionObject = save_ext;
	}
	PG_END_TRY();
	PG_RETURN_VOID();
}
