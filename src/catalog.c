/*-------------------------------------------------------------------------
 *
 * catalog.c
 *	  The backend-local cache of evstream's catalog: which relations are
 *	  topics or topic partitions, their id sequences and owners, their
 *	  aggregates with compiled group_by expressions.
 *
 *	  No SQL: evstream._topic and evstream._aggregate are read with
 *	  systable scans under a fresh catalog snapshot (a non-catalog table
 *	  gets a new MVCC snapshot at each scan), so what a backend caches
 *	  never depends on its transaction snapshot (a REPEATABLE READ
 *	  transaction that began before create_topic still sees the topic) nor
 *	  on anyone's search_path.  group_by is parsed with search_path pinned
 *	  to "pg_catalog, pg_temp", the path it was deparsed under; the
 *	  functions an aggregate's expressions call then must be the ones it
 *	  was created with (_aggregate.functions), or the load fails.
 *
 *	  Invalidation: a relcache invalidation of a relation the cache knows,
 *	  either as an entry or as the topic of an entry (a backend may only
 *	  have touched partitions), or a global one, marks the whole cache
 *	  stale; it is rebuilt lazily at the next lookup.  Functions that change
 *	  evstream's catalog (create/drop aggregate, set_retention, ...) send a
 *	  relcache invalidation for the topic, so every backend reloads at its
 *	  next lock on the topic or on one of its partitions.
 *
 *	  Outside a database with the extension every relation is "not a
 *	  topic", without any catalog access.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/catalog.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/stratnum.h"
#include "catalog/pg_collation_d.h"
#include "catalog/pg_proc_d.h"
#include "utils/fmgroids.h"
#include "utils/syscache.h"
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
#include "utils/regproc.h"
#include "utils/ruleutils.h"
#include "storage/lock.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"
#include "utils/array.h"
#include "utils/lsyscache.h"

#include "evstream.h"

#define EVS_LOCK_TOPIC_GRAPH 0x4546	/* advisory lock field4: not SQL's 1 or 2 */

static HTAB *topic_cache = NULL;
static MemoryContext topic_cache_cxt = NULL;
static bool topic_cache_stale = false;

/* Relcache callback: forget everything if a relation we know changed */
static void
evs_relcache_cb(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS seq;
	EvsTopic   *t;

	if (topic_cache == NULL || topic_cache_stale)
		return;
	if (!OidIsValid(relid) ||
		hash_search(topic_cache, &relid, HASH_FIND, NULL) != NULL)
	{
		topic_cache_stale = true;
		return;
	}
	hash_seq_init(&seq, topic_cache);
	while ((t = hash_seq_search(&seq)) != NULL)
		if (t->topic == relid)
		{
			topic_cache_stale = true;
			hash_seq_term(&seq);
			return;
		}
}

void
EvsCatalogInit(void)
{
	CacheRegisterRelcacheCallback(evs_relcache_cb, (Datum) 0);
}

/*
 * Pins: code that uses cache entries while user code may run (evaluating
 * group_by, executing a read plan) pins the cache; a reset while pinned
 * keeps the old generation's memory and plans until the last unpin (or
 * the transaction's end), so nothing in use is ever freed under it.
 */
static int	cache_pins = 0;
static List *zombie_cxts = NIL;
static List *zombie_plans = NIL;

static void
evs_free_zombies(void)
{
	ListCell   *lc;

	foreach(lc, zombie_plans)
		SPI_freeplan((SPIPlanPtr) lfirst(lc));
	foreach(lc, zombie_cxts)
		MemoryContextDelete((MemoryContext) lfirst(lc));
	list_free(zombie_plans);
	list_free(zombie_cxts);
	zombie_plans = NIL;
	zombie_cxts = NIL;
}

void
EvsCachePin(void)
{
	cache_pins++;
}

void
EvsCacheUnpin(void)
{
	if (cache_pins > 0 && --cache_pins == 0 && zombie_cxts != NIL)
		evs_free_zombies();
}

/* Transaction end (xact.c): an error may have skipped unpins */
void
EvsCatalogAtEnd(void)
{
	cache_pins = 0;
	if (zombie_cxts != NIL)
		evs_free_zombies();
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
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		hash_seq_init(&seq, topic_cache);
		while ((t = hash_seq_search(&seq)) != NULL)
			for (int k = 0; k < EVS_NUM_TOPIC_PLANS; k++)
				if (t->plans[k].plan != NULL)
					zombie_plans = lappend(zombie_plans, t->plans[k].plan);
		zombie_cxts = lappend(zombie_cxts, topic_cache_cxt);
		MemoryContextSwitchTo(old);
		if (cache_pins == 0)
			evs_free_zombies();
	}
	topic_cache_cxt = AllocSetContextCreate(CacheMemoryContext,
											"evstream topic cache",
											ALLOCSET_DEFAULT_SIZES);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(EvsTopic);
	ctl.hcxt = topic_cache_cxt;
	topic_cache = hash_create("evstream topics", 64, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	topic_cache_stale = false;
}

/*
 * The prepared statements consumer.c runs on a topic's events (one generic
 * plan per topic and kind, all re-made if the topic was renamed).  Every
 * one reads stable events only ($stable) in id order.  On a sharded topic
 * a shard's events are read through the expression index on
 * (evstream._shard(key, id, shards), id): a range scan of that shard only,
 * written as a row comparison on the index's columns so that the planner
 * cannot prefer the id index and filter the other shards' events out.
 * Call inside SPI_connect.
 */
SPIPlanPtr
EvsTopicPlan(EvsTopic *t, EvsTopicPlanKind kind)
{
	char	   *qname = EvsQualifiedName(t->topic);
	EvsPlan    *p = &t->plans[kind];
	char	   *shard;
	char	   *sql = NULL;

	if (t->plan_name == NULL || strcmp(t->plan_name, qname) != 0)
	{
		for (int k = 0; k < EVS_NUM_TOPIC_PLANS; k++)
		{
			if (t->plans[k].plan != NULL)
				SPI_freeplan(t->plans[k].plan);
			memset(&t->plans[k], 0, sizeof(EvsPlan));
		}
		t->plan_name = MemoryContextStrdup(topic_cache_cxt, qname);
	}
	if (p->sql != NULL)
		return EvsPrepare(p);

	shard = psprintf("evstream._shard(e.key, e.id, %d)", t->shards);
	switch (kind)
	{
		case EVS_PLAN_READ:
			/* $1 position, $2 stable, $3 max: every shard (1-shard topics) */
			sql = psprintf("SELECT e.id, e.key, e.payload, e.created_at FROM %s e "
						   "WHERE e.id OPERATOR(pg_catalog.>) $1 AND e.id OPERATOR(pg_catalog.<=) $2 "
						   "ORDER BY e.id LIMIT $3", qname);
			p->nargs = 3;
			p->types[0] = INT8OID;
			p->types[1] = INT8OID;
			p->types[2] = INT4OID;
			break;
		case EVS_PLAN_READ_SHARD:
			/* $1 position, $2 stable, $3 max, $4 shard */
			sql = psprintf("SELECT e.id, e.key, e.payload, e.created_at FROM %s e "
						   "WHERE (%s, e.id) > ($4, $1) AND (%s, e.id) <= ($4, $2) "
						   "ORDER BY %s, e.id LIMIT $3", qname, shard, shard, shard);
			p->nargs = 4;
			p->types[0] = INT8OID;
			p->types[1] = INT8OID;
			p->types[2] = INT4OID;
			p->types[3] = INT4OID;
			break;
		case EVS_PLAN_READ_ALL:
			/* $1 lowest position, $2 stable, $3 max, $4 positions by shard */
			sql = psprintf("SELECT e.id, e.key, e.payload, e.created_at FROM %s e "
						   "WHERE e.id OPERATOR(pg_catalog.>) $1 AND e.id OPERATOR(pg_catalog.<=) $2 "
						   "AND e.id OPERATOR(pg_catalog.>) ($4)[(%s) OPERATOR(pg_catalog.+) 1] "
						   "ORDER BY e.id LIMIT $3", qname, shard);
			p->nargs = 4;
			p->types[0] = INT8OID;
			p->types[1] = INT8OID;
			p->types[2] = INT4OID;
			p->types[3] = INT8ARRAYOID;
			break;
		case EVS_PLAN_NEXT:
			/* $1 shards, $2 their positions, $3 stable: each one's next id */
			sql = psprintf("SELECT u.s, (SELECT e.id FROM %s e WHERE (%s, e.id) > (u.s, u.p) "
						   "AND (%s, e.id) <= (u.s, $3) ORDER BY %s, e.id LIMIT 1) "
						   "FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) u(s, p)",
						   qname, shard, shard, shard);
			p->nargs = 3;
			p->types[0] = INT4ARRAYOID;
			p->types[1] = INT8ARRAYOID;
			p->types[2] = INT8OID;
			break;
		case EVS_PLAN_FIRST:

			/*
			 * $1 lowest position, $2 stable, $3 positions by shard, $4
			 * candidate shards: the shard of the oldest next event among
			 * the candidates, looking at the first EVS_FIRST_WINDOW
			 * events after the lowest position only (bounded work when
			 * the candidates have none and others have a backlog).
			 */
			sql = psprintf("SELECT x.s FROM (SELECT e.id, %s AS s FROM %s e "
						   "WHERE e.id OPERATOR(pg_catalog.>) $1 AND e.id OPERATOR(pg_catalog.<=) $2 "
						   "ORDER BY e.id LIMIT %d) x "
						   "WHERE x.id OPERATOR(pg_catalog.>) ($3)[x.s OPERATOR(pg_catalog.+) 1] "
						   "AND x.s OPERATOR(pg_catalog.=) ANY ($4) ORDER BY x.id LIMIT 1",
						   shard, qname, EVS_FIRST_WINDOW);
			p->nargs = 4;
			p->types[0] = INT8OID;
			p->types[1] = INT8OID;
			p->types[2] = INT8ARRAYOID;
			p->types[3] = INT4ARRAYOID;
			break;
		case EVS_PLAN_EVENT:
			/* $1 id: one event and its shard */
			sql = psprintf("SELECT e.key, e.payload, e.created_at, %s FROM %s e "
						   "WHERE e.id OPERATOR(pg_catalog.=) $1", shard, qname);
			p->nargs = 1;
			p->types[0] = INT8OID;
			break;
	}
	p->sql = MemoryContextStrdup(topic_cache_cxt, sql);
	p->cursor_options = CURSOR_OPT_GENERIC_PLAN;
	return EvsPrepare(p);
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

/* The _topic row of a relation: is it a topic, and does it notify? */
static bool
evs_topic_row(Oid topic, bool *notify, int *shards)
{
	Relation	rel = table_open(EvsCatalogRelid(EVS_REL_TOPIC), AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(topic));
	scan = systable_beginscan(rel, EvsCatalogRelid(EVS_REL_TOPIC_PKEY), true,
							  NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = EvsGetAttr(tup, 4, RelationGetDescr(rel), &isnull);

		*notify = !isnull && DatumGetBool(d);
		/* column 6: shards (0.2; a 0.1 row has none) */
		d = EvsGetAttr(tup, 6, RelationGetDescr(rel), &isnull);
		*shards = isnull ? 1 : DatumGetInt32(d);
		found = true;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/* Fill a cache entry for relid from the catalog */
static void
evs_load_topic(EvsTopic *t, Oid relid)
{
	Oid			topic = relid;
	bool		notify = false;
	int			shards = 1;
	char		relkind;

	t->topic = InvalidOid;
	t->seqrelid = InvalidOid;
	t->owner = InvalidOid;
	t->notify = false;
	t->aggs_loaded = false;
	t->aggregates = NIL;
	memset(t->plans, 0, sizeof(t->plans));
	t->plan_name = NULL;
	t->shards = 1;
	t->id_default = NULL;
	t->created_default = NULL;

	if (!EvsExtensionPresent())
		return;
	relkind = get_rel_relkind(relid);
	if (relkind != RELKIND_PARTITIONED_TABLE && relkind != RELKIND_RELATION)
		return;
	if (get_rel_relispartition(relid))
		topic = get_partition_parent(relid, true);
	if (get_rel_relkind(topic) != RELKIND_PARTITIONED_TABLE)
		return;
	if (!evs_topic_row(topic, &notify, &shards))
		return;
	t->topic = topic;
	t->shards = shards;
	t->notify = notify;
	t->owner = EvsRelOwner(topic);
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

	if (t->topic != relid || !OidIsValid(relid))
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

/* Every topic whose relation still exists, in the catalog's (oid) order */
List *
EvsAllTopics(void)
{
	Relation	rel = table_open(EvsCatalogRelid(EVS_REL_TOPIC), AccessShareLock);
	SysScanDesc scan;
	HeapTuple	tup;
	List	   *topics = NIL;

	scan = systable_beginscan(rel, EvsCatalogRelid(EVS_REL_TOPIC_PKEY), true,
							  NULL, 0, NULL);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		bool		isnull;
		Oid			topic = DatumGetObjectId(EvsGetAttr(tup, 1, RelationGetDescr(rel), &isnull));

		if (!isnull && SearchSysCacheExists1(RELOID, ObjectIdGetDatum(topic)))
			topics = lappend_oid(topics, topic);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return topics;
}

/*
 * Is there a row of consumer group (topic, name), committed or still being
 * inserted by an open transaction?  Read with a dirty snapshot, so that
 * another transaction's uncommitted creation counts (groups.c uses this to
 * tell a creator of the same group from one whose name's hash collides).
 */
bool
EvsGroupRowPending(Oid topic, const char *name)
{
	Relation	rel = table_open(EvsCatalogRelid(EVS_REL_GROUP), AccessShareLock);
	SnapshotData dirty;
	ScanKeyData key[2];
	SysScanDesc scan;
	bool		found;

	InitDirtySnapshot(dirty);
	ScanKeyInit(&key[0], 1, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(topic));
	/* the key column's collation: the database default, as the index's */
	ScanKeyEntryInitialize(&key[1], 0, 2, BTEqualStrategyNumber, InvalidOid,
						   DEFAULT_COLLATION_OID, F_TEXTEQ, CStringGetTextDatum(name));
	scan = systable_beginscan(rel, EvsCatalogRelid(EVS_REL_GROUP_PKEY), true,
							  &dirty, 2, key);
	found = HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * The ids of this database's consumer groups, committed or still being
 * inserted by an open transaction (a dirty snapshot: a row deleted by an
 * open transaction is still there too); for the sweep of attempt
 * counts (waits.c).
 */
int32 *
EvsGroupIds(int *n)
{
	Relation	rel = table_open(EvsCatalogRelid(EVS_REL_GROUP), AccessShareLock);
	AttrNumber	att = get_attnum(RelationGetRelid(rel), "id");
	SnapshotData dirty;
	SysScanDesc scan;
	HeapTuple	tup;
	int			size = 64;
	int32	   *ids = palloc(sizeof(int32) * size);

	*n = 0;
	if (att == InvalidAttrNumber)
		elog(ERROR, "evstream._group has no column \"id\"");
	InitDirtySnapshot(dirty);
	scan = systable_beginscan(rel, InvalidOid, false, &dirty, 0, NULL);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, att, RelationGetDescr(rel), &isnull);

		CHECK_FOR_INTERRUPTS();
		if (isnull)
			continue;
		if (*n == size)
		{
			size *= 2;
			ids = repalloc(ids, sizeof(int32) * size);
		}
		ids[(*n)++] = DatumGetInt32(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return ids;
}

/*
 * Does topic `from` feed topic `to`: is it `to`, or the source of a
 * transform or the topic of an aggregate whose output topic does, over
 * every role's transforms and aggregates?  A transform or an aggregate
 * with an output topic that feeds its own input would loop forever.
 * Called before a creator adds its edge to -> from, which it then must.
 *
 * Two creators in open transactions could each add an edge that closes a
 * loop with the other's, each unseen by the other.  So creators take
 * locks of topics (a lock class of evstream's own, held to the end of the
 * transaction): its edge's source `to` in RowExclusiveLock, then every
 * topic reachable from `from` in ShareLock, looking again with a new
 * snapshot after each round of new locks, until the set stops growing;
 * the answer comes from the last look.  Why no loop commits: take, of the
 * creators whose edges would form a loop, the one whose last look came
 * latest.  Had some other creator E of the loop not committed by then,
 * that look, following the loop from `from` over committed edges, reached
 * E's source, whose lock it had to hold, while E held it in a conflicting
 * mode from before E's own looks until E's commit; so E committed before
 * it, or took that lock after it and looked later -- neither can be.  So
 * every other edge of the loop was visible, and the look found the loop.
 * Creators of unrelated edges share no topic and never wait for each
 * other (unlike one lock for the whole graph, which any user could hold in
 * an open transaction against everyone).  Two creators closing a loop can
 * deadlock; one of them fails, and its retry sees the loop.
 */
static void
evs_lock_topic_node(Oid topic, LOCKMODE mode)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, topic, 0, EVS_LOCK_TOPIC_GRAPH);
	(void) LockAcquire(&tag, mode, false, false);
}

bool
EvsTopicFeeds(Oid from, Oid to)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(from)};
	List	   *locked = NIL;
	bool		feeds = false;
	bool		grew = true;

	if (from == to)
		return true;
	evs_lock_topic_node(to, RowExclusiveLock);
	while (grew)
	{
		EvsUserState su;

		CHECK_FOR_INTERRUPTS();
		grew = false;
		feeds = false;
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		EvsBecomeSuperuser(&su);	/* (pins the search_path too) */
		if (SPI_execute_with_args("WITH RECURSIVE e(src, dst) AS ("
								  "SELECT x.source::pg_catalog.oid, x.output_topic::pg_catalog.oid FROM evstream._transform x "
								  "UNION ALL SELECT a.topic::pg_catalog.oid, a.output_topic::pg_catalog.oid "
								  "FROM evstream._aggregate a WHERE a.output_topic IS NOT NULL), "
								  "r(t) AS (SELECT $1 UNION SELECT e.dst FROM e JOIN r ON e.src OPERATOR(pg_catalog.=) r.t) "
								  "SELECT r.t FROM r",
								  1, types, values, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read the topic graph");
		EvsRestoreUser(&su);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			Oid			t = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
														   SPI_tuptable->tupdesc, 1, &isnull));

			if (t == to)
				feeds = true;
			if (!list_member_oid(locked, t))
			{
				MemoryContext old = MemoryContextSwitchTo(CurTransactionContext);

				locked = lappend_oid(locked, t);
				MemoryContextSwitchTo(old);
				evs_lock_topic_node(t, ShareLock);
				grew = true;
			}
		}
		SPI_finish();
	}
	list_free(locked);
	return feeds;
}

/* The topic a relation belongs to (itself or its parent), or InvalidOid */
Oid
EvsTopicOf(Oid relid)
{
	char		relkind;

	if (!EvsExtensionPresent())
		return InvalidOid;
	relkind = get_rel_relkind(relid);
	if (relkind != RELKIND_PARTITIONED_TABLE && relkind != RELKIND_RELATION)
		return InvalidOid;
	if (relkind == RELKIND_RELATION && !get_rel_relispartition(relid))
		return InvalidOid;
	return EvsLookupTopic(relid)->topic;
}

/* Is seqrelid the id sequence of a topic (owned by its id column)? */
bool
EvsIsTopicSequence(Oid seqrelid, Oid *topic)
{
	Oid			table;
	int32		col;

	if (!EvsExtensionPresent() || get_rel_relkind(seqrelid) != RELKIND_SEQUENCE)
		return false;
	if (!sequenceIsOwned(seqrelid, DEPENDENCY_AUTO, &table, &col) || col != 1)
		return false;
	if (EvsLookupTopic(table)->topic != table)
		return false;
	if (topic)
		*topic = table;
	return true;
}

/* Does a function not come with PostgreSQL (so a user wrote it)? */
static bool
evs_user_function(Oid funcid, void *context)
{
	return funcid >= FirstNormalObjectId;
}

static bool
evs_calls_user_function(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (check_functions_in_node(node, evs_user_function, context))
		return true;
	/* a domain's CHECK constraints are user code evaluated at run time */
	if (IsA(node, CoerceToDomain))
		return true;
	return expression_tree_walker(node, evs_calls_user_function, context);
}

/*
 * Parse one of an aggregate's stored expressions (group_by, event_time, a
 * measure's input) over the topic's columns, coerced to target: analysed,
 * not planned (no user code runs).  create_aggregate (aggregates.c) parses
 * the texts it stores through this same path, so that what it records is
 * what every load compares against.
 *
 * The parse must give back the text it was stored as (deparsed under the
 * same pinned path), else it is refused (42P17) before anything runs: a
 * type created since under a function's name turns a call of it into a
 * cast to that type (PostgreSQL tries a function-style cast before
 * polymorphic matches), whose domain CHECK could run anyone's code, and
 * the list of functions alone (EvsCollectFunctions) does not see that
 * when the function is still called elsewhere in the aggregate.  The
 * deparse shows the cast.
 */
Node *
EvsParseStoredExpr(Relation rel, const char *text, Oid target, const char *aggname)
{
	ParseState *pstate = make_parsestate(NULL);
	ParseNamespaceItem *nsitem;
	List	   *raw;
	SelectStmt *sel = NULL;
	Node	   *expr;
	char	   *again;
	int			save_nestlevel = EvsPinSearchPath();

	/* the stored text was deparsed under the same pinned path */
	raw = raw_parser(text, RAW_PARSE_PLPGSQL_EXPR);
	if (list_length(raw) == 1 && IsA(((RawStmt *) linitial(raw))->stmt, SelectStmt))
		sel = (SelectStmt *) ((RawStmt *) linitial(raw))->stmt;
	if (sel == NULL || list_length(sel->targetList) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("a stored expression of aggregate \"%s\" is not one expression", aggname),
				 errdetail("It reads \"%s\".", text)));
	nsitem = addRangeTableEntryForRelation(pstate, rel, AccessShareLock,
										   NULL, false, true);
	addNSItemToQuery(pstate, nsitem, false, true, true);
	expr = transformExpr(pstate, ((ResTarget *) linitial(sel->targetList))->val,
						 EXPR_KIND_GENERATED_COLUMN);
	assign_expr_collations(pstate, expr);
	again = EvsDeparseExpr(rel, expr);
	if (strcmp(again, text) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("the expressions of aggregate \"%s\" no longer parse as they were stored", aggname),
				 errdetail("\"%s\" now reads \"%s\".", text, again),
				 errhint("A function or type was created, dropped or replaced in a schema its expressions use; drop and recreate the aggregate.")));
	expr = coerce_to_target_type(pstate, expr, exprType(expr), target, -1,
								 COERCION_EXPLICIT, COERCE_EXPLICIT_CAST, -1);
	EvsUnpinSearchPath(save_nestlevel);
	free_parsestate(pstate);
	return expr;
}

/*
 * An analysed expression over rel's columns as text, under the pinned
 * path: everything outside pg_catalog gets qualified, and the text parses
 * back to the same expression under the same path.
 */
char *
EvsDeparseExpr(Relation rel, Node *expr)
{
	int			save_nestlevel = EvsPinSearchPath();
	char	   *result = deparse_expression(expr,
											deparse_context_for(RelationGetRelationName(rel),
																RelationGetRelid(rel)),
											false, false);

	EvsUnpinSearchPath(save_nestlevel);
	return result;
}

static bool
evs_note_function(Oid funcid, void *context)
{
	List	  **sigs = (List **) context;

	*sigs = lappend(*sigs, format_procedure_qualified(funcid));
	return false;				/* go on: every function counts */
}

static void
evs_note_operator(Oid opno, List **sigs)
{
	*sigs = lappend(*sigs, psprintf("operator %s", format_operator_qualified(opno)));
}

static bool
evs_functions_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	(void) check_functions_in_node(node, evs_note_function, context);
	/* operators too: one made over a function already called elsewhere */
	if (IsA(node, OpExpr) || IsA(node, DistinctExpr) || IsA(node, NullIfExpr))
		evs_note_operator(((OpExpr *) node)->opno, context);
	else if (IsA(node, ScalarArrayOpExpr))
		evs_note_operator(((ScalarArrayOpExpr *) node)->opno, context);
	else if (IsA(node, RowCompareExpr))
	{
		ListCell   *lc;

		foreach(lc, ((RowCompareExpr *) node)->opnos)
			evs_note_operator(lfirst_oid(lc), context);
	}
	return expression_tree_walker(node, evs_functions_walker, context);
}

/*
 * Add to *sigs every function and operator an analysed expression calls:
 * functions, operators and their functions, the I/O functions of its
 * conversions, ... (check_functions_in_node), as schema-qualified
 * signatures (names survive dump and restore, OIDs do not).  Before
 * planning, which may inline SQL functions away: the list is of what the
 * text names.
 */
void
EvsCollectFunctions(Node *expr, List **sigs)
{
	fix_opfuncids(expr);		/* (the parser sets them; cheap if so) */
	(void) evs_functions_walker(expr, sigs);
}

static int
evs_cmp_cstring(const ListCell *a, const ListCell *b)
{
	return strcmp((const char *) lfirst(a), (const char *) lfirst(b));
}

/*
 * The signatures (EvsCollectFunctions) as _aggregate.functions stores
 * them: sorted bytewise and unique.
 */
List *
EvsFunctionSignatures(List *sigs)
{
	List	   *sorted = list_copy(sigs);
	List	   *unique = NIL;
	ListCell   *lc;

	list_sort(sorted, evs_cmp_cstring);
	foreach(lc, sorted)
		if (unique == NIL || strcmp(llast(unique), lfirst(lc)) != 0)
			unique = lappend(unique, lfirst(lc));
	list_free(sorted);
	return unique;
}

/*
 * Parse all of an aggregate's stored texts (EvsParseStoredExpr): group_by,
 * event_time (may be NULL) and the n measure inputs of types, into
 * parsed[0], parsed[1] (NULL without event_time) and parsed[2..], and
 * return the functions and operators they call (EvsFunctionSignatures):
 * create_aggregate records the list, every load compares it.
 */
List *
EvsParseAggregateTexts(Relation rel, const char *group_by, const char *event_time,
					   char **exprs, Oid *types, int n, const char *aggname, Node **parsed)
{
	List	   *sigs = NIL;

	parsed[0] = EvsParseStoredExpr(rel, group_by, TEXTOID, aggname);
	EvsCollectFunctions(parsed[0], &sigs);
	parsed[1] = NULL;
	if (event_time)
	{
		parsed[1] = EvsParseStoredExpr(rel, event_time, TIMESTAMPTZOID, aggname);
		EvsCollectFunctions(parsed[1], &sigs);
	}
	for (int i = 0; i < n; i++)
	{
		parsed[2 + i] = EvsParseStoredExpr(rel, exprs[i], types[i], aggname);
		EvsCollectFunctions(parsed[2 + i], &sigs);
	}
	return EvsFunctionSignatures(sigs);
}

/*
 * Compile a parsed stored expression (EvsParseStoredExpr) for evaluation
 * on insert.
 *
 * With text_out (group_by): a group is the expression's value as text,
 * and converting a date, a timestamp, an interval, a float or a bytea
 * (or an array or a row of them) to text depends on the session's
 * DateStyle, TimeZone, IntervalStyle, extra_float_digits and bytea_output.
 * When the conversion is by the type's output function (not a cast
 * function), the expression is compiled without it and *text_out gets
 * that function, which the producer runs under fixed settings
 * (EvsFixedText): one value is one group in every session.  Else
 * *text_out is NULL.
 *
 * Planning may already run user functions (constant folding): the caller
 * has checked the functions first (evs_check_functions).
 */
static ExprState *
evs_compile_expr(Node *expr, bool *as_owner, FmgrInfo **text_out)
{
	if (text_out != NULL)
		*text_out = NULL;
	/* (the stored group_by ends in its conversion to text) */
	if (text_out != NULL && IsA(expr, CoerceViaIO) &&
		((CoerceViaIO *) expr)->resulttype == TEXTOID)
	{
		Node	   *value = (Node *) ((CoerceViaIO *) expr)->arg;
		Oid			fn;
		bool		varlena;

		/* privileges below are judged on the conversion, which names fn */
		getTypeOutputInfo(exprType(value), &fn, &varlena);
		*text_out = palloc(sizeof(FmgrInfo));
		fmgr_info_cxt(fn, *text_out, CurrentMemoryContext);
		if (evs_calls_user_function(expr, NULL))
			*as_owner = true;
		expr = value;
	}

	/*
	 * User-written functions run as the owner; so does anything not
	 * immutable (event_time may be STABLE, and built-in STABLE functions
	 * can run user code: table_to_xml reads a view, record_in checks a
	 * domain).
	 */
	if (evs_calls_user_function(expr, NULL) || contain_mutable_functions(expr))
		*as_owner = true;
	return ExecInitExpr(expression_planner((Expr *) expr), NULL);
}

/* The first string of list a that list b lacks, NULL when none */
static const char *
evs_first_missing(List *a, List *b)
{
	ListCell   *la;
	ListCell   *lb;

	foreach(la, a)
	{
		bool		found = false;

		foreach(lb, b)
			if (strcmp(lfirst(la), lfirst(lb)) == 0)
				found = true;
		if (!found)
			return lfirst(la);
	}
	return NULL;
}

/*
 * Do an aggregate's freshly parsed expressions call the functions it was
 * created with?  Its texts are parsed again at each load, under the pinned
 * path but with every name outside pg_catalog resolved anew: a function
 * someone created since in a schema they name (a more exact overload of a
 * polymorphic or variadic function, or one needing fewer casts) would now
 * be called, inside every producer's INSERT and as the aggregate's owner.
 * Like an index expression, an aggregate must keep calling the functions
 * it was made with, so such a load fails, before any of its expressions is
 * planned or run.  stored NULL: an aggregate of an older catalog, whose
 * list was never recorded.
 */
static void
evs_check_functions(Oid view, Datum stored, bool isnull, List *sigs)
{
	List	   *now = sigs;
	List	   *was = NIL;
	Datum	   *elems;
	int			n;
	const char *added;
	const char *removed;

	if (isnull)
		return;
	deconstruct_array(DatumGetArrayTypeP(stored), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, NULL, &n);
	for (int i = 0; i < n; i++)
		was = lappend(was, TextDatumGetCString(elems[i]));

	/* the first entry of each side the other lacks */
	added = evs_first_missing(now, was);
	removed = evs_first_missing(was, now);
	if (added == NULL && removed == NULL)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
			 errmsg("the expressions of aggregate \"%s\" no longer call the functions it was created with",
					get_rel_name(view)),
			 added && removed ?
			 errdetail("It would now call %s instead of %s.", added, removed) :
			 added ?
			 errdetail("It would now call %s, which it was not created with.", added) :
			 errdetail("It would no longer call %s.", removed),
			 errhint("A function was created, dropped or replaced in a schema its expressions use; drop and recreate the aggregate.")));
}

/* A text[] / oid-like[] column of an _aggregate row as an array of Datums */
static int
evs_aggregate_array(HeapTuple tup, TupleDesc desc, int att, Oid elemtype, Datum **elems)
{
	bool		isnull;
	Datum		d = EvsGetAttr(tup, att, desc, &isnull);
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			n;

	*elems = NULL;
	if (isnull)
		return 0;
	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	deconstruct_array(DatumGetArrayTypeP(d), elemtype, typlen, typbyval, typalign,
					  elems, NULL, &n);
	return n;
}

/*
 * An _aggregate row's measures (the producer path and the merge both need
 * them): kinds, types, collations and, from column text_att, their names
 * or their expressions, into arrays of EVS_MAX_MEASURES; returns how many.
 */
int
EvsAggregateMeasures(HeapTuple tup, TupleDesc desc, int text_att, EvsMeasureKind *kinds,
					 char **texts, Oid *types, Oid *colls)
{
	Datum	   *k;
	Datum	   *x;
	Datum	   *t;
	Datum	   *c;
	int			n = evs_aggregate_array(tup, desc, EVS_AGG_M_KINDS, TEXTOID, &k);
	int			i;

	if (evs_aggregate_array(tup, desc, text_att, TEXTOID, &x) != n ||
		evs_aggregate_array(tup, desc, EVS_AGG_M_TYPES, REGTYPEOID, &t) != n ||
		evs_aggregate_array(tup, desc, EVS_AGG_M_COLLS, TEXTOID, &c) != n ||
		n > EVS_MAX_MEASURES)
	{
		bool		isnull;

		elog(ERROR, "evstream: aggregate %d has inconsistent measures",
			 DatumGetInt32(EvsGetAttr(tup, EVS_AGG_ID, desc, &isnull)));
	}
	for (i = 0; i < n; i++)
	{
		kinds[i] = EvsMeasureKindOf(TextDatumGetCString(k[i]));
		texts[i] = TextDatumGetCString(x[i]);
		types[i] = DatumGetObjectId(t[i]);
		colls[i] = EvsCollationOid(TextDatumGetCString(c[i]));
	}
	return n;
}

/*
 * An _aggregate row's windows (the producer path and the merge both need
 * them); the bucket is copied into cxt.
 */
void
EvsAggregateWindows(HeapTuple tup, TupleDesc desc, MemoryContext cxt, EvsWindows *w)
{
	bool		isnull;
	Datum		d = EvsGetAttr(tup, EVS_AGG_BUCKET, desc, &isnull);

	memset(w, 0, sizeof(EvsWindows));
	if (isnull)
		return;
	w->bucket = (Interval *) MemoryContextAlloc(cxt, sizeof(Interval));
	memcpy(w->bucket, DatumGetPointer(d), sizeof(Interval));
	w->bucket_usecs = EvsBucketUsecs(w->bucket, "bucket");
	w->hop_usecs = w->bucket_usecs;
	d = EvsGetAttr(tup, EVS_AGG_HOP, desc, &isnull);
	if (!isnull)
		w->hop_usecs = EvsBucketUsecs(DatumGetIntervalP(d), "hop");
	d = EvsGetAttr(tup, EVS_AGG_GRACE, desc, &isnull);
	if (!isnull)
		w->grace_usecs = EvsIntervalUsecs(DatumGetIntervalP(d), "grace");
}

/* Load what the producer path needs of one _aggregate row (texts uncompiled) */
typedef struct EvsAggTexts
{
	char	   *group_by;
	char	   *event_time;
	char	  **exprs;
	Datum		functions;		/* text[] of the functions they call */
	bool		functions_null; /* (not recorded: not checked) */
} EvsAggTexts;

static EvsAggregate *
evs_read_aggregate(HeapTuple tup, TupleDesc desc, MemoryContext cxt, EvsAggTexts *texts)
{
	EvsAggregate *a = MemoryContextAllocZero(cxt, sizeof(EvsAggregate));
	bool		isnull;
	Datum		d;
	EvsMeasureKind kinds[EVS_MAX_MEASURES];
	Oid			types[EVS_MAX_MEASURES];
	Oid			colls[EVS_MAX_MEASURES];
	int			n;
	int			i;
	int			slot = 0;

	a->id = DatumGetInt32(EvsGetAttr(tup, EVS_AGG_ID, desc, &isnull));
	a->view = DatumGetObjectId(EvsGetAttr(tup, EVS_AGG_VIEW, desc, &isnull));
	texts->group_by = TextDatumGetCString(EvsGetAttr(tup, EVS_AGG_GROUP_BY, desc, &isnull));
	EvsAggregateWindows(tup, desc, cxt, &a->windows);
	d = EvsGetAttr(tup, EVS_AGG_OUTPUT, desc, &isnull);
	a->output_topic = isnull ? InvalidOid : DatumGetObjectId(d);
	a->notify = DatumGetBool(EvsGetAttr(tup, EVS_AGG_NOTIFY, desc, &isnull));
	d = EvsGetAttr(tup, EVS_AGG_EVENT_TIME, desc, &isnull);
	texts->event_time = isnull ? NULL : TextDatumGetCString(d);
	d = EvsGetAttr(tup, EVS_AGG_FUNCTIONS, desc, &texts->functions_null);
	texts->functions = texts->functions_null ? (Datum) 0 :
		PointerGetDatum(PG_DETOAST_DATUM_COPY(d));

	texts->exprs = palloc0(sizeof(char *) * EVS_MAX_MEASURES);
	n = EvsAggregateMeasures(tup, desc, EVS_AGG_M_EXPRS, kinds, texts->exprs, types, colls);
	a->nmeasures = n;
	a->measures = MemoryContextAllocZero(cxt, sizeof(EvsMeasure) * (n + 1));
	for (i = 0; i < n; i++)
	{
		EvsMeasure *m = &a->measures[i];

		m->kind = kinds[i];
		m->type = types[i];
		m->collation = colls[i];
		m->slot = slot;
		slot += m->kind == EVS_M_AVG ? 2 : 1;
		if (m->kind == EVS_M_SUM || m->kind == EVS_M_AVG)
		{
			Oid			op = OpernameGetOprid(list_make2(makeString("pg_catalog"), makeString("+")),
											  m->type, m->type);

			if (!OidIsValid(op))
				elog(ERROR, "evstream: no + operator for type %s", format_type_be(m->type));
			fmgr_info_cxt(get_opcode(op), &m->fn, cxt);
		}
		else if (m->kind == EVS_M_MIN || m->kind == EVS_M_MAX)
		{
			TypeCacheEntry *tc = lookup_type_cache(m->type, TYPECACHE_CMP_PROC);

			if (!OidIsValid(tc->cmp_proc))
				elog(ERROR, "evstream: type %s has no ordering", format_type_be(m->type));
			fmgr_info_cxt(tc->cmp_proc, &m->fn, cxt);
		}
	}
	a->nslots = slot;
	return a;
}

static int
evs_cmp_agg(const ListCell *a, const ListCell *b)
{
	int32		x = ((EvsAggregate *) lfirst(a))->id;
	int32		y = ((EvsAggregate *) lfirst(b))->id;

	return (x > y) - (x < y);
}

/* The topic's aggregates, loaded on first use, in id order */
List *
EvsTopicAggregates(EvsTopic *t)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	List	   *aggs = NIL;
	Oid			topic = t->topic;
	MemoryContext cxt = topic_cache_cxt;

	if (t->aggs_loaded || !OidIsValid(topic))
		return t->aggregates;

	rel = table_open(EvsCatalogRelid(EVS_REL_AGGREGATE), AccessShareLock);
	ScanKeyInit(&key, EVS_AGG_TOPIC, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(topic));
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		EvsAggTexts *tx;
		EvsAggregate *a;

		/* an older catalog's rows have another layout (extension.c) */
		if (aggs == NIL)
			EvsRequireCurrentCatalogFor(psprintf("producing to topic \"%s\", which has aggregates,",
												 get_rel_name(topic)));
		tx = palloc(sizeof(EvsAggTexts));
		a = evs_read_aggregate(tup, RelationGetDescr(rel), cxt, tx);

		/* the texts, until compiled below (not in the cache's context) */
		a->expr = (ExprState *) tx;
		aggs = lappend(aggs, a);	/* moved to the cache's context below */
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	/* compile outside the scan: opening the topic may process invalidations */
	{
		ListCell   *lc;

		foreach(lc, aggs)
		{
			EvsAggregate *a = lfirst(lc);
			EvsAggTexts *tx = (EvsAggTexts *) a->expr;
			MemoryContext old;
			EvsUserState st;
			Relation	trel;
			int			i;
			Node	   *parsed[EVS_MAX_MEASURES + 2];
			Node	   *group_by;
			Node	   *event_time;
			Node	  **inputs = parsed + 2;
			Oid			mtypes[EVS_MAX_MEASURES];
			List	   *sigs;

			a->owner = EvsRelOwner(a->view);

			/*
			 * As the owner: planning the expression may already run user
			 * functions (constant folding of IMMUTABLE ones).
			 */
			EvsBecomeOwner(a->owner, &st);
			trel = relation_open(topic, AccessShareLock);

			/*
			 * Parse every expression and check the functions they call
			 * before compiling any: planning one may run user code.  The
			 * parse trees are temporary; the compiled ones are copies in
			 * the cache's context.
			 */
			for (i = 0; i < a->nmeasures; i++)
				mtypes[i] = a->measures[i].type;
			sigs = EvsParseAggregateTexts(trel, tx->group_by, tx->event_time, tx->exprs, mtypes,
										  a->nmeasures, get_rel_name(a->view), parsed);
			group_by = parsed[0];
			event_time = parsed[1];
			evs_check_functions(a->view, tx->functions, tx->functions_null, sigs);

			old = MemoryContextSwitchTo(cxt);
			a->expr = evs_compile_expr(copyObject(group_by), &a->as_owner, &a->key_out);
			if (event_time)
				a->event_time = evs_compile_expr(copyObject(event_time), &a->as_owner, NULL);
			for (i = 0; i < a->nmeasures; i++)
				a->measures[i].input = evs_compile_expr(copyObject(inputs[i]),
														&a->as_owner, NULL);
			MemoryContextSwitchTo(old);
			relation_close(trel, AccessShareLock);
			EvsRestoreUser(&st);
		}
	}
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);
		List	   *kept = list_copy(aggs);

		MemoryContextSwitchTo(old);
		list_free(aggs);
		aggs = kept;
	}
	list_sort(aggs, evs_cmp_agg);
	if (topic_cache_stale)
		return aggs;			/* invalidated meanwhile: reload next time */
	t->aggregates = aggs;
	t->aggs_loaded = true;
	return t->aggregates;
}
