/*-------------------------------------------------------------------------
 *
 * consumer.c
 *	  Consumer groups: evstream.poll, consume, commit, seek (by id and by
 *	  time).  A group's position (evstream._group.committed_id) is the id of
 *	  the last event it consumed; 0 for a group that has none yet, so it
 *	  starts before the oldest retained event.
 *
 *	  Reading never passes the stable offset: the stable id is computed
 *	  first, then the rows are read by a statement with a new snapshot
 *	  (READ COMMITTED), so every id up to it is visible or will never
 *	  appear (see offsets.c).  In REPEATABLE READ or SERIALIZABLE the
 *	  transaction snapshot predates the stable offset and a late commit
 *	  could be skipped, so poll and consume refuse to run there.
 *
 *	  Group ownership (SPEC 0.2): a group belongs to the role that created
 *	  it (evstream._group.owner).  Moving it (consume, commit, seek) needs
 *	  SELECT on the topic and membership in the owner role, or ownership of
 *	  the topic; reading without moving (poll) needs SELECT only.  The
 *	  check is made on the locked row, before the position moves; a group
 *	  that does not exist yet is created owned by the caller.  The group
 *	  statements are fixed, schema-qualified SQL on evstream's own table,
 *	  run as the superuser with search_path pinned.
 *
 *	  consume is exactly-once for work done in the same transaction: it
 *	  locks the group's row (FOR UPDATE) before computing anything, so two
 *	  concurrent consume calls on one group serialize; the second re-reads
 *	  the committed position once the first commits (or sees the old one if
 *	  it aborts) and never hands out the same event to two transactions
 *	  that both commit.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/consumer.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "executor/tstoreReceiver.h"
#include "nodes/params.h"
#include "utils/memutils.h"

#include "evstream.h"

/* Common argument checks; returns the topic */
static Oid
evs_consumer_args(FunctionCallInfo fcinfo, const char *fn, char **group)
{
	Oid			topic;

	EvsArgNotNull(fcinfo, 0, "topic");
	topic = PG_GETARG_OID(0);
	*group = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	EvsCheckName("consumer_group", *group);
	(void) EvsRequireTopic(topic, fn);
	EvsRequirePrivilege(topic, ACL_SELECT);
	return topic;
}

static int32
evs_max_events(FunctionCallInfo fcinfo)
{
	int32		max;

	EvsArgNotNull(fcinfo, 2, "max_events");
	max = PG_GETARG_INT32(2);
	if (max <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_events must be positive, not %d", max)));
	return max;
}

/* Statements on evstream._group, prepared once per backend */
#define GROUP_KEY "g.topic OPERATOR(pg_catalog.=) $1 AND g.consumer_group OPERATOR(pg_catalog.=) $2"
static EvsPlan plan_position = {
	"SELECT g.committed_id, g.owner::pg_catalog.oid FROM evstream._group g WHERE " GROUP_KEY,
	2, {REGCLASSOID, TEXTOID}
};
static EvsPlan plan_position_lock = {
	"SELECT g.committed_id, g.owner::pg_catalog.oid FROM evstream._group g WHERE " GROUP_KEY " FOR UPDATE",
	2, {REGCLASSOID, TEXTOID}
};
static EvsPlan plan_group_create = {
	"INSERT INTO evstream._group (topic, consumer_group, committed_id, owner) "
	"VALUES ($1, $2, 0, $3) ON CONFLICT DO NOTHING",
	3, {REGCLASSOID, TEXTOID, REGROLEOID}
};
static EvsPlan plan_set_position = {
	"UPDATE evstream._group g SET committed_id = CASE WHEN $4 THEN "
	"GREATEST(g.committed_id, $3) ELSE $3 END, updated_at = pg_catalog.now() WHERE " GROUP_KEY,
	4, {REGCLASSOID, TEXTOID, INT8OID, BOOLOID}
};

/* Read (position, owner) of a group; false when it does not exist */
static bool
evs_group_row(EvsPlan *p, Datum *values, bool read_only, int64 *pos, Oid *owner)
{
	int			ret;
	bool		isnull;

	ret = EvsExecPlan(p, values, NULL, read_only, 1);
	if (ret < 0)
		elog(ERROR, "SPI_execute_plan failed: %s", p->sql);
	if (SPI_processed == 0 || SPI_tuptable == NULL)
		return false;
	*pos = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	return true;
}

/* May the current user move or claim this group? */
static void
evs_check_group_owner(Oid topic, const char *group, Oid owner, Oid user)
{
	if (!OidIsValid(owner) || has_privs_of_role(user, owner) ||
		evs_class_ownercheck(topic, user))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for consumer group \"%s\" of topic \"%s\"",
					group, get_rel_name(topic)),
			 errdetail("The group belongs to role \"%s\".", GetUserNameFromId(owner, true)),
			 errhint("Use a group of your own, or ask its owner to grant you membership in role \"%s\".",
					 GetUserNameFromId(owner, true))));
}

/*
 * The group's committed position.  When claim: the caller must be allowed
 * to move the group (checked before anything is written); the row is
 * created (owned by the caller) if missing and locked for the transaction.
 */
static int64
evs_group_position(Oid topic, const char *group, bool claim)
{
	Oid			user = GetUserId();
	Datum		values[3] = {ObjectIdGetDatum(topic), CStringGetTextDatum(group),
	ObjectIdGetDatum(user)};
	int64		pos = 0;
	Oid			owner = InvalidOid;
	EvsUserState su;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EvsBecomeSuperuser(&su);
	if (!claim)
	{
		if (!evs_group_row(&plan_position, values, true, &pos, &owner))
			pos = 0;
	}
	else
	{
		/* privileges first, then the row lock */
		if (evs_group_row(&plan_position, values, false, &pos, &owner))
			evs_check_group_owner(topic, group, owner, user);
		if (!evs_group_row(&plan_position_lock, values, false, &pos, &owner))
		{
			/* a new group: create its row (waits for a concurrent creator) */
			if (EvsExecPlan(&plan_group_create, values, NULL, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "could not create consumer group");
			if (!evs_group_row(&plan_position_lock, values, false, &pos, &owner))
				elog(ERROR, "consumer group \"%s\" vanished", group);
		}
		evs_check_group_owner(topic, group, owner, user);
	}
	EvsRestoreUser(&su);
	SPI_finish();
	return pos;
}

/* Set the claimed group's position (forward_only: never move it back) */
static void
evs_set_position(Oid topic, const char *group, int64 pos, bool forward_only)
{
	Datum		values[4] = {ObjectIdGetDatum(topic), CStringGetTextDatum(group),
	Int64GetDatum(pos), BoolGetDatum(forward_only)};
	EvsUserState su;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EvsBecomeSuperuser(&su);
	if (EvsExecPlan(&plan_set_position, values, NULL, false, 0) != SPI_OK_UPDATE ||
		SPI_processed != 1)
		elog(ERROR, "could not set the position of consumer group \"%s\"", group);
	EvsRestoreUser(&su);
	SPI_finish();
}

/*
 * A DestReceiver that stores rows into the SRF's tuplestore and remembers
 * the last id, so events are copied once, straight from the executor.
 */
typedef struct EvsReadDest
{
	DestReceiver pub;
	DestReceiver *inner;
	int64		last;
} EvsReadDest;

static bool
evs_read_receive(TupleTableSlot *slot, DestReceiver *self)
{
	EvsReadDest *d = (EvsReadDest *) self;
	bool		isnull;
	Datum		id = slot_getattr(slot, 1, &isnull);

	if (!isnull)
		d->last = DatumGetInt64(id);
	return d->inner->receiveSlot(slot, d->inner);
}

static void
evs_read_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
	EvsReadDest *d = (EvsReadDest *) self;

	d->inner->rStartup(d->inner, operation, typeinfo);
}

static void
evs_read_shutdown(DestReceiver *self)
{
	EvsReadDest *d = (EvsReadDest *) self;

	d->inner->rShutdown(d->inner);
}

static void
evs_read_destroy(DestReceiver *self)
{
}

/*
 * Read events position < id <= stable into the SRF's tuplestore; returns
 * the last id returned, or position when none.
 */
static int64
evs_read_events(FunctionCallInfo fcinfo, Oid topic, int64 position, int32 max)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	EvsTopic   *t;
	int64		stable = EvsStableId(topic);
	EvsReadDest dest;
	SPIExecuteOptions options;
	ParamListInfo params;

	InitMaterializedSRF(fcinfo, 0);
	if (stable <= position)
		return position;

	t = EvsRequireTopic(topic, "poll");
	params = makeParamList(3);
	for (int i = 0; i < 3; i++)
	{
		params->params[i].isnull = false;
		params->params[i].pflags = PARAM_FLAG_CONST;
	}
	params->params[0].value = Int64GetDatum(position);
	params->params[0].ptype = INT8OID;
	params->params[1].value = Int64GetDatum(stable);
	params->params[1].ptype = INT8OID;
	params->params[2].value = Int32GetDatum(max);
	params->params[2].ptype = INT4OID;

	memset(&dest, 0, sizeof(dest));
	dest.pub.receiveSlot = evs_read_receive;
	dest.pub.rStartup = evs_read_startup;
	dest.pub.rShutdown = evs_read_shutdown;
	dest.pub.rDestroy = evs_read_destroy;
	dest.pub.mydest = DestTuplestore;
	dest.inner = CreateTuplestoreDestReceiver();
	SetTuplestoreDestReceiverParams(dest.inner, rsinfo->setResult,
									rsinfo->econtext->ecxt_per_query_memory,
									false, NULL, NULL);
	dest.last = position;

	memset(&options, 0, sizeof(options));
	options.params = params;
	options.read_only = false;	/* a new snapshot, taken after the stable id */
	options.dest = (DestReceiver *) &dest;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EvsCachePin();
	{
		SPIPlanPtr	plan = EvsTopicReadPlan(t);
		int			level = EvsPinSearchPath();

		if (SPI_execute_plan_extended(plan, &options) != SPI_OK_SELECT)
			elog(ERROR, "could not read topic \"%s\"", get_rel_name(topic));
		EvsUnpinSearchPath(level);
	}
	EvsCacheUnpin();
	SPI_finish();
	return dest.last;
}

PG_FUNCTION_INFO_V1(evstream_poll);

/* evstream.poll(topic, consumer_group, max_events) */
Datum
evstream_poll(PG_FUNCTION_ARGS)
{
	char	   *group;
	Oid			topic = evs_consumer_args(fcinfo, "poll", &group);
	int32		max = evs_max_events(fcinfo);

	EvsRequireReadCommitted("poll");
	(void) evs_read_events(fcinfo, topic, evs_group_position(topic, group, false), max);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(evstream_consume);

/* evstream.consume(topic, consumer_group, max_events): poll + commit */
Datum
evstream_consume(PG_FUNCTION_ARGS)
{
	char	   *group;
	Oid			topic = evs_consumer_args(fcinfo, "consume", &group);
	int32		max = evs_max_events(fcinfo);
	int64		pos;
	int64		last;

	EvsRequireReadCommitted("consume");
	pos = evs_group_position(topic, group, true);
	last = evs_read_events(fcinfo, topic, pos, max);
	if (last > pos)
		evs_set_position(topic, group, last, true);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(evstream_commit);

/* evstream.commit(topic, consumer_group, last_id): forward only */
Datum
evstream_commit(PG_FUNCTION_ARGS)
{
	char	   *group;
	Oid			topic = evs_consumer_args(fcinfo, "commit", &group);
	int64		last_id;
	int64		stable;

	EvsArgNotNull(fcinfo, 2, "last_id");
	last_id = PG_GETARG_INT64(2);
	if (last_id < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("last_id must not be negative, not " INT64_FORMAT, last_id)));
	stable = EvsStableId(topic);
	if (last_id > stable)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot commit id " INT64_FORMAT " of topic \"%s\" for group \"%s\": it is beyond the stable id " INT64_FORMAT,
						last_id, get_rel_name(topic), group, stable),
				 errdetail("Events up to the stable id are the only ones a consumer can have received."),
				 errhint("Commit the id of the last event poll returned.")));
	(void) evs_group_position(topic, group, true);
	evs_set_position(topic, group, last_id, true);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(evstream_seek_id);

/* evstream.seek(topic, consumer_group, next_id): move anywhere (replay) */
Datum
evstream_seek_id(PG_FUNCTION_ARGS)
{
	char	   *group;
	Oid			topic = evs_consumer_args(fcinfo, "seek", &group);
	int64		next_id;
	int64		stable;

	EvsArgNotNull(fcinfo, 2, "next_id");
	next_id = PG_GETARG_INT64(2);
	stable = EvsStableId(topic);
	if (next_id < 0 || next_id > stable + 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot seek group \"%s\" of topic \"%s\" to id " INT64_FORMAT,
						group, get_rel_name(topic), next_id),
				 errdetail("next_id must be between 0 and the stable id + 1 (" INT64_FORMAT ").", stable + 1),
				 errhint("Seek to 0 to replay from the oldest retained event, or to evstream.stable_id(topic) + 1 to skip to the end.")));
	(void) evs_group_position(topic, group, true);
	evs_set_position(topic, group, Max(next_id - 1, 0), false);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(evstream_seek_time);

/*
 * evstream.seek(topic, consumer_group, since timestamptz): the group goes
 * on from the first event created at or after since (Kafka's
 * offsetsForTimes); to the end when there is none.
 */
Datum
evstream_seek_time(PG_FUNCTION_ARGS)
{
	char	   *group;
	Oid			topic = evs_consumer_args(fcinfo, "seek", &group);
	TimestampTz since;
	int64		stable;
	int64		first;
	bool		isnull;
	Oid			types[2] = {TIMESTAMPTZOID, INT8OID};
	Datum		values[2];

	EvsArgNotNull(fcinfo, 2, "since");
	since = PG_GETARG_TIMESTAMPTZ(2);
	(void) evs_group_position(topic, group, true);
	stable = EvsStableId(topic);
	values[0] = TimestampTzGetDatum(since);
	values[1] = Int64GetDatum(stable);
	first = EvsSpiInt64(psprintf("SELECT e.id FROM %s e WHERE e.created_at OPERATOR(pg_catalog.>=) $1 "
								 "AND e.id OPERATOR(pg_catalog.<=) $2 ORDER BY e.id LIMIT 1",
								 EvsQualifiedName(topic)),
						2, types, values, &isnull);
	evs_set_position(topic, group, isnull ? stable : first - 1, false);
	PG_RETURN_VOID();
}
