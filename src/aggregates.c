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
 *	  which the rows were inserted; a statement end writes only the counts
 *	  of its own level (and deeper), never an enclosing statement's.  A subtransaction abort drops the counts
 *	  of its level and deeper (their rows are gone); a subtransaction commit
 *	  hands them to its parent.  Counts already written as delta rows follow
 *	  their subtransaction like any row.
 *
 *	  Output topics and notifications come from the merge (see "merge"
 *	  below), after the producers' commits: producers only write delta rows.
 *
 *	  Privileges: only a topic's owner may create an aggregate on it (its
 *	  expression runs inside every producer's INSERT).  An expression that
 *	  calls non-built-in functions runs as the aggregate's owner with
 *	  SECURITY_RESTRICTED_OPERATION and the pinned search_path.
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
#include "commands/async.h"
#include "utils/json.h"
#include "utils/datetime.h"

#include "evstream.h"

/* longest group key: _delta and _count index it (btree rows <= 2704 bytes) */
#define EVS_MAX_GROUP_KEY 2000

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
	bool		push;			/* the worker should merge soon (notify/output) */
	bool		bucketed;
} DeltaEntry;

static HTAB *pending = NULL;
static MemoryContext pending_cxt = NULL;
static int64 pending_n = 0;
static ExprContext *accum_econtext = NULL;
static bool accumulating = false;	/* inside EvsAccumulate: no nesting */

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

/* Count a batch of rows in one aggregate's pending deltas */
static void
evs_accumulate_agg(EvsAggregate *a, TupleTableSlot **slots, int nslots, int level)
{
	int			i;

	for (i = 0; i < nslots; i++)
	{
		TupleTableSlot *slot = slots[i];
		DeltaKey	key;
		DeltaEntry *e;
		bool		found;
		bool		isnull;
		Datum		d;
		char	   *tmp;

		CHECK_FOR_INTERRUPTS();
		ResetExprContext(accum_econtext);
		accum_econtext->ecxt_scantuple = slot;
		d = ExecEvalExprSwitchContext(a->expr, accum_econtext, &isnull);
		key.agg = a->id;
		key.level = level;
		key.isnull = isnull;
		tmp = isnull ? NULL : TextDatumGetCString(d);
		if (tmp != NULL && strlen(tmp) > EVS_MAX_GROUP_KEY)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("group key of aggregate \"%s\" is too long (%zu bytes)",
							get_rel_name(a->view), strlen(tmp)),
					 errdetail("Group keys are limited to %d bytes.", EVS_MAX_GROUP_KEY),
					 errhint("Group by a shorter expression, for example md5() of it.")));
		key.group = tmp;
		key.bucket = 0;
		if (a->bucket)
		{
			bool		tsnull;
			Datum		ts = slot_getattr(slot, 4, &tsnull);

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
			e->push = a->notify || OidIsValid(a->output_topic);
			e->bucketed = a->bucket != NULL;
		}
		if (tmp != NULL)
			pfree(tmp);
		e->count++;
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
 */
void
EvsAccumulate(Relation rel, TupleTableSlot **slots, int nslots)
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
		 * The owner's restore COPY into this topic: remember the highest
		 * id, count nothing (the counts come with the catalog).  Rows that
		 * triggers send to other topics meanwhile count as usual.
		 */
		for (i = 0; i < nslots; i++)
		{
			bool		isnull;
			Datum		id = slot_getattr(slots[i], 1, &isnull);

			if (!isnull && DatumGetInt64(id) > evs_copy_max_id)
				evs_copy_max_id = DatumGetInt64(id);
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
	Relation	rel;
	List	   *indexes;
	ListCell   *lc;
	int			nidx = 0;
	Relation   *irels;
	IndexInfo **iinfos;
	int			i;

	rel = table_open(EvsCatalogRelid(EVS_REL_DELTA), RowExclusiveLock);
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
		bool		nulls[6] = {false, false, false, false, true, true};
		HeapTuple	tup;
		int			k;

		values[0] = Int32GetDatum(e->key.agg);
		nulls[1] = e->key.isnull;
		values[1] = e->key.isnull ? (Datum) 0 : CStringGetTextDatum(e->key.group);
		nulls[2] = !e->bucketed;
		values[2] = TimestampTzGetDatum(e->key.bucket);
		values[3] = Int64GetDatum(e->count);
		values[4] = values[5] = (Datum) 0;
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

/*
 * Write the pending counts of the current nesting level (and deeper) as
 * delta rows, one per group and bucket.  Counts of outer levels belong to
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
	int			n = 0;
	int			i;
	int			level = GetCurrentTransactionNestLevel();
	bool		push = false;

	if (pending == NULL || pending_n == 0)
		return;
	mine = palloc(sizeof(DeltaEntry *) * (hash_get_num_entries(pending) + 1));
	hash_seq_init(&seq, pending);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->key.level >= level && e->count != 0)
		{
			mine[n++] = e;
			push |= e->push;
		}
	if (n == 0)
	{
		pfree(mine);
		return;
	}
	evs_insert_delta_rows(mine, n);
	for (i = 0; i < n; i++)
	{
		pending_n -= mine[i]->count;
		hash_search(pending, &mine[i]->key, HASH_REMOVE, NULL);
	}
	pfree(mine);
	if (push)
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

	if (pending_n == 0)
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
	pending_n = 0;
	accumulating = false;
}

/* Subtransaction end (xact.c): drop or hand over the counts of its level */
void
EvsCountsAtSubXactEnd(bool commit)
{
	HASH_SEQ_STATUS seq;
	DeltaEntry *e;
	int			level;
	List	   *moved = NIL;
	ListCell   *lc;

	if (pending == NULL || pending_n == 0)
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
			e->push = m->push;
			e->bucketed = m->bucketed;
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

	/*
	 * Deparse under the pinned path: everything outside pg_catalog gets
	 * qualified, and the text parses back to the same expression under the
	 * same path (catalog.c compiles it so; the backfill runs it so).
	 */
	save_nestlevel = EvsPinSearchPath();
	result = deparse_expression(expr,
								deparse_context_for(RelationGetRelationName(rel),
													RelationGetRelid(rel)),
								false, false);
	EvsUnpinSearchPath(save_nestlevel);
	error_context_stack = errcallback.previous;
	return result;
}

/* Resolve a relation name to create (schema, name); error if it exists */
static RangeVar *
evs_new_relation_name(const char *what, const char *name, Oid *nspid)
{
	RangeVar   *rv = makeRangeVarFromNameList(evs_string_to_qualified_name_list(name));

	if (rv->relname[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("%s must not be empty", what)));
	if (strlen(rv->relname) > NAMEDATALEN - 1)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("%s \"%s\" is too long", what, rv->relname)));
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
	EvsUserState su;
	StringInfoData sql;
	int			i;
	const char *argnames[] = {"name", "topic", "group_by", "bucket", "output_topic", "notify"};

	for (i = 0; i < 6; i++)
		if (i != 3 && i != 4)
			EvsArgNotNull(fcinfo, i, argnames[i]);
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
	/* its expression runs inside every producer's INSERT: owners only */
	EvsRequireOwner(topic);

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
	}

	/* producers wait while we register and backfill: nothing is missed */
	LockRelationOid(topic, ShareLock);
	(void) find_all_inheritors(topic, ShareLock, NULL);

	EvsBecomeSuperuser(&su);
	id = (int32) EvsSpiInt64("SELECT pg_catalog.nextval('evstream._aggregate_id_seq')::pg_catalog.int4",
							 0, NULL, NULL, NULL);
	EvsRestoreUser(&su);

	/* the relation users query: merged counts plus pending deltas */
	qview = quote_qualified_identifier(get_namespace_name(nspid), rv->relname);
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "CREATE VIEW %s AS SELECT s.group_key, %spg_catalog.sum(s.n)::pg_catalog.int8 AS count "
					 "FROM (SELECT c.group_key, c.bucket_start, c.count AS n FROM evstream._count c WHERE c.agg OPERATOR(pg_catalog.=) %d "
					 "UNION ALL SELECT d.group_key, d.bucket_start, d.delta FROM evstream._delta d WHERE d.agg OPERATOR(pg_catalog.=) %d) s "
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
								  "VALUES ($1, $2::pg_catalog.regclass, $3::pg_catalog.regclass, $4, $5, $6::pg_catalog.regclass, $7, $8)",
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
						 "pg_catalog.date_bin($1, t.created_at, 'epoch'::pg_catalog.timestamptz) END AS b, "
						 "pg_catalog.count(*) AS n FROM %s t GROUP BY 1, 2) g",
						 expr, qtopic);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		{
			int			level = EvsPinSearchPath();

			ret = SPI_execute_with_args(sql.data, 1, types, values, nulls, false, 0);
			EvsUnpinSearchPath(level);
		}
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

	topic = EvsSpiInt64("SELECT a.topic::pg_catalog.oid FROM evstream._aggregate a "
						"WHERE a.aggregate OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
						1, types, values, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("relation \"%s\" is not an evstream aggregate", get_rel_name(view)),
				 errhint("Create aggregates with evstream.create_aggregate().")));
	EvsRequireOwner(view);
	output = EvsSpiInt64("SELECT a.output_topic::pg_catalog.oid FROM evstream._aggregate a "
						 "WHERE a.aggregate OPERATOR(pg_catalog.=) $1::pg_catalog.regclass AND a.output_created",
						 1, types, values, &isnull);

	EvsSpiExec(psprintf("DROP VIEW %s", EvsQualifiedName(view)), 0, NULL, NULL, 0);
	CacheInvalidateRelcacheByRelid((Oid) topic);
	if (!isnull && get_rel_name((Oid) output) != NULL)
	{
		Oid			otypes[1] = {OIDOID};
		Datum		ovalues[1] = {ObjectIdGetDatum((Oid) output)};

		CommandCounterIncrement();
		EvsSpiExec("SELECT evstream.drop_topic($1::pg_catalog.regclass)", 1, otypes, ovalues, SPI_OK_SELECT);
	}
}

PG_FUNCTION_INFO_V1(evstream_drop_aggregate);

/* evstream.drop_aggregate(name regclass) */
Datum
evstream_drop_aggregate(PG_FUNCTION_ARGS)
{
	EvsArgNotNull(fcinfo, 0, "name");
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

/* ---------------------------------------------------------------- merge */

/*
 * Folding committed deltas into counts (the worker, every 250 ms at most
 * under load and at every maintenance pass; evstream._merge_deltas()).
 *
 * Per aggregate, in its own subtransaction, so one aggregate's failure
 * (its output topic's trigger raises, a lock it cannot get) stays its own:
 *	1. as the superuser, fixed SQL on evstream's tables only: the
 *	   aggregate's committed delta rows are deleted and added to _count
 *	   (one upsert per group), returning each changed group's new total;
 *	2. the new totals are announced on the aggregate's channel (split to
 *	   stay under the 8000-byte payload limit);
 *	3. with an output topic, one change event per changed group is
 *	   inserted into it as the aggregate's owner under
 *	   SECURITY_RESTRICTED_OPERATION (its triggers, defaults and policies
 *	   run as their owner; INSERT is checked for the aggregate's owner).
 * The three commit together.  Ordered changelog: a group's total only
 * grows, and two merges touching one group serialize on its _count row
 * (the second's upsert waits for the first to commit, so its event gets a
 * higher id and commits later): per group, change events carry totals in
 * commit order, never going back or repeating, and the latest is exact.
 */
typedef struct MergeArgs
{
	int32		agg;
	Oid			view;
	Oid			output_topic;
	bool		notify;
	bool		bucketed;
	int			changed;		/* out */
} MergeArgs;

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
					cnull;
		Datum		k = SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &knull);
		Datum		b = SPI_getbinval(tt->vals[i], tt->tupdesc, 2, &bnull);
		Datum		c = SPI_getbinval(tt->vals[i], tt->tupdesc, 3, &cnull);

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
		appendStringInfo(&one, ", \"count\": " INT64_FORMAT "}", DatumGetInt64(c));
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

/* Insert the change events into the output topic, as the aggregate's owner */
static void
evs_publish_changes(MergeArgs *m, SPITupleTable *tt, uint64 n)
{
	Datum	   *ks = palloc(sizeof(Datum) * n);
	bool	   *knulls = palloc(sizeof(bool) * n);
	Datum	   *bs = palloc(sizeof(Datum) * n);
	bool	   *bnulls = palloc(sizeof(bool) * n);
	Datum	   *cs = palloc(sizeof(Datum) * n);
	int			dims[1] = {(int) n};
	int			lbs[1] = {1};
	Oid			types[3] = {TEXTARRAYOID, TIMESTAMPTZARRAYOID, INT8ARRAYOID};
	Datum		values[3];
	EvsUserState st;
	char	   *sql;
	uint64		i;

	for (i = 0; i < n; i++)
	{
		bool		cnull;

		ks[i] = SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &knulls[i]);
		bs[i] = SPI_getbinval(tt->vals[i], tt->tupdesc, 2, &bnulls[i]);
		cs[i] = SPI_getbinval(tt->vals[i], tt->tupdesc, 3, &cnull);
	}
	values[0] = PointerGetDatum(construct_md_array(ks, knulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
	values[1] = PointerGetDatum(construct_md_array(bs, bnulls, 1, dims, lbs, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = PointerGetDatum(construct_md_array(cs, NULL, 1, dims, lbs, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	sql = psprintf("INSERT INTO %s (key, payload) "
				   "SELECT u.k, pg_catalog.jsonb_build_object('count', u.n)%s "
				   "FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3)) "
				   "WITH ORDINALITY AS u(k, b, n, o) ORDER BY u.o",
				   EvsQualifiedName(m->output_topic),
				   m->bucketed ?
				   " OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('bucket_start', u.b)" : "");
	EvsBecomeOwner(EvsRelOwner(m->view), &st);
	if (SPI_execute_with_args(sql, 3, types, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not publish the changes of aggregate \"%s\"", get_rel_name(m->view));
	EvsRestoreUser(&st);
}

static void
evs_merge_one(void *arg)
{
	MergeArgs  *m = arg;
	Oid			types[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(m->agg)};
	EvsUserState su;
	SPITupleTable *tt;
	uint64		n;
	int			ret;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EvsBecomeSuperuser(&su);
	ret = SPI_execute_with_args(
								"WITH d AS (DELETE FROM evstream._delta x WHERE x.agg OPERATOR(pg_catalog.=) $1 "
								"  RETURNING x.group_key, x.bucket_start, x.delta), "
								"s AS (SELECT d.group_key, d.bucket_start, pg_catalog.sum(d.delta)::pg_catalog.int8 AS n "
								"  FROM d GROUP BY 1, 2), "
								"u AS (INSERT INTO evstream._count AS c (agg, group_key, bucket_start, count) "
								"  SELECT $1, s.group_key, s.bucket_start, s.n FROM s "
								"  ON CONFLICT ON CONSTRAINT _count_key DO UPDATE "
								"  SET count = c.count OPERATOR(pg_catalog.+) excluded.count "
								"  RETURNING c.group_key, c.bucket_start, c.count) "
								"SELECT u.group_key, u.bucket_start, u.count FROM u ORDER BY 1, 2",
								1, types, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not merge the deltas of aggregate %d", m->agg);
	EvsRestoreUser(&su);
	tt = SPI_tuptable;
	n = SPI_processed;
	m->changed = (int) n;
	if (n > 0 && get_rel_name(m->view) != NULL)
	{
		if (m->notify)
			evs_notify_changes(get_rel_name(m->view), tt, n);
		if (OidIsValid(m->output_topic) && get_rel_name(m->output_topic) != NULL)
			evs_publish_changes(m, tt, n);
	}
	SPI_finish();
}

/*
 * Merge every aggregate's deltas (or only_agg's); returns the number of
 * groups that changed.  Failures are appended to errors (when not NULL).
 * Needs a transaction with an active snapshot.
 */
int
EvsMergeDeltas(int32 only_agg, StringInfo errors)
{
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tup;
	List	   *aggs = NIL;
	ListCell   *lc;
	int			changed = 0;

	rel = table_open(EvsCatalogRelid(EVS_REL_AGGREGATE), AccessShareLock);
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		TupleDesc	desc = RelationGetDescr(rel);
		bool		isnull;
		MergeArgs  *m = palloc0(sizeof(MergeArgs));
		Datum		d;

		m->agg = DatumGetInt32(heap_getattr(tup, 1, desc, &isnull));
		m->view = DatumGetObjectId(heap_getattr(tup, 2, desc, &isnull));
		(void) heap_getattr(tup, 5, desc, &isnull);
		m->bucketed = !isnull;
		d = heap_getattr(tup, 6, desc, &isnull);
		m->output_topic = isnull ? InvalidOid : DatumGetObjectId(d);
		m->notify = DatumGetBool(heap_getattr(tup, 8, desc, &isnull));
		if (only_agg == 0 || m->agg == only_agg)
			aggs = lappend(aggs, m);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	foreach(lc, aggs)
	{
		MergeArgs  *m = lfirst(lc);
		char	   *name = get_rel_name(m->view);

		CHECK_FOR_INTERRUPTS();
		if (EvsTrySubxact(evs_merge_one, m,
						  psprintf("aggregate %s", name ? name : "(dropped)"), errors))
			changed += m->changed;
	}
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
	changed = EvsMergeDeltas(PG_ARGISNULL(0) ? 0 : PG_GETARG_INT32(0), &errors);
	if (errors.len > 0)
		ereport(WARNING, (errmsg("evstream merge: %s", errors.data)));
	PG_RETURN_INT32(changed);
}
