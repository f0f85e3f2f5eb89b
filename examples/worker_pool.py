#!/usr/bin/env python3
"""examples/worker_pool.py -- an at-least-once worker pool for one evstream
consumer group, with psycopg 3 (Debian: python3-psycopg; pip: psycopg).

    python3 examples/worker_pool.py TOPIC GROUP [--workers M] [--batch N]
        [--wait '1 s'] [--lease '10 s'] [--table T] [--work-ms MS]

For work done OUTSIDE the database (calling an API, sending mail, writing
files), where the position cannot commit together with the work.  Each of
the M threads is a group *member*, named host:pid:n, with its own
connection in autocommit mode, and loops:

    SELECT * FROM evstream.poll(TOPIC, GROUP, N, wait => '1 s',
                                member => m, lease => '10 s');
        -- claims one shard of the group for m for 10 s and returns its
        -- next events (blocking up to 1 s until there are some)
    ... process the events ...
    SELECT evstream.commit(TOPIC, GROUP, last_id, member => m);
        -- moves that shard's position and ends the lease

A worker that dies or stalls (crash, GC pause, lost network) after poll and
before commit loses its lease when it expires; another member then gets the
same events again: every event is processed at least once, possibly twice,
so the processing should be idempotent.  The stalled worker's late commit
fails with SQLSTATE 55000 ("lease lost") and moves nothing: the worker
drops its batch and polls again, so it never overwrites the progress of the
member that took over.  The events of one key come in id order within a
batch.  Run as many pools on as many hosts as you like: members share the
group's shards.

On a lost connection a worker reconnects with exponential backoff (its
lease, if still live, is kept: the member name, not the connection, holds
it).  SIGTERM or SIGINT: each worker finishes and commits its batch,
releases its leases (evstream.release) so other members take its shards at
once instead of after the lease, and the pool exits 0.

The connection comes from the libpq environment (PGHOST, PGPORT,
PGDATABASE, PGUSER, PGPASSWORD, ...).  The processing in this example: with
--table T, each batch is recorded in table T as (id, key, member, batch),
in its own transaction -- not the commit's; without it, events are printed
as JSON lines.  --work-ms adds that many milliseconds of pretend work per
batch.  Replace process() with your own.

Log lines go to stderr.  Exit status: 0 after a signal, 1 on a fatal error
(unknown topic, missing privilege, ...), 2 on bad usage.
"""

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time

try:
    import psycopg
    from psycopg import errors, sql
except ImportError:  # pragma: no cover
    sys.exit("worker_pool.py needs psycopg 3 (Debian: apt-get install python3-psycopg)")

_out = threading.Lock()


def log(msg):
    with _out:
        print(f"worker_pool: {msg}", file=sys.stderr, flush=True)


def process(conn, events, member, batch, args):
    """The work, done outside the consumer's position: may run twice."""
    if args.work_ms:
        time.sleep(args.work_ms / 1000)
    if args.table:
        # its own transaction (autocommit), separate from the commit below
        conn.execute(
            sql.SQL("INSERT INTO {} (id, key, member, batch) "
                    "SELECT id, key, %s, %s FROM unnest(%s::bigint[], %s::text[]) AS e (id, key)")
            .format(sql.Identifier(args.table)),
            (member, batch, [e[0] for e in events], [e[1] for e in events]))
    else:
        with _out:
            for e in events:
                print(json.dumps({"member": member, "id": e[0], "key": e[1], "payload": e[2]}), flush=True)


def short(err):
    """The first line of an error message (no CONTEXT or HINT lines)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def fatal(err):
    """Errors that retrying will not cure: bad names, privileges, settings."""
    state = getattr(err, "sqlstate", None) or ""
    return state[:2] in ("42", "22", "0A")


def worker(n, args, stop, failures):
    member = f"{socket.gethostname()}:{os.getpid()}:{n}"
    conn = None
    backoff = 0.1
    batch = 0
    while not stop.is_set():
        try:
            if conn is None:
                conn = psycopg.connect(autocommit=True, application_name=f"worker_pool {member}"[:63])
                log(f"{member}: connected (backend pid {conn.info.backend_pid})")
            events = conn.execute(
                "SELECT id, key, payload FROM evstream.poll(%s::regclass, %s, %s::int, wait => %s::interval, "
                "member => %s, lease => %s::interval)",
                (args.topic, args.group, args.batch, args.wait, member, args.lease)).fetchall()
            if not events:
                continue
            batch += 1
            process(conn, events, member, batch, args)
            try:
                conn.execute("SELECT evstream.commit(%s::regclass, %s, %s::bigint, member => %s)",
                             (args.topic, args.group, events[-1][0], member))
            except errors.ObjectNotInPrerequisiteState as e:      # SQLSTATE 55000
                # someone else took the shard while we were busy: they have
                # (or will) process these events; drop ours, poll again
                log(f"{member}: lease lost, batch {batch} of {len(events)} events dropped: {short(e)}")
            backoff = 0.1
        except psycopg.Error as e:
            if fatal(e):
                log(f"{member}: fatal: {short(e)} (SQLSTATE {e.sqlstate})")
                failures.append(member)
                stop.set()
                break
            # a lost connection (or any transient error): reconnect and go
            # on; an unfinished batch comes back, to us or to another member
            log(f"{member}: {short(e)}; reconnecting in {int(backoff * 1000)} ms")
            if conn is not None:
                conn.close()
                conn = None
            stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
    if conn is not None and not conn.closed:
        try:
            conn.execute("SELECT evstream.release(%s::regclass, %s, %s)", (args.topic, args.group, member))
            log(f"{member}: released")
        except psycopg.Error as e:
            log(f"{member}: release failed: {short(e)}")
        conn.close()
    log(f"{member}: stopped after {batch} batches")


def main():
    p = argparse.ArgumentParser(description="at-least-once evstream worker pool (psycopg 3)")
    p.add_argument("topic")
    p.add_argument("group")
    p.add_argument("--workers", type=int, default=4, help="threads, one member each (4)")
    p.add_argument("--batch", type=int, default=100, help="max events per poll (100)")
    p.add_argument("--wait", default="1 s", help="long-poll wait ('1 s')")
    p.add_argument("--lease", default="10 s", help="lease on a shard per poll ('10 s')")
    p.add_argument("--table", help="record each batch in this table (id, key, member, batch)")
    p.add_argument("--work-ms", type=int, default=0, help="pretend work per batch, in ms")
    args = p.parse_args()

    stop = threading.Event()
    failures = []

    def on_signal(signum, frame):
        log(f"{signal.Signals(signum).name}: finishing the current batches")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    log(f"pid {os.getpid()}: {args.workers} workers polling {args.topic} as group {args.group}")
    threads = [threading.Thread(target=worker, args=(n, args, stop, failures), name=f"w{n}")
               for n in range(args.workers)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.2)     # short joins: the main thread keeps handling signals
    log("exit")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
