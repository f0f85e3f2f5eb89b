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
 *	  are always quoted.  A topic depends on the extension, so DROP
 *	  EXTENSION ... CASCADE removes it.
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
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/regproc.h"
#include "utils/varlena.h"

#include "evstream.h"

/* bytes the partition suffix "_pYYYYMMDD_HH24MISS" adds */
#define PARTITION_SUFFIX_LEN 17

/* Error out unless the caller owns the relation */
static void
evs_require_owner(Oid relid)
{
	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, get_rel_name(relid));
}

/* Error for a NULL argument */
static void
evs_not_null(FunctionCallInfo fcinfo, int arg, const char *name)
{
	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
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
}

/* Creates the partitions from now() up to premake intervals ahead */
static void
evs_make_partitions(Oid topic, int premake)
{
	Oid			types[2] = {OIDOID, INT4OID};
	Datum		values[2] = {ObjectIdGetDatum(topic), Int32GetDatum(premake)};

	EvsSpiExec("SELECT evstream._ensure_partitions($1::regclass, pg_catalog.now(), "
			   "pg_catalog.now() + (SELECT partition_interval FROM evstream._topic "
			   "WHERE topic = $1::regclass) * $2)",
			   2, types, values, SPI_OK_SELECT);
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
	EvsSuperuserState su;

	evs_not_null(fcinfo, 0, "topic");
	evs_not_null(fcinfo, 1, "partition_interval");
	evs_not_null(fcinfo, 3, "notify");
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
		names = stringToQualifiedNameList(name);
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
	if (pg_namespace_aclcheck(nspid, GetUserId(), ACL_CREATE) != ACLCHECK_OK)
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
	appendStringInfo(&sql, "ALTER TABLE %s ALTER COLUMN id SET DEFAULT evstream._next_id(%s::regclass)",
					 qname, quote_literal_cstr(qname));
	EvsSpiExec(sql.data, 0, NULL, NULL, 0);

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
								  "VALUES ($1::regclass, $2, $3, $4)",
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

	evs_not_null(fcinfo, 0, "topic");
	evs_not_null(fcinfo, 1, "cascade");
	relid = PG_GETARG_OID(0);
	cascade = PG_GETARG_BOOL(1);
	(void) EvsRequireTopic(relid, "drop_topic");
	evs_require_owner(relid);

	/* aggregates reading the topic or writing to it */
	values[0] = ObjectIdGetDatum(relid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute_with_args("SELECT aggregate::oid, topic = $1::regclass FROM evstream._aggregate "
								"WHERE topic = $1::regclass OR output_topic = $1::regclass ORDER BY id",
								1, types, values, NULL, true, 0);
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
		aggs = lappend_oid(aggs, agg);
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
	EvsSuperuserState su;
	Oid			types[2] = {OIDOID, INTERVALOID};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};

	evs_not_null(fcinfo, 0, "topic");
	relid = PG_GETARG_OID(0);
	if (!PG_ARGISNULL(1))
	{
		ret = PG_GETARG_INTERVAL_P(1);
		evs_check_retention(ret);
	}
	else
		nulls[1] = 'n';
	(void) EvsRequireTopic(relid, "set_retention");
	evs_require_owner(relid);

	values[0] = ObjectIdGetDatum(relid);
	values[1] = ret ? IntervalPGetDatum(ret) : (Datum) 0;
	EvsBecomeSuperuser(&su);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("UPDATE evstream._topic SET retention = $2 WHERE topic = $1::regclass",
							  2, types, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update topic");
	SPI_finish();
	EvsRestoreUser(&su);
	CacheInvalidateRelcacheByRelid(relid);
	PG_RETURN_VOID();
}
