/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  Every PostgreSQL-version difference evstream depends on, in one place.
 *	  The rest of the code calls the evs_* names below and contains no
 *	  PG_VERSION_NUM test of its own.
 *
 *	  Supported: PostgreSQL 15, 16, 17 and 18.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/compat.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVSTREAM_COMPAT_H
#define EVSTREAM_COMPAT_H

#include "postgres.h"

#include "access/tableam.h"
#include "catalog/pg_class_d.h"
#include "catalog/pg_database_d.h"
#include "catalog/pg_namespace_d.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/regproc.h"
#include "utils/varlena.h"

#if PG_VERSION_NUM < 150000
#error "evstream needs PostgreSQL 15 or later"
#endif

/* ownership and ACL checks: per-catalog functions became object_* in 16 */
#if PG_VERSION_NUM >= 160000
#define evs_class_ownercheck(relid, role) \
	object_ownercheck(RelationRelationId, (relid), (role))
#define evs_database_ownercheck(dboid, role) \
	object_ownercheck(DatabaseRelationId, (dboid), (role))
#define evs_extension_ownercheck(extoid, role) \
	object_ownercheck(ExtensionRelationId, (extoid), (role))
#define evs_namespace_ownercheck(nspid, role) \
	object_ownercheck(NamespaceRelationId, (nspid), (role))
#define evs_namespace_aclcheck(nspid, role, mode) \
	object_aclcheck(NamespaceRelationId, (nspid), (role), (mode))
#else
#define evs_class_ownercheck(relid, role) pg_class_ownercheck((relid), (role))
#define evs_database_ownercheck(dboid, role) pg_database_ownercheck((dboid), (role))
#define evs_extension_ownercheck(extoid, role) pg_extension_ownercheck((extoid), (role))
#define evs_namespace_ownercheck(nspid, role) pg_namespace_ownercheck((nspid), (role))
#define evs_namespace_aclcheck(nspid, role, mode) \
	pg_namespace_aclcheck((nspid), (role), (mode))
#endif

/* stringToQualifiedNameList gained a soft-error context in 16 */
#if PG_VERSION_NUM >= 160000
#define evs_string_to_qualified_name_list(s) stringToQualifiedNameList((s), NULL)
#else
#define evs_string_to_qualified_name_list(s) stringToQualifiedNameList(s)
#endif

/* this backend's index into ProcGlobal->allProcs */
#if PG_VERSION_NUM >= 170000
#define EVS_MY_PROCNO ((int) MyProcNumber)
#else
#define EVS_MY_PROCNO (MyProc->pgprocno)
#endif

/* the update_indexes out-argument of tuple_update became an enum in 16 */
#if PG_VERSION_NUM >= 160000
typedef TU_UpdateIndexes evs_update_indexes_t;
#else
typedef bool evs_update_indexes_t;
#endif

/* LockHeldByMe gained an "or stronger" argument in 17 */
#if PG_VERSION_NUM >= 170000
#define EVS_LOCK_HELD_BY_ME(tag, mode) LockHeldByMe((tag), (mode), false)
#else
#define EVS_LOCK_HELD_BY_ME(tag, mode) LockHeldByMe((tag), (mode))
#endif

/* "does not return": an attribute after the declarator until 17, pg_noreturn before it in 18 */
#if PG_VERSION_NUM >= 180000
#define EVS_NORETURN_BEFORE pg_noreturn
#define EVS_NORETURN_AFTER
#else
#define EVS_NORETURN_BEFORE
#define EVS_NORETURN_AFTER pg_attribute_noreturn()
#endif

/* the i-th (1-based) entry of the local backend status copy: renamed in 16 */
#if PG_VERSION_NUM >= 160000
#define evs_local_beentry(i) pgstat_get_local_beentry_by_index(i)
#else
#define evs_local_beentry(i) pgstat_fetch_stat_local_beentry(i)
#endif

#endif							/* EVSTREAM_COMPAT_H */
