/*-------------------------------------------------------------------------
 *
 * consumer.c
 *	  Consumer groups, the SQL entry points: evstream.poll, consume,
 *	  commit, seek (by id and by time), release, drop_group and
 *	  set_group_options.  A group has one position per shard of its topic
 *	  (groups.c): the id of the last event of that shard it consumed (0:
 *	  none yet, so it starts before the oldest retained event).
 *
 *	  Reading never passes the stable offset: the stable id is computed
 *	  first, then the rows are read by a statement with a new snapshot
 *	  (READ COMMITTED), so every id up to it is visible or will never
 *	  appear (see offsets.c).  In REPEATABLE READ or SERIALIZABLE the
 *	  transaction snapshot predates the stable offset and a late commit
 *	  could be skipped, so poll and consume refuse to run there.  Events are
 *	  read as the caller (who has SELECT on the topic) with search_path
 *	  pinned.
 *
 *	  consume claims a shard for the caller's transaction (the shard lock
 *	  of groups.c, only ever tried): first a shard it holds already while
 *	  that has events, else among the shards no transaction holds and no
 *	  live member lease holds, the one whose next stable event is the
 *	  oldest.  Its position is read after the lock is taken, the events
 *	  after it are returned and the position moved, all in the caller's
 *	  transaction: exactly once for work done in the same transaction, in
 *	  id order per shard, hence per key (groups.c has the invariant).
 *	  Taking a shard whose expired lease names a member fences that member.
 *
 *	  A member poll claims a shard for a lease (a row in evstream._lease,
 *	  written under the shard lock): its live-lease shard while that has
 *	  events, else a free one as consume would choose.  It returns events
 *	  without moving the position; commit with the member moves it if the
 *	  member is still the shard's last claimant (else "lease lost", 55000)
 *	  and ends the lease.
 *
 *	  Poison events: each delivery of a shard's next event is counted
 *	  (waits.c); once a group's max_attempts deliveries did not commit past
 *	  it, the next delivery first moves it to the dead-letter topic (as the
 *	  group's owner, restricted) or skips it, and moves the
 *	  position past it, in the delivering transaction.
 *
 *	  Long poll: with wait, a call that finds nothing sleeps until a commit
 *	  to the topic wakes it (waits.c) or the wait is over, and looks again.
 *
 *	  Group ownership (SPEC 0.2): a group belongs to the role that created
 *	  it.  Moving or claiming it needs SELECT on the topic and membership in
 *	  the owner role, or ownership of the topic (groups.c checks it before
 *	  anything is written); reading without claiming needs SELECT only.
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
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tstoreReceiver.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/params.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "evstream.h"

/* What a call reads, and where the events go */
typedef struct EvsRead
{
	FunctionCallInfo fcinfo;
	Oid			topic;
	EvsTopic   *t;
	const char *group;
	int32		max;
	const char *member;			/* member poll */
	int64		lease_us;
	bool		have_group;
	EvsGroup	g;
} EvsRead;

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
	EvsRequireCurrentCatalog(fn);
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

#define EVS_LONGEST_WAIT_US ((int64) 100 * 365 * USECS_PER_DAY)

/* An interval argument as microseconds: NULL -> dflt, negative refused */
static int64
evs_interval_arg(FunctionCallInfo fcinfo, int argno, const char *what, int64 dflt, bool positive)
{
	Interval   *ivl;
	int64		us;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return dflt;
	ivl = PG_GETARG_INTERVAL_P(argno);
	{
		/* in double, clamped to 100 years: no overflow, also for 'infinity' */
		double		d = (double) ivl->time + (double) ivl->day * USECS_PER_DAY +
			(double) ivl->month * 30.0 * USECS_PER_DAY;

		us = d > EVS_LONGEST_WAIT_US ? EVS_LONGEST_WAIT_US : (d < -1.0 ? -1 : (int64) d);
	}
	if (us < 0 || (positive && us == 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be %s", what, positive ? "positive" : "NULL, zero or positive")));
	return us;
}

static const char *
evs_member_arg(FunctionCallInfo fcinfo, int argno)
{
	char	   *m;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return NULL;
	m = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	EvsCheckName("member", m);
	return m;
}

/*
 * A DestReceiver that stores rows into the SRF's tuplestore and remembers
 * the first and last id, so events are copied once, straight from the
 * executor.
 */
typedef struct EvsReadDest
{
	DestReceiver pub;
	DestReceiver *inner;
	int64		first;
	int64		last;
	uint64		n;
} EvsReadDest;

static bool
evs_read_receive(TupleTableSlot *slot, DestReceiver *self)
{
	EvsReadDest *d = (EvsReadDest *) self;
	bool		isnull;
	Datum		id = slot_getattr(slot, 1, &isnull);

	if (!isnull)
	{
		d->last = DatumGetInt64(id);
		if (d->n == 0)
			d->first = d->last;
	}
	d->n++;
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
 * Run one of the topic's read statements into the SRF's tuplestore, as
 * the caller with the path pinned; returns the number of events, their
 * first and last ids.
 */
static uint64
evs_read_rows(EvsRead *r, EvsTopicPlanKind kind, int nparams, Datum *values, Oid *types,
			  int64 *first, int64 *last)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) r->fcinfo->resultinfo;
	EvsReadDest dest;
	SPIExecuteOptions options;
	ParamListInfo params = makeParamList(nparams);

	for (int i = 0; i < nparams; i++)
	{
		params->params[i].isnull = false;
		params->params[i].pflags = PARAM_FLAG_CONST;
		params->params[i].value = values[i];
		params->params[i].ptype = types[i];
	}
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

	memset(&options, 0, sizeof(options));
	options.params = params;
	options.read_only = false;	/* a new snapshot, taken after the stable id */
	options.dest = (DestReceiver *) &dest;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EvsCachePin();
	{
		SPIPlanPtr	plan = EvsTopicPlan(r->t, kind);
		int			level = EvsPinSearchPath();

		if (SPI_execute_plan_extended(plan, &options) != SPI_OK_SELECT)
			elog(ERROR, "could not read topic \"%s\"", get_rel_name(r->topic));
		EvsUnpinSearchPath(level);
	}
	EvsCacheUnpin();
	SPI_finish();
	pfree(dest.inner);
	*first = dest.first;
	*last = dest.last;
	return dest.n;
}

/*
 * Run one of a topic's prepared reads (inside SPI_connect) as the caller,
 * with the path pinned: the rows are in SPI_tuptable.
 */
static void
evs_run_topic_plan(EvsTopic *t, Oid topic, EvsTopicPlanKind kind, Datum *values, long count)
{
	SPIPlanPtr	plan;
	int			level;

	EvsCachePin();
	plan = EvsTopicPlan(t, kind);
	level = EvsPinSearchPath();
	if (SPI_execute_plan(plan, values, NULL, false, count) != SPI_OK_SELECT)
		elog(ERROR, "could not read topic \"%s\"", get_rel_name(topic));
	EvsUnpinSearchPath(level);
	EvsCacheUnpin();
}

/* Up to max events of one shard after its position */
static uint64
evs_read_shard(EvsRead *r, EvsShardState *st, int64 stable, int64 *first, int64 *last)
{
	Datum		values[4] = {Int64GetDatum(st->position), Int64GetDatum(stable),
	Int32GetDatum(r->max), Int32GetDatum(st->shard)};
	Oid			types[4] = {INT8OID, INT8OID, INT4OID, INT4OID};

	if (st->position >= stable)
		return 0;
	if (r->t->shards == 1)
		return evs_read_rows(r, EVS_PLAN_READ, 3, values, types, first, last);
	return evs_read_rows(r, EVS_PLAN_READ_SHARD, 4, values, types, first, last);
}

/*
 * The candidate shard whose next stable event is the oldest, found among
 * the first EVS_FIRST_WINDOW events after the candidates' lowest position
 * by one index scan in id order; -1 when none of those events is a
 * candidate's (then evs_order_shards probes shard by shard).
 */
static int
evs_first_shard(EvsRead *r, EvsShardState *st, int *cands, int ncands, int64 stable)
{
	int			nshards = r->g.shards;
	Datum	   *pos = palloc(sizeof(Datum) * nshards);
	Datum	   *cs = palloc(sizeof(Datum) * ncands);
	int64		low = PG_INT64_MAX;
	Datum		values[4];
	int			found = -1;

	for (int s = 0; s < nshards; s++)
		pos[s] = Int64GetDatum(st[s].position);
	for (int i = 0; i < ncands; i++)
	{
		cs[i] = Int32GetDatum(cands[i]);
		low = Min(low, st[cands[i]].position);
	}
	values[0] = Int64GetDatum(low);
	values[1] = Int64GetDatum(stable);
	values[2] = PointerGetDatum(construct_array(pos, nshards, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[3] = PointerGetDatum(construct_array(cs, ncands, INT4OID, 4, true, TYPALIGN_INT));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	evs_run_topic_plan(r->t, r->topic, EVS_PLAN_FIRST, values, 1);
	if (SPI_processed > 0)
	{
		bool		isnull;

		found = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();
	return found;
}

/*
 * The shards among `cands` (positions in `st`) with stable events, in the
 * order of their next event, oldest first; returns how many.  One index
 * probe per shard, in one statement, as the caller.
 */
static int
evs_order_shards(EvsRead *r, EvsShardState *st, int *cands, int ncands, int64 stable, int *order)
{
	Datum	   *shards;
	Datum	   *positions;
	int64	   *next;
	Datum		values[3];
	int			n = 0;

	if (ncands == 0)
		return 0;
	if (r->t->shards == 1)
	{
		order[0] = cands[0];
		return 1;
	}
	shards = palloc(sizeof(Datum) * ncands);
	positions = palloc(sizeof(Datum) * ncands);
	next = palloc(sizeof(int64) * ncands);
	for (int i = 0; i < ncands; i++)
	{
		shards[i] = Int32GetDatum(cands[i]);
		positions[i] = Int64GetDatum(st[cands[i]].position);
	}
	values[0] = PointerGetDatum(construct_array(shards, ncands, INT4OID, 4, true, TYPALIGN_INT));
	values[1] = PointerGetDatum(construct_array(positions, ncands, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = Int64GetDatum(stable);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	evs_run_topic_plan(r->t, r->topic, EVS_PLAN_NEXT, values, 0);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int			s = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		int			k;

		if (isnull)
			continue;
		/* insertion sort by next id: ncands <= 256 */
		for (k = n; k > 0 && next[k - 1] > id; k--)
		{
			next[k] = next[k - 1];
			order[k] = order[k - 1];
		}
		next[k] = id;
		order[k] = s;
		n++;
	}
	SPI_finish();
	return n;
}

/*
 * Dead-letter (or skip) event `id` of the group: its row goes to the
 * dead-letter topic, inserted as the group's owner (whose INSERT privilege
 * is checked, and to whom the topic's row security applies) under
 * SECURITY_RESTRICTED_OPERATION, with the SPEC's payload.
 */
static void
evs_dead_letter(EvsRead *r, int64 id, int32 attempts)
{
	EvsGroup   *g = &r->g;
	/*
	 * As evstream.topics shows it under the default search_path, whatever
	 * the delivering session's: bare in public, else schema-qualified.
	 */
	char	   *topic_text = get_rel_namespace(r->topic) == PG_PUBLIC_NAMESPACE ?
		pstrdup(quote_identifier(get_rel_name(r->topic))) : EvsQualifiedName(r->topic);

	if (OidIsValid(g->dead_letter) && EvsLookupTopic(g->dead_letter)->topic == g->dead_letter)
	{
		/* still allowed? (set_group_options checked it; it may be revoked since) */
		if (pg_class_aclcheck(g->dead_letter, g->owner, ACL_INSERT) != ACLCHECK_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("cannot dead-letter event " INT64_FORMAT " of topic \"%s\": role \"%s\" may not insert into dead-letter topic \"%s\"",
							id, get_rel_name(r->topic), GetUserNameFromId(g->owner, true),
							get_rel_name(g->dead_letter)),
					 errhint("Grant INSERT on the dead-letter topic to the group's owner, or choose another with evstream.set_group_options.")));
	}
	if (OidIsValid(g->dead_letter) && EvsLookupTopic(g->dead_letter)->topic == g->dead_letter)
	{
		Datum		values[1] = {Int64GetDatum(id)};
		Datum		key = (Datum) 0;
		Datum		payload = (Datum) 0;
		Datum		created = (Datum) 0;
		bool		key_null = true;
		bool		payload_null = true;
		bool		found = false;
		MemoryContext cxt = CurrentMemoryContext;

		/* the event, as the caller */
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		evs_run_topic_plan(r->t, r->topic, EVS_PLAN_EVENT, values, 1);
		if (SPI_processed > 0)
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);
			bool		isnull;

			found = true;
			key = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &key_null);
			if (!key_null)
				key = PointerGetDatum(PG_DETOAST_DATUM_COPY(key));
			payload = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &payload_null);
			if (!payload_null)
				payload = PointerGetDatum(PG_DETOAST_DATUM_COPY(payload));
			created = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
			MemoryContextSwitchTo(old);
		}
		SPI_finish();

		if (found)
		{
			Oid			types[7] = {TEXTOID, TEXTOID, TEXTOID, INT8OID, TIMESTAMPTZOID, INT4OID, JSONBOID};
			Datum		args[7] = {key, CStringGetTextDatum(topic_text), CStringGetTextDatum(g->name),
			Int64GetDatum(id), created, Int32GetDatum(attempts), payload};
			char		nulls[7] = {key_null ? 'n' : ' ', ' ', ' ', ' ', ' ', ' ', payload_null ? 'n' : ' '};
			EvsUserState st;
			char	   *sql = psprintf("INSERT INTO %s (key, payload) VALUES ($1, pg_catalog.jsonb_build_object("
									   "'topic', $2, 'consumer_group', $3, 'id', $4, 'created_at', $5, "
									   "'attempts', $6, 'payload', $7))",
									   EvsQualifiedName(g->dead_letter));

			if (SPI_connect() != SPI_OK_CONNECT)
				elog(ERROR, "SPI_connect failed");
			EvsBecomeOwner(g->owner, &st);
			if (SPI_execute_with_args(sql, 7, types, args, nulls, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "could not dead-letter event " INT64_FORMAT " of topic \"%s\"",
					 id, get_rel_name(r->topic));
			EvsRestoreUser(&st);
			SPI_finish();
		}
	}
	EvsCountDeadLettered(g);
	ereport(DEBUG1,
			(errmsg("evstream: event " INT64_FORMAT " of topic \"%s\" dead-lettered by group \"%s\" after %d attempts",
					id, get_rel_name(r->topic), g->name, attempts)));
}

/*
 * Before delivering from a claimed shard: move poison events out of the
 * way (the shard's next event delivered max_attempts times without a
 * commit past it).  Returns true when the position moved.
 */
static bool
evs_drop_poison(EvsRead *r, EvsShardState *st, int64 stable)
{
	bool		moved = false;

	while (r->g.max_attempts > 0 && st->position < stable)
	{
		int64		head = 0;
		int32		n = EvsAttemptsOf(r->g.id, st->shard, st->position, &head);

		if (n < r->g.max_attempts || head <= st->position || head > stable)
			break;
		evs_dead_letter(r, head, n);
		EvsSetShardPosition(&r->g, st, head);
		moved = true;
	}
	return moved;
}

/*
 * Deliver from a shard this transaction holds the lock of (false when it
 * has no events).  consume: the events after the position, moving it (and
 * fencing the member whose expired lease this was).  member poll: the
 * events after the position, not moving it; the member takes the lease
 * (renew: it held it already, which is no new attempt).  *wrote: the
 * shard's rows were changed, so its lock must be kept.
 */
static bool
evs_deliver(EvsRead *r, EvsShardState *st, int64 stable, bool renew, bool *wrote)
{
	int64		first,
				last;

	/* a re-poll within the member's live lease is no new delivery */
	*wrote = !renew && evs_drop_poison(r, st, stable);
	if (evs_read_shard(r, st, stable, &first, &last) == 0)
		return false;
	if (!renew && r->g.max_attempts > 0)
		EvsCountAttempt(r->g.id, GetUserId(), st->shard, st->position, first);
	if (r->member != NULL)
		EvsSetLease(&r->g, st->shard, r->member, GetCurrentTimestamp() + r->lease_us);
	else
	{
		if (st->member != NULL)
		{
			EvsSetLease(&r->g, st->shard, NULL, 0);
			st->member = NULL;
		}
		EvsSetShardPosition(&r->g, st, last);
	}
	*wrote = true;
	return true;
}

/* Try to lock shard s and deliver from it; the lock is given back if unused */
static bool
evs_try_deliver(EvsRead *r, EvsShardState *st, int s, int64 stable, TimestampTz now)
{
	bool		wrote = false;

	if (!EvsTryLockShard(&r->g, s))
		return false;
	/* the state as of now that we hold it */
	EvsShardStates(&r->g, s, s, &st[s]);
	if (!EvsLeasedByOther(&st[s], r->member, now) &&
		evs_deliver(r, &st[s], stable, false, &wrote))
		return true;
	if (!wrote)
		EvsUnlockShard(&r->g, s);
	return false;
}

/*
 * Claim a free shard and deliver from it: among the shards not held by
 * this transaction already (tried first), not under another member's live
 * lease, with a position behind stable (except `skip`), the one whose next
 * event is the oldest that can be locked without waiting and still has
 * events once its state is read again under the lock.  `st` holds every
 * shard's state as read before.
 */
static bool
evs_claim(EvsRead *r, EvsShardState *st, int64 stable, int skip)
{
	int			nshards = r->g.shards;
	int		   *cands = palloc(sizeof(int) * nshards);
	int		   *order = palloc(sizeof(int) * nshards);
	TimestampTz now = GetCurrentTimestamp();
	int			ncands = 0;
	int			n;

	for (int s = 0; s < nshards; s++)
	{
		if (s == skip || EvsHoldsShard(&r->g, s) ||
			EvsLeasedByOther(&st[s], r->member, now) || st[s].position >= stable)
			continue;
		cands[ncands++] = s;
	}

	/*
	 * On a sharded topic, the oldest next event's shard first (one index
	 * scan); a candidate another transaction holds is dropped and the scan
	 * repeated.  When the window has none of the candidates' events, every
	 * remaining candidate is probed.
	 */
	while (nshards > 1 && ncands > 0)
	{
		int			s = evs_first_shard(r, st, cands, ncands, stable);
		int			k;

		if (s < 0)
			break;
		for (k = 0; k < ncands && cands[k] != s; k++)
			;
		if (k == ncands)
			elog(ERROR, "evstream: shard %d is not a candidate", s);
		cands[k] = cands[--ncands];
		if (evs_try_deliver(r, st, s, stable, now))
			return true;
	}
	n = evs_order_shards(r, st, cands, ncands, stable, order);
	for (int i = 0; i < n; i++)
		if (evs_try_deliver(r, st, order[i], stable, now))
			return true;
	return false;
}

/* The group of a look, opened to claim (false: another transaction is creating it) */
static bool
evs_look_group(EvsRead *r)
{
	if (!r->have_group)
	{
		if (!EvsGroupOpen(r->topic, r->group, true, true, &r->g))
			return false;
		r->have_group = true;
	}
	return true;
}

/* A look starts with the topic's current cache entry (see evs_run) */
static EvsRead *
evs_look_begin(void *arg)
{
	EvsRead    *r = arg;

	r->t = EvsRequireTopic(r->topic, "consume");
	return r;
}

/* One look of consume: true when it returned events */
static bool
evs_look_consume(void *arg)
{
	EvsRead    *r = evs_look_begin(arg);
	int64		stable = EvsStableId(r->topic);
	EvsShardState *st;
	bool		wrote = false;

	if (!evs_look_group(r))
		return false;
	st = palloc0(sizeof(EvsShardState) * r->g.shards);

	/* a shard this transaction holds, while it has events */
	for (int s = 0; s < r->g.shards; s++)
	{
		if (!EvsHoldsShard(&r->g, s))
			continue;
		EvsShardStates(&r->g, s, s, &st[s]);
		if (evs_deliver(r, &st[s], stable, false, &wrote))
			return true;
	}
	/* one shard: its state is read under the lock anyway */
	if (r->g.shards > 1)
		EvsShardStates(&r->g, 0, r->g.shards - 1, st);
	return evs_claim(r, st, stable, -1);
}

/* One look of a member poll */
static bool
evs_look_member(void *arg)
{
	EvsRead    *r = evs_look_begin(arg);
	int64		stable = EvsStableId(r->topic);
	EvsShardState *st;
	int			cur = -1;
	TimestampTz now = GetCurrentTimestamp();
	bool		wrote = false;

	if (!evs_look_group(r))
		return false;
	st = palloc0(sizeof(EvsShardState) * r->g.shards);
	EvsShardStates(&r->g, 0, r->g.shards - 1, st);

	/* the member's current shard, while it has events */
	for (int s = 0; s < r->g.shards; s++)
		if (st[s].member && strcmp(st[s].member, r->member) == 0 &&
			st[s].has_expiry && st[s].expires > now)
			cur = s;
	if (cur >= 0 && EvsTryLockShard(&r->g, cur))
	{
		bool		mine;

		EvsShardStates(&r->g, cur, cur, &st[cur]);
		mine = st[cur].member && strcmp(st[cur].member, r->member) == 0 &&
			st[cur].has_expiry && st[cur].expires > now;
		if (mine && evs_deliver(r, &st[cur], stable, true, &wrote))
			return true;
		if (mine)
			EvsEndLease(&r->g, cur);	/* no events left: claim afresh */
		else
			EvsUnlockShard(&r->g, cur);
	}
	return evs_claim(r, st, stable, cur);
}

/* One look of a poll without member: every shard, claiming nothing */
static bool
evs_look_all(void *arg)
{
	EvsRead    *r = evs_look_begin(arg);
	int64		stable = EvsStableId(r->topic);
	int			nshards = r->t->shards;
	EvsShardState *st = palloc0(sizeof(EvsShardState) * nshards);
	int64		low = PG_INT64_MAX;
	int64		first,
				last;

	if (EvsGroupLookup(r->topic, r->group, &r->g))
		EvsShardStates(&r->g, 0, nshards - 1, st);
	for (int s = 0; s < nshards; s++)
		low = Min(low, st[s].position);
	if (low >= stable)
		return false;
	if (nshards == 1)
	{
		Datum		values[3] = {Int64GetDatum(low), Int64GetDatum(stable), Int32GetDatum(r->max)};
		Oid			types[3] = {INT8OID, INT8OID, INT4OID};

		return evs_read_rows(r, EVS_PLAN_READ, 3, values, types, &first, &last) > 0;
	}
	else
	{
		Datum	   *pos = palloc(sizeof(Datum) * nshards);
		Datum		values[4];
		Oid			types[4] = {INT8OID, INT8OID, INT4OID, INT8ARRAYOID};

		for (int s = 0; s < nshards; s++)
			pos[s] = Int64GetDatum(st[s].position);
		values[0] = Int64GetDatum(low);
		values[1] = Int64GetDatum(stable);
		values[2] = Int32GetDatum(r->max);
		values[3] = PointerGetDatum(construct_array(pos, nshards, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		return evs_read_rows(r, EVS_PLAN_READ_ALL, 4, values, types, &first, &last) > 0;
	}
}

/*
 * Run a look, and with a wait, look again after each wake-up.  The topic
 * cache is pinned for the whole call: an invalidation that arrives while
 * it runs (a GRANT, a new partition) resets the cache, and the entry a
 * look holds must outlive that (its plans too); each look takes the
 * current entry again.  An error leaves the pin to transaction end.
 */
static void
evs_run(EvsRead *r, bool (*look) (void *), int64 wait_us)
{
	InitMaterializedSRF(r->fcinfo, 0);
	EvsCachePin();
	if (!look(r) && wait_us > 0)
		(void) EvsWaitFor(r->topic, Max(wait_us / 1000, 1), look, r);
	EvsCacheUnpin();
}

PG_FUNCTION_INFO_V1(evstream_poll);

/* evstream.poll(topic, consumer_group, max_events, wait, member, lease) */
Datum
evstream_poll(PG_FUNCTION_ARGS)
{
	char	   *group;
	Oid			topic = evs_consumer_args(fcinfo, "poll", &group);
	EvsRead		r;
	int64		wait_us;

	memset(&r, 0, sizeof(r));
	r.fcinfo = fcinfo;
	r.topic = topic;
	r.t = EvsRequireTopic(topic, "poll");
	r.group = group;
	r.max = evs_max_events(fcinfo);
	wait_us = evs_interval_arg(fcinfo, 3, "wait", 0, false);
	r.member = evs_member_arg(fcinfo, 4);
	r.lease_us = evs_interval_arg(fcinfo, 5, "lease", 30 * USECS_PER_SEC, true);
	EvsRequireReadCommitted("poll");
	evs_run(&r, r.member ? evs_look_member : evs_look_all, wait_us);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(evstream_consume);

/* evstream.consume(topic, consumer_group, max_events, wait): poll + commit */
Datum
evstream_consume(PG_FUNCTION_ARGS)
{
	char	   *group;
	Oid			topic = evs_consumer_args(fcinfo, "consume", &group);
	EvsRead		r;
	int64		wait_us;

	memset(&r, 0, sizeof(r));
	r.fcinfo = fcinfo;
	r.topic = topic;
	r.t = EvsRequireTopic(topic, "consume");
	r.group = group;
	r.max = evs_max_events(fcinfo);
	wait_us = evs_interval_arg(fcinfo, 3, "wait", 0, false);
	EvsRequireReadCommitted("consume");
	evs_run(&r, evs_look_consume, wait_us);
	return (Datum) 0;
}

static void
evs_no_such_group(Oid topic, const char *group)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("consumer group \"%s\" of topic \"%s\" does not exist",
					group, get_rel_name(topic))));
}

static void
evs_lease_lost(Oid topic, const char *group, const char *member, int64 last_id)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("lease lost: member \"%s\" of consumer group \"%s\" does not hold the shard of event " INT64_FORMAT " of topic \"%s\"",
					member, group, last_id, get_rel_name(topic)),
			 errdetail("Another member or a consume claimed the shard after this member's lease, or the member never held it."),
			 errhint("Drop the batch (another consumer is processing it) and poll again.")));
}

PG_FUNCTION_INFO_V1(evstream_commit);

/* evstream.commit(topic, consumer_group, last_id, member): forward only */
Datum
evstream_commit(PG_FUNCTION_ARGS)
{
	char	   *group;
	Oid			topic = evs_consumer_args(fcinfo, "commit", &group);
	EvsTopic   *t = EvsRequireTopic(topic, "commit");
	const char *member = evs_member_arg(fcinfo, 3);
	int64		last_id;
	int64		stable;
	EvsGroup	g;
	EvsShardState st;
	int			shard = 0;

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
	if (member == NULL && t->shards > 1)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot commit group \"%s\" of topic \"%s\" without a member: the topic has %d shards",
						group, get_rel_name(topic), t->shards),
				 errdetail("A sharded group has one position per shard; an id alone does not say which shards it covers."),
				 errhint("Use consume, or poll and commit with member => ..., or seek.")));

	if (member == NULL)
	{
		(void) EvsGroupOpen(topic, group, true, false, &g);
		EvsLockShard(&g, 0);
	}
	else
	{
		Datum		values[1] = {Int64GetDatum(last_id)};
		bool		found = false;

		if (!EvsGroupOpen(topic, group, false, false, &g))
			evs_no_such_group(topic, group);
		/* the cache may have been reset since: the current entry, pinned */
		EvsCachePin();
		t = EvsRequireTopic(topic, "commit");
		/* the shard of last_id's event */
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		evs_run_topic_plan(t, topic, EVS_PLAN_EVENT, values, 1);
		if (SPI_processed > 0)
		{
			bool		isnull;

			found = true;
			shard = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
		}
		SPI_finish();
		EvsCacheUnpin();
		if (!found)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("topic \"%s\" has no event with id " INT64_FORMAT, get_rel_name(topic), last_id),
					 errhint("Commit the id of the last event poll returned.")));
		EvsLockShard(&g, shard);
	}
	EvsShardStates(&g, shard, shard, &st);
	if (member != NULL && (st.member == NULL || strcmp(st.member, member) != 0))
		evs_lease_lost(topic, group, member, last_id);
	if (last_id > st.position)
		EvsSetShardPosition(&g, &st, last_id);
	if (member != NULL && st.has_expiry)
		EvsEndLease(&g, shard);
	PG_RETURN_VOID();
}

/* Set every shard's position (seek): the caller holds every shard's lock */
static void
evs_seek_all(EvsGroup *g, int64 position)
{
	EvsShardState *st = palloc0(sizeof(EvsShardState) * g->shards);

	EvsShardStates(g, 0, g->shards - 1, st);
	for (int s = 0; s < g->shards; s++)
		EvsSetShardPosition(g, &st[s], position);
	EvsForgetAttempts(g->id);
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
	EvsGroup	g;

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
	(void) EvsGroupOpen(topic, group, true, false, &g);
	EvsLockAllShards(&g, true);
	evs_seek_all(&g, Max(next_id - 1, 0));
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
	EvsGroup	g;

	EvsArgNotNull(fcinfo, 2, "since");
	since = PG_GETARG_TIMESTAMPTZ(2);
	(void) EvsGroupOpen(topic, group, true, false, &g);
	EvsLockAllShards(&g, true);
	stable = EvsStableId(topic);
	values[0] = TimestampTzGetDatum(since);
	values[1] = Int64GetDatum(stable);
	first = EvsSpiInt64(psprintf("SELECT e.id FROM %s e WHERE e.created_at OPERATOR(pg_catalog.>=) $1 "
								 "AND e.id OPERATOR(pg_catalog.<=) $2 ORDER BY e.id LIMIT 1",
								 EvsQualifiedName(topic)),
						2, types, values, &isnull);
	evs_seek_all(&g, isnull ? stable : first - 1);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(evstream_release);

/* evstream.release(topic, consumer_group, member): end its leases */
Datum
evstream_release(PG_FUNCTION_ARGS)
{
	char	   *group;
	Oid			topic = evs_consumer_args(fcinfo, "release", &group);
	const char *member = evs_member_arg(fcinfo, 2);
	EvsGroup	g;

	if (member == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("member must not be NULL")));
	if (!EvsGroupOpen(topic, group, false, false, &g))
		evs_no_such_group(topic, group);
	EvsReleaseMember(&g, member);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(evstream_drop_group);

/* evstream.drop_group(topic, consumer_group) */
Datum
evstream_drop_group(PG_FUNCTION_ARGS)
{
	char	   *group;
	Oid			topic = evs_consumer_args(fcinfo, "drop_group", &group);
	EvsGroup	g;

	if (!EvsGroupOpen(topic, group, false, false, &g))
		evs_no_such_group(topic, group);
	EvsLockAllShards(&g, false);
	EvsDropGroup(&g);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(evstream_set_group_options);

/*
 * evstream.set_group_options(topic, consumer_group, max_attempts,
 * dead_letter_topic): the dead-letter topic is created (by the caller,
 * with create_topic's defaults) when it does not exist; an existing one
 * must be another topic the caller may INSERT into.
 */
Datum
evstream_set_group_options(PG_FUNCTION_ARGS)
{
	char	   *group;
	Oid			topic = evs_consumer_args(fcinfo, "set_group_options", &group);
	int32		max_attempts = 0;
	Oid			dlt = InvalidOid;
	EvsGroup	g;

	EvsRequireCurrentCatalog("set_group_options");

	if (!PG_ARGISNULL(2))
	{
		max_attempts = PG_GETARG_INT32(2);
		if (max_attempts <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_attempts must be positive, not %d", max_attempts),
					 errhint("Pass NULL to retry forever.")));
	}
	(void) EvsGroupOpen(topic, group, true, false, &g);
	if (!PG_ARGISNULL(3))
	{
		char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(3));
		RangeVar   *rv = makeRangeVarFromNameList(evs_string_to_qualified_name_list(name));

		/*
		 * Dead letters are inserted as the group's owner: only that role
		 * (a member of it) chooses where they go, not the topic's owner,
		 * who could otherwise write into a third topic with its rights.
		 */
		if (!has_privs_of_role(GetUserId(), g.owner))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("only role \"%s\", the owner of group \"%s\", may choose its dead-letter topic",
							GetUserNameFromId(g.owner, true), group),
					 errdetail("Dead-letter events are inserted as the group's owner.")));
		dlt = RangeVarGetRelid(rv, NoLock, true);
		if (!OidIsValid(dlt))
			dlt = EvsCreateTopic(name, NULL, NULL, true, 1);
		else if (EvsLookupTopic(dlt)->topic != dlt)
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("dead-letter topic \"%s\" is not an evstream topic", name),
					 errhint("Name a topic, or a relation that does not exist yet (it is created).")));
		if (dlt == topic)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("a group cannot dead-letter into its own topic \"%s\"", name)));
		EvsRequirePrivilege(dlt, ACL_INSERT);
		if (pg_class_aclcheck(dlt, g.owner, ACL_INSERT) != ACLCHECK_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("role \"%s\", the owner of group \"%s\", may not insert into dead-letter topic \"%s\"",
							GetUserNameFromId(g.owner, true), group, name)));
	}
	EvsSetGroupOptions(&g, max_attempts, dlt);
	PG_RETURN_VOID();
}
