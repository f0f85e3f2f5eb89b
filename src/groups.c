/*-------------------------------------------------------------------------
 *
 * groups.c
 *	  Consumer groups' state (0.2): the group rows (evstream._group), their
 *	  per-shard positions (evstream._position), member leases
 *	  (evstream._lease), and the shard locks that make claims exclusive.
 *
 *	  Every statement here is fixed, schema-qualified SQL on evstream's own
 *	  tables, run as the superuser with search_path pinned; the callers
 *	  (consumer.c) check the caller's privileges first.
 *
 *	  Shard locks.  A transaction that reads or moves a shard's position
 *	  for delivery holds the shard's lock, a heavyweight lock with an
 *	  advisory lock tag in a class of evstream's own (field4 EVS_LOCK_SHARD,
 *	  which pg_advisory_lock cannot produce), held to the end of the
 *	  transaction (released at a subtransaction's abort with everything the
 *	  subtransaction did).  consume and member poll only ever *try* it, so
 *	  they never wait behind another consumer; commit, seek and drop_group
 *	  wait for it.
 *
 *	  Invariant: a shard's position rows and lease row are written only by
 *	  a transaction holding the shard's lock, and read for a decision only
 *	  after the lock was taken, with a new snapshot (READ COMMITTED).  Lock
 *	  release comes after the holder's commit is visible, so the next holder
 *	  reads every committed move.  Hence two transactions that both commit
 *	  never deliver the same events of a shard from the same position.
 *
 *	  Positions are insert-only (see the install script): moving a shard
 *	  adds version n + 1 of its row, read back as the highest visible
 *	  version; superseded versions are deleted by the worker
 *	  (EvsPrunePositions).  The primary key (group, shard, version) would
 *	  turn a violation of the invariant into an error, never into a
 *	  duplicate delivery.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/groups.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/hash.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "evstream.h"

#define EVS_LOCK_SHARD			0x4553
#define EVS_LOCK_GROUP_CREATE	0x4547

static EvsPlan plan_group = {
	"SELECT g.id, g.owner::pg_catalog.oid, COALESCE(g.max_attempts, 0), "
	"COALESCE(g.dead_letter_topic::pg_catalog.oid, 0) FROM evstream._group g "
	"WHERE g.topic OPERATOR(pg_catalog.=) $1 AND g.consumer_group OPERATOR(pg_catalog.=) $2",
	2, {REGCLASSOID, TEXTOID}
};
static EvsPlan plan_group_create = {
	"INSERT INTO evstream._group (topic, consumer_group, owner) "
	"VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
	3, {REGCLASSOID, TEXTOID, REGROLEOID}
};
static EvsPlan plan_owned_by = {
	"SELECT g.topic::pg_catalog.oid, g.consumer_group FROM evstream._group g "
	"WHERE g.owner::pg_catalog.oid OPERATOR(pg_catalog.=) $1 LIMIT 1",
	1, {OIDOID}
};
static EvsPlan plan_reassign = {
	"UPDATE evstream._group g SET owner = $2::pg_catalog.regrole "
	"WHERE g.owner::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
	2, {OIDOID, OIDOID}
};
static EvsPlan plan_states = {
	"SELECT s.shard, p.version, p.committed_id, l.member, l.expires_at "
	"FROM pg_catalog.generate_series($2, $3) s(shard) "
	"LEFT JOIN LATERAL (SELECT x.version, x.committed_id FROM evstream._position x "
	"WHERE x.group_id OPERATOR(pg_catalog.=) $1 AND x.shard OPERATOR(pg_catalog.=) s.shard "
	"ORDER BY x.version DESC LIMIT 1) p ON true "
	"LEFT JOIN evstream._lease l ON l.group_id OPERATOR(pg_catalog.=) $1 "
	"AND l.shard OPERATOR(pg_catalog.=) s.shard ORDER BY s.shard",
	3, {INT4OID, INT4OID, INT4OID}
};
static EvsPlan plan_position_insert = {
	"INSERT INTO evstream._position (group_id, shard, version, committed_id) VALUES ($1, $2, $3, $4)",
	4, {INT4OID, INT4OID, INT8OID, INT8OID}
};
static EvsPlan plan_lease_set = {
	"INSERT INTO evstream._lease AS l (group_id, shard, member, expires_at) VALUES ($1, $2, $3, $4) "
	"ON CONFLICT (group_id, shard) DO UPDATE SET member = EXCLUDED.member, expires_at = EXCLUDED.expires_at",
	4, {INT4OID, INT4OID, TEXTOID, TIMESTAMPTZOID}
};
static EvsPlan plan_lease_end = {
	"UPDATE evstream._lease l SET expires_at = NULL WHERE l.group_id OPERATOR(pg_catalog.=) $1 "
	"AND l.shard OPERATOR(pg_catalog.=) $2 AND l.expires_at IS NOT NULL",
	2, {INT4OID, INT4OID}
};
static EvsPlan plan_release = {
	"UPDATE evstream._lease l SET expires_at = NULL WHERE l.group_id OPERATOR(pg_catalog.=) $1 "
	"AND l.member OPERATOR(pg_catalog.=) $2 AND l.expires_at IS NOT NULL",
	2, {INT4OID, TEXTOID}
};
static EvsPlan plan_fence_all = {
	"UPDATE evstream._lease l SET member = NULL, expires_at = NULL "
	"WHERE l.group_id OPERATOR(pg_catalog.=) $1 AND l.member IS NOT NULL",
	1, {INT4OID}
};
static EvsPlan plan_dead_lettered = {
	"UPDATE evstream._group g SET dead_lettered = g.dead_lettered OPERATOR(pg_catalog.+) 1 "
	"WHERE g.id OPERATOR(pg_catalog.=) $1",
	1, {INT4OID}
};
static EvsPlan plan_options = {
	"UPDATE evstream._group g SET max_attempts = $2, dead_letter_topic = $3 "
	"WHERE g.id OPERATOR(pg_catalog.=) $1",
	3, {INT4OID, INT4OID, REGCLASSOID}
};
static EvsPlan plan_drop = {
	"WITH p AS (DELETE FROM evstream._position x WHERE x.group_id OPERATOR(pg_catalog.=) $1), "
	"l AS (DELETE FROM evstream._lease x WHERE x.group_id OPERATOR(pg_catalog.=) $1) "
	"DELETE FROM evstream._group g WHERE g.id OPERATOR(pg_catalog.=) $1",
	1, {INT4OID}
};

/* SPI as the superuser around one or more fixed statements */
typedef struct EvsSu
{
	EvsUserState us;
} EvsSu;

static void
evs_su_begin(EvsSu *su)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EvsBecomeSuperuser(&su->us);
}

static void
evs_su_end(EvsSu *su)
{
	EvsRestoreUser(&su->us);
	SPI_finish();
}

static void
evs_exec(EvsPlan *p, Datum *values, const char *nulls, int expect)
{
	int			ret = EvsExecPlan(p, values, nulls, false, 0);

	if (ret != expect)
		elog(ERROR, "evstream: statement failed (%s): %s", SPI_result_code_string(ret), p->sql);
}

static int64
evs_getint(int row, int col, bool *isnull)
{
	Datum		d = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, isnull);

	return *isnull ? 0 : DatumGetInt64(d);
}

/* Read the group row (inside evs_su_begin) */
static bool
evs_group_row(Oid topic, const char *name, EvsGroup *g)
{
	Datum		values[2] = {ObjectIdGetDatum(topic), CStringGetTextDatum(name)};
	bool		isnull;

	if (EvsExecPlan(&plan_group, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read consumer group \"%s\"", name);
	if (SPI_processed == 0)
		return false;
	g->id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	g->owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	g->max_attempts = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	g->dead_letter = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
	return true;
}

static void
evs_group_init(EvsGroup *g, Oid topic, const char *name)
{
	memset(g, 0, sizeof(*g));
	g->topic = topic;
	g->name = name;
	g->shards = EvsRequireTopic(topic, "consumer group")->shards;
}

/* The group, if it exists (no privilege check: reading only) */
bool
EvsGroupLookup(Oid topic, const char *name, EvsGroup *g)
{
	EvsSu		su;
	bool		found;

	evs_group_init(g, topic, name);
	evs_su_begin(&su);
	found = evs_group_row(topic, name, g);
	evs_su_end(&su);
	return found;
}

/* May the current user move or claim this group? */
static void
evs_check_group_owner(EvsGroup *g)
{
	Oid			user = GetUserId();

	if (has_privs_of_role(user, g->owner) || evs_class_ownercheck(g->topic, user))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for consumer group \"%s\" of topic \"%s\"",
					g->name, get_rel_name(g->topic)),
			 errdetail("The group belongs to role \"%s\".", GetUserNameFromId(g->owner, true)),
			 errhint("Use a group of your own, or ask its owner to grant you membership in role \"%s\".",
					 GetUserNameFromId(g->owner, true))));
}

static Oid	required_owner = InvalidOid;

/*
 * From now on (InvalidOid: no longer), a group opened must belong to
 * `owner`: a transform's batch (transforms.c) moves only its owner's
 * group, checked when its consume opens the group, in that statement.
 */
void
EvsRequireGroupOwner(Oid owner)
{
	required_owner = owner;
}

/*
 * The group, to move or claim it: the caller must be allowed to (checked
 * before anything is written).  A missing group is created, owned by the
 * caller, when `create`; creators of one group serialize on a lock of its
 * name's hash, which `nowait` only tries: then false means "another open
 * transaction is creating it" (consume and member poll do not wait); a
 * holder creating a group of a colliding name holds nobody back.
 * Returns false also when the group does not exist and !create.
 */
bool
EvsGroupOpen(Oid topic, const char *name, bool create, bool nowait, EvsGroup *g)
{
	EvsSu		su;
	bool		found;
	Oid			user = GetUserId();

	evs_group_init(g, topic, name);
	evs_su_begin(&su);
	found = evs_group_row(topic, name, g);
	if (!found && create)
	{
		LOCKTAG		tag;
		Datum		values[3] = {ObjectIdGetDatum(topic), CStringGetTextDatum(name),
		ObjectIdGetDatum(user)};

		SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, topic,
							 DatumGetUInt32(hash_any((const unsigned char *) name, strlen(name))),
							 EVS_LOCK_GROUP_CREATE);

		/*
		 * The lock is keyed by a 32-bit hash of the name, so its holder may
		 * be creating another group whose name collides (anyone allowed to
		 * consume the topic can find such a name, and hold the lock in an
		 * open transaction).  A creator of this group has its row in
		 * (inserted right after it took the lock; a dirty read sees it
		 * uncommitted): only then is it ours to wait for, or, with nowait,
		 * to give way to.  Otherwise we create without the lock; should a
		 * real creator come between the look and the insert, the unique
		 * key makes the second insert wait for the first's transaction, as
		 * PostgreSQL's own inserts of one key do.
		 */
		if (LockAcquire(&tag, ExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL &&
			EvsGroupRowPending(topic, name))
		{
			if (nowait)
			{
				evs_su_end(&su);
				return false;
			}
			(void) LockAcquire(&tag, ExclusiveLock, false, false);
		}
		/* a creator we may have waited for has ended: look again */
		found = evs_group_row(topic, name, g);
		if (!found)
		{
			evs_exec(&plan_group_create, values, NULL, SPI_OK_INSERT);
			CommandCounterIncrement();
			found = evs_group_row(topic, name, g);
			if (!found)
				elog(ERROR, "consumer group \"%s\" vanished", name);
		}
	}
	evs_su_end(&su);
	if (found && OidIsValid(required_owner) && g->owner != required_owner)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("topic \"%s\" already has a consumer group \"%s\"", get_rel_name(topic), name),
				 errdetail("The group belongs to role \"%s\", not to the transform's owner.",
						   GetUserNameFromId(g->owner, true))));
	if (found)
		evs_check_group_owner(g);
	return found;
}

static void
evs_shard_tag(LOCKTAG *tag, EvsGroup *g, int shard)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) g->id, (uint32) shard, EVS_LOCK_SHARD);
}

/*
 * Topics of which this transaction moved shard positions or set or ended
 * leases: when it ends, once its locks are released, their long polls are
 * woken (what it left in a shard, or a rolled back claim, is deliverable
 * again; waits.c).  A claim that found nothing changes nothing and wakes
 * nobody.
 */
#define EVS_CLAIMED_TOPICS 8
static Oid	claimed_topics[EVS_CLAIMED_TOPICS];
static int	nclaimed = 0;
static bool claimed_overflow = false;

static void
evs_note_claim(Oid topic)
{
	for (int i = 0; i < nclaimed; i++)
		if (claimed_topics[i] == topic)
			return;
	if (nclaimed < EVS_CLAIMED_TOPICS)
		claimed_topics[nclaimed++] = topic;
	else
		claimed_overflow = true;
}

/* After a top-level transaction released its locks (xact.c) */
void
EvsGroupsAfterLocks(void)
{
	if (claimed_overflow)
		EvsWakeAllTopicWaiters();
	else
		for (int i = 0; i < nclaimed; i++)
			EvsWakeTopicWaiters(claimed_topics[i]);
	nclaimed = 0;
	claimed_overflow = false;
}

/* Claim a shard for this transaction without waiting */
bool
EvsTryLockShard(EvsGroup *g, int shard)
{
	LOCKTAG		tag;

	evs_shard_tag(&tag, g, shard);
	return LockAcquire(&tag, ExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL;
}

/* Claim a shard for this transaction, waiting for its holder */
void
EvsLockShard(EvsGroup *g, int shard)
{
	LOCKTAG		tag;

	evs_shard_tag(&tag, g, shard);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/* Give back a shard this transaction claimed but did not use */
void
EvsUnlockShard(EvsGroup *g, int shard)
{
	LOCKTAG		tag;

	evs_shard_tag(&tag, g, shard);
	LockRelease(&tag, ExclusiveLock, false);
}

/* Does this transaction hold the shard? */
bool
EvsHoldsShard(EvsGroup *g, int shard)
{
	LOCKTAG		tag;

	evs_shard_tag(&tag, g, shard);
	return EVS_LOCK_HELD_BY_ME(&tag, ExclusiveLock);
}

/*
 * The state of shards [from, to] of the group: position (with its
 * version) and lease.  Strings are allocated in the caller's context.
 */
void
EvsShardStates(EvsGroup *g, int from, int to, EvsShardState *out)
{
	MemoryContext cxt = CurrentMemoryContext;
	Datum		values[3] = {Int32GetDatum(g->id), Int32GetDatum(from), Int32GetDatum(to)};
	EvsSu		su;

	evs_su_begin(&su);
	if (EvsExecPlan(&plan_states, values, NULL, false, 0) != SPI_OK_SELECT ||
		SPI_processed != (uint64) (to - from + 1))
		elog(ERROR, "could not read the positions of consumer group \"%s\"", g->name);
	for (int i = 0; i < to - from + 1; i++)
	{
		EvsShardState *s = &out[i];
		bool		isnull;
		Datum		d;

		s->shard = from + i;
		s->version = evs_getint(i, 2, &isnull);
		s->position = evs_getint(i, 3, &isnull);
		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 4, &isnull);
		s->member = isnull ? NULL : MemoryContextStrdup(cxt, TextDatumGetCString(d));
		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 5, &isnull);
		s->expires = isnull ? 0 : DatumGetTimestampTz(d);
		s->has_expiry = !isnull;
	}
	evs_su_end(&su);
}

/*
 * Is the shard under a live lease of a member other than `member`?  (A
 * long poll then looks again when the lease ends, waits.c.)
 */
bool
EvsLeasedByOther(EvsShardState *s, const char *member, TimestampTz now)
{
	if (s->member == NULL || !s->has_expiry || s->expires <= now)
		return false;
	if (member != NULL && strcmp(s->member, member) == 0)
		return false;
	EvsWaitRecheckAt(s->expires);
	return true;
}

/*
 * Move a claimed shard's position (the caller holds its lock and read
 * `s` after taking it); s is updated.
 */
void
EvsSetShardPosition(EvsGroup *g, EvsShardState *s, int64 position)
{
	Datum		values[4] = {Int32GetDatum(g->id), Int32GetDatum(s->shard),
	Int64GetDatum(s->version + 1), Int64GetDatum(position)};
	EvsSu		su;

	evs_su_begin(&su);
	evs_exec(&plan_position_insert, values, NULL, SPI_OK_INSERT);
	evs_su_end(&su);
	evs_note_claim(g->topic);
	s->version++;
	s->position = position;
}

/*
 * Set the shard's lease (the caller holds its lock): member until expires,
 * or member NULL (fencing: nobody's lease, the last claimant was a
 * consume).
 */
void
EvsSetLease(EvsGroup *g, int shard, const char *member, TimestampTz expires)
{
	Datum		values[4] = {Int32GetDatum(g->id), Int32GetDatum(shard),
		member ? CStringGetTextDatum(member) : (Datum) 0,
	TimestampTzGetDatum(expires)};
	char		nulls[4] = {' ', ' ', member ? ' ' : 'n', member ? ' ' : 'n'};
	EvsSu		su;

	evs_su_begin(&su);
	evs_exec(&plan_lease_set, values, nulls, SPI_OK_INSERT);
	evs_su_end(&su);
	evs_note_claim(g->topic);
}

/* End the lease of a shard; its member stays the last claimant */
void
EvsEndLease(EvsGroup *g, int shard)
{
	Datum		values[2] = {Int32GetDatum(g->id), Int32GetDatum(shard)};
	EvsSu		su;

	evs_su_begin(&su);
	evs_exec(&plan_lease_end, values, NULL, SPI_OK_UPDATE);
	evs_su_end(&su);
	evs_note_claim(g->topic);
}

/* release: end every live lease of a member */
void
EvsReleaseMember(EvsGroup *g, const char *member)
{
	Datum		values[2] = {Int32GetDatum(g->id), CStringGetTextDatum(member)};
	EvsSu		su;

	evs_su_begin(&su);
	evs_exec(&plan_release, values, NULL, SPI_OK_UPDATE);
	evs_su_end(&su);
	evs_note_claim(g->topic);
}

/*
 * Lock every shard of the group (waiting, in shard order, so two callers
 * cannot deadlock each other) and fence every member (seek, drop_group).
 */
void
EvsLockAllShards(EvsGroup *g, bool fence)
{
	for (int s = 0; s < g->shards; s++)
		EvsLockShard(g, s);
	if (fence)
	{
		Datum		values[1] = {Int32GetDatum(g->id)};
		EvsSu		su;

		evs_su_begin(&su);
		evs_exec(&plan_fence_all, values, NULL, SPI_OK_UPDATE);
		evs_su_end(&su);
	}
}

/* One more event dead-lettered (or skipped) by the group */
void
EvsCountDeadLettered(EvsGroup *g)
{
	Datum		values[1] = {Int32GetDatum(g->id)};
	EvsSu		su;

	evs_su_begin(&su);
	evs_exec(&plan_dead_lettered, values, NULL, SPI_OK_UPDATE);
	evs_su_end(&su);
}

/* set_group_options */
void
EvsSetGroupOptions(EvsGroup *g, int32 max_attempts, Oid dead_letter)
{
	Datum		values[3] = {Int32GetDatum(g->id), Int32GetDatum(max_attempts),
	ObjectIdGetDatum(dead_letter)};
	char		nulls[3] = {' ', max_attempts > 0 ? ' ' : 'n', OidIsValid(dead_letter) ? ' ' : 'n'};
	EvsSu		su;

	evs_su_begin(&su);
	evs_exec(&plan_options, values, nulls, SPI_OK_UPDATE);
	evs_su_end(&su);
	g->max_attempts = max_attempts;
	g->dead_letter = dead_letter;
}

/* drop_group: the caller holds every shard's lock */
void
EvsDropGroup(EvsGroup *g)
{
	Datum		values[1] = {Int32GetDatum(g->id)};
	EvsSu		su;

	evs_su_begin(&su);
	evs_exec(&plan_drop, values, NULL, SPI_OK_DELETE);
	evs_su_end(&su);
	EvsForgetAttempts(g->id);
}

/*
 * DROP OWNED BY (guards.c, for roles the caller may act for): the role's
 * groups in this database go, each once no transaction holds its shards.
 */
void
EvsDropOwnedGroups(Oid role)
{
	MemoryContext cxt = CurrentMemoryContext;

	for (;;)
	{
		Datum		values[1] = {ObjectIdGetDatum(role)};
		EvsSu		su;
		Oid			topic = InvalidOid;
		char	   *name = NULL;
		EvsGroup	g;

		CHECK_FOR_INTERRUPTS();
		evs_su_begin(&su);
		evs_exec(&plan_owned_by, values, NULL, SPI_OK_SELECT);
		if (SPI_processed > 0)
		{
			bool		isnull;

			topic = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
			name = MemoryContextStrdup(cxt, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
		}
		evs_su_end(&su);
		if (name == NULL)
			break;
		/* (the row was just read: not finding it would loop forever) */
		if (!EvsGroupLookup(topic, name, &g))
			elog(ERROR, "consumer group \"%s\" vanished", name);
		EvsLockAllShards(&g, false);
		EvsDropGroup(&g);
	}
}

/* REASSIGN OWNED BY (guards.c): the role's groups become newrole's */
void
EvsReassignGroups(Oid role, Oid newrole)
{
	Datum		values[2] = {ObjectIdGetDatum(role), ObjectIdGetDatum(newrole)};
	EvsSu		su;

	evs_su_begin(&su);
	evs_exec(&plan_reassign, values, NULL, SPI_OK_UPDATE);
	evs_su_end(&su);
}

/*
 * Worker (worker.c, as the superuser): delete superseded
 * position versions and the rows of groups that no longer exist.  Only
 * versions below a *committed* newer one go (the snapshot sees committed
 * rows only), so a reader always finds the latest.  Rows another
 * transaction holds (a drop_group or commit still open) are skipped, not
 * waited for: the next prune takes them, and no user's open transaction
 * holds the prune up.
 */
void
EvsPrunePositions(void)
{
	EvsSpiExec("DELETE FROM evstream._position p WHERE p.ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
			   "SELECT x.ctid FROM evstream._position x JOIN "
			   "(SELECT y.group_id, y.shard, pg_catalog.max(y.version) AS v FROM evstream._position y "
			   "GROUP BY y.group_id, y.shard) m "
			   "ON x.group_id OPERATOR(pg_catalog.=) m.group_id AND x.shard OPERATOR(pg_catalog.=) m.shard "
			   "WHERE x.version OPERATOR(pg_catalog.<) m.v FOR UPDATE OF x SKIP LOCKED))", 0, NULL, NULL, 0);
	EvsSpiExec("DELETE FROM evstream._position p WHERE p.ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
			   "SELECT x.ctid FROM evstream._position x WHERE NOT EXISTS "
			   "(SELECT FROM evstream._group g WHERE g.id OPERATOR(pg_catalog.=) x.group_id) "
			   "FOR UPDATE OF x SKIP LOCKED))", 0, NULL, NULL, 0);
	EvsSpiExec("DELETE FROM evstream._lease p WHERE p.ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
			   "SELECT x.ctid FROM evstream._lease x WHERE NOT EXISTS "
			   "(SELECT FROM evstream._group g WHERE g.id OPERATOR(pg_catalog.=) x.group_id) "
			   "FOR UPDATE OF x SKIP LOCKED))", 0, NULL, NULL, 0);
}
