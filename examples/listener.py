#!/usr/bin/env python3
"""evstream listener: push-driven consumer written with psycopg2.

LISTENs on the channels of one or more evstream topics or aggregates and,
on every notification, prints it; for a topic it then reads the new events
with evstream.consume(topic, group, batch) -- one transaction per batch,
until the topic is drained -- and prints them.

    python3 examples/listener.py [--dsn DSN] [--group G] [--batch N]
                                 [--max-notifications N] [--timeout S]
                                 [--json] [--no-catch-up]
                                 NAME [NAME ...]

NAME is a topic or aggregate, like any relation name (`words`,
`app.clicks`, `'"Mixed Case"'`); its channel is its relation name without
the schema, as evstream sends it.  The connection comes from --dsn or, when
that is absent, from the libpq environment (PGHOST, PGPORT, PGDATABASE,
PGUSER, ...).

Right after LISTEN, and before waiting for the first notification, the
listener drains every topic once ("catch-up"), so events committed before it
started are not left waiting for the next push (--no-catch-up turns that
off).  Notifications are coalesced by evstream: one can stand for many
events, and a consume may find events a later notification will announce.

Output: one line per item, human-readable, or with --json one JSON object
per line:

  {"type": "listening", "channels": [...], "group": G, "pid": BACKEND_PID}
  {"type": "notification", "channel": C, "kind": "topic"|"aggregate",
   "pid": SENDER_PID, "payload": <the payload, parsed when it is JSON>}
  {"type": "event", "topic": T, "group": G, "id": ..., "key": ...,
   "payload": ..., "created_at": "<ISO 8601>"}
  {"type": "consumed", "topic": T, "group": G, "events": N,
   "last_id": ID-or-null, "reason": "catch-up"|"notification"}
  {"type": "exit", "reason": "max-notifications"|"timeout"|"signal",
   "notifications": N, "events": N}

Exit status: 0 when stopped by --max-notifications, --timeout or
SIGINT/SIGTERM; 3 when --timeout expired before --max-notifications
notifications arrived (only when both are given); 2 for bad usage; 1 for
errors (connection, unknown topic, ...).
"""

import argparse
import json
import select
import signal
import sys
import time

try:
    import psycopg2
    import psycopg2.extensions
    from psycopg2 import sql
except ImportError:  # pragma: no cover
    sys.exit("listener.py needs psycopg2 (Debian: apt-get install python3-psycopg2)")


class Stop(Exception):
    """Raised by the signal handler to leave the wait loop."""


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="LISTEN to evstream topics/aggregates and consume pushed events.")
    p.add_argument("names", nargs="+", metavar="NAME",
                   help="topic or aggregate to listen to (relation name, optionally schema-qualified)")
    p.add_argument("--dsn", default="",
                   help="libpq connection string (default: the PG* environment variables)")
    p.add_argument("--group", default="listener",
                   help="consumer group used to consume topics (default: listener)")
    p.add_argument("--batch", type=int, default=1000,
                   help="max_events per evstream.consume call (default: 1000)")
    p.add_argument("--max-notifications", type=int, default=None, metavar="N",
                   help="exit after N notifications have been received and handled")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="exit after S seconds")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per line")
    p.add_argument("--no-catch-up", dest="catch_up", action="store_false",
                   help="do not drain the topics once at start-up")
    a = p.parse_args(argv)
    if a.batch <= 0:
        p.error("--batch must be positive")
    if a.max_notifications is not None and a.max_notifications <= 0:
        p.error("--max-notifications must be positive")
    if a.timeout is not None and a.timeout <= 0:
        p.error("--timeout must be positive")
    return a


class Listener:
    def __init__(self, args):
        self.args = args
        self.notifications = 0
        self.events = 0
        self.channels = {}          # channel -> dict(kind, oid, name)
        self.conn = psycopg2.connect(args.dsn)
        # LISTEN takes effect at commit; consume runs in explicit
        # transactions (BEGIN ... COMMIT) on the same connection.
        self.conn.autocommit = True

    # ------------------------------------------------------------ output
    def emit(self, obj, text):
        if self.args.json:
            print(json.dumps(obj, default=str, sort_keys=False), flush=True)
        else:
            print(text, flush=True)

    # ------------------------------------------------------------ set-up
    def resolve(self):
        cur = self.conn.cursor()
        for name in self.args.names:
            cur.execute("SELECT pg_catalog.to_regclass(%s)::oid", (name,))
            oid = cur.fetchone()[0]
            if oid is None:
                raise LookupError('relation "%s" does not exist' % name)
            cur.execute("""
                SELECT c.relname, c.oid::regclass::text,
                       EXISTS (SELECT 1 FROM evstream.topics t WHERE t.topic = c.oid::regclass),
                       EXISTS (SELECT 1 FROM evstream.aggregates a WHERE a.name = c.oid::regclass)
                  FROM pg_catalog.pg_class c WHERE c.oid = %s""", (oid,))
            relname, display, is_topic, is_agg = cur.fetchone()
            if not (is_topic or is_agg):
                raise LookupError('"%s" is not an evstream topic or aggregate' % name)
            kind = "topic" if is_topic else "aggregate"
            if relname in self.channels and self.channels[relname]["oid"] != oid:
                raise LookupError('"%s" and "%s" share the channel "%s"'
                                  % (self.channels[relname]["name"], display, relname))
            self.channels[relname] = {"kind": kind, "oid": oid, "name": display}
        for ch in self.channels:
            cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(ch)))
        cur.execute("SELECT pg_catalog.pg_backend_pid()")
        pid = cur.fetchone()[0]
        cur.close()
        chans = list(self.channels)
        self.emit({"type": "listening", "channels": chans, "group": self.args.group, "pid": pid},
                  "listening on %s as consumer group %r (backend pid %d)"
                  % (", ".join(chans), self.args.group, pid))

    # ------------------------------------------------------------ consuming
    def drain(self, ch, reason):
        """Consume everything up to the topic's stable offset, batch by batch."""
        info = self.channels[ch]
        total, last_id = 0, None
        cur = self.conn.cursor()
        while True:
            # consume must run in READ COMMITTED; say so explicitly in case
            # default_transaction_isolation says otherwise.
            cur.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            try:
                cur.execute("SELECT id, key, payload, created_at "
                            "FROM evstream.consume(%s::oid::regclass, %s, %s)",
                            (info["oid"], self.args.group, self.args.batch))
                rows = cur.fetchall()
                cur.execute("COMMIT")
            except BaseException:
                if not self.conn.closed:
                    try:
                        cur.execute("ROLLBACK")
                    except psycopg2.Error:
                        pass
                raise
            for (eid, key, payload, created_at) in rows:
                self.emit({"type": "event", "topic": info["name"], "group": self.args.group,
                           "id": eid, "key": key, "payload": payload,
                           "created_at": created_at.isoformat()},
                          "  %s #%d key=%s payload=%s"
                          % (info["name"], eid, key, json.dumps(payload)))
                last_id = eid
            total += len(rows)
            if len(rows) < self.args.batch:
                break
        cur.close()
        self.events += total
        self.emit({"type": "consumed", "topic": info["name"], "group": self.args.group,
                   "events": total, "last_id": last_id, "reason": reason},
                  "  consumed %d event%s from %s%s"
                  % (total, "" if total == 1 else "s", info["name"],
                     "" if last_id is None else " (up to id %d)" % last_id))

    def handle(self, n):
        info = self.channels.get(n.channel)
        kind = info["kind"] if info else None
        try:
            payload = json.loads(n.payload)
        except ValueError:
            payload = n.payload
        self.notifications += 1
        if kind == "aggregate" and isinstance(payload, dict) and isinstance(payload.get("changes"), list):
            changes = payload["changes"]
            shown = " ".join("%s=%s" % ("NULL" if c.get("group_key") is None else c["group_key"],
                                        c.get("count"))
                             + ("@%s" % c["bucket_start"] if c.get("bucket_start") else "")
                             for c in changes[:8])
            text = "notification on %s: %d changed count%s: %s%s" % (
                n.channel, len(changes), "" if len(changes) == 1 else "s", shown,
                " ..." if len(changes) > 8 else "")
        elif kind == "topic" and isinstance(payload, dict) and "last_id" in payload:
            text = "notification on %s: new events up to id %s" % (n.channel, payload["last_id"])
        else:
            text = "notification on %s: %s" % (n.channel, n.payload)
        self.emit({"type": "notification", "channel": n.channel, "kind": kind,
                   "pid": n.pid, "payload": payload}, text)
        if kind == "topic":
            self.drain(n.channel, "notification")

    # ------------------------------------------------------------ main loop
    def run(self):
        a = self.args
        deadline = None if a.timeout is None else time.monotonic() + a.timeout
        self.resolve()
        if a.catch_up:
            for ch, info in self.channels.items():
                if info["kind"] == "topic":
                    self.drain(ch, "catch-up")
        while True:
            # notifications may have arrived while we were consuming
            while self.conn.notifies:
                self.handle(self.conn.notifies.pop(0))
                if a.max_notifications is not None and self.notifications >= a.max_notifications:
                    return "max-notifications"
            wait = None
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return "timeout"
            r, _, _ = select.select([self.conn], [], [], wait)
            if r:
                self.conn.poll()

    def close(self, reason):
        self.emit({"type": "exit", "reason": reason,
                   "notifications": self.notifications, "events": self.events},
                  "exiting (%s) after %d notification%s and %d event%s"
                  % (reason, self.notifications, "" if self.notifications == 1 else "s",
                     self.events, "" if self.events == 1 else "s"))
        try:
            self.conn.close()
        except psycopg2.Error:
            pass


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def on_signal(signum, frame):
        raise Stop()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        lst = Listener(args)
    except psycopg2.Error as e:
        print("listener.py: cannot connect: %s" % str(e).strip(), file=sys.stderr)
        return 1
    except Stop:
        return 0
    try:
        reason = lst.run()
    except Stop:
        reason = "signal"
    except (LookupError, psycopg2.Error) as e:
        print("listener.py: %s" % str(e).strip(), file=sys.stderr)
        try:
            lst.conn.close()
        except Exception:
            pass
        return 1
    lst.close(reason)
    if reason == "timeout" and args.max_notifications is not None:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
