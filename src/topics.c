/*-------------------------------------------------------------------------
 *
 * topics.c
 *	  evstream.create_topic, drop_topic and set_retention.
 *
 *	  A topic is a table partitioned by range on created_at:
 *		id bigint NOT NULL DEFAULT evstream._next_id(topic), key text,
 *		payload jsonb, created_at timestamptz NOT NULL DEFAULT now()
 *	  with a btree on id, a sequence <topic>_id_seq owned by id, a default
 *	  partition <topic>_default (so an insert never fails when maintenance
 *	  is behind) and partitions <topic>_pYYYYMMDD_HH24MISS made ahead.  All
 *	  partitions use the evstream access method.  The DDL runs as the
 *	  caller, so ownership and CREATE privileges are Postgres's own; names
 *	  are always quoted, search_path is pinned.  Temporary topics are
 *	  refused (evstream's catalog outlives the session).  Nobody, the owner
 *	  included, keeps UPDATE or USAGE on the id sequence (no setval; ids
 *	  come from evstream._next_id, which needs neither).  A topic depends
 *	  on the extension, so DROP EXTENSION ... CASCADE removes it.
 *
 *	  _partitions lists a topic's partitions with their bounds, read from
 *	  the catalog's partition bound nodes (maintenance asks for them several
 *	  times per topic and pass; deparsing every bound was most of its cost).
 *
 *	  The views' helpers _edge and _time_after read a topic's first/last
 *	  event and the time after a position for every role (ids and times
 *	  only, never payloads): they accept topics only and read them as the
 *	  topic's owner under SECURITY_RESTRICTED_OPERATION.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/topics.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/pg_inherits.h"
#include "catalog/namespace.h"
#include "catalog/objectaddress.h"
#include "catalog/pg_class_d.h"
#include "catalog/pg_extension_d.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/syscache.h"
#include "access/htup_details.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/regproc.h"
#include "utils/varlena.h"

#include "evstream.h"

/* bytes the partition suffix "_pYYYYMMDD_HH24MISS" adds */
#define PARTITION_SUFFIX_LEN 17

/*
 * Partition intervals and retentions are at most 1000 years (a month
 * counted as 30 days): maintenance computes now() - retention and
 * now() + premake partition intervals, which must stay timestamps.
 */
#define EVS_MAX_SPAN_DAYS (1000 * 365)

static bool
evs_span_too_long(Interval *ivl)
{
	int64		days = (int64) ivl->month * 30 + ivl->day + ivl->time / USECS_PER_DAY;

	return days > EVS_MAX_SPAN_DAYS;
}

/* A retention must be positive (NULL: keep forever) */
static void
evs_check_retention(Interval *ret)
{
	if (ret->month < 0 || ret->day < 0 || ret->time < 0 ||
		(ret->month == 0 && ret->day == 0 && ret->time == 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("retention must be a positive interval"),
				 errhint("Use NULL to keep events forever.")));
	if (evs_span_too_long(ret))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("retention must be at most 1000 years"),
				 errhint("Use NULL to keep events forever.")));
}

/* Creates the partitions from now() up to premake intervals ahead */
static void
evs_make_partitions(Oid topic, int premake)
{
	Oid			types[2] = {OIDOID, INT4OID};
	Datum		values[2] = {ObjectIdGetDatum(topic), Int32GetDatum(premake)};

	EvsSpiExec("SELECT evstream._ensure_partitions($1::pg_catalog.regclass, pg_catalog.now(), "
			   "pg_catalog.now() OPERATOR(pg_catalog.+) (SELECT t.partition_interval "
			   "OPERATOR(pg_catalog.*) $2 FROM evstream._topic t "
			   "WHERE t.topic OPERATOR(pg_catalog.=) $1::pg_catalog.regclass))",
			   2, types, values, SPI_OK_SELECT);
}

/*
 * Leave nobody UPDATE or USAGE on a new topic's id sequence: not PUBLIC,
 * not the owner, not roles that default privileges granted them to.
 * SELECT stays (pg_dump reads the sequence).
 */
static void
evs_lock_sequence(const char *qseq)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(qseq)};
	List	   *grantees = NIL;
	ListCell   *lc;
	uint64		i;
	int			level;
	MemoryContext cxt = CurrentMemoryContext;	/* outlives SPI_finish */

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	level = EvsPinSearchPath();
	if (SPI_execute_with_args("SELECT DISTINCT CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' "
							  "ELSE pg_catalog.quote_ident(r.rolname) END "
							  "FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a "
							  "LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee "
							  "WHERE c.oid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
							  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the privileges of %s", qseq);
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *g = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		MemoryContext old = MemoryContextSwitchTo(cxt);

		grantees = lappend(grantees, g ? pstrdup(g) : NULL);
		MemoryContextSwitchTo(old);
	}
	EvsUnpinSearchPath(level);
	SPI_finish();

	EvsSpiExec(psprintf("REVOKE UPDATE, USAGE ON SEQUENCE %s FROM PUBLIC, CURRENT_USER", qseq),
			   0, NULL, NULL, SPI_OK_UTILITY);
	foreach(lc, grantees)
		if (lfirst(lc) != NULL && strcmp(lfirst(lc), "PUBLIC") != 0)
			EvsSpiExec(psprintf("REVOKE UPDATE, USAGE ON SEQUENCE %s FROM %s", qseq, (char *) lfirst(lc)),
					   0, NULL, NULL, SPI_OK_UTILITY);
}

/* Name the rejected topic name in errors from parsing it */
static void
evs_name_errcontext(void *arg)
{
	errcontext("topic name \"%s\"", (const char *) arg);
}

PG_FUNCTION_INFO_V1(evstream_create_topic);

/*
 * evstream.create_topic(topic text, partition_interval interval,
 *						 retention interval, notify boolean) RETURNS regclass
 */
Datum
evstream_create_topic(PG_FUNCTION_ARGS)
{
	Interval   *ret = NULL;

	EvsRequireCurrentCatalog("create_topic");
	EvsArgNotNull(fcinfo, 0, "topic");
	EvsArgNotNull(fcinfo, 1, "partition_interval");
	EvsArgNotNull(fcinfo, 3, "notify");
	if (!PG_ARGISNULL(2))
		ret = PG_GETARG_INTERVAL_P(2);
	if (PG_NARGS() > 4)
		EvsArgNotNull(fcinfo, 4, "shards");
	PG_RETURN_OID(EvsCreateTopic(text_to_cstring(PG_GETARG_TEXT_PP(0)),
								 PG_GETARG_INTERVAL_P(1), ret, PG_GETARG_BOOL(3),
								 PG_NARGS() > 4 ? PG_GETARG_INT32(4) : 1));
}


/*
 * A topic's name leaves room for its partitions' suffix (create_topic, and
 * ALTER TABLE ... RENAME of a topic: guards.c).
 */
void
EvsCheckTopicNameLength(const char *name)
{
	if (strlen(name) + PARTITION_SUFFIX_LEN > NAMEDATALEN - 1)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("topic name \"%s\" is too long", name),
				 errdetail("Partition names append %d bytes to the topic name, and names are limited to %d bytes.",
						   PARTITION_SUFFIX_LEN, NAMEDATALEN - 1),
				 errhint("Use a topic name of at most %d bytes.",
						 NAMEDATALEN - 1 - PARTITION_SUFFIX_LEN)));
}

/*
 * Create a topic (create_topic, and set_group_options' dead-letter
 * topics), as the current user; ivl NULL: one day.  Returns its OID.
 */
Oid
EvsCreateTopic(const char *name, Interval *ivl, Interval *ret, bool notify, int shards)
{
	List	   *names;
	RangeVar   *rv;
	Oid			nspid;
	char	   *nsp;
	char	   *qname;
	char	   *qseq;
	char	   *qdef;
	Oid			relid;
	StringInfoData sql;
	EvsUserState su;

	if (ivl == NULL)
		ivl = DatumGetIntervalP(DirectFunctionCall3(interval_in, CStringGetDatum("1 day"),
													ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
	if (ret != NULL)
		evs_check_retention(ret);
	if (shards < 1 || shards > 256)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("shards must be between 1 and 256, not %d", shards)));

	(void) EvsBucketUsecs(ivl, "partition_interval");
	if (evs_span_too_long(ivl))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partition_interval must be at most 1000 years")));

	{
		ErrorContextCallback cb;

		cb.callback = evs_name_errcontext;
		cb.arg = (void *) name;
		cb.previous = error_context_stack;
		error_context_stack = &cb;
		names = evs_string_to_qualified_name_list((char *) name);
		rv = makeRangeVarFromNameList(names);
		error_context_stack = cb.previous;
	}
	if (rv->relname[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("topic name must not be empty")));
	EvsCheckTopicNameLength(rv->relname);
	nspid = RangeVarGetCreationNamespace(rv);
	if (isAnyTempNamespace(nspid))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("topic \"%s\" must not be temporary", rv->relname),
				 errdetail("evstream's catalog and workers outlive sessions; temporary relations do not."),
				 errhint("Create the topic in a regular schema.")));
	if (evs_namespace_aclcheck(nspid, GetUserId(), ACL_CREATE) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_SCHEMA, get_namespace_name(nspid));
	if (OidIsValid(get_relname_relid(rv->relname, nspid)))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_TABLE),
				 errmsg("relation \"%s\" already exists", rv->relname),
				 errhint("Choose another topic name, or drop the existing relation first.")));
	nsp = get_namespace_name(nspid);
	qname = quote_qualified_identifier(nsp, rv->relname);
	qseq = quote_qualified_identifier(nsp, psprintf("%s_id_seq", rv->relname));
	qdef = quote_qualified_identifier(nsp, psprintf("%s_default", rv->relname));

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "CREATE TABLE %s (id bigint NOT NULL, key text, payload jsonb, "
					 "created_at timestamptz NOT NULL DEFAULT pg_catalog.now()) "
					 "PARTITION BY RANGE (created_at);"
					 "CREATE SEQUENCE %s OWNED BY %s.id;"
					 "CREATE INDEX ON %s (id);"
					 "CREATE TABLE %s PARTITION OF %s DEFAULT USING evstream;",
					 qname, qseq, qname, qname, qdef, qname);
	EvsSpiExec(sql.data, 0, NULL, NULL, 0);

	relid = get_relname_relid(rv->relname, nspid);
	if (!OidIsValid(relid))
		elog(ERROR, "topic \"%s\" was not created", qname);

	resetStringInfo(&sql);
	appendStringInfo(&sql, "ALTER TABLE %s ALTER COLUMN id SET DEFAULT evstream._next_id(%s::pg_catalog.regclass)",
					 qname, quote_literal_cstr(qname));
	EvsSpiExec(sql.data, 0, NULL, NULL, 0);
	evs_lock_sequence(qseq);
	if (shards > 1)
	{
		/* a shard's events: a range scan of this index (consumer.c) */
		resetStringInfo(&sql);
		appendStringInfo(&sql, "CREATE INDEX ON %s (evstream._shard(key, id, %d), id)", qname, shards);
		EvsSpiExec(sql.data, 0, NULL, NULL, 0);
	}

	/* catalog entry, as the superuser */
	EvsBecomeSuperuser(&su);
	{
		Oid			types[5] = {OIDOID, INTERVALOID, INTERVALOID, BOOLOID, INT4OID};
		Datum		values[5] = {ObjectIdGetDatum(relid), IntervalPGetDatum(ivl),
			ret ? IntervalPGetDatum(ret) : (Datum) 0, BoolGetDatum(notify),
		Int32GetDatum(shards)};
		char		nulls[5] = {' ', ' ', ret ? ' ' : 'n', ' ', ' '};

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_with_args("INSERT INTO evstream._topic (topic, partition_interval, retention, notify, shards) "
								  "VALUES ($1::pg_catalog.regclass, $2, $3, $4, $5)",
								  5, types, values, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not record topic");
		SPI_finish();
	}
	EvsRestoreUser(&su);

	/* DROP EXTENSION ... CASCADE takes the topic with it */
	{
		ObjectAddress topic_addr;
		ObjectAddress ext_addr;

		ObjectAddressSet(topic_addr, RelationRelationId, relid);
		ObjectAddressSet(ext_addr, ExtensionRelationId, get_extension_oid("evstream", false));
		recordDependencyOn(&topic_addr, &ext_addr, DEPENDENCY_NORMAL);
	}
	CommandCounterIncrement();

	evs_make_partitions(relid, Max(evs_premake, 1));

	return relid;
}

/*
 * The aggregates reading a topic or writing to it: without cascade, refuse
 * to drop the topic while there are any; with cascade, drop them
 * (drop_topic, and a plain DROP TABLE, DROP SCHEMA or DROP OWNED that
 * drops the topic: guards.c).  The aggregates of the roles in going_too
 * (a DROP OWNED BY them drops their views itself) are neither refused nor
 * dropped here.
 */
void
EvsTopicDropAggregates(Oid relid, bool cascade, List *going_too)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	int			ret;
	List	   *aggs = NIL;
	ListCell   *lc;
	uint64		i;
	MemoryContext cxt;

	values[0] = ObjectIdGetDatum(relid);
	cxt = CurrentMemoryContext;	/* the list outlives SPI_finish */
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	{
		int			level = EvsPinSearchPath();

		ret = SPI_execute_with_args("SELECT a.aggregate::pg_catalog.oid, a.topic OPERATOR(pg_catalog.=) $1::pg_catalog.regclass "
									"FROM evstream._aggregate a WHERE a.topic OPERATOR(pg_catalog.=) $1::pg_catalog.regclass "
									"OR a.output_topic OPERATOR(pg_catalog.=) $1::pg_catalog.regclass ORDER BY a.id",
									1, types, values, NULL, true, 0);
		EvsUnpinSearchPath(level);
	}
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read evstream._aggregate");
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Oid			agg = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		bool		reads = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));

		if (going_too != NIL && list_member_oid(going_too, EvsRelOwnerIfAny(agg)))
			continue;
		if (!cascade)
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("cannot drop topic \"%s\" because aggregate \"%s\" %s it",
							get_rel_name(relid), get_rel_name(agg),
							reads ? "reads" : "writes to"),
					 errhint("Drop the aggregate first, or use evstream.drop_topic(topic, cascade => true).")));
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			aggs = lappend_oid(aggs, agg);
			MemoryContextSwitchTo(old);
		}
	}
	SPI_finish();

	foreach(lc, aggs)
	{
		Oid			agg = lfirst_oid(lc);

		if (OidIsValid(agg) && get_rel_name(agg) != NULL)
			EvsDropAggregate(agg, true);
	}
}

PG_FUNCTION_INFO_V1(evstream_drop_topic);

/*
 * evstream.drop_topic(topic regclass, cascade boolean)
 */
Datum
evstream_drop_topic(PG_FUNCTION_ARGS)
{
	Oid			relid;
	bool		cascade;

	EvsArgNotNull(fcinfo, 0, "topic");
	EvsArgNotNull(fcinfo, 1, "cascade");
	relid = PG_GETARG_OID(0);
	cascade = PG_GETARG_BOOL(1);
	(void) EvsRequireTopic(relid, "drop_topic");
	EvsRequireOwner(relid);

	EvsTopicDropAggregates(relid, cascade, NIL);

	/*
	 * The event trigger forgets the topic and its groups.  With cascade,
	 * what else depends on the topic goes too, as with DROP TABLE ...
	 * CASCADE (e.g. another role's view on it).
	 */
	EvsSpiExec(psprintf("DROP TABLE %s%s", EvsQualifiedName(relid), cascade ? " CASCADE" : ""),
			   0, NULL, NULL, 0);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(evstream_set_retention);

/*
 * evstream.set_retention(topic regclass, retention interval)
 */
Datum
evstream_set_retention(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Interval   *ret = NULL;
	EvsUserState su;
	Oid			types[2] = {OIDOID, INTERVALOID};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};

	EvsArgNotNull(fcinfo, 0, "topic");
	relid = PG_GETARG_OID(0);
	if (!PG_ARGISNULL(1))
	{
		ret = PG_GETARG_INTERVAL_P(1);
		evs_check_retention(ret);
	}
	else
		nulls[1] = 'n';
	(void) EvsRequireTopic(relid, "set_retention");
	EvsRequireOwner(relid);

	values[0] = ObjectIdGetDatum(relid);
	values[1] = ret ? IntervalPGetDatum(ret) : (Datum) 0;
	EvsBecomeSuperuser(&su);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("UPDATE evstream._topic t SET retention = $2 "
							  "WHERE t.topic OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
							  2, types, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update topic");
	SPI_finish();
	EvsRestoreUser(&su);
	CacheInvalidateRelcacheByRelid(relid);
	PG_RETURN_VOID();
}

typedef struct OwnerRead
{
	Oid			topic;
	const char *sql;
	int			nargs;
	Oid		   *types;
	Datum	   *values;
	Datum	   *out;
	int			nout;
	bool	   *nulls;
	bool		found;
	MemoryContext cxt;			/* where the results go */
} OwnerRead;

static void
evs_owner_read(void *arg)
{
	OwnerRead  *r = arg;
	EvsTopic   *t = EvsLookupTopic(r->topic);
	EvsUserState st;
	int			i;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EvsBecomeOwner(t->owner, &st);
	if (SPI_execute_with_args(psprintf(r->sql, EvsQualifiedName(r->topic)), r->nargs,
							  r->types, r->values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read topic \"%s\"", get_rel_name(r->topic));
	EvsRestoreUser(&st);
	if (SPI_processed > 0)
	{
		MemoryContext old = MemoryContextSwitchTo(r->cxt);

		r->found = true;
		for (i = 0; i < r->nout; i++)
		{
			r->out[i] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i + 1, &r->nulls[i]);
			if (!r->nulls[i])
				r->out[i] = datumCopy(r->out[i], true, 8);
		}
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
}

/*
 * Read the topic as its owner; the relation must be a topic.  Whatever
 * the owner's policies do (raise, for instance), the monitoring views keep
 * working for everyone else: an error reads as "nothing".
 */
static bool
evs_read_as_owner(Oid topic, const char *sql, int nargs, Oid *types, Datum *values,
				  Datum *out, int nout, bool *nulls)
{
	OwnerRead	r = {topic, sql, nargs, types, values, out, nout, nulls, false,
	CurrentMemoryContext};

	if (EvsLookupTopic(topic)->topic != topic || !OidIsValid(topic))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("relation with OID %u is not an evstream topic", topic)));
	if (!EvsTrySubxact(evs_owner_read, &r, InvalidOid, "reading a topic for a view", NULL))
		return false;
	return r.found;
}

PG_FUNCTION_INFO_V1(evstream_edge);

/* evstream._edge(topic, first, OUT id, OUT created_at) */
Datum
evstream_edge(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		out[2];
	bool		nulls[2] = {true, true};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) ||
		!OidIsValid(get_rel_name(PG_GETARG_OID(0)) ? PG_GETARG_OID(0) : InvalidOid))
		PG_RETURN_NULL();
	if (!evs_read_as_owner(PG_GETARG_OID(0),
						   PG_GETARG_BOOL(1) ?
						   "SELECT e.id, e.created_at FROM %s e ORDER BY e.id ASC LIMIT 1" :
						   "SELECT e.id, e.created_at FROM %s e ORDER BY e.id DESC LIMIT 1",
						   0, NULL, NULL, out, 2, nulls))
		nulls[0] = nulls[1] = true;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), out, nulls)));
}

PG_FUNCTION_INFO_V1(evstream_time_after);

/* evstream._time_after(topic, after_id): created_at of the next stable event */
Datum
evstream_time_after(PG_FUNCTION_ARGS)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		values[2];
	Datum		out[1];
	bool		nulls[1] = {true};
	Oid			topic;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	topic = PG_GETARG_OID(0);
	if (get_rel_name(topic) == NULL)
		PG_RETURN_NULL();
	values[0] = Int64GetDatum(PG_GETARG_INT64(1));
	values[1] = Int64GetDatum(EvsStableId(topic));
	if (!evs_read_as_owner(topic,
						   "SELECT e.created_at FROM %s e WHERE e.id OPERATOR(pg_catalog.>) $1 "
						   "AND e.id OPERATOR(pg_catalog.<=) $2 ORDER BY e.id LIMIT 1",
						   2, types, values, out, 1, nulls) || nulls[0])
		PG_RETURN_NULL();
	PG_RETURN_DATUM(out[0]);
}

/*
 * The shard of an event (SPEC: the same key, the same shard, for the life
 * of the topic): FNV-1a over the key's bytes, the same on every platform
 * and version, modulo the shards; a NULL key spreads by id.
 */
int
EvsShardOf(const char *key, int len, int64 id, int shards)
{
	uint64		h = UINT64CONST(14695981039346656037);

	if (shards <= 1)
		return 0;
	if (key == NULL)
		return (int) ((uint64) id % (uint64) shards);
	for (int i = 0; i < len; i++)
	{
		h ^= (unsigned char) key[i];
		h *= UINT64CONST(1099511628211);
	}
	return (int) (h % (uint64) shards);
}

PG_FUNCTION_INFO_V1(evstream_shard);

/* evstream._shard(key, id, shards): the index expression of sharded topics */
Datum
evstream_shard(PG_FUNCTION_ARGS)
{
	int			shards;

	if (PG_ARGISNULL(2))
		PG_RETURN_NULL();
	shards = PG_GETARG_INT32(2);
	if (PG_ARGISNULL(0))
	{
		if (PG_ARGISNULL(1))
			PG_RETURN_NULL();
		PG_RETURN_INT32(EvsShardOf(NULL, 0, PG_GETARG_INT64(1), shards));
	}
	else
	{
		text	   *key = PG_GETARG_TEXT_PP(0);

		PG_RETURN_INT32(EvsShardOf(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), 0, shards));
	}
}

PG_FUNCTION_INFO_V1(evstream_shard_of);

/* evstream.shard_of(topic, key): NULL for a NULL key */
Datum
evstream_shard_of(PG_FUNCTION_ARGS)
{
	EvsTopic   *t;
	text	   *key;

	EvsArgNotNull(fcinfo, 0, "topic");
	t = EvsRequireTopic(PG_GETARG_OID(0), "shard_of");
	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	key = PG_GETARG_TEXT_PP(1);
	PG_RETURN_INT32(EvsShardOf(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), 0, t->shards));
}

#define EVS_LAG_EXACT 10000

PG_FUNCTION_INFO_V1(evstream_lag);

/*
 * evstream._lag(topic, positions, shard, OUT events, OUT oldest): the
 * committed events after a group's positions -- also those not stable yet
 * -- exactly up to EVS_LAG_EXACT, estimated from the ids above; and the
 * creation time of the oldest of them.  positions[s + 1] is shard s's
 * position; with shard given, positions[1] is that shard's and only its
 * events count.  Read as the topic's owner (see evs_read_as_owner).
 */
Datum
evstream_lag(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		out[2] = {0, 0};
	bool		nulls[2] = {true, true};
	Oid			topic;
	EvsTopic   *t;
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *enulls;
	int			nelems;
	int64		low = PG_INT64_MAX;
	char	   *sql;
	Oid			types[3] = {INT8OID, INT8ARRAYOID, INT4OID};
	Datum		values[3];
	Datum		res[3];
	bool		rnulls[3];
	bool		one_shard;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	topic = PG_GETARG_OID(0);
	if (get_rel_name(topic) == NULL)
		PG_RETURN_NULL();
	t = EvsLookupTopic(topic);
	if (t->topic != topic || pg_class_aclcheck(topic, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		PG_RETURN_NULL();		/* counts only for those who may read the topic */
	one_shard = !PG_ARGISNULL(2);
	arr = PG_GETARG_ARRAYTYPE_P(1);
	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &enulls, &nelems);
	if (nelems < (one_shard ? 1 : t->shards))
		PG_RETURN_NULL();
	for (int i = 0; i < (one_shard ? 1 : t->shards); i++)
		low = Min(low, enulls[i] ? 0 : DatumGetInt64(elems[i]));

	if (t->shards == 1)
		sql = psprintf("SELECT pg_catalog.count(*), pg_catalog.min(x.created_at), pg_catalog.max(x.id) FROM "
					   "(SELECT e.id, e.created_at FROM %%s e WHERE e.id OPERATOR(pg_catalog.>) $1 "
					   "ORDER BY e.id LIMIT %d) x", EVS_LAG_EXACT + 1);
	else if (one_shard)
		sql = psprintf("SELECT pg_catalog.count(*), pg_catalog.min(x.created_at), pg_catalog.max(x.id) FROM "
					   "(SELECT e.id, e.created_at FROM %%s e WHERE (evstream._shard(e.key, e.id, %d), e.id) "
					   "> ($3, $1) AND (evstream._shard(e.key, e.id, %d), e.id) <= ($3, " INT64_FORMAT ") "
					   "ORDER BY evstream._shard(e.key, e.id, %d), e.id LIMIT %d) x",
					   t->shards, t->shards, PG_INT64_MAX, t->shards, EVS_LAG_EXACT + 1);
	else
		sql = psprintf("SELECT pg_catalog.count(*), pg_catalog.min(x.created_at), pg_catalog.max(x.id) FROM "
					   "(SELECT e.id, e.created_at FROM %%s e WHERE e.id OPERATOR(pg_catalog.>) $1 "
					   "AND e.id OPERATOR(pg_catalog.>) ($2)[evstream._shard(e.key, e.id, %d) OPERATOR(pg_catalog.+) 1] "
					   "ORDER BY e.id LIMIT %d) x", t->shards, EVS_LAG_EXACT + 1);
	values[0] = Int64GetDatum(low);
	values[1] = PointerGetDatum(arr);
	values[2] = Int32GetDatum(one_shard ? PG_GETARG_INT32(2) : 0);
	if (evs_read_as_owner(topic, sql, 3, types, values, res, 3, rnulls))
	{
		int64		n = DatumGetInt64(res[0]);

		if (n > EVS_LAG_EXACT)
		{
			Datum		last[2];
			bool		lnulls[2] = {true, true};

			/* an estimate: ids after the lowest position, per shard */
			if (evs_read_as_owner(topic, "SELECT e.id, e.created_at FROM %s e ORDER BY e.id DESC LIMIT 1",
								  0, NULL, NULL, last, 2, lnulls) && !lnulls[0])
				n = Max(n, (DatumGetInt64(last[0]) - low) / (one_shard ? t->shards : 1));
		}
		out[0] = Int64GetDatum(n);
		nulls[0] = false;
		out[1] = res[1];
		nulls[1] = rnulls[1];
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), out, nulls)));
}

/* One bound of a range partition: its value, or NULL for MINVALUE/MAXVALUE */
static void
evs_range_bound(List *datums, Datum *value, bool *isnull)
{
	PartitionRangeDatum *prd;
	Const	   *c;

	*isnull = true;
	if (list_length(datums) != 1)
		return;
	prd = linitial_node(PartitionRangeDatum, datums);
	if (prd->kind != PARTITION_RANGE_DATUM_VALUE || !IsA(prd->value, Const))
		return;
	c = (Const *) prd->value;
	if (c->constisnull || c->consttype != TIMESTAMPTZOID)
		return;
	*value = c->constvalue;
	*isnull = false;
}

/*
 * evstream._partitions(topic regclass) -> (part, lo, hi, is_default): the
 * children of topic in pg_inherits with their range bounds (lo, hi NULL
 * for the default partition and for MINVALUE/MAXVALUE; is_default NULL for
 * a child that is no partition).  Reads what anyone can read in pg_class.
 */
PG_FUNCTION_INFO_V1(evstream_partitions);

Datum
evstream_partitions(PG_FUNCTION_ARGS)
{
	Oid			topic = PG_GETARG_OID(0);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Relation	inh;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	InitMaterializedSRF(fcinfo, 0);
	inh = table_open(InheritsRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_inherits_inhparent, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(topic));
	scan = systable_beginscan(inh, InheritsParentIndexId, true, NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Oid			child = ((Form_pg_inherits) GETSTRUCT(tup))->inhrelid;
		HeapTuple	ctup;
		Datum		bound;
		Datum		values[4] = {ObjectIdGetDatum(child), 0, 0, BoolGetDatum(false)};
		bool		nulls[4] = {false, true, true, false};
		bool		isnull;

		CHECK_FOR_INTERRUPTS();
		ctup = SearchSysCache1(RELOID, ObjectIdGetDatum(child));
		if (!HeapTupleIsValid(ctup))
			continue;			/* dropped meanwhile */
		bound = SysCacheGetAttr(RELOID, ctup, Anum_pg_class_relpartbound, &isnull);
		if (isnull)
			nulls[3] = true;
		else
		{
			char	   *str = TextDatumGetCString(bound);
			PartitionBoundSpec *spec = castNode(PartitionBoundSpec, stringToNode(str));

			if (spec->is_default)
				values[3] = BoolGetDatum(true);
			else if (spec->strategy == PARTITION_STRATEGY_RANGE)
			{
				evs_range_bound(spec->lowerdatums, &values[1], &nulls[1]);
				evs_range_bound(spec->upperdatums, &values[2], &nulls[2]);
			}
			pfree(str);
		}
		ReleaseSysCache(ctup);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	systable_endscan(scan);
	table_close(inh, AccessShareLock);
	return (Datum) 0;
}
