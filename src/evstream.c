/*-------------------------------------------------------------------------
 *
 * evstream.c
 *	  Library entry point: refuses to load outside shared_preload_libraries,
 *	  defines the GUCs, reserves and initialises shared memory, and lets each
 *	  module install its hooks and callbacks.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/evstream.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "evstream.h"

PG_MODULE_MAGIC;

int			evs_maintenance_interval = 60;
int			evs_premake = 3;
int			evs_notify_interval = 10;
bool		evs_restore_mode = false;

EvsShared  *evs_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);

/* Size of the shared state: fixed part plus one slot per backend */
Size
EvsShmemSize(void)
{
	return add_size(offsetof(EvsShared, slots),
					mul_size(MaxBackends, sizeof(EvsBackendSlot)));
}

/* Reserve shared memory and our LWLock */
static void
evs_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(EvsShmemSize());
	RequestAddinShmemSpace(EvsWaitsShmemSize());
	RequestNamedLWLockTranche("evstream", 1);
	RequestNamedLWLockTranche("evstream attempts", 1);
}

/* Create or attach the shared state */
static void
evs_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	evs_shared = ShmemInitStruct("evstream", EvsShmemSize(), &found);
	if (!found)
	{
		int			i,
					j;

		memset(evs_shared, 0, EvsShmemSize());
		evs_shared->lock = &(GetNamedLWLockTranche("evstream"))->lock;
		evs_shared->launcher_procno = -1;
		evs_shared->rescan = true;
		for (i = 0; i < EVS_MAX_DATABASES; i++)
		{
			evs_shared->databases[i].worker_procno = -1;
			pg_atomic_init_u32(&evs_shared->databases[i].take_gen, 0);
			pg_atomic_init_u32(&evs_shared->databases[i].transforms_gen, 0);
		}
		for (i = 0; i < MaxBackends; i++)
		{
			EvsBackendSlot *s = &evs_shared->slots[i];

			pg_atomic_init_u32(&s->dboid, InvalidOid);
			pg_atomic_init_u32(&s->nused, 0);
			for (j = 0; j < EVS_MAX_XACT_TOPICS; j++)
			{
				pg_atomic_init_u32(&s->relid[j], InvalidOid);
				pg_atomic_init_u64(&s->min_id[j], 0);
			}
		}
	}
	EvsWaitsShmemInit();
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Module load.  evstream keeps per-backend state in shared memory and runs
 * background workers, so it must be preloaded; loaded any other way (for
 * instance by CREATE EXTENSION) it refuses with a hint saying what to add.
 */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("evstream must be loaded via shared_preload_libraries"),
				 errhint("Add evstream to shared_preload_libraries in postgresql.conf (shared_preload_libraries = 'evstream') and restart the server.")));

	DefineCustomIntVariable("evstream.maintenance_interval",
							"Time between two maintenance passes of the evstream worker (premake, retention, delta merge).",
							NULL,
							&evs_maintenance_interval,
							60, 1, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("evstream.premake",
							"Number of partitions the evstream worker keeps created ahead of now.",
							NULL,
							&evs_premake,
							3, 0, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("evstream.notify_interval",
							"Longest wait before pending evstream notifications are sent.",
							NULL,
							&evs_notify_interval,
							10, 1, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("evstream.restore_mode",
							 "Keep the id and created_at values an INSERT supplies and do not count the rows in aggregates (for restores).",
							 NULL,
							 &evs_restore_mode,
							 false,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("evstream.transform_max_attempts",
							"Failures in a row of a transform's batch after which the transform pauses.",
							NULL,
							&evs_transform_max_attempts,
							5, 1, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("evstream.max_transform_workers",
							"Background worker processes running transforms, per database.",
							"Each takes a slot of max_worker_processes.",
							&evs_max_transform_workers,
							2, 0, EVS_MAX_TRANSFORM_WORKERS,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	MarkGUCPrefixReserved("evstream");

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = evs_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = evs_shmem_startup;

	/*
	 * Callbacks and hooks, bottom layer first.  Each is inert in a database
	 * without the extension: it asks EvsExtensionPresent() first or acts
	 * only on state that evstream's own functions created.
	 */
	EvsExtensionInit();			/* pg_namespace/relcache callbacks */
	EvsCatalogInit();			/* relcache callback of the topic cache */
	EvsXactInit();				/* the one (sub)transaction callback */
	EvsAggregatesInit();		/* ExecutorFinish: flush statement counts */
	EvsGuardsInit();			/* planner and ProcessUtility hooks */
	EvsWorkerRegisterLauncher();
}

PG_FUNCTION_INFO_V1(evstream_check_preload);

/*
 * Called by the install script.  Loading the library already raised the
 * error when it is not preloaded; this only makes the check explicit.
 */
Datum
evstream_check_preload(PG_FUNCTION_ARGS)
{
	if (evs_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("evstream must be loaded via shared_preload_libraries"),
				 errhint("Add evstream to shared_preload_libraries in postgresql.conf (shared_preload_libraries = 'evstream') and restart the server.")));
	PG_RETURN_VOID();
}
