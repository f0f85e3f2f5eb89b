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

/* Refuse snapshot isolation levels (see the header comment) */
void
EvsRequireReadCommitted(const char *fn)
{
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("evstream.%s requires the READ COMMITTED isolation level", fn),
				 errdetail("A REPEATABLE READ or SERIALIZABLE snapshot can miss events that committed after it was taken; they would be skipped."),
				 errhint("Run evstream.%s in a READ COMMITTED transaction.", fn)));
}

/* Common argument checks; returns the topic */
static Oid
evs_consumer_args(FunctionCallInfo fcinfo, const char *fn, char **group)
{
	Oid			topic;
	AclResult	acl;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("topic must not be NULL")));
	topic = PG_GETARG_OID(0);
	*group = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	EvsCheckName("consumer_group", *group);
	(void) EvsRequireTopic(topic, fn);
	acl = pg_class_aclcheck(topic, GetUserId(), ACL_SELECT);
	if (acl != ACLCHECK_OK)
		aclcheck_error(acl, OBJECT_TABLE, get_rel_name(topic));
	return topic;
}

static int32
evs_max_events(FunctionCallInfo fcinfo)
{
	int32		max;

	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("max_events must not be NULL")));
	max = PG_GETARG_INT32(2);
	if (max <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_events must be positive, not %d", max)));
	return max;
}

/* Statements on evstream._group, prepared once per backend */
static EvsPlan plan_position = {
	"SELECT committed_id FROM evstream._group WHERE topic = $1::regclass AND consumer_group = $2",
	2, {OIDOID, TEXTOID}
};
static EvsPlan plan_position_lock = {
	"SELECT committed_id FROM evstream._group WHERE topic = $1::regclass AND consumer_group = $2 FOR UPDATE",
	2, {OIDOID, TEXTOID}
};
static EvsPlan plan_group_create = {
	"INSERT INTO evstream._group (topic, consumer_group, committed_id) "
	"VALUES ($1::regclass, $2, 0) ON CONFLICT DO NOTHING",
	2, {OIDOID, TEXTOID}
};
static EvsPlan plan_set_forward = {
	"INSERT INTO evstream._group AS g (topic, consumer_group, committed_id) "
	"VALUES ($1::regclass, $2, $3) ON CONFLICT (topic, consumer_group) DO UPDATE "
	"SET committed_id = GREATEST(g.committed_id, excluded.committed_id), updated_at = now()",
	3, {OIDOID, TEXTOID, INT8OID}
};
static EvsPlan plan_set_any = {
	"INSERT INTO evstream._group AS g (topic, consumer_group, committed_id) "
	"VALUES ($1::regclass, $2, $3) ON CONFLICT (topic, consumer_group) DO UPDATE "
	"SET committed_id = excluded.committed_id, updated_at = now()",
	3, {OIDOID, TEXTOID, INT8OID}
};

/* Run a prepared statement returning at most one int8; NULL when no row */
static bool
evs_plan_int64(EvsPlan *p, Datum *values, bool read_only, int64 *result)
{
	int			ret;
	bool		isnull = true;

	ret = SPI_execute_plan(EvsPrepare(p), values, NULL, read_only, 1);
	if (ret < 0)
		elog(ERROR, "SPI_execute_plan failed: %s", p->sql);
	if (SPI_processed > 0 && SPI_tuptable != NULL)
		*result = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull));
	return !isnull;
}

/* The group's committed position; when lock, create the row and lock it */
static int64
evs_group_position(Oid topic, const char *group, bool lock)
{
	Datum		values[2] = {ObjectIdGetDatum(topic), CStringGetTextDatum(group)};
	int64		pos = 0;
	EvsSuperuserState su;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!lock)
	{
		if (!evs_plan_int64(&plan_position, values, true, &pos))
			pos = 0;
	}
	else
	{
		EvsBecomeSuperuserLight(&su);
		if (!evs_plan_int64(&plan_position_lock, values, false, &pos))
		{
			/* a new group: create its row (waits for a concurrent creator) */
			if (SPI_execute_plan(EvsPrepare(&plan_group_create), values, NULL, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "could not create consumer group");
			if (!evs_plan_int64(&plan_position_lock, values, false, &pos))
				elog(ERROR, "consumer group \"%s\" vanished", group);
		}
		EvsRestoreUserLight(&su);
	}
	SPI_finish();
	return pos;
}

/* Set the group's position (forward_only: never move it back) */
static void
evs_set_position(Oid topic, const char *group, int64 pos, bool forward_only)
{
	Datum		values[3] = {ObjectIdGetDatum(topic), CStringGetTextDatum(group), Int64GetDatum(pos)};
	EvsSuperuserState su;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EvsBecomeSuperuserLight(&su);
	if (SPI_execute_plan(EvsPrepare(forward_only ? &plan_set_forward : &plan_set_any),
						 values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not set the position of consumer group \"%s\"", group);
	EvsRestoreUserLight(&su);
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
	if (SPI_execute_plan_extended(EvsTopicReadPlan(t), &options) != SPI_OK_SELECT)
		elog(ERROR, "could not read topic \"%s\"", get_rel_name(topic));
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

	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("last_id must not be NULL")));
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

	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("next_id must not be NULL")));
	next_id = PG_GETARG_INT64(2);
	stable = EvsStableId(topic);
	if (next_id < 0 || next_id > stable + 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot seek group \"%s\" of topic \"%s\" to id " INT64_FORMAT,
						group, get_rel_name(topic), next_id),
				 errdetail("next_id must be between 0 and the stable id + 1 (" INT64_FORMAT ").", stable + 1),
				 errhint("Seek to 0 to replay from the oldest retained event, or to evstream.stable_id(topic) + 1 to skip to the end.")));
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

	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("since must not be NULL")));
	since = PG_GETARG_TIMESTAMPTZ(2);
	stable = EvsStableId(topic);
	values[0] = TimestampTzGetDatum(since);
	values[1] = Int64GetDatum(stable);
	first = EvsSpiInt64(psprintf("SELECT id FROM %s WHERE created_at >= $1 AND id <= $2 ORDER BY id LIMIT 1",
								 EvsQualifiedName(topic)),
						2, types, values, &isnull);
	evs_set_position(topic, group, isnull ? stable : first - 1, false);
	PG_RETURN_VOID();
}
