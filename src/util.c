/*-------------------------------------------------------------------------
 *
 * util.c
 *	  The base every other file uses: argument checks, the append-only
 *	  error, running code as another role, and SPI with a pinned
 *	  search_path.
 *
 *	  Invariants kept here (the privilege model, README "Security"):
 *	  - Work on a user's relation that evstream does on its own account runs
 *		as the relation's (or aggregate's) owner with
 *		SECURITY_RESTRICTED_OPERATION and search_path "pg_catalog, pg_temp"
 *		(EvsBecomeOwner), as REFRESH MATERIALIZED VIEW and VACUUM do.
 *	  - evstream's own catalog tables are written as the bootstrap superuser
 *		(EvsBecomeSuperuser), only by fixed SQL that names nothing but
 *		evstream's and pg_catalog's objects, schema-qualified, and touches
 *		no user relation: no user code can be attached to those tables.
 *	  - Every statement evstream runs through SPI runs with search_path
 *		pinned to "pg_catalog, pg_temp" for its parse, any re-plan, and its
 *		execution (the plan cache re-analyses a plan under the current path
 *		when the path changed, so pinning at prepare time is not enough).
 *	  Settings changed inside a pinned level (by user code too) are
 *	  discarded when it closes.  Switches are undone explicitly on success
 *	  and by (sub)transaction abort on error: AbortTransaction and AbortSubTransaction restore the
 *	  user id, security context and GUC nest level of their start.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/util.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/int.h"
#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"

#include "postmaster/bgworker.h"
#include "utils/memutils.h"

#include "access/xact.h"
#include "datatype/timestamp.h"
#include "catalog/pg_authid_d.h"
#include "catalog/pg_class.h"
#include "utils/resowner.h"
#include "utils/timeout.h"
#include "parser/scansup.h"
#include "pgtime.h"
#include "utils/bytea.h"
#include "utils/float.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/syscache.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"

#include "evstream.h"

bool		evs_in_topic_upkeep = false;

#define EVS_SAFE_PATH "pg_catalog, pg_temp"

/* longest a tenant's upkeep or merge may run in the worker */

/* Error for a NULL argument, named as the SQL signature names it */
void
EvsArgNotNull(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
}

/* The one error for changing events: topics are append-only */
void
EvsAppendOnlyError(const char *topic, const char *verb, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("cannot %s events of topic \"%s\": topics are append-only", verb, topic),
			 errdetail("%s", detail ? detail : "Events are immutable once produced."),
			 errhint("Produce a new event instead; retention removes old events by whole partitions.")));
}

/* Open a GUC nest level with the safe search_path; returns the level */
int
EvsPinSearchPath(void)
{
	int			level = NewGUCNestLevel();

	(void) set_config_option("search_path", EVS_SAFE_PATH,
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return level;
}

/*
 * Close the level, discarding every setting changed inside it: user code
 * run there (an owner's policy, trigger or function) must not leave a SET
 * behind in the caller's session or the worker, as PostgreSQL's own
 * maintenance code discards them (AtEOXact_GUC(false, ...)).
 */
void
EvsUnpinSearchPath(int level)
{
	AtEOXact_GUC(false, level);
}

/*
 * Run as role with SECURITY_RESTRICTED_OPERATION and the safe path: for
 * work on a user's relation (its triggers, defaults, policies, functions
 * run as their owner and cannot change the session).
 */
void
EvsBecomeOwner(Oid role, EvsUserState *st)
{
	GetUserIdAndSecContext(&st->save_userid, &st->save_sec_context);
	SetUserIdAndSecContext(role, st->save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	st->save_nestlevel = EvsPinSearchPath();
}

/* Run as the bootstrap superuser, for fixed SQL on evstream's catalog */
void
EvsBecomeSuperuser(EvsUserState *st)
{
	GetUserIdAndSecContext(&st->save_userid, &st->save_sec_context);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID,
						   st->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	st->save_nestlevel = EvsPinSearchPath();
}

void
EvsRestoreUser(EvsUserState *st)
{
	EvsUnpinSearchPath(st->save_nestlevel);
	SetUserIdAndSecContext(st->save_userid, st->save_sec_context);
}

/* Run a query returning at most one int8-compatible value (in SPI) */
int64
EvsSpiInt64(const char *sql, int nargs, Oid *types, Datum *values, bool *isnull)
{
	int			ret;
	int64		result = 0;
	bool		null = true;
	int			level;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	level = EvsPinSearchPath();
	ret = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 1);
	EvsUnpinSearchPath(level);
	if (ret < 0)
		elog(ERROR, "SPI_execute_with_args failed: %s", sql);
	if (SPI_processed > 0)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &null);

		if (!null)
		{
			Oid			t = SPI_gettypeid(SPI_tuptable->tupdesc, 1);

			if (t == INT4OID || t == OIDOID || t == REGCLASSOID || t == REGROLEOID)
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

/*
 * Run a statement; expect is the SPI result code wanted, or 0 for any.
 * Returns the rows it processed.
 */
uint64
EvsSpiExec(const char *sql, int nargs, Oid *types, Datum *values, int expect)
{
	int			ret;
	int			level;
	uint64		processed;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	level = EvsPinSearchPath();
	ret = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);
	EvsUnpinSearchPath(level);
	if (ret < 0 || (expect != 0 && ret != expect))
		elog(ERROR, "SPI_execute_with_args returned %d for: %s", ret, sql);
	processed = SPI_processed;
	SPI_finish();
	return processed;
}

/*
 * Prepare (once per backend) a statement; call inside SPI_connect and run
 * it with EvsExecPlan, which pins the path for any re-plan too.
 */
SPIPlanPtr
EvsPrepare(EvsPlan *p)
{
	if (p->plan == NULL)
	{
		int			level = EvsPinSearchPath();
		SPIPlanPtr	plan;

		plan = SPI_prepare_cursor(p->sql, p->nargs, p->types, p->cursor_options);
		EvsUnpinSearchPath(level);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed (%s): %s",
				 SPI_result_code_string(SPI_result), p->sql);
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		p->plan = plan;
	}
	return p->plan;
}

/* Execute a prepared statement with the path pinned (inside SPI) */
int
EvsExecPlan(EvsPlan *p, Datum *values, const char *nulls, bool read_only, long count)
{
	SPIPlanPtr	plan = EvsPrepare(p);
	int			level = EvsPinSearchPath();
	int			ret;

	ret = SPI_execute_plan(plan, values, nulls, read_only, count);
	EvsUnpinSearchPath(level);
	return ret;
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

/* Validate a name argument (consumer group, member) */
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

/* The owner of a relation */
Oid
EvsRelOwner(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/* Error out unless the current user owns the relation (or is a member) */
void
EvsRequireOwner(Oid relid)
{
	if (!evs_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, get_rel_relkind(relid) == RELKIND_VIEW ?
					   OBJECT_VIEW : OBJECT_TABLE, get_rel_name(relid));
}

/* Error out unless the current user has the privilege on the relation */
void
EvsRequirePrivilege(Oid relid, AclMode mode)
{
	AclResult	acl = pg_class_aclcheck(relid, GetUserId(), mode);

	if (acl != ACLCHECK_OK)
		aclcheck_error(acl, OBJECT_TABLE, get_rel_name(relid));
}

/*
 * Refuse a (possibly qualified) name with a part longer than PostgreSQL
 * keeps (NAMEDATALEN - 1 bytes): stringToQualifiedNameList would cut it
 * short without a word, and the object would get another name than asked.
 * Only lengths are checked here; the syntax is the parser's.
 */
void
EvsCheckNameLength(const char *name, const char *what)
{
	const char *p = name;

	while (*p)
	{
		int			len = 0;

		while (scanner_isspace(*p))
			p++;
		if (*p == '"')
		{
			for (p++; *p; p++)
			{
				if (*p == '"')
				{
					if (p[1] != '"')
					{
						p++;
						break;
					}
					p++;
				}
				len++;
			}
		}
		else
			for (; *p && *p != '.' && !scanner_isspace(*p); p++)
				len++;
		if (len > NAMEDATALEN - 1)
			ereport(ERROR,
					(errcode(ERRCODE_NAME_TOO_LONG),
					 errmsg("%s \"%s\" is too long", what, name),
					 errdetail("Names are limited to %d bytes.", NAMEDATALEN - 1)));
		while (*p && *p != '.')
			p++;
		if (*p == '.')
			p++;
	}
}

/*
 * A value as text by its type's output function, under fixed settings
 * (DateStyle ISO, TimeZone UTC, IntervalStyle postgres, extra_float_digits
 * 1, bytea_output hex) whatever the session's: an aggregate's group keys
 * (catalog.c evs_compile_expr).  The settings are the globals the output
 * functions read, set and restored around the call, not through the GUC
 * machinery (no catalog or GUC work per row).
 */
char *
EvsFixedText(FmgrInfo *out, Datum value)
{
	static pg_tz *utc = NULL;
	int			save_style = DateStyle;
	int			save_order = DateOrder;
	int			save_interval = IntervalStyle;
	int			save_digits = extra_float_digits;
	int			save_bytea = bytea_output;
	pg_tz	   *save_tz = session_timezone;
	char	   *volatile result = NULL;

	if (utc == NULL)
		utc = pg_tzset("UTC");
	PG_TRY();
	{
		DateStyle = USE_ISO_DATES;
		DateOrder = DATEORDER_YMD;
		IntervalStyle = INTSTYLE_POSTGRES;
		extra_float_digits = 1;
		bytea_output = BYTEA_OUTPUT_HEX;
		if (utc != NULL)
			session_timezone = utc;
		result = OutputFunctionCall(out, value);
	}
	PG_FINALLY();
	{
		DateStyle = save_style;
		DateOrder = save_order;
		IntervalStyle = save_interval;
		extra_float_digits = save_digits;
		bytea_output = save_bytea;
		session_timezone = save_tz;
	}
	PG_END_TRY();
	return result;
}

/*
 * A tenant's time budget in a background worker.  EvsBudgetStart arms
 * statement_timeout's timer (EVS_TENANT_BUDGET_MS), which cancels the
 * work with an ERROR; code can catch that cancel (a PL/pgSQL handler for
 * query_canceled) and go on, so a second timer, EVS_TENANT_GRACE_MS later,
 * makes the process exit as pg_terminate_backend would (FATAL, which no
 * handler catches).  Before it exits, the work's owner is recorded in the
 * database's shared entry, and for EVS_QUARANTINE_MIN_S (doubling each
 * time it happens again) the workers skip all of that owner's work with
 * an error in evstream.workers instead of running it: the relaunched
 * worker is not caught by the same code, or by the owner's other objects,
 * at once, and every other tenant's work goes on (the pass the exit cut
 * short is redone: what it had merged was rolled back, not lost).
 * Outside evstream's workers (a user's session, another extension's
 * background worker) nothing is armed.  The budget is an owner's per
 * worker transaction (below).
 */
static TimeoutId evs_kill_timeout = MAX_TIMEOUTS;
static volatile sig_atomic_t evs_budget_killed = false;
static Oid	evs_budget_owner = InvalidOid;
static char evs_budget_what[NAMEDATALEN * 2];
static bool evs_budget_armed = false;

/*
 * The budget is per owner and worker transaction: what one role's objects
 * (aggregates, topics) used of it in the current push or maintenance
 * transaction is what the next of its objects has left, so a tenant with
 * many slow objects holds the worker about one budget per transaction,
 * not one per object (in the transform workers and the maintenance pass,
 * per pass: see EvsBudgetNewPass).  Owners past EVS_BUDGET_OWNERS in one pass are not
 * accounted: enough that a role would need that many others to escape.
 */
#define EVS_BUDGET_OWNERS 1024
static TimestampTz evs_budget_xact = 0;
static int	evs_budget_nowners = 0;
static Oid	evs_budget_owner_ids[EVS_BUDGET_OWNERS];
static int64 evs_budget_used_ms[EVS_BUDGET_OWNERS];
static int	evs_budget_current = -1;	/* index charged at EvsBudgetEnd */
static TimestampTz evs_budget_started;

/* owners whose work took a second or more in their last accounted pass */
static int	evs_slow_nowners = 0;
static Oid	evs_slow_owner_ids[EVS_BUDGET_OWNERS];

/*
 * Objects skipped for their owner's used budget in this pass, and those
 * skipped in the last one (they go first in this pass, so that an owner
 * whose work takes more than a budget per pass gets all of it done over
 * several passes instead of the same objects being skipped every time).
 */
#define EVS_BUDGET_OWED 256
static int	evs_skipped_n = 0;
static Oid	evs_skipped[EVS_BUDGET_OWED];
static int	evs_owed_n = 0;
static Oid	evs_owed[EVS_BUDGET_OWED];

/* Set by evstream's own workers: only they arm tenant budgets */
bool		EvsInWorker = false;

static void
evs_budget_new_pass(void)
{
	int			i;

	evs_slow_nowners = 0;
	for (i = 0; i < evs_budget_nowners; i++)
		if (evs_budget_used_ms[i] >= 1000)
			evs_slow_owner_ids[evs_slow_nowners++] = evs_budget_owner_ids[i];
	evs_budget_nowners = 0;
	memcpy(evs_owed, evs_skipped, sizeof(Oid) * evs_skipped_n);
	evs_owed_n = evs_skipped_n;
	evs_skipped_n = 0;
}

/* The owner of a relation, InvalidOid when there is none (dropped) */
Oid
EvsRelOwnerIfAny(Oid object)
{
	if (!OidIsValid(object) ||
		!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(object)))
		return InvalidOid;
	return EvsRelOwner(object);
}

/*
 * The transform workers run each batch in a transaction of its own: their
 * passes are loops over the transforms, begun with EvsBudgetNewPass.  So
 * does the database worker's maintenance pass, ended with
 * EvsBudgetPassEnd.
 */
static bool evs_budget_explicit_passes = false;

/* A new worker transaction is a new pass: roll the accounting over */
static void
evs_budget_pass_check(void)
{
	if (evs_budget_explicit_passes)
		return;
	if (evs_budget_xact != GetCurrentTransactionStartTimestamp())
	{
		evs_budget_new_pass();
		evs_budget_xact = GetCurrentTransactionStartTimestamp();
	}
}

/*
 * In which order should a pass run the work on object?  0: first, it was
 * skipped for its owner's budget in the last pass; 2: last, its owner's
 * work took a second or more in the last pass (so one tenant's slow code
 * delays the others' by at most one pass); 1: the others.
 */
int
EvsBudgetRank(Oid object)
{
	Oid			owner;
	int			i;

	if (!EvsInWorker || !OidIsValid(object))
		return 1;
	evs_budget_pass_check();
	for (i = 0; i < evs_owed_n; i++)
		if (evs_owed[i] == object)
			return 0;
	owner = EvsRelOwnerIfAny(object);
	return OidIsValid(owner) && EvsBudgetOwnerSlow(owner) ? 2 : 1;
}

/* Sort a List of jobs by EvsBudgetRank of each job's object (stable) */
List *
EvsBudgetOrder(List *jobs, Oid (*object_of) (void *job))
{
	List	   *ranked[3] = {NIL, NIL, NIL};
	ListCell   *lc;

	foreach(lc, jobs)
	{
		int			r = EvsBudgetRank(object_of(lfirst(lc)));

		ranked[r] = lappend(ranked[r], lfirst(lc));
	}
	return list_concat(list_concat(ranked[0], ranked[1]), ranked[2]);
}

/*
 * A transform worker's pass begins (transforms.c), or the database
 * worker's maintenance pass, which runs a transaction per topic
 * (worker.c): what owners' work takes is accounted from here to the next
 * call (or to EvsBudgetPassEnd), not per transaction.
 */
void
EvsBudgetNewPass(void)
{
	evs_budget_explicit_passes = true;
	evs_budget_new_pass();
}

/* Back to a pass per worker transaction (the end of a maintenance pass) */
void
EvsBudgetPassEnd(void)
{
	evs_budget_explicit_passes = false;
}

/* owner's accounting slot in this pass, -1 when it has none yet */
static int
evs_budget_find(Oid owner)
{
	evs_budget_pass_check();
	for (int i = 0; i < evs_budget_nowners; i++)
		if (evs_budget_owner_ids[i] == owner)
			return i;
	return -1;
}

/* What owner's work took in this pass so far, in ms */
int64
EvsBudgetOwnerUsed(Oid owner)
{
	int			k = evs_budget_find(owner);

	return k < 0 ? 0 : evs_budget_used_ms[k];
}

/* Did owner's work take a second or more in the last pass? */
bool
EvsBudgetOwnerSlow(Oid owner)
{
	evs_budget_pass_check();
	for (int i = 0; i < evs_slow_nowners; i++)
		if (evs_slow_owner_ids[i] == owner)
			return true;
	return false;
}

/* The accounting slot of owner (-1: not accounted) */
static int
evs_budget_slot(Oid owner)
{
	int			k;

	if (!OidIsValid(owner))
		return -1;
	k = evs_budget_find(owner);
	if (k >= 0 || evs_budget_nowners >= EVS_BUDGET_OWNERS)
		return k;
	k = evs_budget_nowners++;
	evs_budget_owner_ids[k] = owner;
	evs_budget_used_ms[k] = 0;
	return k;
}

/* the grace timer's handler (signal context): what die() does */
static void
evs_budget_kill(void)
{
	evs_budget_killed = true;
	InterruptPending = true;
	ProcDiePending = true;
	SetLatch(MyLatch);
}

/* at exit after the grace timer fired: quarantine the work */
static void
evs_budget_at_exit(int code, Datum arg)
{
	EvsDatabase *db;
	int			i;
	int			use = -1;
	TimestampTz now = GetCurrentTimestamp();

	if (!evs_budget_killed || evs_shared == NULL || !OidIsValid(evs_budget_owner))
		return;
	db = EvsDatabaseEntry(MyDatabaseId, false);
	if (db == NULL)
		return;
	LWLockAcquire(evs_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < EVS_QUARANTINE_SLOTS; i++)
	{
		if (db->quarantine[i].owner == evs_budget_owner)
		{
			use = i;
			break;
		}
		if (use < 0 || db->quarantine[i].until < db->quarantine[use].until)
			use = i;			/* a free slot has until 0: the oldest */
	}
	if (db->quarantine[use].owner != evs_budget_owner)
		db->quarantine[use].times = 0;
	db->quarantine[use].owner = evs_budget_owner;
	strlcpy(db->quarantine[use].what, evs_budget_what, sizeof(db->quarantine[use].what));
	db->quarantine[use].times = Min(db->quarantine[use].times + 1, 8);
	db->quarantine[use].until = TimestampTzPlusMilliseconds(now, (int64) EVS_QUARANTINE_MIN_S * 1000 *
															(1 << (db->quarantine[use].times - 1)));
	LWLockRelease(evs_shared->lock);
	ereport(LOG,
			(errmsg("evstream: %s went on %d ms after its time budget's cancel; the worker exits and skips the work of role \"%s\" until %s",
					evs_budget_what, EVS_TENANT_GRACE_MS,
					GetUserNameFromId(evs_budget_owner, true),
					timestamptz_to_str(db->quarantine[use].until))));
}

/*
 * Arm the budget for one piece of tenant work: on relation object (an
 * aggregate's view, a topic), or for owner (a transform), what names it.
 * Returns false, with "what: skipped ...; " appended to errors, while its
 * owner's work is quarantined (the quarantine is the owner's, whatever its
 * objects are named or renamed to, and it outlives the worker process it
 * made exit).  A no-op returning true outside evstream's workers.
 */
bool
EvsBudgetStart(Oid object, Oid owner, const char *what, StringInfo errors)
{
	EvsDatabase *db;
	TimestampTz until = 0;
	int			i;
	int			k;
	int64		budget = EVS_TENANT_BUDGET_MS;

	if (!EvsInWorker)
		return true;
	if (!OidIsValid(owner))
		owner = EvsRelOwnerIfAny(object);
	db = evs_shared ? EvsDatabaseEntry(MyDatabaseId, false) : NULL;
	if (db != NULL && OidIsValid(owner))
	{
		LWLockAcquire(evs_shared->lock, LW_SHARED);
		for (i = 0; i < EVS_QUARANTINE_SLOTS; i++)
			if (db->quarantine[i].owner == owner)
				until = db->quarantine[i].until;
		LWLockRelease(evs_shared->lock);
	}
	if (until > GetCurrentTimestamp())
	{
		if (errors != NULL)
			appendStringInfo(errors, "%s: skipped until %s, code of its owner ran on past its time budget's cancel; ",
							 what, timestamptz_to_str(until));
		return false;
	}
	k = evs_budget_slot(owner);
	if (k >= 0)
	{
		budget -= evs_budget_used_ms[k];
		if (budget <= 0)
		{
			if (evs_skipped_n < EVS_BUDGET_OWED)
				evs_skipped[evs_skipped_n++] = object;
			if (errors != NULL)
				appendStringInfo(errors, "%s: skipped, its owner's work used its %d ms budget in this pass; ",
								 what, EVS_TENANT_BUDGET_MS);
			return false;
		}
	}
	if (evs_kill_timeout == MAX_TIMEOUTS)
	{
		evs_kill_timeout = RegisterTimeout(USER_TIMEOUT, evs_budget_kill);
		before_shmem_exit(evs_budget_at_exit, (Datum) 0);
	}
	evs_budget_owner = owner;
	strlcpy(evs_budget_what, what, sizeof(evs_budget_what));
	evs_budget_current = k;
	evs_budget_started = GetCurrentTimestamp();
	enable_timeout_after(STATEMENT_TIMEOUT, (int) budget);
	enable_timeout_after(evs_kill_timeout, (int) budget + EVS_TENANT_GRACE_MS);
	evs_budget_armed = true;
	return true;
}

/* Disarm the budget (when the work ended, or failed) */
void
EvsBudgetEnd(void)
{
	if (!evs_budget_armed)
		return;
	disable_timeout(STATEMENT_TIMEOUT, false);
	disable_timeout(evs_kill_timeout, false);
	evs_budget_armed = false;
	if (evs_budget_current >= 0 && evs_budget_current < evs_budget_nowners)
		evs_budget_used_ms[evs_budget_current] +=
			(GetCurrentTimestamp() - evs_budget_started) / 1000;
	evs_budget_current = -1;
}

/*
 * Run fn(arg) in a subtransaction: on error roll it back (which also
 * undoes any user switch and GUC level fn made), append "what: message; "
 * to errors (a lock timeout or a deadlock the worker gave way in only
 * raises a NOTICE: it is retried at the next pass) and return false.  One
 * tenant's failure stays its own; in evstream's workers its time is
 * bounded too (the budget above), so a trigger that sleeps cannot stall
 * every other tenant's push and upkeep.
 */
bool
EvsTrySubxact(void (*fn) (void *), void *arg, Oid object, const char *what,
			  StringInfo errors)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool ok = true;

	if (!EvsBudgetStart(object, InvalidOid, what, errors))
		return false;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		EvsBudgetEnd();
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		EvsBudgetEnd();
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
			edata->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED)
			ereport(NOTICE,
					(errmsg("evstream: %s is busy, retrying at the next pass", what)));
		else if (errors != NULL)
			appendStringInfo(errors, "%s: %s; ", what, edata->message);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/* An interval without months as microseconds (days count 24 hours) */
static int64
evs_fixed_usecs(Interval *ivl, const char *what)
{
	int64		us;

	if (ivl->month != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not contain months or years", what),
				 errhint("Use days instead, for example '30 days'.")));
	if (pg_mul_s64_overflow((int64) ivl->day, USECS_PER_DAY, &us) ||
		pg_add_s64_overflow(us, ivl->time, &us))
		ereport(ERROR,
				(errcode(ERRCODE_INTERVAL_FIELD_OVERFLOW),
				 errmsg("%s is out of range", what)));
	return us;
}

/*
 * An interval as microseconds, for partition intervals and buckets: whole
 * days count 24 hours, months are refused (their length varies), and the
 * result must be at least one second.
 */
int64
EvsBucketUsecs(Interval *ivl, const char *what)
{
	int64		us = evs_fixed_usecs(ivl, what);

	if (us < USECS_PER_SEC)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be at least 1 second", what)));
	return us;
}

/* A collation as stored in evstream's catalog: qualified name, "" for none */
char *
EvsCollationName(Oid coll)
{
	HeapTuple	tup;
	Form_pg_collation c;
	char	   *name;

	if (!OidIsValid(coll))
		return "";
	tup = SearchSysCache1(COLLOID, ObjectIdGetDatum(coll));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for collation %u", coll);
	c = (Form_pg_collation) GETSTRUCT(tup);
	name = quote_qualified_identifier(get_namespace_name(c->collnamespace),
									  NameStr(c->collname));
	ReleaseSysCache(tup);
	return name;
}

Oid
EvsCollationOid(const char *name)
{
	if (name[0] == '\0')
		return InvalidOid;
	return get_collation_oid(evs_string_to_qualified_name_list(name), false);
}

/* A fixed-length, non-negative interval (grace, window_retention) in usecs */
int64
EvsIntervalUsecs(Interval *ivl, const char *what)
{
	int64		us = evs_fixed_usecs(ivl, what);

	if (us < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be negative", what)));
	return us;
}

/*
 * Refuse snapshot isolation levels: a REPEATABLE READ or SERIALIZABLE
 * snapshot predates the stable offset, so reading with it could skip a
 * late commit (consumer.c), or miss rows in a backfill (aggregates.c).
 */
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


/*
 * Register a dynamic background worker of this library, connected to a
 * database (arg: its OID), notifying this process; the handle is
 * allocated in TopMemoryContext.  False when no slot is free.
 */
bool
EvsStartDatabaseWorker(const char *function, const char *type, Oid dboid,
					   BackgroundWorkerHandle **handle)
{
	BackgroundWorker bgw;
	MemoryContext old;
	bool		ok;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(bgw.bgw_library_name, BGW_MAXLEN, "evstream");
	snprintf(bgw.bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(bgw.bgw_name, BGW_MAXLEN, "%s for database %u", type, dboid);
	snprintf(bgw.bgw_type, BGW_MAXLEN, "%s", type);
	bgw.bgw_main_arg = ObjectIdGetDatum(dboid);
	bgw.bgw_notify_pid = MyProcPid;
	old = MemoryContextSwitchTo(TopMemoryContext);
	ok = RegisterDynamicBackgroundWorker(&bgw, handle);
	MemoryContextSwitchTo(old);
	return ok;
}
