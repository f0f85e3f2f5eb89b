/*-------------------------------------------------------------------------
 *
 * tableam.c
 *	  The "evstream" table access method: heap storage and heap WAL (so
 *	  crash recovery, VACUUM, physical and logical replication work as for
 *	  any table), with UPDATE and DELETE refused — events are immutable.
 *	  Because the refusal lives in the access method, it holds with triggers
 *	  disabled and under session_replication_role = replica.
 *
 *	  Rows applied by logical replication keep the publisher's ids; the
 *	  insert paths report them (offsets.c) so stable_id covers them.
 *
 *	  The insert paths also feed the continuous aggregates (aggregates.c):
 *	  every row that reaches storage, by INSERT, COPY or replication, is
 *	  counted in the backend's per-statement deltas.
 *
 *	  Heap's index build callbacks call heap_getnext(), which insists on
 *	  rd_tableam being heap's own routine pointer; the wrappers below present
 *	  heap's routine for the duration of the call.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/tableam.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/tableam.h"
#include "catalog/pg_am_d.h"
#include "fmgr.h"
#include "replication/logicalworker.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "evstream.h"

static TableAmRoutine evs_methods;
static bool evs_methods_ready = false;

/* Refuse a row change, naming the topic */
static void
evs_refuse(Relation rel, const char *what, bool changing_part)
{
	const char *name = RelationGetRelationName(rel);

	if (rel->rd_rel->relispartition)
	{
		EvsTopic   *t = EvsLookupTopic(RelationGetRelid(rel));

		if (t && OidIsValid(t->topic))
			name = get_rel_name(t->topic);
	}
	EvsAppendOnlyError(name, what,
					   changing_part ?
					   psprintf("Moving an event to another partition would delete it from \"%s\".",
								RelationGetRelationName(rel)) : NULL);
}

static TM_Result
evs_tuple_update(Relation rel, ItemPointer otid, TupleTableSlot *slot,
				 CommandId cid, Snapshot snapshot, Snapshot crosscheck,
				 bool wait, TM_FailureData *tmfd, LockTupleMode *lockmode,
				 evs_update_indexes_t *update_indexes)
{
	evs_refuse(rel, "update", false);
	return TM_Invisible;		/* keep compiler quiet */
}

static TM_Result
evs_tuple_delete(Relation rel, ItemPointer tid, CommandId cid,
				 Snapshot snapshot, Snapshot crosscheck, bool wait,
				 TM_FailureData *tmfd, bool changingPart)
{
	evs_refuse(rel, "delete", changingPart);
	return TM_Invisible;
}

/* INSERT: store as heap does, then count in the aggregates */
static void
evs_tuple_insert(Relation rel, TupleTableSlot *slot, CommandId cid,
				 int options, struct BulkInsertStateData *bistate)
{
	GetHeapamTableAmRoutine()->tuple_insert(rel, slot, cid, options, bistate);
	if (IsLogicalWorker())
		EvsNoteSuppliedIds(rel, &slot, 1);
	EvsAccumulate(rel, &slot, 1);
}

/* COPY and other multi-row inserts */
static void
evs_multi_insert(Relation rel, TupleTableSlot **slots, int nslots,
				 CommandId cid, int options, struct BulkInsertStateData *bistate)
{
	GetHeapamTableAmRoutine()->multi_insert(rel, slots, nslots, cid, options, bistate);
	if (IsLogicalWorker())
		EvsNoteSuppliedIds(rel, slots, nslots);
	EvsAccumulate(rel, slots, nslots);
}

/* INSERT ... ON CONFLICT: count only rows that really landed */
static void
evs_tuple_complete_speculative(Relation rel, TupleTableSlot *slot,
							   uint32 specToken, bool succeeded)
{
	GetHeapamTableAmRoutine()->tuple_complete_speculative(rel, slot, specToken, succeeded);
	if (succeeded)
		EvsAccumulate(rel, &slot, 1);
}

/* Index builds: present heap's routine pointer to heap_getnext() */
static double
evs_index_build_range_scan(Relation table_rel, Relation index_rel,
						   struct IndexInfo *index_info, bool allow_sync,
						   bool anyvisible, bool progress,
						   BlockNumber start_blockno, BlockNumber numblocks,
						   IndexBuildCallback callback, void *callback_state,
						   TableScanDesc scan)
{
	const TableAmRoutine *saved = table_rel->rd_tableam;
	double		result = 0;

	table_rel->rd_tableam = GetHeapamTableAmRoutine();
	PG_TRY();
	{
		result = GetHeapamTableAmRoutine()->index_build_range_scan(table_rel, index_rel, index_info,
																   allow_sync, anyvisible, progress,
																   start_blockno, numblocks,
																   callback, callback_state, scan);
	}
	PG_FINALLY();
	{
		table_rel->rd_tableam = saved;
	}
	PG_END_TRY();
	return result;
}

static void
evs_index_validate_scan(Relation table_rel, Relation index_rel,
						struct IndexInfo *index_info, Snapshot snapshot,
						struct ValidateIndexState *state)
{
	const TableAmRoutine *saved = table_rel->rd_tableam;

	table_rel->rd_tableam = GetHeapamTableAmRoutine();
	PG_TRY();
	{
		GetHeapamTableAmRoutine()->index_validate_scan(table_rel, index_rel, index_info,
													   snapshot, state);
	}
	PG_FINALLY();
	{
		table_rel->rd_tableam = saved;
	}
	PG_END_TRY();
}

/* TOAST tables of topic partitions are plain heap */
static Oid
evs_relation_toast_am(Relation rel)
{
	return HEAP_TABLE_AM_OID;
}

/* The routine: heap's, with the overrides above */
const TableAmRoutine *
EvsTableAm(void)
{
	if (!evs_methods_ready)
	{
		evs_methods = *GetHeapamTableAmRoutine();
		evs_methods.tuple_update = evs_tuple_update;
		evs_methods.tuple_delete = evs_tuple_delete;
		evs_methods.tuple_insert = evs_tuple_insert;
		evs_methods.multi_insert = evs_multi_insert;
		evs_methods.tuple_complete_speculative = evs_tuple_complete_speculative;
		evs_methods.index_build_range_scan = evs_index_build_range_scan;
		evs_methods.index_validate_scan = evs_index_validate_scan;
		evs_methods.relation_toast_am = evs_relation_toast_am;
		evs_methods_ready = true;
	}
	return &evs_methods;
}

/* Is this relation stored with the evstream access method? */
bool
EvsIsTopicPartition(Relation rel)
{
	return rel->rd_tableam == &evs_methods && evs_methods_ready;
}

PG_FUNCTION_INFO_V1(evstream_am_handler);

Datum
evstream_am_handler(PG_FUNCTION_ARGS)
{
	PG_RETURN_POINTER(EvsTableAm());
}
