/*-------------------------------------------------------------------------
 *
 * guards.c
 *	  Planner and utility hooks that keep topics what the contract says:
 *
 *	  - INSERT into a topic (or straight into one of its partitions, or
 *		through a data-modifying CTE): the id and created_at target entries
 *		are replaced by the columns' defaults (evstream._next_id(topic) and
 *		now()), so producer-supplied values never reach storage.  Done in
 *		the planner hook, after the rewriter has resolved DEFAULT items, so
 *		every form of INSERT (VALUES, multi-row, SELECT, prepared, PL/pgSQL)
 *		is covered.  Logical replication applies rows without planning and
 *		keeps the publisher's values; so does a superuser with
 *		evstream.restore_mode on.
 *	  - UPDATE, DELETE and MERGE on a topic fail at plan time, even when no
 *		row would match (the access method refuses the rows themselves).
 *	  - COPY FROM listing the id column (or no column list: every column) is
 *		a restore, as pg_dump writes it: values are kept and the rows are not
 *		counted again in aggregates (their counts are restored with the
 *		catalog).  Producers use COPY topic (key, payload).  After a COPY the
 *		statement's aggregate deltas are written.
 *	  - TRUNCATE ... RESTART IDENTITY would reuse ids: refused on topics.
 *	  - ATTACH PARTITION of a table not using the evstream access method
 *		would make a topic partition mutable: refused.
 *	  - DROP DATABASE, and CREATE DATABASE copying a template: the
 *		database's worker is stopped first and kept away for a while
 *		(worker.c), since both need the database without connections.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/guards.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "optimizer/planner.h"
#include "parser/parsetree.h"
#include "rewrite/rewriteHandler.h"
#include "tcop/utility.h"
#include "executor/spi.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "evstream.h"

bool		evs_copy_restore = false;
int64		evs_copy_max_id = 0;

static planner_hook_type prev_planner_hook = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

extern void EvsStopDatabaseWorker(const char *dbname);

/* The topic a relation belongs to (itself or its parent), or InvalidOid */
static Oid
evs_topic_of(Oid relid)
{
	char		relkind = get_rel_relkind(relid);

	if (relkind != RELKIND_PARTITIONED_TABLE && relkind != RELKIND_RELATION)
		return InvalidOid;
	if (relkind == RELKIND_RELATION && !get_rel_relispartition(relid))
		return InvalidOid;
	return EvsLookupTopic(relid)->topic;
}

/* Replace a target entry's expression by the topic's column default */
static void
evs_force_default(Query *query, Node *def, AttrNumber target_attno)
{
	ListCell   *lc;

	foreach(lc, query->targetList)
	{
		TargetEntry *tle = lfirst_node(TargetEntry, lc);

		if (tle->resjunk || tle->resno != target_attno)
			continue;
		tle->expr = (Expr *) copyObject(def);
		return;
	}
}

/* Apply the rules of the header comment to one query and its CTEs */
static void
evs_guard_query(Query *query)
{
	ListCell   *lc;

	foreach(lc, query->cteList)
	{
		CommonTableExpr *cte = lfirst_node(CommonTableExpr, lc);

		if (IsA(cte->ctequery, Query))
			evs_guard_query((Query *) cte->ctequery);
	}

	if (query->resultRelation <= 0)
		return;

	if (query->commandType == CMD_INSERT)
	{
		RangeTblEntry *rte = rt_fetch(query->resultRelation, query->rtable);
		Oid			topic = evs_topic_of(rte->relid);
		EvsTopic   *t;

		if (!OidIsValid(topic) || evs_restore_mode)
			return;
		t = EvsLookupTopic(topic);
		if (t->id_default == NULL || t->created_default == NULL)
		{
			Relation	topicrel = table_open(topic, NoLock);
			Node	   *id_def = build_column_default(topicrel, 1);
			Node	   *created_def = build_column_default(topicrel, 4);

			table_close(topicrel, NoLock);
			if (id_def == NULL || created_def == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("topic \"%s\" lost the defaults of its id or created_at column",
								get_rel_name(topic)),
						 errhint("Recreate the topic with evstream.create_topic().")));
			t = EvsLookupTopic(topic);	/* opening may have reset the cache */
			EvsTopicSetDefaults(t, id_def, created_def);
		}
		if (rte->relid == topic)
		{
			evs_force_default(query, t->id_default, 1);
			evs_force_default(query, t->created_default, 4);
		}
		else
		{
			evs_force_default(query, t->id_default, get_attnum(rte->relid, "id"));
			evs_force_default(query, t->created_default, get_attnum(rte->relid, "created_at"));
		}
	}
	else if (query->commandType == CMD_UPDATE ||
			 query->commandType == CMD_DELETE ||
			 query->commandType == CMD_MERGE)
	{
		RangeTblEntry *rte = rt_fetch(query->resultRelation, query->rtable);
		Oid			topic = evs_topic_of(rte->relid);

		if (OidIsValid(topic))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot %s events of topic \"%s\": topics are append-only",
							query->commandType == CMD_UPDATE ? "update" :
							query->commandType == CMD_DELETE ? "delete" : "merge into",
							get_rel_name(topic)),
					 errdetail("Events are immutable once produced."),
					 errhint("Produce a new event instead; retention removes old events by whole partitions.")));
	}
}

static PlannedStmt *
evs_planner(Query *parse, const char *query_string, int cursorOptions,
			ParamListInfo boundParams)
{
	if (evs_shared != NULL && IsTransactionState())
		evs_guard_query(parse);
	if (prev_planner_hook)
		return prev_planner_hook(parse, query_string, cursorOptions, boundParams);
	return standard_planner(parse, query_string, cursorOptions, boundParams);
}

/* Does a COPY column list name the id column (or list nothing)? */
static bool
evs_copy_lists_id(CopyStmt *stmt)
{
	ListCell   *lc;

	if (stmt->attlist == NIL)
		return true;
	foreach(lc, stmt->attlist)
		if (strcmp(strVal(lfirst(lc)), "id") == 0)
			return true;
	return false;
}

/* Refuse utility commands that would break a topic */
static void
evs_check_utility(Node *stmt)
{
	if (IsA(stmt, TruncateStmt))
	{
		TruncateStmt *ts = (TruncateStmt *) stmt;
		ListCell   *lc;

		if (!ts->restart_seqs)
			return;
		foreach(lc, ts->relations)
		{
			Oid			relid = RangeVarGetRelid(lfirst_node(RangeVar, lc), NoLock, true);

			if (OidIsValid(relid) && OidIsValid(evs_topic_of(relid)))
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot TRUNCATE topic \"%s\" with RESTART IDENTITY",
								get_rel_name(relid)),
						 errdetail("Topic ids are never reused."),
						 errhint("Use TRUNCATE without RESTART IDENTITY.")));
		}
	}
	else if (IsA(stmt, AlterTableStmt))
	{
		AlterTableStmt *at = (AlterTableStmt *) stmt;
		ListCell   *lc;
		Oid			relid;

		relid = RangeVarGetRelid(at->relation, NoLock, true);
		if (!OidIsValid(relid) || !OidIsValid(evs_topic_of(relid)))
			return;
		foreach(lc, at->cmds)
		{
			AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);

			if (cmd->subtype == AT_SetAccessMethod &&
				(cmd->name == NULL || strcmp(cmd->name, "evstream") != 0))
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot change the access method of \"%s\": it belongs to topic \"%s\"",
								get_rel_name(relid), get_rel_name(evs_topic_of(relid))),
						 errdetail("Topics are append-only; the evstream access method enforces it.")));
			if (cmd->subtype == AT_AttachPartition)
			{
				PartitionCmd *pc = (PartitionCmd *) cmd->def;
				Oid			part = RangeVarGetRelid(pc->name, NoLock, true);
				Relation	prel;
				bool		ok;

				if (!OidIsValid(part))
					continue;
				prel = table_open(part, AccessShareLock);
				ok = EvsIsTopicPartition(prel);
				table_close(prel, AccessShareLock);
				if (!ok)
					ereport(ERROR,
							(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
							 errmsg("cannot attach \"%s\" to topic \"%s\": it does not use the evstream access method",
									pc->name->relname, get_rel_name(relid)),
							 errhint("Create the table with USING evstream, or ALTER TABLE ... SET ACCESS METHOD evstream first.")));
			}
		}
	}
}

/* The next ProcessUtility in the chain */
static void
evs_next_utility(PlannedStmt *pstmt, const char *queryString,
				 bool readOnlyTree, ProcessUtilityContext context,
				 ParamListInfo params, QueryEnvironment *queryEnv,
				 DestReceiver *dest, QueryCompletion *qc)
{
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
							params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

/*
 * A COPY into a topic that lists the id column is a restore: only the
 * topic's owner may do it, and afterwards the topic's sequence is moved
 * past the highest id copied, so ids are never handed out twice.
 */
static void
evs_copy_into_topic(Oid relid, Oid topic, CopyStmt *stmt, PlannedStmt *pstmt,
					const char *queryString, bool readOnlyTree,
					ProcessUtilityContext context, ParamListInfo params,
					QueryEnvironment *queryEnv, DestReceiver *dest,
					QueryCompletion *qc)
{
	bool		save_restore = evs_copy_restore;
	volatile bool restore = evs_copy_lists_id(stmt);

	if (restore && !pg_class_ownercheck(topic, GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to COPY the id column of topic \"%s\"",
						get_rel_name(topic)),
				 errdetail("A COPY that lists the id column (or no column list) is a restore: it keeps the ids and times it is given. Only the topic's owner may restore."),
				 errhint("List only the key and payload columns: COPY %s (key, payload) FROM ...",
						 stmt->relation->relname)));

	evs_copy_restore = restore;
	evs_copy_max_id = 0;
	PG_TRY();
	{
		evs_next_utility(pstmt, queryString, readOnlyTree, context,
						 params, queryEnv, dest, qc);
	}
	PG_FINALLY();
	{
		evs_copy_restore = save_restore;
	}
	PG_END_TRY();

	if (restore)
	{
		EvsTopic   *t = EvsRequireTopic(topic, "COPY");

		if (evs_copy_max_id > EvsSequenceLastValue(t->seqrelid))
		{
			Oid			types[2] = {OIDOID, INT8OID};
			Datum		values[2] = {ObjectIdGetDatum(t->seqrelid), Int64GetDatum(evs_copy_max_id)};

			EvsSpiExec("SELECT pg_catalog.setval($1::regclass, $2)", 2, types, values, SPI_OK_SELECT);
		}
	}
	else
		EvsFlushDeltas();
}

/*
 * CREATE TABLE ... PARTITION OF a topic must use the evstream access
 * method: the default is filled in, another one is refused.
 */
static bool
evs_fix_partition_create(CreateStmt *cs, bool readOnlyTree, PlannedStmt **pstmt)
{
	ListCell   *lc;
	bool		copied = false;

	if (cs->partbound == NULL)
		return false;
	foreach(lc, cs->inhRelations)
	{
		Oid			parent = RangeVarGetRelid(lfirst_node(RangeVar, lc), NoLock, true);

		if (!OidIsValid(parent) || EvsLookupTopic(parent)->topic != parent)
			continue;
		if (cs->accessMethod != NULL && strcmp(cs->accessMethod, "evstream") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("partitions of topic \"%s\" must use the evstream access method",
							get_rel_name(parent)),
					 errdetail("Topics are append-only; the evstream access method enforces it."),
					 errhint("Omit USING, or write USING evstream.")));
		if (cs->accessMethod == NULL)
		{
			if (readOnlyTree)
			{
				*pstmt = copyObject(*pstmt);
				cs = (CreateStmt *) (*pstmt)->utilityStmt;
				copied = true;
			}
			cs->accessMethod = pstrdup("evstream");
		}
	}
	return copied;
}

/*
 * DROP EXTENSION evstream CASCADE: drop every topic first.  Topics depend
 * on the extension (create_topic records it), but a restored database
 * does not have that dependency, and its parents would stay behind.
 */
static void
evs_drop_extension_cascade(DropStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->objects)
	{
		Node	   *obj = lfirst(lc);

		if (IsA(obj, String) && strcmp(strVal(obj), "evstream") == 0 &&
			OidIsValid(get_extension_oid("evstream", true)))
		{
			EvsSpiExec("DO $$DECLARE t regclass; BEGIN "
					   "FOR t IN SELECT topic FROM evstream._topic LOOP "
					   "EXECUTE pg_catalog.format('DROP TABLE IF EXISTS %s CASCADE', t); "
					   "END LOOP; END$$", 0, NULL, NULL, 0);
			CommandCounterIncrement();
		}
	}
}

static void
evs_process_utility(PlannedStmt *pstmt, const char *queryString,
					bool readOnlyTree, ProcessUtilityContext context,
					ParamListInfo params, QueryEnvironment *queryEnv,
					DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;

	if (evs_shared != NULL && IsTransactionState())
	{
		if (IsA(stmt, CopyStmt) && ((CopyStmt *) stmt)->is_from &&
			((CopyStmt *) stmt)->relation != NULL)
		{
			Oid			relid = RangeVarGetRelid(((CopyStmt *) stmt)->relation, NoLock, true);
			Oid			topic = OidIsValid(relid) ? evs_topic_of(relid) : InvalidOid;

			if (OidIsValid(topic))
			{
				evs_copy_into_topic(relid, topic, (CopyStmt *) stmt, pstmt, queryString,
									readOnlyTree, context, params, queryEnv, dest, qc);
				return;
			}
		}
		else if (IsA(stmt, DropdbStmt))
			EvsStopDatabaseWorker(((DropdbStmt *) stmt)->dbname);
		else if (IsA(stmt, CreatedbStmt))
		{
			/* copying a database needs it without other connections */
			ListCell   *lc;

			foreach(lc, ((CreatedbStmt *) stmt)->options)
			{
				DefElem    *opt = lfirst_node(DefElem, lc);

				if (strcmp(opt->defname, "template") == 0 && opt->arg != NULL)
					EvsStopDatabaseWorker(defGetString(opt));
			}
		}
		else if (IsA(stmt, DropStmt) &&
				 ((DropStmt *) stmt)->removeType == OBJECT_EXTENSION &&
				 ((DropStmt *) stmt)->behavior == DROP_CASCADE)
			evs_drop_extension_cascade((DropStmt *) stmt);
		else if (IsA(stmt, CreateStmt))
		{
			if (evs_fix_partition_create((CreateStmt *) stmt, readOnlyTree, &pstmt))
				readOnlyTree = false;
		}
		else
			evs_check_utility(stmt);
	}

	evs_next_utility(pstmt, queryString, readOnlyTree, context,
					 params, queryEnv, dest, qc);
}

void
EvsGuardsInit(void)
{
	prev_planner_hook = planner_hook;
	planner_hook = evs_planner;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = evs_process_utility;
}
