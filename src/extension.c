/*-------------------------------------------------------------------------
 *
 * extension.c
 *	  "Is evstream created in this database?" — asked first by every hook
 *	  and callback, so a preloaded library is inert where the extension does
 *	  not exist (SPEC, Install).
 *
 *	  Present means: the extension evstream exists, the schema "evstream"
 *	  exists and is a member of it, and we are neither running evstream's
 *	  own CREATE/ALTER EXTENSION script nor in binary-upgrade mode.  A user
 *	  schema merely named "evstream" in a database without the extension
 *	  does not count.
 *
 *	  The answer is cached per backend and forgotten on any pg_namespace
 *	  invalidation (CREATE and DROP EXTENSION create and drop the schema)
 *	  and on a relcache invalidation of evstream._topic, so the cost is a
 *	  branch in the common case.  The relids of evstream's catalog tables
 *	  are cached alongside.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/extension.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "catalog/indexing.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace_d.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "evstream.h"

typedef enum
{
	EXT_UNKNOWN,
	EXT_ABSENT,
	EXT_PRESENT
} ExtState;

static ExtState ext_state = EXT_UNKNOWN;
static int	ext_current = -1;	/* catalog is the library's version: 1/0,
								 * -1: not known (reset with ext_state) */
static Oid	ext_oid = InvalidOid;
static Oid	ext_relids[EVS_NUM_CATALOG_RELS];

static const char *const ext_relnames[EVS_NUM_CATALOG_RELS] = {
	"_topic", "_topic_pkey", "_group", "_group_pkey", "_aggregate", "_count", "_delta"
};

static void
evs_ext_syscache_cb(Datum arg, int cacheid, uint32 hashvalue)
{
	ext_state = EXT_UNKNOWN;
	ext_current = -1;
}

static void
evs_ext_relcache_cb(Datum arg, Oid relid)
{
	/* (ALTER EXTENSION evstream UPDATE alters some of these) */
	for (int i = 0; i < EVS_NUM_CATALOG_RELS; i++)
		if (!OidIsValid(relid) || relid == ext_relids[i])
		{
			ext_state = EXT_UNKNOWN;
			ext_current = -1;
			break;
		}
}

void
EvsExtensionInit(void)
{
	CacheRegisterSyscacheCallback(NAMESPACEOID, evs_ext_syscache_cb, (Datum) 0);
	CacheRegisterRelcacheCallback(evs_ext_relcache_cb, (Datum) 0);
}

/* Look the state up from the catalogs (inside a transaction) */
static ExtState
evs_ext_lookup(void)
{
	Oid			nsp = get_namespace_oid("evstream", true);
	Oid			ext;
	int			i;

	if (!OidIsValid(nsp))
		return EXT_ABSENT;
	ext = get_extension_oid("evstream", true);
	if (!OidIsValid(ext) || getExtensionOfObject(NamespaceRelationId, nsp) != ext)
		return EXT_ABSENT;
	for (i = 0; i < EVS_NUM_CATALOG_RELS; i++)
	{
		ext_relids[i] = get_relname_relid(ext_relnames[i], nsp);
		if (!OidIsValid(ext_relids[i]))
			return EXT_ABSENT;	/* half-dropped: act as if absent */
	}
	ext_oid = ext;
	return EXT_PRESENT;
}

/*
 * Is evstream installed and usable in this database, now?  False outside
 * a transaction (nothing can be looked up), in binary upgrade, and while
 * evstream's own extension script runs.
 */
bool
EvsExtensionPresent(void)
{
	if (evs_shared == NULL || IsBinaryUpgrade || !IsTransactionState() ||
		!OidIsValid(MyDatabaseId))
		return false;
	if (creating_extension)
	{
		/*
		 * Some extension's script is running: evstream's own catalog may be
		 * half made (or half updated), so look without caching what we see.
		 */
		ext_state = EXT_UNKNOWN;
		ext_current = -1;
		return evs_ext_lookup() == EXT_PRESENT && CurrentExtensionObject != ext_oid;
	}
	if (ext_state == EXT_UNKNOWN)
		ext_state = evs_ext_lookup();
	return ext_state == EXT_PRESENT;
}

/*
 * The lock order between evstream's workers and DROP (or ALTER) EXTENSION
 * evstream.  Our ProcessUtility hook takes the extension's own lock (the
 * tag below) AccessExclusive for the extension's owner's DROP EXTENSION,
 * ALTER EXTENSION and DROP OWNED, before PostgreSQL locks any member or
 * dependent (guards.c).  Every worker transaction that touches evstream's
 * objects calls EvsWorkerLockExtension first, before any lock of its own
 * that the DDL could want, and waits for the same tag AccessShare.  So
 * either the worker has it, and the DDL waits for the worker's transaction
 * to end while it holds nothing the worker wants; or the DDL has it or
 * queues for it first, and the worker waits while holding nothing the DDL
 * wants.  No cycle either way, and no pass is skipped.  (A lock_timeout on
 * the worker's waits alone did not do: the DDL's deadlock check can fire
 * while the worker's bounded wait is still young, and the DDL got the
 * deadlock error.)
 *
 * The tag is the extension's object with sub-id EVS_EXTENSION_LOCK_SUBID,
 * which PostgreSQL never locks: its own lock on the extension (sub-id 0)
 * can be taken, and held, by any role through ALTER FUNCTION ... DEPENDS
 * ON EXTENSION on a function of its own, and workers waiting for that
 * would let anyone stop every database's worker.  This one is taken only
 * here, and exclusively only for the extension's owner.
 */
#define EVS_EXTENSION_LOCK_SUBID 1

/*
 * True when the extension is still here (the caller then holds its lock to
 * the end of the transaction); false when it is gone.
 */
bool
EvsWorkerLockExtension(void)
{
	Oid			ext;

	if (!EvsExtensionPresent())
		return false;
	ext = ext_oid;
	LockDatabaseObject(ExtensionRelationId, ext, EVS_EXTENSION_LOCK_SUBID, AccessShareLock);
	/* (taking it read the invalidations: a DROP may have just committed) */
	return EvsExtensionPresent() && ext_oid == ext;
}

/*
 * For DDL on the extension by its owner: the lock, AccessExclusive, first
 * (see above); false, and nothing locked, for others: PostgreSQL refuses
 * their DROP or ALTER EXTENSION, and their lock would only hold the
 * workers up.
 */
bool
EvsLockExtensionExclusive(void)
{
	Oid			ext = get_extension_oid("evstream", true);

	if (!OidIsValid(ext) || !evs_extension_ownercheck(ext, GetUserId()))
		return false;
	LockDatabaseObject(ExtensionRelationId, ext, EVS_EXTENSION_LOCK_SUBID, AccessExclusiveLock);
	return true;
}

/* Relid of one of evstream's catalog tables; the extension must be here */
Oid
EvsCatalogRelid(EvsCatalogRel which)
{
	if (!EvsExtensionPresent())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"evstream\" is not installed in this database")));
	return ext_relids[which];
}

/*
 * Refuse fn while the catalog is older than the library (between the
 * installation of a new version and ALTER EXTENSION evstream UPDATE): the
 * functions that create or configure objects write the new catalog's
 * columns, the consumers' functions read them, and producing to a topic
 * that has aggregates would count into the old catalog's layout.
 * Producing to other topics keeps working meanwhile.  Cheap: the answer is
 * cached until our catalog's relations or the schema change.
 */
void
EvsRequireCurrentCatalog(const char *fn)
{
	EvsRequireCurrentCatalogFor(psprintf("evstream.%s", fn));
}

/* EvsCatalogIsCurrent, cached until evstream's catalog relations change */
bool
EvsCatalogIsCurrentCached(void)
{
	if (ext_current < 0 || ext_state != EXT_PRESENT)
		ext_current = EvsCatalogIsCurrent(NULL) ? 1 : 0;
	return ext_current == 1;
}

/* The same, for work described by what ("INSERT into topic ...") */
void
EvsRequireCurrentCatalogFor(const char *what)
{
	char	   *installed = NULL;

	if (EvsCatalogIsCurrentCached())
		return;
	if (!EvsCatalogIsCurrent(&installed))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s needs the evstream %s catalog, this database has %s",
						what, EVS_VERSION, installed ? installed : "none"),
				 errhint("Run ALTER EXTENSION evstream UPDATE.")));
}

/*
 * Is the installed extension's version the library's (EVS_VERSION)?  After
 * a new library is installed and before ALTER EXTENSION evstream UPDATE,
 * the catalog is older than the code: the worker waits for the update.
 */
bool
EvsCatalogIsCurrent(char **installed)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		current = false;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("evstream"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
		{
			char	   *v = TextDatumGetCString(d);

			current = strcmp(v, EVS_VERSION) == 0;
			if (installed)
				*installed = v;
		}
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return current;
}
