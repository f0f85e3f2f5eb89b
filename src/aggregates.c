/*-------------------------------------------------------------------------
 *
 * aggregates.c
 *	  Continuous count aggregates: create_aggregate, drop_aggregate, and the
 *	  per-statement count deltas producers write.
 *
 *	  Storage: evstream._count holds merged counts, evstream._delta the
 *	  deltas producers append (one row per group per statement), and the
 *	  relation users query is a view summing both per group.  Producers
 *	  only ever INSERT delta rows, so producers of one hot key never wait
 *	  for each other; the worker folds committed deltas into _count in one
 *	  transaction (evstream._merge_deltas: DELETE ... RETURNING feeding an
 *	  upsert; every 250 ms at most under load, and at each maintenance
 *	  pass), so the view's sum is the same before and after, and exact at
 *	  every instant.
 *
 *	  Counting: the access method's insert paths (tableam.c) call
 *	  EvsAccumulate for every row stored in a topic partition — INSERT,
 *	  COPY, logical replication alike, triggers or not.  Each row's group
 *	  (group_by, evaluated as text) and bucket are counted in a backend-local
 *	  hash; the hash is written as delta rows when the statement finishes
 *	  (ExecutorFinish hook, after COPY, and at PRE_COMMIT for paths without
 *	  either), so a 1M-row COPY writes one delta per group.  Rows become
 *	  visible to the transaction together with their delta rows (both are
 *	  written by the same command), and roll back together.
 *
 *	  Subtransactions: pending counts are keyed by the nesting level at
 *	  which the rows were inserted.  A subtransaction abort drops the counts
 *	  of its level and deeper (their rows are gone); a subtransaction commit
 *	  hands them to its parent.  Counts already written as delta rows follow
 *	  their subtransaction like any row.
 *
 *	  Output topics: when an aggregate has one, each flush also inserts,
 *	  per changed group, an event (key = group, payload {"count": n} plus
 *	  "bucket_start" when windowed) with the count the transaction sees.
 *	  Concurrent producers of one group can each publish a count that
 *	  misses the other's; the delta rows remember what they published, and
 *	  the merge publishes a correction so that the latest event of every
 *	  group carries its exact count.
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
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parse_coerce.h"
#include "parser/parse_collate.h"
#include "parser/parse_expr.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "parser/parser.h"
#include "rewrite/rewriteManip.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
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
#include "utils/varlena.h"
#include "access/relation.h"

#include "evstream.h"

/* 1970-01-01 00:00:00+00 in Postgres timestamps: buckets align on it */
#define EVS_UNIX_EPOCH_TS ((int64) -946684800 * USECS_PER_SEC)

typedef struct DeltaKey
{
	int32		agg;
	int32		level;			/* transaction nesting level of the rows */
	TimestampTz bucket;			/* 0 when the aggregate has no bucket */
	bool		isnull;
	char	   *group;			/* NULL when isnull */
} DeltaKey;

typedef struct DeltaEntry
{
	DeltaKey	key;
	int64		count;
	bool		notify;
	Oid			output_topic;
	bool		bucketed;
	bool		published;		/* an output event was produced for it */
	int64		published_count;	/* the count that event carries */
	int64		published_id;	/* and its id in the output topic */
} DeltaEntry;

static HTAB *pending = NULL;
static MemoryContext pending_cxt = NULL;
static int64 pending_n = 0;
static ExprContext *accum_econtext = NULL;
static bool flushing = false;

static ExecutorFinish_hook_type prev_ExecutorFinish = NULL;

/* Hash of a DeltaKey, including the group text */
static uint32
delta_hash(const void *key, Size keysize)
{
	const DeltaKey *k = key;
	uint32		h = hash_bytes((const unsigned char *) &k->agg, sizeof(int32));

	h = hash_combine(h, hash_bytes((const unsigned char *) &k->level, sizeof(int32)));
	h = hash_combine(h, hash_bytes((const unsigned char *) &k->bucket, sizeof(TimestampTz)));
	if (!k->isnull)
		h = hash_combine(h, hash_bytes((const unsigned char *) k->group, strlen(k->group)));
	return h;
}

static int
delta_match(const void *key1, const void *key2, Size keysize)
{
	const DeltaKey *a = key1;
	const DeltaKey *b = key2;

	if (a->agg != b->agg || a->level != b->level || a->bucket != b->bucket ||
		a->isnull != b->isnull)
		return 1;
	if (a->isnull)
		return 0;
	return strcmp(a->group, b->group);
}

/* Forget every pending count */
static void
pending_reset(void)
{
	HASHCTL		ctl;

	/* lives in the transaction: freed with it whatever happens */
	if (pending_cxt == NULL)
		pending_cxt = AllocSetContextCreate(TopTransactionContext,
											"evstream pending deltas",
											ALLOCSET_DEFAULT_SIZES);
	else
		MemoryContextReset(pending_cxt);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(DeltaKey);
	ctl.entrysize = sizeof(DeltaEntry);
	ctl.hash = delta_hash;
	ctl.match = delta_match;
	ctl.hcxt = pending_cxt;
	pending = hash_create("evstream pending deltas", 256, &ctl,
						  HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	pending_n = 0;
}

/*
 * An interval as microseconds, for partition intervals and buckets: whole
 * days count 24 hours, months are refused (their length varies), and the
 * result must be at least one second.
 */
int64
EvsBucketUsecs(Interval *ivl, const char *what)
{
	int64		us;

	if (ivl->month != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not contain months or years", what),
				 errhint("Use days instead, for example '30 days'.")));
	us = (int64) ivl->day * USECS_PER_DAY + ivl->time;
	if (us < USECS_PER_SEC)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be at least 1 second", what)));
	return us;
}

/* date_bin(bucket, ts, 'epoch') */
static TimestampTz
evs_bin(TimestampTz ts, int64 stride)
{
	int64		delta = ts - EVS_UNIX_EPOCH_TS;
	int64		rem = delta % stride;

	if (rem < 0)
		rem += stride;
	return ts - rem;
}

/* Count stored rows in the pending deltas of their topic's aggregates */
void
EvsAccumulate(Relation rel, TupleTableSlot **slots, int nslots)
{
	EvsTopic   *t;
	List	   *aggs;
	ListCell   *lc;
	int			level;
	int			i;
	AttrNumber	created_attno = 4;

	if (evs_copy_restore)
	{
		/* restore: remember the highest id, count nothing */
		for (i = 0; i < nslots; i++)
		{
			bool		isnull;
			Datum		id = slot_getattr(slots[i], 1, &isnull);

			if (!isnull && DatumGetInt64(id) > evs_copy_max_id)
				evs_copy_max_id = DatumGetInt64(id);
		}
		return;
	}
	if (evs_restore_mode)
		return;
	t = EvsLookupTopic(RelationGetRelid(rel));
	if (!OidIsValid(t->topic))
		return;
	aggs = EvsTopicAggregates(t);
	if (aggs == NIL)
		return;

	if (pending == NULL)
		pending_reset();
	if (accum_econtext == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		accum_econtext = CreateStandaloneExprContext();
		MemoryContextSwitchTo(old);
	}
	if (RelationGetDescr(rel)->natts != 4)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("partition \"%s\" does not have the columns of an evstream topic",
						RelationGetRelationName(rel))));
	level = GetCurrentTransactionNestLevel();

	for (i = 0; i < nslots; i++)
	{
		TupleTableSlot *slot = slots[i];

		foreach(lc, aggs)
		{
			EvsAggregate *a = lfirst(lc);
			DeltaKey	key;
			DeltaEntry *e;
			bool		found;
			bool		isnull;
			Datum		d;

			ResetExprContext(accum_econtext);
			accum_econtext->ecxt_scantuple = slot;
			d = ExecEvalExprSwitchContext(a->expr, accum_econtext, &isnull);
			key.agg = a->id;
			key.level = level;
			key.isnull = isnull;
			key.group = isnull ? NULL : TextDatumGetCString(d);
			key.bucket = 0;
			if (a->bucket)
			{
				bool		tsnull;
				Datum		ts = slot_getattr(slot, created_attno, &tsnull);

				if (!tsnull)
					key.bucket = evs_bin(DatumGetTimestampTz(ts), a->bucket_usecs);
			}
			e = hash_search(pending, &key, HASH_FIND, NULL);
			if (e == NULL)
			{
				if (!isnull)
					key.group = MemoryContextStrdup(pending_cxt, key.group);
				e = hash_search(pending, &key, HASH_ENTER, &found);
				e->count = 0;
				e->notify = a->notify;
				e->output_topic = a->output_topic;
				e->bucketed = a->bucket != NULL;
				e->published = false;
			}
			e->count++;
			pending_n++;
		}
	}
}

/* Build a text[], timestamptz[] or int8[] from collected datums */
static Datum
evs_array(Datum *elems, bool *nulls, int n, Oid type)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, type,
											  typlen, typbyval, typalign));
}

/*
 * Append delta rows straight into evstream._delta with heap_insert and
 * index_insert: no parsing, planning or permission checks on the
 * producer's path (the caller was allowed to insert into the topic, and
 * the rows only describe that insert).
 */
static void
evs_insert_delta_rows(DeltaEntry **entries, int n)
{
	Oid			nsp = get_namespace_oid("evstream", false);
	Oid			relid = get_relname_relid("_delta", nsp);
	Relation	rel;
	List	   *indexes;
	ListCell   *lc;
	int			nidx = 0;
	Relation   *irels;
	IndexInfo **iinfos;
	int			i;

	if (!OidIsValid(relid))
		elog(ERROR, "evstream._delta does not exist");
	rel = table_open(relid, RowExclusiveLock);
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
		DeltaEntry *e = entries[i];
		Datum		values[6];
		bool		nulls[6] = {false, false, false, false, false, false};
		HeapTuple	tup;
		int			k;

		values[0] = Int32GetDatum(e->key.agg);
		nulls[1] = e->key.isnull;
		values[1] = e->key.isnull ? (Datum) 0 : CStringGetTextDatum(e->key.group);
		nulls[2] = !e->bucketed;
		values[2] = TimestampTzGetDatum(e->key.bucket);
		values[3] = Int64GetDatum(e->count);
		nulls[4] = nulls[5] = !e->published;
		values[4] = Int64GetDatum(e->published_count);
		values[5] = Int64GetDatum(e->published_id);
		tup = heap_form_tuple(RelationGetDescr(rel), values, nulls);
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

/* qsort comparator for int64 */
static int
evs_cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/*
 * Publish the new counts of changed groups as events of the output topic,
 * as the superuser (the producer needs no privilege on the output topic).
 * The count is the one this transaction sees: its own delta on top of
 * what was committed.  Each entry remembers the count and the event id it
 * published; the worker compares them with the merged totals and
 * publishes a correction when a concurrent producer made the latest event
 * of a group stale (see evstream._merge_deltas).
 */
static void
evs_publish_counts(Oid output_topic, DeltaEntry **entries, int n)
{
	Oid			types[4] = {INT4OID, TEXTARRAYOID, TIMESTAMPTZARRAYOID, INT8ARRAYOID};
	Datum		values[4];
	Datum	   *groups = palloc(sizeof(Datum) * n);
	bool	   *gnulls = palloc(sizeof(bool) * n);
	Datum	   *buckets = palloc(sizeof(Datum) * n);
	bool	   *bnulls = palloc(sizeof(bool) * n);
	Datum	   *counts = palloc(sizeof(Datum) * n);
	int64	   *ids = palloc(sizeof(int64) * n);
	EvsSuperuserState su;
	char	   *sql;
	uint64		i;

	if (!OidIsValid(output_topic) || get_rel_name(output_topic) == NULL)
		return;
	for (i = 0; i < n; i++)
	{
		gnulls[i] = entries[i]->key.isnull;
		groups[i] = gnulls[i] ? (Datum) 0 : CStringGetTextDatum(entries[i]->key.group);
		bnulls[i] = !entries[i]->bucketed;
		buckets[i] = TimestampTzGetDatum(entries[i]->key.bucket);
	}
	values[0] = Int32GetDatum(entries[0]->key.agg);
	values[1] = evs_array(groups, gnulls, n, TEXTOID);
	values[2] = evs_array(buckets, bnulls, n, TIMESTAMPTZOID);

	CommandCounterIncrement();
	EvsBecomeSuperuser(&su);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/* the counts before this statement's deltas, in entry order */
	if (SPI_execute_with_args("SELECT evstream._current_count($1, u.k, u.b) "
							  "FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) "
							  "WITH ORDINALITY AS u(k, b, o) ORDER BY u.o",
							  3, types, values, NULL, false, 0) != SPI_OK_SELECT ||
		SPI_processed != n)
		elog(ERROR, "could not read the counts of aggregate %d", entries[0]->key.agg);
	for (i = 0; i < n; i++)
	{
		bool		isnull;

		entries[i]->published_count =
			DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull)) +
			entries[i]->count;
		counts[i] = Int64GetDatum(entries[i]->published_count);
	}
	values[3] = evs_array(counts, NULL, n, INT8OID);

	/* ids increase in insertion order, so sorted ids follow entry order */
	sql = psprintf("INSERT INTO %s (key, payload) "
				   "SELECT u.k, pg_catalog.jsonb_build_object('count', u.n)%s "
				   "FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4)) "
				   "WITH ORDINALITY AS u(k, b, n, o) WHERE $1 IS NOT NULL ORDER BY u.o RETURNING id",
				   EvsQualifiedName(output_topic),
				   entries[0]->bucketed ? " || pg_catalog.jsonb_build_object('bucket_start', u.b)" : "");
	if (SPI_execute_with_args(sql, 4, types, values, NULL, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != n)
		elog(ERROR, "could not publish the counts of aggregate %d", entries[0]->key.agg);
	for (i = 0; i < n; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	}
	qsort(ids, n, sizeof(int64), evs_cmp_int64);
	for (i = 0; i < n; i++)
	{
		entries[i]->published = true;
		entries[i]->published_id = ids[i];
	}
	SPI_finish();
	EvsRestoreUser(&su);
}

/* Write every pending count as delta rows (one per group and bucket) */
static void
evs_flush_once(void)
{
	HTAB	   *h = pending;
	MemoryContext cxt = pending_cxt;
	HASH_SEQ_STATUS seq;
	DeltaEntry *e;
	DeltaEntry **all;
	DeltaEntry **mine;
	DeltaEntry **batch;
	long		total = hash_get_num_entries(h);
	int			n = 0;
	int			i;
	bool		notify = false;

	/* detach: writing output topics may add new pending counts */
	pending = NULL;
	pending_cxt = NULL;
	pending_n = 0;

	all = palloc(sizeof(DeltaEntry *) * (total + 1));
	mine = palloc(sizeof(DeltaEntry *) * (total + 1));
	batch = palloc(sizeof(DeltaEntry *) * (total + 1));
	hash_seq_init(&seq, h);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->count != 0)
		{
			all[n++] = e;
			/* the worker merges soon: for pushes and changelog corrections */
			notify |= e->notify || OidIsValid(e->output_topic);
		}
	/* output topics first (one statement per aggregate): rows record it */
	memcpy(mine, all, sizeof(DeltaEntry *) * n);
	for (i = 0; i < n; i++)
	{
		int			m = 0;
		int			j;

		if (mine[i] == NULL || !OidIsValid(mine[i]->output_topic))
			continue;
		for (j = n - 1; j >= i; j--)
			if (mine[j] != NULL && mine[j]->key.agg == mine[i]->key.agg)
			{
				batch[m++] = mine[j];
				if (j != i)
					mine[j] = NULL;
			}
		evs_publish_counts(mine[i]->output_topic, batch, m);
	}
	evs_insert_delta_rows(all, n);

	hash_destroy(h);
	MemoryContextDelete(cxt);
	if (notify)
		EvsMarkDeltasCommitted();
}

/* Write pending counts now (statement end, COPY end, pre-commit) */
void
EvsFlushDeltas(void)
{
	int			rounds = 0;

	if (flushing || pending_n == 0)
		return;
	flushing = true;
	PG_TRY();
	{
		while (pending_n > 0)
		{
			if (++rounds > 8)
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("evstream aggregates feed each other's output topics more than 8 levels deep")));
			evs_flush_once();
		}
	}
	PG_FINALLY();
	{
		flushing = false;
	}
	PG_END_TRY();
}

static void
evs_executor_finish(QueryDesc *queryDesc)
{
	if (prev_ExecutorFinish)
		prev_ExecutorFinish(queryDesc);
	else
		standard_ExecutorFinish(queryDesc);
	if (pending_n > 0 && !flushing)
		EvsFlushDeltas();
}

static void
evs_agg_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (pending_n > 0)
			{
				bool		pushed = false;

				if (!ActiveSnapshotSet())
				{
					PushActiveSnapshot(GetTransactionSnapshot());
					pushed = true;
				}
				EvsFlushDeltas();
				if (pushed)
					PopActiveSnapshot();
			}
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PREPARE:
			/* the context goes away with TopTransactionContext */
			pending = NULL;
			pending_cxt = NULL;
			pending_n = 0;
			flushing = false;
			break;
		default:
			break;
	}
}

/* Subtransactions: drop or hand over the counts of their level */
static void
evs_agg_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	HASH_SEQ_STATUS seq;
	DeltaEntry *e;
	int			level;
	List	   *moved = NIL;
	ListCell   *lc;

	if (pending == NULL || pending_n == 0)
		return;
	if (event != SUBXACT_EVENT_ABORT_SUB && event != SUBXACT_EVENT_COMMIT_SUB)
		return;
	level = GetCurrentTransactionNestLevel();

	hash_seq_init(&seq, pending);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (e->key.level < level)
			continue;
		if (event == SUBXACT_EVENT_COMMIT_SUB)
		{
			DeltaEntry *copy = palloc(sizeof(DeltaEntry));

			*copy = *e;
			moved = lappend(moved, copy);
		}
		pending_n -= e->count;
		hash_search(pending, &e->key, HASH_REMOVE, NULL);
	}
	foreach(lc, moved)
	{
		DeltaEntry *m = lfirst(lc);
		bool		found;

		m->key.level = level - 1;
		e = hash_search(pending, &m->key, HASH_ENTER, &found);
		if (!found)
		{
			e->count = 0;
			e->notify = m->notify;
			e->output_topic = m->output_topic;
			e->bucketed = m->bucketed;
			e->published = false;
		}
		e->count += m->count;
		pending_n += m->count;
	}
	list_free_deep(moved);
}

void
EvsAggregatesInit(void)
{
	prev_ExecutorFinish = ExecutorFinish_hook;
	ExecutorFinish_hook = evs_executor_finish;
	RegisterXactCallback(evs_agg_xact_callback, NULL);
	RegisterSubXactCallback(evs_agg_subxact_callback, NULL);
}

/* ---------------------------------------------------------------- DDL */

/*
 * Parse and check a group_by expression against the topic; returns its
 * text-valued, fully qualified deparsed form.
 */
/* Errors while parsing group_by: point into it, not into the caller's query */
static void
evs_group_by_errcontext(void *arg)
{
	const char *group_by = arg;
	int			pos = geterrposition();

	if (pos > 0)
	{
		errposition(0);
		internalerrposition(pos);
		internalerrquery(group_by);
	}
	errcontext("group_by expression \"%s\"", group_by);
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

static char *
evs_check_group_by(Relation rel, const char *group_by)
{
	ErrorContextCallback errcallback;
	List	   *raw;
	RawStmt    *rs;
	SelectStmt *sel;
	ParseState *pstate;
	ParseNamespaceItem *nsitem;
	Node	   *expr;
	char	   *result;
	int			save_nestlevel;

	errcallback.callback = evs_group_by_errcontext;
	errcallback.arg = (void *) group_by;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	raw = raw_parser(group_by, RAW_PARSE_PLPGSQL_EXPR);
	rs = list_length(raw) == 1 ? linitial_node(RawStmt, raw) : NULL;
	sel = (rs && IsA(rs->stmt, SelectStmt)) ? (SelectStmt *) rs->stmt : NULL;
	if (sel == NULL || list_length(sel->targetList) != 1 || sel->fromClause ||
		sel->whereClause || sel->groupClause || sel->havingClause ||
		sel->windowClause || sel->sortClause || sel->limitCount ||
		sel->limitOffset || sel->lockingClause || sel->distinctClause ||
		sel->withClause || sel->intoClause || sel->valuesLists ||
		sel->op != SETOP_NONE ||
		((ResTarget *) linitial(sel->targetList))->name != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("group_by must be a single SQL expression, not \"%s\"", group_by),
				 errhint("Use an expression over id, key, payload and created_at, for example payload->>'word'.")));
	if (evs_has_star(((ResTarget *) linitial(sel->targetList))->val, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("group_by must not use \"*\""),
				 errhint("Use an expression over id, key, payload and created_at, for example payload->>'word'.")));

	pstate = make_parsestate(NULL);
	pstate->p_sourcetext = NULL;	/* positions come from the callback */
	nsitem = addRangeTableEntryForRelation(pstate, rel, AccessShareLock,
										   NULL, false, true);
	addNSItemToQuery(pstate, nsitem, false, true, true);
	expr = transformExpr(pstate, ((ResTarget *) linitial(sel->targetList))->val,
						 EXPR_KIND_SELECT_TARGET);
	assign_expr_collations(pstate, expr);
	if (pstate->p_hasAggs || pstate->p_hasWindowFuncs)
		ereport(ERROR,
				(errcode(ERRCODE_GROUPING_ERROR),
				 errmsg("group_by must not contain aggregate or window functions")));
	if (evs_has_special_var(expr, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("group_by must use only the columns id, key, payload and created_at"),
				 errdetail("Whole-row references and system columns are not allowed.")));
	if (checkExprHasSubLink(expr))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("group_by must not contain subqueries")));
	if (expression_returns_set(expr))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("group_by must not return a set")));
	if (contain_mutable_functions(expr))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("group_by must be immutable: \"%s\"", group_by),
				 errdetail("Counts must not change when the same event is evaluated again."),
				 errhint("Functions used in group_by must be marked IMMUTABLE.")));
	expr = coerce_to_target_type(pstate, expr, exprType(expr), TEXTOID, -1,
								 COERCION_EXPLICIT, COERCE_EXPLICIT_CAST, -1);
	if (expr == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("group_by cannot be converted to text")));

	/* deparse with an empty search_path: everything else gets qualified */
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	result = deparse_expression(expr,
								deparse_context_for(RelationGetRelationName(rel),
													RelationGetRelid(rel)),
								false, false);
	AtEOXact_GUC(true, save_nestlevel);
	error_context_stack = errcallback.previous;
	return result;
}

/* Resolve a relation name to create (schema, name); error if it exists */
static RangeVar *
evs_new_relation_name(const char *what, const char *name, Oid *nspid)
{
	RangeVar   *rv = makeRangeVarFromNameList(stringToQualifiedNameList(name));

	if (rv->relname[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("%s must not be empty", what)));
	if (strlen(rv->relname) > NAMEDATALEN - 1)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("%s \"%s\" is too long", what, rv->relname)));
	*nspid = RangeVarGetCreationNamespace(rv);
	if (pg_namespace_aclcheck(*nspid, GetUserId(), ACL_CREATE) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_SCHEMA, get_namespace_name(*nspid));
	return rv;
}

PG_FUNCTION_INFO_V1(evstream_create_aggregate);

/*
 * evstream.create_aggregate(name text, topic regclass, group_by text,
 *		bucket interval, output_topic text, notify boolean) RETURNS regclass
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
	char	   *qtopic;
	Oid			output = InvalidOid;
	bool		output_created = false;
	int32		id;
	Oid			view;
	AclResult	acl;
	EvsSuperuserState su;
	StringInfoData sql;
	int			i;
	const char *argnames[] = {"name", "topic", "group_by", "bucket", "output_topic", "notify"};

	for (i = 0; i < 6; i++)
		if (PG_ARGISNULL(i) && i != 3 && i != 4)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be NULL", argnames[i])));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	topic = PG_GETARG_OID(1);
	group_by = text_to_cstring(PG_GETARG_TEXT_PP(2));
	notify = PG_GETARG_BOOL(5);
	if (!PG_ARGISNULL(3))
	{
		bucket = PG_GETARG_INTERVAL_P(3);
		(void) EvsBucketUsecs(bucket, "bucket");
	}
	(void) EvsRequireTopic(topic, "create_aggregate");
	/* the backfill must see every event committed before the lock */
	EvsRequireReadCommitted("create_aggregate");
	acl = pg_class_aclcheck(topic, GetUserId(), ACL_SELECT);
	if (acl != ACLCHECK_OK)
		aclcheck_error(acl, OBJECT_TABLE, get_rel_name(topic));

	rv = evs_new_relation_name("aggregate name", name, &nspid);
	if (OidIsValid(get_relname_relid(rv->relname, nspid)))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_TABLE),
				 errmsg("relation \"%s\" already exists", rv->relname)));

	rel = relation_open(topic, AccessShareLock);
	expr = evs_check_group_by(rel, group_by);
	relation_close(rel, AccessShareLock);
	qtopic = EvsQualifiedName(topic);

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

			output = (Oid) EvsSpiInt64("SELECT evstream.create_topic($1)::oid", 1, types, values, &isnull);
			output_created = true;
			CommandCounterIncrement();
		}
		else
		{
			(void) EvsRequireTopic(output, "create_aggregate");
			acl = pg_class_aclcheck(output, GetUserId(), ACL_INSERT);
			if (acl != ACLCHECK_OK)
				aclcheck_error(acl, OBJECT_TABLE, get_rel_name(output));
		}
		if (output == topic)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("output_topic must differ from the aggregate's topic \"%s\"", get_rel_name(topic))));
	}

	/* producers wait while we register and backfill: nothing is missed */
	LockRelationOid(topic, ShareLock);
	(void) find_all_inheritors(topic, ShareLock, NULL);

	EvsBecomeSuperuser(&su);
	id = (int32) EvsSpiInt64("SELECT pg_catalog.nextval('evstream._aggregate_id_seq')::int4",
							 0, NULL, NULL, NULL);
	EvsRestoreUser(&su);

	/* the relation users query: merged counts plus pending deltas */
	qview = quote_qualified_identifier(get_namespace_name(nspid), rv->relname);
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "CREATE VIEW %s AS SELECT s.group_key, %spg_catalog.sum(s.n)::bigint AS count "
					 "FROM (SELECT c.group_key, c.bucket_start, c.count AS n FROM evstream._count c WHERE c.agg = %d "
					 "UNION ALL SELECT d.group_key, d.bucket_start, d.delta FROM evstream._delta d WHERE d.agg = %d) s "
					 "GROUP BY s.group_key%s",
					 qview, bucket ? "s.bucket_start, " : "", id, id,
					 bucket ? ", s.bucket_start" : "");
	EvsSpiExec(sql.data, 0, NULL, NULL, 0);
	CommandCounterIncrement();
	view = get_relname_relid(rv->relname, nspid);

	EvsBecomeSuperuser(&su);
	{
		Oid			types[8] = {INT4OID, OIDOID, OIDOID, TEXTOID, INTERVALOID, OIDOID, BOOLOID, BOOLOID};
		Datum		values[8] = {Int32GetDatum(id), ObjectIdGetDatum(view), ObjectIdGetDatum(topic),
			CStringGetTextDatum(expr), bucket ? IntervalPGetDatum(bucket) : (Datum) 0,
		ObjectIdGetDatum(output), BoolGetDatum(output_created), BoolGetDatum(notify)};
		char		nulls[8] = {' ', ' ', ' ', ' ', bucket ? ' ' : 'n', OidIsValid(output) ? ' ' : 'n', ' ', ' '};

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_with_args("INSERT INTO evstream._aggregate (id, aggregate, topic, group_by, bucket, "
								  "output_topic, output_created, notify) "
								  "VALUES ($1, $2::regclass, $3::regclass, $4, $5, $6::regclass, $7, $8)",
								  8, types, values, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not record aggregate");
		SPI_finish();
	}
	EvsRestoreUser(&su);

	/*
	 * Backfill: the expression runs as the caller (it may call the caller's
	 * functions); only the results are written as the superuser.
	 */
	{
		Oid			types[1] = {INTERVALOID};
		Datum		values[1] = {bucket ? IntervalPGetDatum(bucket) : (Datum) 0};
		char		nulls[1] = {bucket ? ' ' : 'n'};
		int			ret;

		resetStringInfo(&sql);
		appendStringInfo(&sql,
						 "SELECT pg_catalog.array_agg(g.k), pg_catalog.array_agg(g.b), pg_catalog.array_agg(g.n) FROM "
						 "(SELECT (%s) AS k, CASE WHEN $1 IS NULL THEN NULL ELSE "
						 "pg_catalog.date_bin($1, t.created_at, 'epoch'::timestamptz) END AS b, "
						 "pg_catalog.count(*) AS n FROM %s t GROUP BY 1, 2) g",
						 expr, qtopic);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		ret = SPI_execute_with_args(sql.data, 1, types, values, nulls, false, 0);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not backfill aggregate");
		else
		{
			bool		isnull;
			Datum		ks = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			if (!isnull)
			{
				Oid			itypes[4] = {INT4OID, TEXTARRAYOID, TIMESTAMPTZARRAYOID, INT8ARRAYOID};
				Datum		ivalues[4];
				bool		n2,
							n3;

				ivalues[0] = Int32GetDatum(id);
				ivalues[1] = SPI_datumTransfer(ks, false, -1);
				ivalues[2] = SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &n2), false, -1);
				ivalues[3] = SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &n3), false, -1);
				SPI_finish();
				EvsBecomeSuperuser(&su);
				EvsSpiExec("INSERT INTO evstream._count (agg, group_key, bucket_start, count) "
						   "SELECT $1, u.k, u.b, u.n FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4)) AS u(k, b, n)",
						   4, itypes, ivalues, SPI_OK_INSERT);
				EvsRestoreUser(&su);
			}
			else
				SPI_finish();
		}
	}

	CacheInvalidateRelcacheByRelid(topic);
	PG_RETURN_OID(view);
}

/* Drop an aggregate's view (the event trigger forgets the rest) */
void
EvsDropAggregate(Oid view)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(view)};
	bool		isnull;
	int64		topic;
	int64		output;

	topic = EvsSpiInt64("SELECT topic::oid FROM evstream._aggregate WHERE aggregate = $1::regclass",
						1, types, values, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("relation \"%s\" is not an evstream aggregate", get_rel_name(view)),
				 errhint("Create aggregates with evstream.create_aggregate().")));
	if (!pg_class_ownercheck(view, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_VIEW, get_rel_name(view));
	output = EvsSpiInt64("SELECT output_topic::oid FROM evstream._aggregate "
						 "WHERE aggregate = $1::regclass AND output_created",
						 1, types, values, &isnull);

	EvsSpiExec(psprintf("DROP VIEW %s", EvsQualifiedName(view)), 0, NULL, NULL, 0);
	CacheInvalidateRelcacheByRelid((Oid) topic);
	if (!isnull && get_rel_name((Oid) output) != NULL)
	{
		Oid			otypes[1] = {OIDOID};
		Datum		ovalues[1] = {ObjectIdGetDatum((Oid) output)};

		CommandCounterIncrement();
		EvsSpiExec("SELECT evstream.drop_topic($1::regclass)", 1, otypes, ovalues, SPI_OK_SELECT);
	}
}

PG_FUNCTION_INFO_V1(evstream_drop_aggregate);

/* evstream.drop_aggregate(name regclass) */
Datum
evstream_drop_aggregate(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("name must not be NULL")));
	EvsDropAggregate(PG_GETARG_OID(0));
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
