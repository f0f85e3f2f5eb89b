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
 *	  - A topic's shape is fixed: ALTER TABLE commands on a topic or one of
 *		its partitions that add, drop, rename or retype columns or change
 *		their defaults or nullability, foreign-table partitions, and ALTER
 *		SEQUENCE, setval() with a constant and GRANTs of UPDATE/USAGE on its
 *		id sequence are refused (0A000).  create_topic revokes UPDATE and
 *		USAGE on the sequence from everyone, its owner included, so setval
 *		with a computed argument fails on privileges (ids come from
 *		evstream._next_id, which needs neither).
 *	  - COPY listing created_at but not id is refused: a producer cannot
 *		choose append times (COPY routes rows by created_at before any
 *		default could replace it).
 *	  - DROP DATABASE, ALTER DATABASE RENAME / SET TABLESPACE, and CREATE
 *		DATABASE copying a template need the database without other
 *		connections: once the caller is known to be allowed to run the
 *		command, the database's worker is stopped and kept away until the
 *		command ends (worker.c).  These act whatever database the command is
 *		run from; everything else acts only where the extension exists
 *		(EvsExtensionPresent), so elsewhere the hooks change nothing.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/guards.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "utils/fmgrprotos.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "nodes/nodeFuncs.h"
#include "utils/fmgroids.h"
#include "utils/syscache.h"
#include "commands/tablecmds.h"
#include "catalog/partition.h"
#include "catalog/pg_inherits.h"
#include "commands/sequence.h"
#include "commands/defrem.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "optimizer/optimizer.h"
#include "optimizer/planner.h"
#include "parser/parsetree.h"
#include "rewrite/rewriteHandler.h"
#include "storage/lmgr.h"
#include "tcop/utility.h"
#include "executor/spi.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "evstream.h"

Oid			evs_copy_restore = InvalidOid;
int64		evs_copy_max_id = 0;
int64		evs_copy_min_id = 0;

static planner_hook_type prev_planner_hook = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;


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
		Oid			topic = EvsTopicOf(rte->relid);
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
		Oid			topic = EvsTopicOf(rte->relid);

		if (OidIsValid(topic))
			EvsAppendOnlyError(get_rel_name(topic),
							   query->commandType == CMD_UPDATE ? "update" :
							   query->commandType == CMD_DELETE ? "delete" : "merge into",
							   NULL);
	}
}

/*
 * Does a setval() only move the sequence forward (constants that leave no
 * id reused: pg_restore's "SEQUENCE SET" after restoring the events)?
 */
static bool
evs_setval_forward(Oid seq, List *args)
{
	Const	   *val = NULL;
	Const	   *called = NULL;
	int64		last;

	/* literals reach us wrapped in casts: fold them */
	if (list_length(args) >= 2)
		val = (Const *) eval_const_expressions(NULL, copyObject(lsecond(args)));
	if (list_length(args) >= 3)
		called = (Const *) eval_const_expressions(NULL, copyObject(lthird(args)));

	if (val == NULL || !IsA(val, Const) || val->constisnull)
		return false;
	if (called != NULL && (!IsA(called, Const) || called->constisnull))
		return false;
	last = DatumGetInt64(val->constvalue);
	if (called != NULL && !DatumGetBool(called->constvalue))
		last--;
	return last >= EvsSequenceLastValue(seq);
}

/* setval() on a topic's id sequence, with the sequence as a constant */
static bool
evs_setval_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, FuncExpr))
	{
		FuncExpr   *f = (FuncExpr *) node;

		if ((f->funcid == F_SETVAL_REGCLASS_INT8 || f->funcid == F_SETVAL_REGCLASS_INT8_BOOL) &&
			list_length(f->args) >= 1 && IsA(linitial(f->args), Const) &&
			!((Const *) linitial(f->args))->constisnull)
		{
			Oid			seq = DatumGetObjectId(((Const *) linitial(f->args))->constvalue);
			Oid			topic;

			if (EvsIsTopicSequence(seq, &topic) && !evs_setval_forward(seq, f->args))
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot set the id sequence of topic \"%s\" back", get_rel_name(topic)),
						 errdetail("Topic ids are never reused or skipped by hand; consumers rely on it."),
						 errhint("Ids are assigned by evstream on insert.")));
		}
	}
	if (IsA(node, Query))
		return query_tree_walker((Query *) node, evs_setval_walker, context, 0);
	return expression_tree_walker(node, evs_setval_walker, context);
}

static PlannedStmt *
evs_planner(Query *parse, const char *query_string, int cursorOptions,
			ParamListInfo boundParams)
{
	if (EvsExtensionPresent())
	{
		evs_guard_query(parse);
		(void) query_tree_walker(parse, evs_setval_walker, NULL, 0);
	}
	if (prev_planner_hook)
		return prev_planner_hook(parse, query_string, cursorOptions, boundParams);
	return standard_planner(parse, query_string, cursorOptions, boundParams);
}

/* Does a COPY column list name the column (or list nothing)? */
static bool
evs_copy_lists(CopyStmt *stmt, const char *column)
{
	ListCell   *lc;

	if (stmt->attlist == NIL)
		return true;
	foreach(lc, stmt->attlist)
		if (strcmp(strVal(lfirst(lc)), column) == 0)
			return true;
	return false;
}

/* Refuse a change to the shape of a topic */
static void
evs_refuse_shape(Oid relid, const char *what)
{
	Oid			topic = EvsTopicOf(relid);

	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("cannot %s of topic \"%s\"", what, get_rel_name(topic)),
			 errdetail("A topic has the fixed columns id, key, payload and created_at, with evstream's defaults."),
			 errhint("Put more fields in the payload, or create a new topic.")));
}

/*
 * Refuse removing a topic's default partition (DETACH or DROP), which is
 * where a row lands whose partition maintenance has not made yet; only
 * evstream's own upkeep replaces it (_rehome_default).
 */
static void
evs_refuse_default_removal(Oid topic, Oid part, const char *what)
{
	if (evs_in_topic_upkeep || !OidIsValid(part) ||
		get_default_partition_oid(topic) != part)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("cannot %s the default partition \"%s\" of topic \"%s\"",
					what, get_rel_name(part), get_rel_name(topic)),
			 errdetail("Events whose partition does not exist yet land there, so that an insert never fails while maintenance is behind."),
			 errhint("Retention drops old partitions; drop_topic() drops the topic with all of them.")));
}

/* Is this ALTER TABLE subcommand one that changes columns? */
static bool
evs_column_change(AlterTableType t)
{
	switch (t)
	{
		case AT_AddColumn:
		case AT_AddColumnToView:
		case AT_ColumnDefault:
		case AT_CookedColumnDefault:
		case AT_AddIdentity:
		case AT_SetIdentity:
		case AT_DropIdentity:
		case AT_DropNotNull:
		case AT_SetNotNull:
		case AT_DropExpression:
		case AT_DropColumn:
		case AT_AlterColumnType:
		case AT_AlterColumnGenericOptions:
		case AT_AddInherit:
		case AT_DropInherit:
		case AT_AddOf:
		case AT_DropOf:
			return true;
		default:
			return false;
	}
}

/* Does a GRANT give UPDATE or USAGE (or ALL)? */
static bool
evs_grants_write(GrantStmt *gs)
{
	ListCell   *lc;

	if (!gs->is_grant)
		return false;
	if (gs->privileges == NIL)
		return true;
	foreach(lc, gs->privileges)
	{
		AccessPriv *ap = lfirst_node(AccessPriv, lc);

		if (ap->priv_name == NULL ||
			strcmp(ap->priv_name, "update") == 0 || strcmp(ap->priv_name, "usage") == 0)
			return true;
	}
	return false;
}

/* Refuse a grant that would let someone setval a topic's id sequence */
static void
evs_check_grant(GrantStmt *gs)
{
	ListCell   *lc;

	if (!evs_grants_write(gs) ||
		(gs->objtype != OBJECT_SEQUENCE && gs->objtype != OBJECT_TABLE))
		return;
	if (gs->targtype == ACL_TARGET_OBJECT)
	{
		foreach(lc, gs->objects)
		{
			Oid			seq = RangeVarGetRelid(lfirst_node(RangeVar, lc), NoLock, true);
			Oid			topic;

			if (OidIsValid(seq) && EvsIsTopicSequence(seq, &topic))
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot grant UPDATE or USAGE on the id sequence of topic \"%s\"",
								get_rel_name(topic)),
						 errdetail("Those privileges allow setval(), which would reuse or skip ids."),
						 errhint("Producers need only INSERT on the topic.")));
		}
	}
	else if (gs->targtype == ACL_TARGET_ALL_IN_SCHEMA && gs->objtype == OBJECT_SEQUENCE)
	{
		foreach(lc, gs->objects)
		{
			Oid			nsp = get_namespace_oid(strVal(lfirst(lc)), true);
			Relation	rel;
			SysScanDesc scan;
			HeapTuple	tup;

			if (!OidIsValid(nsp))
				continue;
			rel = table_open(EvsCatalogRelid(EVS_REL_TOPIC), AccessShareLock);
			scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
			while (HeapTupleIsValid(tup = systable_getnext(scan)))
			{
				bool		isnull;
				Oid			topic = DatumGetObjectId(heap_getattr(tup, 1, RelationGetDescr(rel), &isnull));

				if (get_rel_namespace(topic) == nsp)
					ereport(ERROR,
							(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
							 errmsg("cannot grant UPDATE or USAGE on all sequences in schema \"%s\": it holds the id sequence of topic \"%s\"",
									strVal(lfirst(lc)), get_rel_name(topic)),
							 errdetail("Those privileges allow setval(), which would reuse or skip ids."),
							 errhint("Grant on the other sequences by name.")));
			}
			systable_endscan(scan);
			table_close(rel, AccessShareLock);
		}
	}
}

/*
 * The aggregates of the topics in schema nsp, or of those owned by one of
 * roles, before a DROP SCHEMA or DROP OWNED drops the topics (see
 * EvsTopicDropAggregates).
 */
static void
evs_drop_topics_aggregates(Oid nsp, List *roles, bool cascade)
{
	ListCell   *lc;

	foreach(lc, EvsAllTopics())
	{
		Oid			topic = lfirst_oid(lc);
		Oid			owner = EvsRelOwnerIfAny(topic);

		/* (an earlier one's cascade may have dropped it) */
		if (!OidIsValid(owner))
			continue;
		if (OidIsValid(nsp) ? get_rel_namespace(topic) == nsp :
			list_member_oid(roles, owner))
			EvsTopicDropAggregates(topic, cascade, roles);
	}
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

			if (OidIsValid(relid) && OidIsValid(EvsTopicOf(relid)))
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot TRUNCATE topic \"%s\" with RESTART IDENTITY",
								get_rel_name(relid)),
						 errdetail("Topic ids are never reused."),
						 errhint("Use TRUNCATE without RESTART IDENTITY.")));
		}
	}
	else if (IsA(stmt, AlterSeqStmt))
	{
		Oid			seq = RangeVarGetRelid(((AlterSeqStmt *) stmt)->sequence, NoLock, true);
		Oid			topic;

		if (OidIsValid(seq) && EvsIsTopicSequence(seq, &topic))
			evs_refuse_shape(topic, "alter the id sequence");
	}
	else if (IsA(stmt, RenameStmt))
	{
		RenameStmt *rs = (RenameStmt *) stmt;
		Oid			relid;

		bool		relation_rename = rs->renameType == OBJECT_TABLE ||
			rs->renameType == OBJECT_INDEX || rs->renameType == OBJECT_VIEW ||
			rs->renameType == OBJECT_MATVIEW || rs->renameType == OBJECT_SEQUENCE ||
			rs->renameType == OBJECT_FOREIGN_TABLE;

		if ((rs->renameType != OBJECT_COLUMN && !relation_rename) || rs->relation == NULL)
			return;
		relid = RangeVarGetRelid(rs->relation, NoLock, true);
		if (!OidIsValid(relid))
			return;
		if (rs->renameType == OBJECT_COLUMN && OidIsValid(EvsTopicOf(relid)))
			evs_refuse_shape(relid, "rename the columns");
		/* ids come from <topic>_id_seq (README), whatever ALTER names it */
		{
			Oid			topic;

			if (relation_rename && EvsIsTopicSequence(relid, &topic))
				evs_refuse_shape(topic, "rename the id sequence");
		}

		/*
		 * A topic's new name must leave room for its partitions' names
		 * (ALTER INDEX ... RENAME renames a table too).
		 */
		if (relation_rename && EvsLookupTopic(relid)->topic == relid)
			EvsCheckTopicNameLength(rs->newname);
	}
	else if (IsA(stmt, DropStmt) && ((DropStmt *) stmt)->removeType == OBJECT_SEQUENCE)
	{
		ListCell   *lc;
		Oid			topic;

		/* a topic's ids come from its sequence: it goes with the topic */
		foreach(lc, ((DropStmt *) stmt)->objects)
		{
			Oid			seq = RangeVarGetRelid(makeRangeVarFromNameList(lfirst(lc)), NoLock, true);

			if (OidIsValid(seq) && EvsIsTopicSequence(seq, &topic))
				evs_refuse_shape(topic, "drop the id sequence");
		}
	}
	else if (IsA(stmt, DropStmt) && ((DropStmt *) stmt)->removeType == OBJECT_TABLE)
	{
		DropStmt   *ds = (DropStmt *) stmt;
		ListCell   *lc;

		/*
		 * A plain DROP TABLE of a topic is drop_topic: refused while
		 * aggregates read it or write to it, and with CASCADE it drops
		 * them (their views do not depend on the topic in pg_depend).  A
		 * role that may not drop the table (its owner or the schema's may)
		 * gets PostgreSQL's error.
		 */
		foreach(lc, ds->objects)
		{
			Oid			relid = RangeVarGetRelid(makeRangeVarFromNameList(lfirst(lc)), NoLock, true);

			if (OidIsValid(relid) && EvsLookupTopic(relid)->topic == relid &&
				(evs_class_ownercheck(relid, GetUserId()) ||
				 evs_namespace_ownercheck(get_rel_namespace(relid), GetUserId())))
				EvsTopicDropAggregates(relid, ds->behavior == DROP_CASCADE, NIL);
			else if (OidIsValid(relid) && OidIsValid(EvsTopicOf(relid)))
				evs_refuse_default_removal(EvsTopicOf(relid), relid, "drop");
		}
	}
	else if (IsA(stmt, DropStmt) && ((DropStmt *) stmt)->removeType == OBJECT_SCHEMA &&
			 ((DropStmt *) stmt)->behavior == DROP_CASCADE)
	{
		ListCell   *lc;

		/*
		 * DROP SCHEMA ... CASCADE drops its topics: their aggregates go
		 * with them, as with DROP TABLE ... CASCADE (an aggregate's view
		 * may be in another schema).  Without CASCADE a schema with a
		 * topic is refused by PostgreSQL; the schema's owner only (others
		 * get PostgreSQL's error).
		 */
		foreach(lc, ((DropStmt *) stmt)->objects)
		{
			Oid			nsp = get_namespace_oid(strVal(lfirst(lc)), true);

			if (OidIsValid(nsp) && evs_namespace_ownercheck(nsp, GetUserId()))
				evs_drop_topics_aggregates(nsp, NIL, true);
		}
	}
	else if (IsA(stmt, DropOwnedStmt))
	{
		DropOwnedStmt *dos = (DropOwnedStmt *) stmt;
		List	   *roles = NIL;
		ListCell   *lc;

		/*
		 * DROP OWNED BY drops the roles' topics: with CASCADE their
		 * aggregates go too; without, it is refused while another role's
		 * aggregate reads or writes one (the roles' own aggregates go with
		 * the DROP OWNED itself).  For roles whose objects the caller may
		 * drop (else PostgreSQL refuses the statement).
		 */
		foreach(lc, dos->roles)
		{
			Oid			role = get_rolespec_oid(lfirst(lc), true);

			if (!OidIsValid(role) || !has_privs_of_role(GetUserId(), role))
				return;
			roles = lappend_oid(roles, role);
		}
		/* (it may drop the extension itself: workers wait, extension.c) */
		(void) EvsLockExtensionExclusive();
		evs_drop_topics_aggregates(InvalidOid, roles, dos->behavior == DROP_CASCADE);

		/*
		 * The roles' transforms and consumer groups in this database go
		 * too: PostgreSQL knows nothing of them (no pg_shdepend entries),
		 * and left behind they would name a role that may be dropped next.
		 * (An older catalog, before ALTER EXTENSION UPDATE, has neither.)
		 */
		foreach(lc, EvsCatalogIsCurrentCached() ? roles : NIL)
		{
			EvsDropOwnedTransforms(lfirst_oid(lc));
			EvsDropOwnedGroups(lfirst_oid(lc));
		}
	}
	else if (IsA(stmt, ReassignOwnedStmt))
	{
		ReassignOwnedStmt *ros = (ReassignOwnedStmt *) stmt;
		Oid			newrole = get_rolespec_oid(ros->newrole, true);
		List	   *roles = NIL;
		ListCell   *lc;

		/*
		 * REASSIGN OWNED BY gives the roles' transforms and consumer groups
		 * in this database to the new owner, as PostgreSQL does their
		 * objects; only for a caller PostgreSQL lets do it (it checks
		 * again, and its refusal rolls this back).
		 */
		if (!OidIsValid(newrole) || !has_privs_of_role(GetUserId(), newrole) ||
			!EvsCatalogIsCurrentCached())
			return;
		foreach(lc, ros->roles)
		{
			Oid			role = get_rolespec_oid(lfirst(lc), true);

			if (!OidIsValid(role) || !has_privs_of_role(GetUserId(), role))
				return;
			roles = lappend_oid(roles, role);
		}
		foreach(lc, roles)
		{
			EvsReassignTransforms(lfirst_oid(lc), newrole);
			EvsReassignGroups(lfirst_oid(lc), newrole);
		}
	}
	else if (IsA(stmt, GrantStmt))
		evs_check_grant((GrantStmt *) stmt);
	else if (IsA(stmt, CreateForeignTableStmt))
	{
		ListCell   *lc;

		foreach(lc, ((CreateStmt *) stmt)->inhRelations)
		{
			Oid			parent = RangeVarGetRelid(lfirst_node(RangeVar, lc), NoLock, true);

			if (OidIsValid(parent) && EvsLookupTopic(parent)->topic == parent)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("partitions of topic \"%s\" must use the evstream access method",
								get_rel_name(parent)),
						 errdetail("A foreign table cannot keep events append-only.")));
		}
	}
	else if (IsA(stmt, AlterTableStmt))
	{
		AlterTableStmt *at = (AlterTableStmt *) stmt;
		ListCell   *lc;
		Oid			relid;

		relid = RangeVarGetRelid(at->relation, NoLock, true);
		if (!OidIsValid(relid))
			return;
		{
			Oid			topic;

			if (at->objtype == OBJECT_SEQUENCE && EvsIsTopicSequence(relid, &topic))
				evs_refuse_shape(topic, "alter the id sequence");
		}
		if (!OidIsValid(EvsTopicOf(relid)))
			return;
		foreach(lc, at->cmds)
		{
			AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);

			if (evs_column_change(cmd->subtype))
				evs_refuse_shape(relid, "change the columns");

			if (cmd->subtype == AT_SetAccessMethod &&
				(cmd->name == NULL || strcmp(cmd->name, "evstream") != 0))
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot change the access method of \"%s\": it belongs to topic \"%s\"",
								get_rel_name(relid), get_rel_name(EvsTopicOf(relid))),
						 errdetail("Topics are append-only; the evstream access method enforces it.")));
			if ((cmd->subtype == AT_DetachPartition ||
				 cmd->subtype == AT_DetachPartitionFinalize) &&
				EvsLookupTopic(relid)->topic == relid)
				evs_refuse_default_removal(relid,
										   RangeVarGetRelid(((PartitionCmd *) cmd->def)->name,
															NoLock, true),
										   "detach");
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
 * An id in [lo, hi] that topic holds twice, after a restore COPY: refused.
 * Read as the superuser (row security must not hide a row from the check;
 * a SELECT of a topic's id runs no user code: no rules, no foreign
 * partitions, int8's own operators).
 */
static void
evs_refuse_duplicate_ids(Oid topic, int64 lo, int64 hi)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		values[2] = {Int64GetDatum(lo), Int64GetDatum(hi)};
	EvsUserState su;
	bool		isnull;
	int64		dup;
	SPIPlanPtr	plan;

	CommandCounterIncrement();	/* the rows just copied */
	EvsBecomeSuperuser(&su);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = SPI_prepare(psprintf("SELECT t.id FROM %s t WHERE t.id OPERATOR(pg_catalog.>=) $1 "
								"AND t.id OPERATOR(pg_catalog.<=) $2 GROUP BY t.id "
								"HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1 LIMIT 1",
								EvsQualifiedName(topic)), 2, types);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed");

	/*
	 * With the latest snapshot, not the transaction's: under REPEATABLE
	 * READ that one was taken before the lock waited for the producers.
	 */
	if (SPI_execute_snapshot(plan, values, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not check the ids of topic \"%s\"", get_rel_name(topic));
	isnull = SPI_processed == 0;
	dup = isnull ? 0 : DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	EvsRestoreUser(&su);
	if (!isnull)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("COPY would give topic \"%s\" a second event with id " INT64_FORMAT,
						get_rel_name(topic), dup),
				 errdetail("A COPY that lists the id column is a restore: it keeps the ids it is given, and a topic's ids are unique."),
				 errhint("List only the key and payload columns to produce new events: COPY %s (key, payload) FROM ...",
						 get_rel_name(topic))));
}

/*
 * A COPY into a topic that lists the id column is a restore: only the
 * topic's owner may do it; its ids must be positive, as every id evstream
 * hands out, and it may not give an id the topic already has (checked
 * over the range of the ids copied once they are in: a dump's
 * partitions come one COPY each, and their id ranges may overlap a little,
 * so the check costs about the rows copied), and afterwards the topic's
 * sequence is moved past the highest id copied, so ids are never handed
 * out twice.
 */
static void
evs_copy_into_topic(Oid relid, Oid topic, CopyStmt *stmt, PlannedStmt *pstmt,
					const char *queryString, bool readOnlyTree,
					ProcessUtilityContext context, ParamListInfo params,
					QueryEnvironment *queryEnv, DestReceiver *dest,
					QueryCompletion *qc)
{
	Oid			save_restore = evs_copy_restore;
	volatile bool restore = evs_copy_lists(stmt, "id");

	if (!restore && evs_copy_lists(stmt, "created_at"))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot COPY the created_at column of topic \"%s\"",
						get_rel_name(topic)),
				 errdetail("created_at is the append time, assigned by evstream."),
				 errhint("List only the key and payload columns: COPY %s (key, payload) FROM ...",
						 stmt->relation->relname)));
	if (restore && !evs_class_ownercheck(topic, GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to COPY the id column of topic \"%s\"",
						get_rel_name(topic)),
				 errdetail("A COPY that lists the id column (or no column list) is a restore: it keeps the ids and times it is given. Only the topic's owner may restore."),
				 errhint("List only the key and payload columns: COPY %s (key, payload) FROM ...",
						 stmt->relation->relname)));

	/*
	 * Against a producer or another restore in progress, whose rows the
	 * duplicate check below could not see: every producer holds the id
	 * sequence in RowExclusiveLock from its first id to its end (nextval),
	 * and this conflicts with that and with itself, to our end.
	 */
	if (restore)
		LockRelationOid(EvsRequireTopic(topic, "COPY")->seqrelid, ShareRowExclusiveLock);
	evs_copy_restore = restore ? topic : InvalidOid;
	evs_copy_max_id = 0;
	evs_copy_min_id = 0;
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

		if (evs_copy_min_id > 0)
			evs_refuse_duplicate_ids(topic, evs_copy_min_id, evs_copy_max_id);
		if (evs_copy_max_id > EvsSequenceLastValue(t->seqrelid))
		{
			EvsUserState su;

			/* nobody holds UPDATE on the sequence; setval runs no user code */
			EvsBecomeSuperuser(&su);
			DirectFunctionCall2(setval_oid, ObjectIdGetDatum(t->seqrelid),
								Int64GetDatum(evs_copy_max_id));
			EvsRestoreUser(&su);
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
 * ALTER TABLE topic OWNER TO r: the topic whose owner the statement
 * changes (InvalidOid for any other statement).  PostgreSQL does not pass
 * a new owner on to partitions; the old owner would keep them, and with
 * them the power to truncate or drop the events of a topic she handed
 * over.
 */
static Oid
evs_owner_change_topic(Node *stmt)
{
	AlterTableStmt *at;
	ListCell   *lc;
	Oid			relid;

	if (!IsA(stmt, AlterTableStmt))
		return InvalidOid;
	at = (AlterTableStmt *) stmt;
	foreach(lc, at->cmds)
	{
		if (lfirst_node(AlterTableCmd, lc)->subtype != AT_ChangeOwner)
			continue;
		relid = RangeVarGetRelid(at->relation, NoLock, true);
		if (OidIsValid(relid) && EvsLookupTopic(relid)->topic == relid)
			return relid;
	}
	return InvalidOid;
}

/*
 * After ALTER TABLE topic OWNER TO: its partitions (with their indexes)
 * get the topic's new owner too, as the statement's own recursion would
 * give them (its permission checks were the topic's).
 */
static void
evs_partitions_follow_owner(Oid topic)
{
	Oid			owner = EvsRelOwner(topic);
	ListCell   *lc;

	foreach(lc, find_all_inheritors(topic, AccessExclusiveLock, NULL))
	{
		Oid			part = lfirst_oid(lc);

		if (part != topic && EvsRelOwner(part) != owner)
			ATExecChangeOwner(part, owner, true, AccessExclusiveLock);
	}
}

/*
 * DROP EXTENSION evstream without CASCADE fails while topics exist (they
 * depend on it): fail here, before PostgreSQL locks anything.  It would
 * lock the extension's members (the delta table, ...) before their
 * dependents (the topics), the reverse of a producer's order, and the drop
 * or a producer then sometimes died of a deadlock instead.  For the owner
 * (the caller checked): others get PostgreSQL's "must be owner".  The error is
 * PostgreSQL's; its detail names the topics (PostgreSQL's would also name
 * other dependents of the extension's members, such as a user's views).
 */
static void
evs_refuse_drop_with_topics(void)
{
	List	   *topics = EvsAllTopics();
	StringInfoData detail;
	ListCell   *lc;
	int			n = 0;

	if (topics == NIL)
		return;
	initStringInfo(&detail);
	foreach(lc, topics)
	{
		ObjectAddress topic;

		if (++n > 100)
		{
			appendStringInfo(&detail, "\nand %d other objects", list_length(topics) - 100);
			break;
		}
		ObjectAddressSet(topic, RelationRelationId, lfirst_oid(lc));
		appendStringInfo(&detail, "%s%s depends on extension evstream",
						 n > 1 ? "\n" : "", getObjectDescription(&topic, false));
	}
	ereport(ERROR,
			(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
			 errmsg("cannot drop extension evstream because other objects depend on it"),
			 errdetail_internal("%s", detail.data),
			 errhint("Use DROP ... CASCADE to drop the dependent objects too.")));
}

/*
 * DROP EXTENSION evstream: the extension's lock first, so the workers
 * wait instead of deadlocking with the drop (extension.c).  With CASCADE,
 * drop every topic first: topics depend on the extension (create_topic
 * records it), but a restored database does not have that dependency, and
 * its parents would stay behind.
 */
static void
evs_drop_extension(DropStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->objects)
	{
		Node	   *obj = lfirst(lc);

		/* (others than the owner: PostgreSQL refuses them) */
		if (IsA(obj, String) && strcmp(strVal(obj), "evstream") == 0 &&
			EvsLockExtensionExclusive())
		{
			if (stmt->behavior != DROP_CASCADE)
			{
				evs_refuse_drop_with_topics();
				continue;
			}
			/* (dropping one topic's aggregates may drop their output topics) */
			EvsSpiExec("DO $$DECLARE t pg_catalog.regclass; BEGIN "
					   "FOR t IN SELECT x.topic FROM evstream._topic x LOOP "
					   "IF EXISTS (SELECT FROM pg_catalog.pg_class c "
					   "WHERE c.oid OPERATOR(pg_catalog.=) t::pg_catalog.oid) THEN "
					   "EXECUTE pg_catalog.format('DROP TABLE IF EXISTS %s CASCADE', t); "
					   "END IF; END LOOP; END$$", 0, NULL, NULL, 0);
			CommandCounterIncrement();
			/* group ids start again at 1 should it come back */
			EvsForgetDatabaseAttempts();
		}
	}
}

/*
 * The database a DROP/ALTER/CREATE DATABASE needs without connections,
 * if the caller may run the command on it (else PostgreSQL refuses it,
 * and nothing is stopped); InvalidOid when there is none.
 */
static Oid
evs_database_needed(Node *stmt)
{
	const char *dbname = NULL;
	bool		template = false;
	Oid			dboid;
	HeapTuple	tup;
	bool		istemplate;

	if (IsA(stmt, DropdbStmt))
		dbname = ((DropdbStmt *) stmt)->dbname;
	else if (IsA(stmt, RenameStmt) && ((RenameStmt *) stmt)->renameType == OBJECT_DATABASE)
		dbname = ((RenameStmt *) stmt)->subname;
	else if (IsA(stmt, AlterDatabaseStmt))
	{
		ListCell   *lc;

		foreach(lc, ((AlterDatabaseStmt *) stmt)->options)
			if (strcmp(lfirst_node(DefElem, lc)->defname, "tablespace") == 0)
				dbname = ((AlterDatabaseStmt *) stmt)->dbname;
	}
	else if (IsA(stmt, CreatedbStmt))
	{
		ListCell   *lc;

		foreach(lc, ((CreatedbStmt *) stmt)->options)
		{
			DefElem    *opt = lfirst_node(DefElem, lc);

			if (strcmp(opt->defname, "template") == 0 && opt->arg != NULL)
			{
				dbname = defGetString(opt);
				template = true;
			}
		}
	}
	if (dbname == NULL)
		return InvalidOid;
	dboid = get_database_oid(dbname, true);
	if (!OidIsValid(dboid) || EvsDatabaseEntry(dboid, false) == NULL)
		return InvalidOid;
	if (!template)
		return evs_database_ownercheck(dboid, GetUserId()) ? dboid : InvalidOid;

	/* CREATE DATABASE ... TEMPLATE: createdb, and a template or the owner */
	if (!have_createdb_privilege())
		return InvalidOid;
	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(dboid));
	if (!HeapTupleIsValid(tup))
		return InvalidOid;
	istemplate = ((Form_pg_database) GETSTRUCT(tup))->datistemplate;
	ReleaseSysCache(tup);
	return (istemplate || evs_database_ownercheck(dboid, GetUserId())) ? dboid : InvalidOid;
}

/* Run a database command with the database's worker kept away */
static void
evs_utility_without_worker(Oid dboid, PlannedStmt *pstmt, const char *queryString,
						   bool readOnlyTree, ProcessUtilityContext context,
						   ParamListInfo params, QueryEnvironment *queryEnv,
						   DestReceiver *dest, QueryCompletion *qc)
{
	EvsStopDatabaseWorker(dboid);
	PG_TRY();
	{
		evs_next_utility(pstmt, queryString, readOnlyTree, context,
						 params, queryEnv, dest, qc);
	}
	PG_FINALLY();
	{
		EvsAllowDatabaseWorker(dboid);
	}
	PG_END_TRY();
}

static void
evs_process_utility(PlannedStmt *pstmt, const char *queryString,
					bool readOnlyTree, ProcessUtilityContext context,
					ParamListInfo params, QueryEnvironment *queryEnv,
					DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;
	Oid			dboid = InvalidOid;
	Oid			owner_topic = InvalidOid;

	if (evs_shared != NULL && IsTransactionState())
		dboid = evs_database_needed(stmt);
	if (OidIsValid(dboid))
	{
		evs_utility_without_worker(dboid, pstmt, queryString, readOnlyTree, context,
								   params, queryEnv, dest, qc);
		return;
	}

	if (EvsExtensionPresent())
	{
		if (IsA(stmt, CopyStmt) && ((CopyStmt *) stmt)->is_from &&
			((CopyStmt *) stmt)->relation != NULL)
		{
			Oid			relid = RangeVarGetRelid(((CopyStmt *) stmt)->relation, NoLock, true);
			Oid			topic = OidIsValid(relid) ? EvsTopicOf(relid) : InvalidOid;

			if (OidIsValid(topic))
			{
				evs_copy_into_topic(relid, topic, (CopyStmt *) stmt, pstmt, queryString,
									readOnlyTree, context, params, queryEnv, dest, qc);
				return;
			}
		}
		else if (IsA(stmt, DropStmt) &&
				 ((DropStmt *) stmt)->removeType == OBJECT_EXTENSION)
			evs_drop_extension((DropStmt *) stmt);
		else if (IsA(stmt, AlterExtensionStmt) &&
				 strcmp(((AlterExtensionStmt *) stmt)->extname, "evstream") == 0)
			(void) EvsLockExtensionExclusive(); /* workers wait: extension.c */
		else if (IsA(stmt, CreateStmt))
		{
			if (evs_fix_partition_create((CreateStmt *) stmt, readOnlyTree, &pstmt))
				readOnlyTree = false;
		}
		else
		{
			evs_check_utility(stmt);
			owner_topic = evs_owner_change_topic(stmt);
		}
	}

	evs_next_utility(pstmt, queryString, readOnlyTree, context,
					 params, queryEnv, dest, qc);

	if (OidIsValid(owner_topic))
	{
		CommandCounterIncrement();
		evs_partitions_follow_owner(owner_topic);
	}
}

void
EvsGuardsInit(void)
{
	prev_planner_hook = planner_hook;
	planner_hook = evs_planner;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = evs_process_utility;
}
