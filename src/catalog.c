/*-------------------------------------------------------------------------
 *
 * catalog.c
 *	  The backend-local cache of evstream's catalog (which relations are
 *	  topics or topic partitions, their id sequences, their aggregates with
 *	  compiled group_by expressions), and the helpers every SQL-facing
 *	  module uses: SPI wrappers, quoting, and running catalog writes as the
 *	  bootstrap superuser after the caller's privileges were checked.
 *
 *	  Cache invalidation: any relcache invalidation of a relation the cache
 *	  knows (or a global one) marks the whole cache stale; it is rebuilt
 *	  lazily at the next lookup.  Functions that change evstream's catalog
 *	  (create/drop aggregate, set_retention, ...) send a relcache
 *	  invalidation for the topic, so every backend reloads at its next lock
 *	  on the topic.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/catalog.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "catalog/dependency.h"
#include "catalog/pg_authid_d.h"
#include "nodes/nodeFuncs.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "nodes/parsenodes.h"
#include "miscadmin.h"
#include "optimizer/optimizer.h"
#include "parser/parse_coerce.h"
#include "parser/parse_collate.h"
#include "parser/parse_expr.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "parser/parser.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "evstream.h"

static HTAB *topic_cache = NULL;
static MemoryContext topic_cache_cxt = NULL;
static bool topic_cache_stale = false;

/* Relcache callback: forget everything if a relation we know changed */
static void
evs_relcache_cb(Datum arg, Oid relid)
{
	if (topic_cache == NULL)
		return;
	if (!OidIsValid(relid) ||
		hash_search(topic_cache, &relid, HASH_FIND, NULL) != NULL)
		topic_cache_stale = true;
}

void
EvsCatalogInit(void)
{
	CacheRegisterRelcacheCallback(evs_relcache_cb, (Datum) 0);
}

/* (Re)create an empty cache */
static void
evs_cache_reset(void)
{
	HASHCTL		ctl;

	if (topic_cache != NULL)
	{
		HASH_SEQ_STATUS seq;
		EvsTopic   *t;

		hash_seq_init(&seq, topic_cache);
		while ((t = hash_seq_search(&seq)) != NULL)
			if (t->read_plan.plan != NULL)
				SPI_freeplan(t->read_plan.plan);
	}
	if (topic_cache_cxt == NULL)
		topic_cache_cxt = AllocSetContextCreate(CacheMemoryContext,
												"evstream topic cache",
												ALLOCSET_DEFAULT_SIZES);
	else
		MemoryContextReset(topic_cache_cxt);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(EvsTopic);
	ctl.hcxt = topic_cache_cxt;
	topic_cache = hash_create("evstream topics", 64, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	topic_cache_stale = false;
}

/* Run a query returning at most one int8-compatible value */
int64
EvsSpiInt64(const char *sql, int nargs, Oid *types, Datum *values, bool *isnull)
{
	int			ret;
	int64		result = 0;
	bool		null = true;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 1);
	if (ret < 0)
		elog(ERROR, "SPI_execute_with_args failed: %s", sql);
	if (SPI_processed > 0)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &null);

		if (!null)
		{
			Oid			t = SPI_gettypeid(SPI_tuptable->tupdesc, 1);

			if (t == INT4OID || t == OIDOID || t == REGCLASSOID)
				result = DatumGetInt32(d);
			else if (t == BOOLOID)
				result = DatumGetBool(d) ? 1 : 0;
			else
				result = DatumGetInt64(d);
		}
	}
	SPI_finish();
	if (isnull)
		*isnull = null;
	return result;
}

/* Run a statement; expect is the SPI result code wanted, or 0 for any */
void
EvsSpiExec(const char *sql, int nargs, Oid *types, Datum *values, int expect)
{
	int			ret;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);
	if (ret < 0 || (expect != 0 && ret != expect))
		elog(ERROR, "SPI_execute_with_args returned %d for: %s", ret, sql);
	SPI_finish();
}

/* Schema-qualified, quoted name of a relation */
char *
EvsQualifiedName(Oid relid)
{
	char	   *rel = get_rel_name(relid);
	Oid			nsp = get_rel_namespace(relid);

	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	return quote_qualified_identifier(get_namespace_name(nsp), rel);
}

/*
 * Become the bootstrap superuser for catalog writes.  Callers check the
 * invoker's privileges on the topic before; the SQL run this way never
 * contains names that were not quoted.
 */
void
EvsBecomeSuperuser(EvsSuperuserState *st)
{
	GetUserIdAndSecContext(&st->save_userid, &st->save_sec_context);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID,
						   st->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	st->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

void
EvsRestoreUser(EvsSuperuserState *st)
{
	AtEOXact_GUC(true, st->save_nestlevel);
	SetUserIdAndSecContext(st->save_userid, st->save_sec_context);
}

/* Like EvsBecomeSuperuser, for prepared plans (no search_path change) */
void
EvsBecomeSuperuserLight(EvsSuperuserState *st)
{
	GetUserIdAndSecContext(&st->save_userid, &st->save_sec_context);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID,
						   st->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	st->save_nestlevel = -1;
}

void
EvsRestoreUserLight(EvsSuperuserState *st)
{
	SetUserIdAndSecContext(st->save_userid, st->save_sec_context);
}

/*
 * Prepare (once per backend) a statement under a pinned search_path; the
 * plan cache keeps that path for every later replan, so the plan is safe
 * whatever path the caller has.  Call inside SPI_connect.
 */
SPIPlanPtr
EvsPrepare(EvsPlan *p)
{
	if (p->plan == NULL)
	{
		int			save_nestlevel = NewGUCNestLevel();
		SPIPlanPtr	plan;

		(void) set_config_option("search_path", "pg_catalog, pg_temp",
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
		plan = SPI_prepare_cursor(p->sql, p->nargs, p->types, p->cursor_options);
		AtEOXact_GUC(true, save_nestlevel);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed (%s): %s",
				 SPI_result_code_string(SPI_result), p->sql);
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		p->plan = plan;
	}
	return p->plan;
}

/*
 * The prepared statement reading a topic's events after a position (one
 * generic plan per topic, re-made if the topic was renamed).  Call inside
 * SPI_connect.
 */
SPIPlanPtr
EvsTopicReadPlan(EvsTopic *t)
{
	char	   *qname = EvsQualifiedName(t->topic);

	if (t->read_name == NULL || strcmp(t->read_name, qname) != 0)
	{
		if (t->read_plan.plan != NULL)
			SPI_freeplan(t->read_plan.plan);
		memset(&t->read_plan, 0, sizeof(t->read_plan));
		t->read_name = MemoryContextStrdup(topic_cache_cxt, qname);
		t->read_plan.sql = MemoryContextStrdup(topic_cache_cxt,
											   psprintf("SELECT id, key, payload, created_at FROM %s "
														"WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3",
														qname));
		t->read_plan.nargs = 3;
		t->read_plan.types[0] = INT8OID;
		t->read_plan.types[1] = INT8OID;
		t->read_plan.types[2] = INT4OID;
		t->read_plan.cursor_options = CURSOR_OPT_GENERIC_PLAN;
	}
	return EvsPrepare(&t->read_plan);
}

/* Keep copies of a topic's column defaults (guards.c) in the cache */
void
EvsTopicSetDefaults(EvsTopic *t, Node *id_default, Node *created_default)
{
	MemoryContext old = MemoryContextSwitchTo(topic_cache_cxt);

	t->id_default = copyObject(id_default);
	t->created_default = copyObject(created_default);
	MemoryContextSwitchTo(old);
}

/* Fill a cache entry for relid from the catalog */
static void
evs_load_topic(EvsTopic *t, Oid relid)
{
	Oid			topic = relid;
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	bool		isnull;
	int64		notify;
	char		relkind = get_rel_relkind(relid);

	t->topic = InvalidOid;
	t->seqrelid = InvalidOid;
	t->notify = false;
	t->aggs_loaded = false;
	t->aggregates = NIL;
	memset(&t->read_plan, 0, sizeof(t->read_plan));
	t->read_name = NULL;
	t->id_default = NULL;
	t->created_default = NULL;

	if (relkind != RELKIND_PARTITIONED_TABLE && relkind != RELKIND_RELATION)
		return;
	if (get_rel_relispartition(relid))
		topic = get_partition_parent(relid, true);
	if (get_rel_relkind(topic) != RELKIND_PARTITIONED_TABLE)
		return;

	values[0] = ObjectIdGetDatum(topic);
	notify = EvsSpiInt64("SELECT notify FROM evstream._topic WHERE topic = $1::regclass",
						 1, types, values, &isnull);
	if (isnull)
		return;
	t->topic = topic;
	t->notify = notify != 0;
	{
		List	   *seqs = getOwnedSequences(topic);

		if (seqs != NIL)
			t->seqrelid = linitial_oid(seqs);
	}
}

/*
 * Cache entry for relid (a topic, one of its partitions, or any other
 * relation, for which entry->topic is InvalidOid).
 */
EvsTopic *
EvsLookupTopic(Oid relid)
{
	EvsTopic   *t;
	bool		found;

	if (topic_cache == NULL || topic_cache_stale)
		evs_cache_reset();

	t = hash_search(topic_cache, &relid, HASH_ENTER, &found);
	if (!found)
	{
		PG_TRY();
		{
			evs_load_topic(t, relid);
		}
		PG_CATCH();
		{
			hash_search(topic_cache, &relid, HASH_REMOVE, NULL);
			PG_RE_THROW();
		}
		PG_END_TRY();
	}
	return t;
}

/* Like EvsLookupTopic, but the relation must be a topic itself */
EvsTopic *
EvsRequireTopic(Oid relid, const char *fn)
{
	EvsTopic   *t = EvsLookupTopic(relid);

	if (t->topic != relid)
	{
		char	   *name = get_rel_name(relid);

		if (name == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("relation with OID %u does not exist", relid)));
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("relation \"%s\" is not an evstream topic", name),
				 OidIsValid(t->topic) ?
				 errhint("\"%s\" is a partition of topic \"%s\"; pass the topic to evstream.%s.",
						 name, get_rel_name(t->topic), fn) :
				 errhint("Create topics with evstream.create_topic().")));
	}
	if (!OidIsValid(t->seqrelid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("topic \"%s\" has no id sequence", get_rel_name(relid)),
				 errhint("The sequence owned by its id column was dropped; recreate the topic.")));
	return t;
}

/* Compile an aggregate's group_by expression for evaluation on insert */
static ExprState *
evs_compile_group_by(Oid topic, const char *group_by)
{
	ParseState *pstate = make_parsestate(NULL);
	Relation	rel = relation_open(topic, AccessShareLock);
	ParseNamespaceItem *nsitem;
	List	   *raw;
	Node	   *expr;
	int			save_nestlevel = NewGUCNestLevel();

	/* the stored text is fully qualified: parse it with an empty path */
	(void) set_config_option("search_path", "", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	raw = raw_parser(group_by, RAW_PARSE_PLPGSQL_EXPR);
	nsitem = addRangeTableEntryForRelation(pstate, rel, AccessShareLock,
										   NULL, false, true);
	addNSItemToQuery(pstate, nsitem, false, true, true);
	expr = transformExpr(pstate,
						 (Node *) ((ResTarget *) linitial(((SelectStmt *) ((RawStmt *) linitial(raw))->stmt)->targetList))->val,
						 EXPR_KIND_GENERATED_COLUMN);
	assign_expr_collations(pstate, expr);
	expr = coerce_to_target_type(pstate, expr, exprType(expr), TEXTOID, -1,
								 COERCION_EXPLICIT, COERCE_EXPLICIT_CAST, -1);
	AtEOXact_GUC(true, save_nestlevel);
	relation_close(rel, AccessShareLock);
	return ExecInitExpr(expression_planner((Expr *) expr), NULL);
}

/* The topic's aggregates, loaded on first use */
List *
EvsTopicAggregates(EvsTopic *t)
{
	MemoryContext old;
	int			ret;
	uint64		i;
	Datum		values[1];
	Oid			types[1] = {OIDOID};

	if (t->aggs_loaded || !OidIsValid(t->topic))
		return t->aggregates;

	values[0] = ObjectIdGetDatum(t->topic);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute_with_args("SELECT id, aggregate::oid, group_by, bucket, output_topic::oid, notify "
								"FROM evstream._aggregate WHERE topic = $1::regclass ORDER BY id",
								1, types, values, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read evstream._aggregate");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		EvsAggregate *a;
		char	   *group_by;
		Datum		d;

		old = MemoryContextSwitchTo(topic_cache_cxt);
		a = palloc0(sizeof(EvsAggregate));
		a->id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		a->view = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		group_by = SPI_getvalue(tup, desc, 3);
		d = SPI_getbinval(tup, desc, 4, &isnull);
		if (!isnull)
		{
			a->bucket = (Interval *) DatumGetPointer(datumCopy(d, false, sizeof(Interval)));
			a->bucket_usecs = EvsBucketUsecs(a->bucket, "bucket");
		}
		d = SPI_getbinval(tup, desc, 5, &isnull);
		a->output_topic = isnull ? InvalidOid : DatumGetObjectId(d);
		a->notify = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));
		a->expr = evs_compile_group_by(t->topic, group_by);
		t->aggregates = lappend(t->aggregates, a);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	t->aggs_loaded = true;
	return t->aggregates;
}

/* Validate a consumer group name */
void
EvsCheckName(const char *what, const char *value)
{
	if (value == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", what)));
	if (value[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what)));
	if (strlen(value) > 200)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("%s \"%.40s...\" is too long", what, value),
				 errdetail("Names are limited to 200 bytes.")));
}
