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

#include "catalog/dependency.h"
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
#include "utils/datum.h"
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
	char	   *name;
	List	   *names;
	RangeVar   *rv;
	Oid			nspid;
	char	   *nsp;
	char	   *qname;
	char	   *qseq;
	char	   *qdef;
	Interval   *ivl;
	Interval   *ret = NULL;
	bool		notify;
	Oid			relid;
	StringInfoData sql;
	EvsUserState su;

	EvsArgNotNull(fcinfo, 0, "topic");
	EvsArgNotNull(fcinfo, 1, "partition_interval");
	EvsArgNotNull(fcinfo, 3, "notify");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ivl = PG_GETARG_INTERVAL_P(1);
	if (!PG_ARGISNULL(2))
	{
		ret = PG_GETARG_INTERVAL_P(2);
		evs_check_retention(ret);
	}
	notify = PG_GETARG_BOOL(3);

	(void) EvsBucketUsecs(ivl, "partition_interval");

	{
		ErrorContextCallback cb;

		cb.callback = evs_name_errcontext;
		cb.arg = name;
		cb.previous = error_context_stack;
		error_context_stack = &cb;
		names = evs_string_to_qualified_name_list(name);
		rv = makeRangeVarFromNameList(names);
		error_context_stack = cb.previous;
	}
	if (rv->relname[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("topic name must not be empty")));
	if (strlen(rv->relname) + PARTITION_SUFFIX_LEN > NAMEDATALEN - 1)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("topic name \"%s\" is too long", rv->relname),
				 errdetail("Partition names append %d bytes to the topic name, and names are limited to %d bytes.",
						   PARTITION_SUFFIX_LEN, NAMEDATALEN - 1),
				 errhint("Use a topic name of at most %d bytes.",
						 NAMEDATALEN - 1 - PARTITION_SUFFIX_LEN)));
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

	/* catalog entry, as the superuser */
	EvsBecomeSuperuser(&su);
	{
		Oid			types[4] = {OIDOID, INTERVALOID, INTERVALOID, BOOLOID};
		Datum		values[4] = {ObjectIdGetDatum(relid), IntervalPGetDatum(ivl),
		ret ? IntervalPGetDatum(ret) : (Datum) 0, BoolGetDatum(notify)};
		char		nulls[4] = {' ', ' ', ret ? ' ' : 'n', ' '};

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_with_args("INSERT INTO evstream._topic (topic, partition_interval, retention, notify) "
								  "VALUES ($1::pg_catalog.regclass, $2, $3, $4)",
								  4, types, values, nulls, false, 0) != SPI_OK_INSERT)
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

	PG_RETURN_OID(relid);
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
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	int			ret;
	List	   *aggs = NIL;
	ListCell   *lc;
	uint64		i;
	MemoryContext cxt;

	EvsArgNotNull(fcinfo, 0, "topic");
	EvsArgNotNull(fcinfo, 1, "cascade");
	relid = PG_GETARG_OID(0);
	cascade = PG_GETARG_BOOL(1);
	(void) EvsRequireTopic(relid, "drop_topic");
	EvsRequireOwner(relid);

	/* aggregates reading the topic or writing to it */
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
			EvsDropAggregate(agg);
	}

	/* the event trigger forgets the topic and its groups */
	EvsSpiExec(psprintf("DROP TABLE %s", EvsQualifiedName(relid)), 0, NULL, NULL, 0);
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
	if (!EvsTrySubxact(evs_owner_read, &r, "reading a topic for a view", NULL))
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
