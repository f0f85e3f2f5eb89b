/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  Every PostgreSQL version difference evstream meets, in one place.
 *
 *	  The rest of the code calls the evs_* names below and never tests
 *	  PG_VERSION_NUM itself.  Supported: PostgreSQL 15, 16, 17 and 18 (15,
 *	  17 and 18 are built and tested by `make test-all`; 16 only follows
 *	  from the guards, Debian ships no 16).
 *
 *	  Include after postgres.h (evstream.h does).
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVS_COMPAT_H
#define EVS_COMPAT_H

#include "access/tableam.h"
#include "catalog/pg_class_d.h"
#include "catalog/pg_namespace_d.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/regproc.h"
#include "utils/rel.h"

#if PG_VERSION_NUM < 150000
#error "evstream needs PostgreSQL 15 or later"
#endif

/*
 * ACL and ownership checks.  PostgreSQL 16 replaced the per-catalog
 * pg_<object>_ownercheck()/pg_<object>_aclcheck() functions with
 * object_ownercheck()/object_aclcheck() taking the catalog's oid.
 * (pg_class_aclcheck() survives in 16-18 and needs no guard.)
 */
static inline bool
evs_class_ownercheck(Oid relid, Oid roleid)
{
#if PG_VERSION_NUM >= 160000
	return object_ownercheck(RelationRelationId, relid, roleid);
#else
	return pg_class_ownercheck(relid, roleid);
#endif
}

static inline AclResult
evs_namespace_aclcheck(Oid nspid, Oid roleid, AclMode mode)
{
#if PG_VERSION_NUM >= 160000
	return object_aclcheck(NamespaceRelationId, nspid, roleid, mode);
#else
	return pg_namespace_aclcheck(nspid, roleid, mode);
#endif
}

/*
 * "schema.name" -> list of String.  PostgreSQL 16 added a soft-error
 * context argument; NULL keeps the old behaviour (ereport(ERROR)).
 */
static inline List *
evs_string_to_qualified_name_list(const char *string)
{
#if PG_VERSION_NUM >= 160000
	return stringToQualifiedNameList(string, NULL);
#else
	return stringToQualifiedNameList(string);
#endif
}

/*
 * This backend's index into the PGPROC array (0 .. MaxBackends +
 * auxiliary + prepared xacts).  PostgreSQL 17 removed PGPROC.pgprocno
 * in favour of the global MyProcNumber (a ProcNumber).
 */
static inline int
evs_my_procno(void)
{
#if PG_VERSION_NUM >= 170000
	return (int) MyProcNumber;
#else
	return MyProc->pgprocno;
#endif
}

/* The PGPROC number of another process */
static inline int
evs_procno_of(PGPROC *proc)
{
#if PG_VERSION_NUM >= 170000
	return (int) GetNumberFromPGProc(proc);
#else
	return proc->pgprocno;
#endif
}

/*
 * Table AM: tuple_update's last argument became an enum in 16
 * (TU_UpdateIndexes: TU_None / TU_All / TU_Summarizing) instead of a bool.
 * Declare the callback's parameter as "EvsUpdateIndexes *update_indexes".
 */
#if PG_VERSION_NUM >= 160000
typedef TU_UpdateIndexes EvsUpdateIndexes;
#else
typedef bool EvsUpdateIndexes;
#endif

/*
 * Table AM / storage: RelFileNode became RelFileLocator in 16 (rd_node ->
 * rd_locator, relation_set_new_filenode -> relation_set_new_filelocator).
 */
#if PG_VERSION_NUM >= 160000
typedef RelFileLocator EvsRelFileLocator;
#define evs_rel_file_locator(rel)	((rel)->rd_locator)
#define EVS_TABLEAM_SET_NEW_FILE	relation_set_new_filelocator
#else
typedef RelFileNode EvsRelFileLocator;
#define evs_rel_file_locator(rel)	((rel)->rd_node)
#define EVS_TABLEAM_SET_NEW_FILE	relation_set_new_filenode
#endif

/* Read streams (storage/read_stream.h) exist from 17 on */
#if PG_VERSION_NUM >= 170000
#define EVS_HAVE_READ_STREAM 1
#else
#define EVS_HAVE_READ_STREAM 0
#endif

/*
 * Hooks: ExecutorFinish_hook, planner_hook, ProcessUtility_hook,
 * shmem_request_hook and shmem_startup_hook have the same signatures in
 * 15-18 (checked against 18.6's headers: ExecutorStart_hook returns void
 * again in 18 final; the bool-returning variant of the 18 betas was
 * reverted).  Nothing to guard.
 */

#endif							/* EVS_COMPAT_H */
