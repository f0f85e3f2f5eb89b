/*-------------------------------------------------------------------------
 *
 * transforms.c
 *	  Continuous transforms (0.2): evstream.create_transform,
 *	  drop_transform, resume_transform, and the background workers that
 *	  run them.
 *
 *	  A transform is a row of evstream._transform and a consumer group of
 *	  its own on the source (named after the transform, owned by the
 *	  transform's owner).  A batch is one statement in one transaction:
 *
 *		WITH events AS MATERIALIZED (SELECT ... FROM evstream.consume(source, name, batch)),
 *			 out AS (INSERT INTO output (key, payload) SELECT q.* FROM (<query>) q RETURNING 1)
 *		SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM out)
 *
 *	  run as the transform's owner under SECURITY_RESTRICTED_OPERATION, with
 *	  search_path = pg_catalog, pg_temp (as PostgreSQL 17 runs its own
 *	  maintenance commands): another role's objects planted in a schema on
 *	  the owner's path cannot take over a name the query uses.  The query is
 *	  checked with that path at creation, so its own names must be
 *	  schema-qualified.
 *	  (the query itself runs only when the consume returned events: a
 *	  one-time filter, so a worker that got no shard runs none of the
 *	  owner's code; and the statement has a tenant's budget, EvsBudgetStart).
 *	  The position moves and the output rows appear in the same
 *	  transaction: exactly once, whatever fails or crashes; consume's shard
 *	  claims make workers running the same transform take different shards
 *	  (per-key order kept), and never wait for each other.
 *
 *	  Workers: the database's maintenance worker (worker.c) starts up to
 *	  evstream.max_transform_workers dynamic background workers while
 *	  active transforms exist (EvsTransformWorkersCheck).  Each runs
 *	  batches of every active transform in turn; when a pass found nothing
 *	  it sleeps on the database's wait slot (waits.c), which producing
 *	  commits broadcast on -- the wake-up follows the commit, producers do
 *	  no transform work.  A failed batch is retried with exponential backoff
 *	  (100 ms doubling, at most 10 s); after evstream.transform_max_attempts
 *	  failures in a row the transform pauses with last_error set, until
 *	  resume_transform.  A transform worker exits when its database is being
 *	  dropped or renamed (EvsStopDatabaseWorker kills it), when the
 *	  extension is gone, or when no active transform is left.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/transforms.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/hash.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/parser.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/memutils.h"
#include "utils/plancache.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "evstream.h"

int			evs_transform_max_attempts = 5;
int			evs_max_transform_workers = 2;

#define EVS_LOCK_TRANSFORM	0x4554

/*
 * The lock of a transform.  A batch holds it (ShareLock, session level,
 * only tried) from before it checks the catalog row until its outcome is
 * recorded; a batch of a failing transform holds it alone (ExclusiveLock),
 * so failures are retried one at a time and each is counted before the
 * next starts; drop_transform waits for it (ExclusiveLock) so that no
 * batch of a dropped transform runs after the drop commits (a batch would
 * re-create its group and output again).
 *
 * Its key is the hash of the name and the row's creation time: a hash of
 * the name alone let another role pick a name with the same 32-bit hash
 * (seconds of search) and hold a victim's transform up by holding her own
 * transform's lock (an open drop_transform).  Two transforms share a key
 * only if they were also created at the same microsecond (the same
 * transaction: the same role's), and no role chooses another's.
 */
static void
evs_transform_tag(LOCKTAG *tag, const char *name, TimestampTz created)
{
	uint64		c = (uint64) created;

	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId,
						 DatumGetUInt32(hash_any((const unsigned char *) name, strlen(name))),
						 (uint32) (c ^ (c >> 32)), EVS_LOCK_TRANSFORM);
}

/* --------------------------------------------------------------- SQL */

static void
evs_transform_name(FunctionCallInfo fcinfo, char **name)
{
	EvsArgNotNull(fcinfo, 0, "name");
	*name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	EvsCheckName("transform name", *name);
}

/*
 * The transform's (owner, source, created); false when there is none of
 * that name
 */
static bool
evs_transform_row(const char *name, Oid *owner, Oid *source, TimestampTz *created)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	EvsUserState su;
	bool		found = false;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EvsBecomeSuperuser(&su);
	if (SPI_execute_with_args("SELECT x.owner::pg_catalog.oid, x.source::pg_catalog.oid, x.created "
							  "FROM evstream._transform x WHERE x.name OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read transform \"%s\"", name);
	if (SPI_processed > 0)
	{
		bool		isnull;

		found = true;
		*owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		*source = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		if (created)
			*created = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	}
	EvsRestoreUser(&su);
	SPI_finish();
	return found;
}

/* The named transform must exist and belong to the caller */
static Oid
evs_require_transform_owner(const char *name, Oid *source, TimestampTz *created)
{
	Oid			owner = InvalidOid;

	if (!evs_transform_row(name, &owner, source, created))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("transform \"%s\" does not exist", name)));
	/*
	 * A transform whose owner was dropped (DROP ROLE in another database,
	 * where DROP OWNED could not see it) is left to its source's owner.
	 */
	if (!has_privs_of_role(GetUserId(), owner) &&
		!(!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(owner)) &&
		  evs_class_ownercheck(*source, GetUserId())))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of transform \"%s\"", name),
				 errdetail("The transform belongs to role \"%s\".", GetUserNameFromId(owner, true))));
	return owner;
}

/*
 * The query must be one SELECT (so that, put between parentheses in the
 * batch statement, it can only be that SELECT).
 */
static void
evs_check_query_shape(const char *query)
{
	List	   *stmts = raw_parser(query, RAW_PARSE_DEFAULT);
	RawStmt    *raw;

	if (list_length(stmts) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the query of a transform must be a single SELECT, not %d statements",
						list_length(stmts))));
	raw = linitial_node(RawStmt, stmts);
	if (!IsA(raw->stmt, SelectStmt))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the query of a transform must be a SELECT"),
				 errhint("Write SELECT key, payload FROM events ...")));
}

/*
 * Analyse the query as the caller over the source's columns: two columns,
 * text and jsonb, and it reads `events`.
 */
static void
evs_check_query(Oid source, const char *query)
{
	char	   *sql = psprintf("WITH events AS (SELECT e.id, e.key, e.payload, e.created_at FROM %s e LIMIT 0) "
							   "SELECT * FROM (\n%s\n) q LIMIT 0",
							   EvsQualifiedName(source), query);
	SPIPlanPtr	plan;
	List	   *sources;
	CachedPlanSource *ps;
	TupleDesc	desc;
	Query	   *q;
	int			level;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* the path batches run with: names the query uses must resolve there */
	level = EvsPinSearchPath();
	plan = SPI_prepare(sql, 0, NULL);
	if (plan == NULL)
		elog(ERROR, "could not prepare the query of the transform");
	sources = SPI_plan_get_plan_sources(plan);
	if (list_length(sources) != 1)
		elog(ERROR, "the query of a transform must be one statement");
	ps = linitial(sources);
	desc = ps->resultDesc;
	if (desc == NULL || desc->natts != 2 ||
		TupleDescAttr(desc, 0)->atttypid != TEXTOID ||
		TupleDescAttr(desc, 1)->atttypid != JSONBOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("the query of a transform must return two columns, key text and payload jsonb"),
				 errdetail("It returns %d column(s).", desc ? desc->natts : 0),
				 errhint("Cast them: SELECT (...)::text, (...)::jsonb FROM events ...")));
	q = linitial_node(Query, ps->query_list);
	if (q->cteList == NIL ||
		linitial_node(CommonTableExpr, q->cteList)->cterefcount == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the query of a transform must read \"events\""),
				 errdetail("events holds each batch of new events of the source (id, key, payload, created_at).")));
	/* run it on nothing: the privileges of every relation it reads are checked */
	if (SPI_execute_plan(plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not check the query of the transform");
	EvsUnpinSearchPath(level);
	SPI_freeplan(plan);
	SPI_finish();
}

/* The transform's group name is another group's */
static void
evs_group_taken(Oid source, const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_DUPLICATE_OBJECT),
			 errmsg("topic \"%s\" already has a consumer group \"%s\"", get_rel_name(source), name),
			 errdetail("A transform consumes its source with a group named after it."),
			 errhint("Choose another transform name, or drop the group with evstream.drop_group.")));
}

PG_FUNCTION_INFO_V1(evstream_create_transform);

/*
 * evstream.create_transform(name, source, query, output_topic, batch)
 */
Datum
evstream_create_transform(PG_FUNCTION_ARGS)
{
	char	   *name;
	Oid			source;
	char	   *query;
	char	   *out_name;
	int32		batch;
	Oid			output;
	Oid			o1,
				o2;
	EvsGroup	g;
	RangeVar   *rv;

	EvsRequireCurrentCatalog("create_transform");
	evs_transform_name(fcinfo, &name);
	EvsArgNotNull(fcinfo, 1, "source");
	EvsArgNotNull(fcinfo, 2, "query");
	EvsArgNotNull(fcinfo, 3, "output_topic");
	EvsArgNotNull(fcinfo, 4, "batch");
	source = PG_GETARG_OID(1);
	query = text_to_cstring(PG_GETARG_TEXT_PP(2));
	out_name = text_to_cstring(PG_GETARG_TEXT_PP(3));
	batch = PG_GETARG_INT32(4);
	if (batch <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch must be positive, not %d", batch)));
	(void) EvsRequireTopic(source, "create_transform");
	EvsRequirePrivilege(source, ACL_SELECT);
	EvsRequireReadCommitted("create_transform");
	if (evs_transform_row(name, &o1, &o2, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("transform \"%s\" already exists", name)));
	if (EvsGroupLookup(source, name, &g))
		evs_group_taken(source, name);
	evs_check_query_shape(query);
	evs_check_query(source, query);

	/* the output topic: an existing topic we may insert into, or a new one */
	rv = makeRangeVarFromNameList(evs_string_to_qualified_name_list(out_name));
	output = RangeVarGetRelid(rv, NoLock, true);
	if (OidIsValid(output))
	{
		if (EvsLookupTopic(output)->topic != output)
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("output topic \"%s\" is not an evstream topic", out_name),
					 errhint("Name a topic, or a relation that does not exist yet (it is created).")));
		if (EvsTopicFeeds(output, source))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("transform \"%s\" would feed its own source \"%s\"", name, get_rel_name(source)),
					 errdetail("Its output topic is, or leads through other transforms or aggregates to, its source.")));
		EvsRequirePrivilege(output, ACL_INSERT);
	}
	else
		output = EvsCreateTopic(out_name, NULL, NULL, true, 1);

	/* the catalog row (as the superuser), then the group, owned by the caller */
	{
		Oid			types[6] = {TEXTOID, OIDOID, OIDOID, TEXTOID, OIDOID, INT4OID};
		Datum		values[6] = {CStringGetTextDatum(name), ObjectIdGetDatum(GetUserId()),
			ObjectIdGetDatum(source), CStringGetTextDatum(query), ObjectIdGetDatum(output),
		Int32GetDatum(batch)};
		EvsUserState su;

		EvsBecomeSuperuser(&su);
		EvsSpiExec("INSERT INTO evstream._transform (name, owner, source, query, output_topic, batch) "
				   "VALUES ($1, $2::pg_catalog.regrole, $3::pg_catalog.regclass, $4, $5::pg_catalog.regclass, $6)",
				   6, types, values, SPI_OK_INSERT);
		EvsRestoreUser(&su);
	}
	/* another role may have created it since we looked, and committed */
	(void) EvsGroupOpen(source, name, true, false, &g);
	if (g.owner != GetUserId())
		evs_group_taken(source, name);
	EvsTransformsChangedAtCommit();
	PG_RETURN_VOID();
}

/* Drop a transform's row and its group (its owner's only) */
static void
evs_drop_transform(const char *name, Oid owner, Oid source, TimestampTz created)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	EvsUserState su;
	EvsGroup	g;

	/* no batch of it in flight, none after we commit */
	{
		LOCKTAG		tag;

		evs_transform_tag(&tag, name, created);
		(void) LockAcquire(&tag, ExclusiveLock, false, false);
	}
	values[0] = CStringGetTextDatum(name);
	EvsBecomeSuperuser(&su);
	EvsSpiExec("DELETE FROM evstream._transform x WHERE x.name OPERATOR(pg_catalog.=) $1",
			   1, types, values, SPI_OK_DELETE);
	EvsRestoreUser(&su);
	EvsTransformsChangedAtCommit();
	/* its group (not another's of the name): waits for a batch in flight */
	if (EvsGroupLookup(source, name, &g) && g.owner == owner)
	{
		EvsLockAllShards(&g, false);
		EvsDropGroup(&g);
	}
}

/*
 * DROP OWNED BY (guards.c, for roles the caller may act for): the role's
 * transforms in this database go, with their groups.
 */
void
EvsDropOwnedTransforms(Oid role)
{
	MemoryContext cxt = CurrentMemoryContext;

	for (;;)
	{
		Oid			types[1] = {OIDOID};
		Datum		values[1] = {ObjectIdGetDatum(role)};
		EvsUserState su;
		char	   *name = NULL;
		Oid			source = InvalidOid;
		TimestampTz created = 0;

		CHECK_FOR_INTERRUPTS();
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		EvsBecomeSuperuser(&su);
		if (SPI_execute_with_args("SELECT x.name, x.source::pg_catalog.oid, x.created FROM evstream._transform x "
								  "WHERE x.owner::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
								  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read evstream._transform");
		if (SPI_processed > 0)
		{
			bool		isnull;
			HeapTuple	tup = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;

			name = MemoryContextStrdup(cxt, SPI_getvalue(tup, desc, 1));
			source = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
			created = DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull));
		}
		EvsRestoreUser(&su);
		SPI_finish();
		if (name == NULL)
			break;
		evs_drop_transform(name, role, source, created);
	}
}

/* REASSIGN OWNED BY (guards.c): the role's transforms become newrole's */
void
EvsReassignTransforms(Oid role, Oid newrole)
{
	Oid			types[2] = {OIDOID, OIDOID};
	Datum		values[2] = {ObjectIdGetDatum(role), ObjectIdGetDatum(newrole)};
	EvsUserState su;

	EvsBecomeSuperuser(&su);
	EvsSpiExec("UPDATE evstream._transform x SET owner = $2::pg_catalog.regrole "
			   "WHERE x.owner::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
			   2, types, values, SPI_OK_UPDATE);
	EvsRestoreUser(&su);
	EvsTransformsChangedAtCommit();
}

PG_FUNCTION_INFO_V1(evstream_drop_transform);

/* evstream.drop_transform(name): the transform and its group */
Datum
evstream_drop_transform(PG_FUNCTION_ARGS)
{
	char	   *name;
	Oid			source = InvalidOid;
	TimestampTz created = 0;
	Oid			owner;

	evs_transform_name(fcinfo, &name);
	owner = evs_require_transform_owner(name, &source, &created);
	evs_drop_transform(name, owner, source, created);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(evstream_resume_transform);

/* evstream.resume_transform(name): run again from where it stopped */
Datum
evstream_resume_transform(PG_FUNCTION_ARGS)
{
	char	   *name;
	Oid			source;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	EvsUserState su;

	evs_transform_name(fcinfo, &name);
	(void) evs_require_transform_owner(name, &source, NULL);
	values[0] = CStringGetTextDatum(name);
	EvsBecomeSuperuser(&su);
	EvsSpiExec("UPDATE evstream._transform x SET paused = false, failures = 0, retry_at = NULL "
			   "WHERE x.name OPERATOR(pg_catalog.=) $1", 1, types, values, SPI_OK_UPDATE);
	EvsRestoreUser(&su);
	EvsTransformsChangedAtCommit();
	PG_RETURN_VOID();
}

/* --------------------------------------------------------------- workers */

typedef struct EvsTransformJob
{
	char	   *name;
	Oid			owner;
	Oid			source;
	Oid			output;
	int32		batch;
	char	   *query;
	TimestampTz created;		/* which incarnation of the name */
	TimestampTz retry_at;		/* backoff (from the catalog): not before */
	bool		failing;		/* its last batch failed: retry it alone */
	int32		failures;		/* the catalog's count when the batch began */
	bool		gone;			/* dropped, recreated or paused: skip */
	TimestampTz last_turn;		/* when the worker last ran its batch */
	bool		slow;			/* its owner's batches took a turn last pass */
} EvsTransformJob;

/*
 * Turns.  The workers are shared by every role's transforms, and a batch
 * may take up to a tenant's budget (30 s).  So that one role's many slow
 * transforms cannot hold up another role's for a budget each, a worker's
 * pass gives each owner a turn: once the owner's batches of the pass have
 * taken EVS_TRANSFORM_TURN_MS together, its other transforms wait for the
 * next pass.  A pass runs the transforms of owners whose batches took
 * less than that in the last pass first, then the others', each group
 * least recently run first (so that a slow owner's transforms take their
 * turns in rotation).  Another owner's transform hence waits for at most
 * one batch of each slow owner, whatever the number of their transforms;
 * alone, a slow owner loses nothing (the next pass begins at once).
 */
#define EVS_TRANSFORM_TURN_MS 1000

static int
evs_cmp_turn(const ListCell *a, const ListCell *b)
{
	EvsTransformJob *x = lfirst(a);
	EvsTransformJob *y = lfirst(b);

	if (x->slow != y->slow)
		return x->slow ? 1 : -1;
	if (x->last_turn != y->last_turn)
		return x->last_turn < y->last_turn ? -1 : 1;
	return strcmp(x->name, y->name);
}

/* A pass's order (a new list, in the current memory context) */
static List *
evs_order_jobs(List *jobs)
{
	List	   *pass = list_copy(jobs);
	ListCell   *lc;

	foreach(lc, pass)
		((EvsTransformJob *) lfirst(lc))->slow = EvsBudgetOwnerSlow(((EvsTransformJob *) lfirst(lc))->owner);
	list_sort(pass, evs_cmp_turn);
	return pass;
}

/* Carry the turns of a reloaded job list over from the previous one */
static void
evs_carry_turns(List *next, List *prev)
{
	ListCell   *a;
	ListCell   *b;

	foreach(a, next)
	{
		EvsTransformJob *j = lfirst(a);

		foreach(b, prev)
		{
			EvsTransformJob *p = lfirst(b);

			if (p->created == j->created && strcmp(p->name, j->name) == 0)
				j->last_turn = p->last_turn;
		}
	}
}

static EvsDatabase *tw_db = NULL;
static int	tw_slot = -1;

/* The active transforms (a new list, in cxt) */
static List *
evs_load_jobs(MemoryContext cxt)
{
	List	   *jobs = NIL;
	EvsUserState su;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EvsBecomeSuperuser(&su);
	if (SPI_execute("SELECT x.name, x.owner::pg_catalog.oid, x.source::pg_catalog.oid, "
					"x.output_topic::pg_catalog.oid, x.batch, x.query, x.created, x.retry_at, "
					"x.failures "
					"FROM evstream._transform x WHERE NOT x.paused ORDER BY x.name", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read evstream._transform");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext old = MemoryContextSwitchTo(cxt);
		EvsTransformJob *j = palloc0(sizeof(EvsTransformJob));
		bool		isnull;
		Datum		d;

		j->name = SPI_getvalue(tup, desc, 1);
		j->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		j->source = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
		j->output = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));
		j->batch = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
		j->query = SPI_getvalue(tup, desc, 6);
		j->created = DatumGetTimestampTz(SPI_getbinval(tup, desc, 7, &isnull));
		d = SPI_getbinval(tup, desc, 8, &isnull);
		j->retry_at = isnull ? 0 : DatumGetTimestampTz(d);
		j->failing = DatumGetInt32(SPI_getbinval(tup, desc, 9, &isnull)) > 0;
		jobs = lappend(jobs, j);
		MemoryContextSwitchTo(old);
	}
	EvsRestoreUser(&su);
	SPI_finish();
	return jobs;
}

/*
 * One batch of a transform, in the current transaction, as its owner;
 * returns the number of source events consumed.
 */
static int64
evs_run_batch(EvsTransformJob *j)
{
	char	   *sql;
	EvsUserState st;
	int64		n = 0;
	char	   *output = EvsQualifiedName(j->output);

	sql = psprintf("WITH events AS MATERIALIZED (SELECT e.id, e.key, e.payload, e.created_at "
				   "FROM evstream.consume(%u::pg_catalog.oid::pg_catalog.regclass, %s, %d) e), "
				   "out AS (INSERT INTO %s (key, payload) SELECT q.* FROM (\n%s\n) q "
				   "WHERE EXISTS (SELECT FROM events) RETURNING 1) "
				   "SELECT (SELECT pg_catalog.count(*) FROM events), (SELECT pg_catalog.count(*) FROM out)",
				   j->source, quote_literal_cstr(j->name), j->batch, output, j->query);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EvsBecomeOwner(j->owner, &st);
	/*
	 * A batch is bounded like any tenant's work in a worker (util.c).
	 * While its owner's work is quarantined the batch is not run, and that
	 * is no failure of the transform's: it waits.
	 */
	if (!EvsBudgetStart(InvalidOid, j->owner, psprintf("transform %s", j->name), NULL))
	{
		EvsRestoreUser(&st);
		SPI_finish();
		return 0;
	}
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(j->owner)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the owner of transform \"%s\" was dropped", j->name),
				 errhint("The owner of its source topic can drop it.")));
	/*
	 * The group the batch moves must be the transform owner's own: should
	 * it have been dropped and another role made one of the name (which
	 * the topic's owner could then use), the batch fails rather than
	 * consume and move another's group.  Another open transaction
	 * creating it: no batch this time.
	 */
	{
		EvsGroup	g;

		if (!EvsGroupOpen(j->source, j->name, true, true, &g))
		{
			EvsBudgetEnd();
			EvsRestoreUser(&st);
			SPI_finish();
			return 0;
		}
		if (g.owner != j->owner)
			evs_group_taken(j->source, j->name);
	}
	/* and again when the statement's consume opens it (its snapshot) */
	EvsRequireGroupOwner(j->owner);
	if (SPI_execute(sql, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "transform \"%s\": the batch statement failed", j->name);
	EvsRequireGroupOwner(InvalidOid);
	EvsBudgetEnd();
	{
		bool		isnull;

		n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	EvsRestoreUser(&st);
	SPI_finish();
	return n;
}

/*
 * The transform's row as of now (in the batch's transaction, under its
 * lock): false when it was dropped, re-created or paused meanwhile, or is
 * backing off; j->failing: its last batch failed.
 */
static bool
evs_job_runnable(EvsTransformJob *j)
{
	Oid			types[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum		values[2] = {CStringGetTextDatum(j->name), TimestampTzGetDatum(j->created)};
	EvsUserState su;
	bool		ok = false;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EvsBecomeSuperuser(&su);
	if (SPI_execute_with_args("SELECT x.failures, x.retry_at FROM evstream._transform x "
							  "WHERE x.name OPERATOR(pg_catalog.=) $1 AND x.created OPERATOR(pg_catalog.=) $2 "
							  "AND NOT x.paused", 2, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read evstream._transform");
	if (SPI_processed > 0)
	{
		bool		isnull;
		Datum		d;

		j->failures = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		j->failing = j->failures > 0;
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		j->retry_at = isnull ? 0 : DatumGetTimestampTz(d);
		ok = j->retry_at <= GetCurrentTimestamp();
	}
	else
		j->gone = true;
	EvsRestoreUser(&su);
	SPI_finish();
	return ok;
}

/*
 * Record the outcome of a batch (in a transaction of its own, still under
 * the transform's lock): a failure counts, backs off (100 ms doubling, at
 * most 10 s) and pauses the transform at evstream.transform_max_attempts;
 * a batch that consumed events ends a series of failures.
 *
 * A failure counts only if no other failure was counted since this batch
 * read the count (j->failures): two workers of a transform not yet known
 * to fail may run its batch at once (ShareLock), the second waiting for
 * the shard the first holds and then failing on the same events; that is
 * one failed attempt, not two (it made the transform pause early, and its
 * backoff start over).  Returns whether it counted.
 */
static bool
evs_record_outcome(EvsTransformJob *j, const char *error)
{
	Oid			types[5] = {TEXTOID, TIMESTAMPTZOID, TEXTOID, INT4OID, INT4OID};
	Datum		values[5] = {CStringGetTextDatum(j->name), TimestampTzGetDatum(j->created),
		error ? CStringGetTextDatum(error) : (Datum) 0,
		Int32GetDatum(evs_transform_max_attempts), Int32GetDatum(j->failures)};
	bool		counted = true;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (!EvsWorkerLockExtension())	/* first (extension.c); else it is gone */
	{
		CommitTransactionCommand();
		return true;
	}
	PushActiveSnapshot(GetTransactionSnapshot());
	if (error)
		counted = EvsSpiExec("UPDATE evstream._transform x SET failures = x.failures OPERATOR(pg_catalog.+) 1, "
							 "last_error = $3, paused = (x.failures OPERATOR(pg_catalog.+) 1 OPERATOR(pg_catalog.>=) $4), "
							 "retry_at = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval("
							 "secs => LEAST(10, 0.1 OPERATOR(pg_catalog.*) (2 OPERATOR(pg_catalog.^) LEAST(x.failures, 10))))::interval "
							 "WHERE x.name OPERATOR(pg_catalog.=) $1 AND x.created OPERATOR(pg_catalog.=) $2 AND NOT x.paused "
							 "AND x.failures OPERATOR(pg_catalog.=) $5",
							 5, types, values, 0) > 0;
	else
		EvsSpiExec("UPDATE evstream._transform x SET failures = 0, retry_at = NULL "
				   "WHERE x.name OPERATOR(pg_catalog.=) $1 AND x.created OPERATOR(pg_catalog.=) $2 "
				   "AND x.failures OPERATOR(pg_catalog.>) 0",
				   2, types, values, 0);
	PopActiveSnapshot();
	CommitTransactionCommand();
	return counted;
}

/*
 * Run one batch of a transform in a transaction of its own, under the
 * transform's lock (see evs_transform_tag); failures are recorded.
 * Returns the events consumed (0 also when the transform is busy, gone,
 * paused or backing off).
 */
static int64
evs_transform_step(EvsTransformJob *j)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile int64 n = 0;
	volatile bool runnable = false;
	volatile bool was_failing = false;
	LOCKTAG		tag;
	volatile LOCKMODE mode = j->failing ? ExclusiveLock : ShareLock;

	evs_transform_tag(&tag, j->name, j->created);
	if (LockAcquire(&tag, mode, true, true) == LOCKACQUIRE_NOT_AVAIL)
		return 0;
	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		runnable = EvsWorkerLockExtension();	/* first: extension.c */
		PushActiveSnapshot(GetTransactionSnapshot());
		runnable = runnable && evs_job_runnable(j);
		was_failing = j->failing;
		if (runnable && was_failing && mode != ExclusiveLock)
			runnable = false;	/* failing: retried alone, next pass */
		if (runnable)
		{
			pgstat_report_activity(STATE_RUNNING, psprintf("evstream: transform %s", j->name));
			n = evs_run_batch(j);
		}
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_activity(STATE_IDLE, NULL);
		if (runnable && was_failing && n > 0)
		{
			evs_record_outcome(j, NULL);
			j->failing = false;
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		EvsBudgetEnd();
		EvsRequireGroupOwner(InvalidOid);
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		pgstat_report_activity(STATE_IDLE, NULL);
		if (evs_record_outcome(j, edata->message))
			ereport(LOG,
					(errmsg("evstream transform \"%s\": batch failed: %s", j->name, edata->message)));
		else
			ereport(LOG,
					(errmsg("evstream transform \"%s\": a concurrent run of its failed batch failed too (counted once): %s",
							j->name, edata->message)));
		/* retried alone, not before the backoff the catalog now has */
		j->failing = true;
		j->retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 100);
		MemoryContextSwitchTo(cxt);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	LockRelease(&tag, mode, true);
	MemoryContextSwitchTo(cxt);
	return n;
}

static void
evs_transform_worker_exit(int code, Datum arg)
{
	if (tw_db != NULL && tw_slot >= 0)
	{
		LWLockAcquire(evs_shared->lock, LW_EXCLUSIVE);
		if (tw_db->transform_pids[tw_slot] == MyProcPid)
			tw_db->transform_pids[tw_slot] = 0;
		LWLockRelease(evs_shared->lock);
	}
}

/* Is the extension still here (in a transaction of its own)? */
static bool
evs_transform_extension_present(void)
{
	bool		present;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	present = EvsExtensionPresent() && EvsCatalogIsCurrent(NULL);
	CommitTransactionCommand();
	return present;
}

void
EvsTransformWorkerMain(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	MemoryContext loop_cxt;
	List	   *jobs = NIL;
	MemoryContext jobs_cxt = NULL;
	TimestampTz loaded = 0;
	uint32		seen_gen = 0;
	TimestampTz idle_since = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	EvsInWorker = true;			/* tenants' work here has budgets (util.c) */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * A batch's commit need not wait for its WAL flush: a crash loses the
	 * output rows and the group's move together (redone after restart,
	 * nothing duplicated), and any transaction that acts on the output and
	 * commits synchronously flushes the batch's commit record with its own.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	pgstat_report_appname("evstream transform worker");

	/* take a slot of the database's entry, so that DROP DATABASE can stop us */
	tw_db = EvsDatabaseEntry(dboid, false);
	if (tw_db == NULL)
		proc_exit(0);
	LWLockAcquire(evs_shared->lock, LW_EXCLUSIVE);
	if (tw_db->blocked_until > GetCurrentTimestamp())
	{
		LWLockRelease(evs_shared->lock);
		proc_exit(0);
	}
	for (int i = 0; i < EVS_MAX_TRANSFORM_WORKERS; i++)
		if (tw_db->transform_pids[i] == 0)
		{
			tw_db->transform_pids[i] = MyProcPid;
			tw_slot = i;
			break;
		}
	LWLockRelease(evs_shared->lock);
	if (tw_slot < 0)
		proc_exit(0);
	before_shmem_exit(evs_transform_worker_exit, (Datum) 0);

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "evstream transform loop",
									 ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		bool		did = false;
		bool		full = false;
		long		timeout = 1000;
		ListCell   *lc;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		/* the catalog: once a second, or when transforms changed */
		if (TimestampDifferenceExceeds(loaded, now, 1000) ||
			pg_atomic_read_u32(&tw_db->transforms_gen) != seen_gen)
		{
			MemoryContext fresh = AllocSetContextCreate(TopMemoryContext, "evstream transform jobs",
														ALLOCSET_DEFAULT_SIZES);
			List	   *next;

			seen_gen = pg_atomic_read_u32(&tw_db->transforms_gen);
			if (!evs_transform_extension_present())
				proc_exit(0);
			SetCurrentStatementStartTimestamp();
			StartTransactionCommand();
			if (!EvsWorkerLockExtension())	/* first: extension.c */
				proc_exit(0);
			PushActiveSnapshot(GetTransactionSnapshot());
			next = evs_load_jobs(fresh);
			PopActiveSnapshot();
			CommitTransactionCommand();
			evs_carry_turns(next, jobs);
			if (jobs_cxt != NULL)
				MemoryContextDelete(jobs_cxt);
			jobs_cxt = fresh;
			jobs = next;
			loaded = now;
			if (jobs == NIL)
			{
				if (idle_since == 0)
					idle_since = now;
				else if (TimestampDifferenceExceeds(idle_since, now, 10000))
					proc_exit(0);	/* no active transform left */
			}
			else
				idle_since = 0;
		}

		/* a pass over the jobs, registered as a waiter first (waits.c) */
		EvsDatabaseWaitBegin();
		MemoryContextSwitchTo(loop_cxt);
		MemoryContextReset(loop_cxt);
		EvsBudgetNewPass();
		foreach(lc, evs_order_jobs(jobs))
		{
			EvsTransformJob *j = lfirst(lc);
			int64		n;

			CHECK_FOR_INTERRUPTS();
			if (j->gone)
				continue;
			if (EvsBudgetOwnerUsed(j->owner) >= EVS_TRANSFORM_TURN_MS)
			{
				did = true;		/* its owner's turn is over: next pass */
				continue;
			}
			if (j->retry_at > GetCurrentTimestamp())
			{
				timeout = Min(timeout, Max(1, TimestampDifferenceMilliseconds(GetCurrentTimestamp(), j->retry_at)));
				continue;
			}
			j->last_turn = GetCurrentTimestamp();
			n = evs_transform_step(j);
			if (n > 0)
				did = true;
			if (n >= j->batch)
				full = true;
			else if (n == 0 && j->retry_at > GetCurrentTimestamp())
				timeout = Min(timeout, Max(1, TimestampDifferenceMilliseconds(GetCurrentTimestamp(), j->retry_at)));
		}
		MemoryContextSwitchTo(TopMemoryContext);
		if (!did)
			EvsDatabaseWaitSleep(timeout);
		EvsDatabaseWaitEnd();

		/*
		 * After batches smaller than their size, let events gather for half
		 * a notify_interval before the next pass (not woken by commits
		 * meanwhile), so that a trickle of commits does not become a batch
		 * transaction each; a full batch goes on at once.
		 */
		if (did && !full)
		{
			ResetLatch(MyLatch);	/* set by the broadcasts of the pass */
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Max(evs_notify_interval / 2, 1), PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
}

/*
 * Maintenance worker (worker.c), about once a second: start transform
 * workers while active transforms exist, up to max_transform_workers and
 * to the total of their sources' shards.
 */
void
EvsTransformWorkersCheck(EvsDatabase *db)
{
	int			wanted;
	int			running = 0;
	bool		isnull;

	wanted = (int) EvsSpiInt64("SELECT COALESCE(pg_catalog.sum(t.shards), 0) FROM evstream._transform x "
							   "JOIN evstream._topic t ON t.topic OPERATOR(pg_catalog.=) x.source WHERE NOT x.paused",
							   0, NULL, NULL, &isnull);
	wanted = Min(wanted, Min(evs_max_transform_workers, EVS_MAX_TRANSFORM_WORKERS));
	LWLockAcquire(evs_shared->lock, LW_SHARED);
	for (int i = 0; i < EVS_MAX_TRANSFORM_WORKERS; i++)
		if (db->transform_pids[i] != 0)
			running++;
	LWLockRelease(evs_shared->lock);
	for (; running < wanted; running++)
	{
		BackgroundWorkerHandle *handle;
		pid_t		pid;

		if (!EvsStartDatabaseWorker("EvsTransformWorkerMain", "evstream transform worker",
									db->dboid, &handle))
		{
			ereport(LOG,
					(errmsg("evstream: no background worker slot for a transform worker"),
					 errhint("Raise max_worker_processes.")));
			break;
		}
		/* it takes its slot itself; do not start it twice meanwhile */
		(void) WaitForBackgroundWorkerStartup(handle, &pid);
		pfree(handle);
	}
}
