/*-------------------------------------------------------------------------
 *
 * xact.c
 *	  The one transaction and subtransaction callback of evstream, and the
 *	  fixed order in which it calls the modules:
 *
 *	  PRE_COMMIT	1. pending aggregate counts are written as delta rows
 *					   (aggregates.c): still inside the transaction, so they
 *					   commit with the events they count;
 *					2. sequences are moved past ids supplied by logical
 *					   replication (offsets.c).
 *	  PRE_PREPARE	a transaction that produced is refused (offsets.c).
 *	  COMMIT/ABORT	3. the backend's stable-offset slot is cleared, then the
 *					   topics whose stable id may have moved are marked for
 *					   push and the worker woken (offsets.c) — clear before
 *					   mark, or a push could miss our events;
 *					4. per-transaction count state and cache pins are
 *					   forgotten.
 *	  subxact end	pending counts of the level are dropped (abort) or
 *					handed to the parent (commit); at abort, a stable-offset
 *					entry still pending (its first nextval failed) is
 *					withdrawn (offsets.c).
 *
 *	  Every step is a no-op in a transaction that did nothing with evstream,
 *	  so the callbacks are inert in databases without the extension.
 *
 * Copyright (c) 2026, The evstream authors
 *
 * IDENTIFICATION
 *	  src/xact.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "utils/resowner.h"

#include "evstream.h"

static void
evs_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
			EvsCountsPreCommit();
			EvsOffsetsPreCommit();
			break;
		case XACT_EVENT_PRE_PREPARE:
			EvsOffsetsPrePrepare();
			EvsCountsPreCommit();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			EvsOffsetsAtEnd(true, false);
			EvsCountsAtEnd();
			EvsCatalogAtEnd();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			EvsOffsetsAtEnd(false, true);
			EvsCountsAtEnd();
			EvsCatalogAtEnd();
			break;
		case XACT_EVENT_PREPARE:
			EvsOffsetsAtEnd(false, false);
			EvsCountsAtEnd();
			EvsCatalogAtEnd();
			break;
	}
}

static void
evs_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					 SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		EvsOffsetsAtSubXactAbort();
		EvsCountsAtSubXactEnd(false);
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
		EvsCountsAtSubXactEnd(true);
}

/*
 * 5. Once a top-level transaction's locks are released: wake the long
 * polls of topics whose shard positions or leases it changed (groups.c;
 * at COMMIT/ABORT above the shard locks are still held, and a woken poll
 * could not claim them).
 */
static void
evs_resource_release(ResourceReleasePhase phase, bool isCommit, bool isTopLevel, void *arg)
{
	/*
	 * After the LOCKS phase has run over the whole resource owner tree (in
	 * it, child owners' callbacks run before the top owner releases the
	 * locks).
	 */
	if (phase == RESOURCE_RELEASE_AFTER_LOCKS && isTopLevel)
		EvsGroupsAfterLocks();
}

void
EvsXactInit(void)
{
	RegisterXactCallback(evs_xact_callback, NULL);
	RegisterSubXactCallback(evs_subxact_callback, NULL);
	RegisterResourceReleaseCallback(evs_resource_release, NULL);
}
