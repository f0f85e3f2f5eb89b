#!/usr/bin/env python3
"""test/bench/bench.py — the cases of `make bench`, run by bench.sh.

Owns: every benchmark case, the baselines it compares against, and the one
markdown table of results.  bench.sh owns the cluster; this script gets it
through the libpq environment (PGHOST, PGPORT, PGDATABASE=evbench, with the
extensions evstream and pgq already created) and writes nothing outside that
database, $BENCH_WORK (scratch) and $BENCH_OUT (results).

How it measures (the shape of the baseline notes, shared/BENCH.md):
  * Event shape everywhere: key 'k1'..'k1000', payload jsonb of ~95 bytes,
    id and created_at assigned by the table.  Baselines are created here: a
    plain table range-partitioned by created_at (7 daily partitions premade,
    bigserial id, btree on id), the same with a naive AFTER INSERT FOR EACH
    ROW counter trigger (INSERT .. ON CONFLICT DO UPDATE count+1), the same
    with a pg_notify-per-row trigger, and PgQ queues.
  * Transactional cases: pgbench -n -M prepared -c 4 -j 2 -T $BENCH_T with a
    generated -f script, TRUNCATE + CHECKPOINT before every run, all cases of
    a phase run once per round, rounds interleaved (A,B,C,A,B,C,...; the
    multi-row, COPY and consume cases rotate their order each round);
    synchronous_commit is set per session through PGOPTIONS.  While pgbench
    runs, pg_stat_activity is sampled every 100 ms (top waits in "notes").
  * Bulk: COPY of $BENCH_N rows from a server-side file made once with
    COPY .. TO.  Consumption: a psycopg2 client reads $BENCH_N events in
    pages of 1000, one transaction per page (evstream.consume; keyset
    pagination + UPDATE of a position row; PgQ next_batch/get_batch_events/
    finish_batch over batches of 1000 made with pgq.ticker()).
  * Bulk INSERT .. SELECT (phase multi, issue 12): pgbench as above, each
    transaction one INSERT .. SELECT 'k' || (random() * 1000)::int, <the
    bench payload as a constant> FROM generate_series(1, 1000), into a topic
    and into the plain partitioned table; rows/s.
  * Push latency: four psycopg2 producer threads commit single-row inserts at
    ~1000/s together (synchronous_commit on) and record commit-ack times; a
    LISTENer process (its own connection) records arrivals; each event id is
    matched to the first notification whose last_id >= it (notifications
    are coalesced).  The contrast, a pg_notify per row, is matched by id.
    Again with LAT_HI_PRODUCERS (16) threads paced at LAT_HI_RATE (~10,000/s
    together; the achieved rate is reported), each INSERT in autocommit (its
    return is the commit-ack): BEGIN, INSERT, COMMIT from Python does not
    reach 10,000/s on 2 CPUs.  Beside each evstream line:
    the notifications the listener received per second between the first
    COMMIT sent and the last commit-ack.
  * Aggregate read under a backlog: an aggregate with notify => false (with
    notify the worker merges deltas at every push), maintenance_interval set
    to 24h, ~100k pending rows in evstream._delta made by INSERT .. SELECTs.
  * stable_id: a server-side plpgsql loop of 5000 calls, timed with
    clock_timestamp(), repeated while pgbench runs 32 producer sessions; a
    loop of a trivial function call under the same load shows the overhead.
  * Consumers 0.2 (phase consumers2, issue 9 item 9).  Consumers are child
    processes (psycopg2, own connections, spawn), started together at one
    instant; a run's throughput counts the events of the batches that ended
    inside its fixed window.  Topics are filled once per phase (COPY, or
    INSERT .. SELECT with synchronous_commit off) and every run reads them
    with a fresh group, made just before the run with seek(t, g, 0)
    (consumers starting together on a group nobody made yet get no rows
    while one of them makes it, SPEC).
    - Parallel scaling: an 8-shard topic prefilled with 1.5x what 4
      consumers can read in $BENCH_T s (a loop is >= 5 ms: <= 20k events/s
      per consumer); 1 vs 4 consumers, each looping BEGIN; consume(.., 100);
      SELECT pg_sleep(0.005); COMMIT for $BENCH_T s.  Ids are checked:
      none delivered twice, ascending within a batch; an empty batch while
      events remain (no free shard, or dry) is noted.
    - Consume $BENCH_N: the bulk phase's two readers (evstream.consume in
      pages of 1000, 1 txn/page; keyset pagination + UPDATE of a position
      row over plain_c) on a one-shard and an 8-shard topic and plain_c, all
      loaded by COPY of the same file and read once (hint bits) before.
    - Long poll latency: the latency phase's 4 paced producer threads
      (~1000 events/s together, synchronous_commit on, commit-ack times) on
      a one-shard topic; one consumer process loops SELECT .. FROM
      evstream.consume(t, g, 1000, wait => '1 s') in autocommit and records
      when each id arrives (after its own commit); latency = arrival -
      commit-ack of that id.  Again with the consumer's synchronous_commit
      off (info: the wake-up without the consumer's own WAL flush).
    - Producers and waiters: the single-row INSERT pgbench case on an
      8-shard topic, alone, with 8 sessions (threads, own connections)
      looping SELECT count(*) FROM evstream.consume(.., 1000, wait =>
      '10 s') in autocommit on an idle 8-shard topic (they sit in the wait:
      the target), and with the 8 long-polling the producers' topic in one
      group (they consume as events commit; info: they share the CPUs and
      the WAL flush with the producers).  The 8 are seen waiting
      (wait_event Extension) before pgbench starts and are cancelled after.
    - Fan-out: a one-shard topic prefilled for $BENCH_T s of one consumer;
      1 group vs 5 groups (one process each), the scaling loop; per-group
      throughput (mean over the 5; min and max noted).
    - Held horizon: a session runs BEGIN; SELECT txid_current() and stays
      idle in transaction while one consumer loops consume(t, g, 100) in
      autocommit on a one-shard topic of 200k events for $BENCH_HORIZON_S s,
      seeking back to the start (seek(t, g, 0)) when it reaches the end;
      throughput of the last window / the first, windows of min(10 s,
      $BENCH_HORIZON_S / 3).  The size of evstream._position is noted.
  * Continuous transforms 0.2 (phase transforms, issue 11 item 6), with
    evstream.max_transform_workers as the server has it (default 2; the
    maintenance worker starts no more workers than the active transforms'
    sources have shards: one here).  Each run makes its transform, with a
    new name (so a new group, starting before the oldest event), and drops
    it after.
    - flatMap: tff, one shard, prefilled once with max(1000, $BENCH_N/10)
      events of payload {"words": "a<k> b<k> c<k> d<k> e<k>", "user": n}
      (INSERT .. SELECT, synchronous_commit off, read once for hint bits).
      The transform SELECT w, jsonb_build_object('w', w) FROM events,
      regexp_split_to_table(payload->>'words', ' ') w, batch => 1000, into
      the topic tffo, timed from the create_transform call until its group
      has no lag (evstream.consumer_groups, looked at every 50 ms; paused
      or an error is reported); tffo must then hold 5 events per source
      event.  Against one psycopg2 client looping WITH e AS (SELECT * FROM
      evstream.consume('tff', g, 1000)) INSERT INTO tfho .. the same SELECT
      in autocommit until a statement inserts nothing (its group made just
      before).  Both outputs are topics with create_topic's defaults (what
      create_transform makes); TRUNCATE + CHECKPOINT before each; the two
      alternate in order by round.  Figures are source events/s; the note
      gives when the first batch began (the worker start-up, up to the
      maintenance worker's next check, about 1 s, is in the figure).  Info:
      the transform's batches' own pace, from the output's created_at (a
      batch's transaction start): (events of batches 1..n-1) / (last
      batch's start - first batch's start).
    - Latency: a 1:1 transform SELECT key, payload || jsonb_build_object(
      'src', id) FROM events from tfl into tflo (made by create_transform);
      one warm-up event through it, then one consumer process loops SELECT
      (payload->>'src')::bigint FROM evstream.consume(tflo, g, 1000, wait =>
      '1 s') in autocommit (synchronous_commit on) while the latency phase's
      4 paced producer threads commit single-row inserts into tfl at ~1000
      events/s; latency = arrival of a source id in the output - commit-ack
      of its insert; p50 and p99.
    - Producers: the single-row INSERT pgbench case into the topic tfp with
      a running transform SELECT key, payload FROM events into tfpo (made,
      and one warm-up event through it, after TRUNCATE + CHECKPOINT), and
      the same topic without one (after the idle transform workers of the
      previous run left, about 10 s); the transform's lag at the end of the
      run and its catch-up time are noted, and tfpo must then hold as many
      events as tfp.
  * Aggregates v2 (phase aggregates2, issue 10).  The 3 measures are
    sum((payload->>'user')::numeric), max((payload->>'user')::int) and
    avg((payload->>'user')::numeric), group_by key (1000 keys), notify on
    (the default), no output topic.  Pairs of pgbench cases run back to back,
    their order alternating by round, the pairs (and the latency case)
    rotating by round:
    - the single-row INSERT case into bv3 (the aggregate of 3 measures) and
      into bv0 (the same topic without aggregate);
    - the hot-key case (5 ms per transaction), ONE key vs 1000 keys, on bv3;
    - the single-row INSERT case into bvh (the 3 measures, bucket 1 h, hop
      1 min: 60 windows per event) and into bvt (bucket 1 min, tumbling);
    - in phase multi, the INSERT .. SELECT 1000 rows/txn case into bv3
      (deadlocks counted as for the count aggregate);
    - change-event latency: bvl has an aggregate with measures sum and avg of
      payload amount and max(seq), output_topic bvlo (made by
      create_aggregate).  One warm-up event through it, then one consumer
      process loops SELECT (payload->>'last_seq')::bigint FROM
      evstream.consume(bvlo, g, 1000, wait => '1 s') in autocommit while 4
      paced producer threads (the latency phase's) commit single-row inserts
      at ~1000 events/s, payload {"seq", "amount", "country", "ts" (the
      client's clock)}.  seq is unique and increasing per producer, the key is
      k<1 + seq % 1000>, so each key has one producer and its events commit in
      seq order: an event has arrived when a change event of its key with
      last_seq >= its seq has.  Latency = that arrival - the event's
      commit-ack; p50 and p99.
  * Figures are medians over rounds; a ratio is the median of the per-round
    ratios (both sides measured in the same round).  A case that errors
    prints ERROR, the rest go on.

Knobs (environment): BENCH_T (s per pgbench run and consumer run, default
5), BENCH_ROUNDS (default 3), BENCH_N (events per COPY/consume, default
1000000), BENCH_HORIZON_S (s of the held-horizon case, default 60),
BENCH_CASES (comma list of phases:
single,multi,bulk,stable,backlog,latency,consumers2,transforms,aggregates2;
default all).
"""
import bisect
import json
import multiprocessing as mp
import os
import queue
import re
import select
import statistics
import subprocess
import sys
import threading
import time
import traceback

import psycopg2
import psycopg2.extras

T = int(os.environ.get("BENCH_T", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
N = int(os.environ.get("BENCH_N", "1000000"))
OUT = os.environ.get("BENCH_OUT", ".")
WORK = os.environ.get("BENCH_WORK", os.environ.get("TMPDIR", "/tmp"))
HORIZON_S = int(os.environ.get("BENCH_HORIZON_S", "60"))
ALL_PHASES = ("single", "multi", "bulk", "stable", "backlog", "latency", "consumers2",
              "transforms", "aggregates2")
PHASES = [p.strip() for p in os.environ.get(
    "BENCH_CASES", ",".join(ALL_PHASES)).split(",") if p.strip()]
CLIENTS, JOBS = 4, 2
PAGE = 1000

# ~95 bytes of JSON; {k} is a key number, {u} a user number (SQL expressions)
PAYLOAD = ("""('{{"user": ' || {u} || ', "action": "click", "page": "/products/item-' || {k} """
           """|| '", "ts": 1764500000, "ok": true}}')""")


# aggregates v2 (phase aggregates2): the 3 measures over the bench payload's
# numbers, and those of the change-event latency case over its own payload
# {"seq": n, "amount": 12.34, "ts": <client epoch>}
M3 = ("sum((payload->>'user')::numeric) AS user_sum, max((payload->>'user')::int) AS user_max, "
      "avg((payload->>'user')::numeric) AS user_avg")
ML = ("sum((payload->>'amount')::numeric) AS revenue, avg((payload->>'amount')::numeric) AS "
      "mean_amount, max((payload->>'seq')::bigint) AS last_seq")
M3_SQL, ML_SQL = ("'" + m.replace("'", "''") + "'" for m in (M3, ML))


def log(msg):
    print("== " + msg, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- database helpers

def connect(autocommit=True, sync="on", app="evbench"):
    conn = psycopg2.connect("", application_name=app)
    conn.autocommit = autocommit
    with conn.cursor() as cur:
        cur.execute("SET synchronous_commit = %s", (sync,))
        cur.execute("SET statement_timeout = '15min'")
    if not autocommit:
        conn.commit()
    # payload as text: no client-side JSON parsing cost (PgQ returns text too)
    psycopg2.extras.register_default_jsonb(conn_or_curs=conn, loads=lambda s: s)
    return conn


def wait_ready(timeout=60):
    """Waits until the server accepts connections (e.g. after a crash restart)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            c = psycopg2.connect("", connect_timeout=5)
            c.close()
            return
        except psycopg2.Error:
            if time.monotonic() > deadline:
                raise BenchError("server not accepting connections")
            time.sleep(0.5)


class Admin:
    """An autocommit connection that reconnects after a server crash."""

    def __init__(self):
        self.conn = None

    def _conn(self):
        if self.conn is None or self.conn.closed:
            wait_ready()
            self.conn = connect()
        return self.conn

    def run(self, q, args=None):
        try:
            with self._conn().cursor() as cur:
                cur.execute(q, args)
                return cur.fetchall() if cur.description else None
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None
            raise

    def one(self, q, args=None):
        rows = self.run(q, args)
        return rows[0][0] if rows else None


DB = Admin()


def short(e):
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:160]


# ---------------------------------------------------------------- results

class Figure:
    def __init__(self, key, label, unit, sync="on", issue=""):
        self.key, self.label, self.unit, self.sync, self.issue = key, label, unit, sync, issue
        self.runs = {}        # round -> value
        self.errors = []
        self.notes = []
        self.rnotes = {}      # round -> note of that round
        self.waits = {}       # label -> samples

    def median(self):
        v = [x for x in self.runs.values() if x is not None]
        return statistics.median(v) if v else None


FIG = {}


def fig(key, label, unit, sync="on"):
    if key not in FIG:
        FIG[key] = Figure(key, label, unit, sync)
    return FIG[key]


def rnote(key, rnd, text):
    """A note about one round (shown once if all rounds say the same)."""
    FIG[key].rnotes[rnd] = text


def record(key, rnd, value=None, error=None, note=None, waits=None):
    f = FIG[key]
    if error is not None:
        f.errors.append(error)
        f.runs.setdefault(rnd, None)
    else:
        f.runs[rnd] = value
    if note and note not in f.notes:
        f.notes.append(note)
    if waits:
        for k, v in waits.items():
            f.waits[k] = f.waits.get(k, 0) + v


# ---------------------------------------------------------------- pgbench

def write_script(name, text):
    path = os.path.join(WORK, "pgb_" + name + ".sql")
    with open(path, "w") as f:
        f.write(text)
    return path


class WaitSampler(threading.Thread):
    """Samples pg_stat_activity of the pgbench backends every 100 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.counts = {}

    def run(self):
        try:
            conn = connect(app="evbench-sampler")
        except psycopg2.Error:
            return
        q = ("SELECT wait_event_type, wait_event, state FROM pg_stat_activity "
             "WHERE application_name = 'pgbench' AND backend_type = 'client backend'")
        try:
            while not self.stop.wait(0.1):
                with conn.cursor() as cur:
                    cur.execute(q)
                    for wtype, wev, state in cur.fetchall():
                        if wtype == "Client" and state and state.startswith("idle"):
                            lab = "Client:ClientRead" if wev == "ClientRead" else "idle"
                        elif wtype:
                            lab = "%s:%s" % (wtype, wev)
                        elif state == "active":
                            lab = "CPU(running)"
                        else:
                            lab = state or "?"
                        self.counts[lab] = self.counts.get(lab, 0) + 1
        except psycopg2.Error:
            pass
        finally:
            conn.close()


def top_waits(counts, n=3):
    tot = sum(counts.values())
    if not tot:
        return ""
    items = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join("%s %d%%" % (k, round(100.0 * v / tot)) for k, v in items)


def pgbench(name, script, clients=CLIENTS, sync="on", secs=None, xacts=None, extra=(),
            sample=True):
    """Runs pgbench; returns dict(tps, lat_ms, xacts, failed, retried, deadlocks, waits)."""
    path = write_script(name, script)
    cmd = ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(JOBS, clients)),
           "-f", path]
    if xacts is not None:
        cmd += ["-t", str(xacts)]
    else:
        cmd += ["-T", str(secs or T)]
    cmd += list(extra)
    env = dict(os.environ, PGOPTIONS="-c synchronous_commit=%s" % sync)
    sampler = WaitSampler() if sample else None
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if sampler:
        sampler.start()
    try:
        out, err = p.communicate(timeout=(secs or T) + 180 if xacts is None else 600)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise BenchError("pgbench timed out")
    finally:
        if sampler:
            sampler.stop.set()
            sampler.join(5)
    wait_backends_gone()
    with open(os.path.join(WORK, "pgbench.log"), "a") as f:
        f.write("### %s sync=%s\n%s\n%s\n" % (" ".join(cmd), sync, out, err))
    aborted = [l for l in err.splitlines() if "aborted" in l or "error" in l.lower()]
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    if p.returncode != 0 and (aborted or not m):
        raise BenchError((aborted[0] if aborted else err.strip()[-200:]) or "pgbench failed")
    if not m:
        raise BenchError("no tps in pgbench output")

    def num(pat):
        mm = re.search(pat, out)
        return int(mm.group(1)) if mm else 0

    lat = re.search(r"latency average = ([\d.]+) ms", out)
    return dict(tps=float(m.group(1)), lat_ms=float(lat.group(1)) if lat else None,
                xacts=num(r"number of transactions actually processed: (\d+)"),
                failed=num(r"number of failed transactions: (\d+)"),
                retried=num(r"number of transactions retried: (\d+)"),
                retries=num(r"total number of retries: (\d+)"),
                deadlocks=num(r"number of deadlock failures: (\d+)"),
                waits=sampler.counts if sampler else {})


def wait_backends_gone(timeout=15):
    """After pgbench: waits until its backends have exited (a backend blocked on
    a lock notices the closed connection late), so runs do not overlap and
    their statistics are flushed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not DB.one("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'"):
                break
        except psycopg2.Error:
            break
        time.sleep(0.1)
    time.sleep(0.1)


def prep(stmts, sleep=0.0):
    """Runs the set-up statements of a run, then CHECKPOINT.  A TRUNCATE that
    fails is not fatal (the run goes on with the table as it is)."""
    for s in stmts:
        try:
            DB.run(s)
        except psycopg2.Error as e:
            if not s.startswith("TRUNCATE") and s not in SOFT:
                raise
            log("%s: %s (going on without it)" % (s, short(e)))
    if sleep:
        time.sleep(sleep)
    DB.run("CHECKPOINT")


# ---------------------------------------------------------------- listener process

def listener_main(channels, counters, stop, ready, result_q, keep):
    """Child process: LISTENs on channels, drains notifications, counts them;
    with keep, returns (arrival monotonic time, channel, payload) of each."""
    got = []
    try:
        for attempt in range(60):   # the server may be restarting after a crash
            try:
                conn = psycopg2.connect("", application_name="evbench-listener")
                break
            except psycopg2.OperationalError:
                if attempt == 59:
                    raise
                time.sleep(0.5)
        conn.autocommit = True
        with conn.cursor() as cur:
            for ch in channels:
                cur.execute('LISTEN "%s"' % ch.replace('"', '""'))
        ready.set()
        while not stop.is_set():
            if select.select([conn], [], [], 0.05)[0]:
                conn.poll()
                now = time.monotonic()
                notes = conn.notifies[:]
                del conn.notifies[:]
                for n in notes:
                    i = channels.index(n.channel) if n.channel in channels else None
                    if i is not None:
                        with counters.get_lock():
                            counters[i] += 1
                    if keep:
                        got.append((now, n.channel, n.payload))
        conn.close()
    except psycopg2.Error as e:   # the server went away: report what we have
        print("== listener: %s" % str(e).strip().splitlines()[0], file=sys.stderr)
    result_q.put(got)


class Listener:
    def __init__(self, channels, keep=False):
        ctx = mp.get_context("spawn")
        self.channels = list(channels)
        self.counters = ctx.Array("q", len(self.channels))
        self.stop_evt, self.ready = ctx.Event(), ctx.Event()
        self.q = ctx.Queue()
        self.p = ctx.Process(target=listener_main, daemon=True,
                             args=(self.channels, self.counters, self.stop_evt, self.ready,
                                   self.q, keep))
        wait_ready()
        self.p.start()
        deadline = time.monotonic() + 40
        while not self.ready.wait(0.2):
            if not self.p.is_alive() or time.monotonic() > deadline:
                self.p.terminate()
                raise BenchError("listener did not start")

    def count(self, ch):
        return self.counters[self.channels.index(ch)]

    def alive(self):
        return self.p.is_alive()

    def close(self):
        self.stop_evt.set()
        got = []
        try:
            got = self.q.get(timeout=30)
        except Exception:
            pass
        self.p.join(10)
        if self.p.is_alive():
            self.p.terminate()
        return got


# ---------------------------------------------------------------- setup

def part_table(name):
    """A plain table range-partitioned by created_at, 7 daily partitions, btree on id."""
    s = ["CREATE TABLE %s (id bigserial, key text, payload jsonb, "
         "created_at timestamptz NOT NULL DEFAULT now()) PARTITION BY RANGE (created_at)" % name]
    for d in range(-1, 6):
        s.append("CREATE TABLE %s_d%d PARTITION OF %s FOR VALUES FROM "
                 "(date_trunc('day', now()) + interval '%d day') TO "
                 "(date_trunc('day', now()) + interval '%d day')" % (name, d + 1, name, d, d + 1))
    s.append("CREATE INDEX ON %s (id)" % name)
    return s


SETUP = {
    # baselines
    "plain": part_table("plain_p") + part_table("plain_c") + [
        "CREATE TABLE bench_pos (name text PRIMARY KEY, last_id bigint NOT NULL)"],
    "naive": part_table("naive_p") + [
        "CREATE TABLE naive_count (key text PRIMARY KEY, count bigint NOT NULL)",
        """CREATE FUNCTION naive_count_trg() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             INSERT INTO naive_count AS c (key, count) VALUES (NEW.key, 1)
               ON CONFLICT (key) DO UPDATE SET count = c.count + 1;
             RETURN NULL;
           END $$""",
        "CREATE TRIGGER naive_count AFTER INSERT ON naive_p FOR EACH ROW "
        "EXECUTE FUNCTION naive_count_trg()"],
    "notify_p": part_table("notify_p") + [
        """CREATE FUNCTION notify_trg() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN PERFORM pg_notify(TG_ARGV[0], NEW.id::text); RETURN NULL; END $$""",
        "CREATE TRIGGER notify_p AFTER INSERT ON notify_p FOR EACH ROW "
        "EXECUTE FUNCTION notify_trg('notify_p')"],
    "pgq": ["SELECT pgq.create_queue('bq')",
            "SELECT pgq.create_queue('bqc')",
            "SELECT pgq.set_queue_config('bqc', 'ticker_max_count', '1000')",
            "SELECT pgq.register_consumer('bqc', 'c')"],
    "timers": [
        """CREATE FUNCTION bench_us_stable_id(t regclass, n int) RETURNS float8
           LANGUAGE plpgsql AS $$
           DECLARE t0 timestamptz := clock_timestamp();
           BEGIN
             FOR i IN 1..n LOOP PERFORM evstream.stable_id(t); END LOOP;
             RETURN extract(epoch FROM clock_timestamp() - t0) * 1e6 / n;
           END $$""",
        """CREATE FUNCTION bench_us_noop(n int) RETURNS float8 LANGUAGE plpgsql AS $$
           DECLARE t0 timestamptz := clock_timestamp();
           BEGIN
             FOR i IN 1..n LOOP PERFORM pg_backend_pid(); END LOOP;
             RETURN extract(epoch FROM clock_timestamp() - t0) * 1e6 / n;
           END $$"""],
    # evstream objects, each on its own so one failure leaves the others
    "bt": ["SELECT evstream.create_topic('bt')"],
    "ba": ["SELECT evstream.create_topic('ba')",
           "SELECT evstream.create_aggregate('ba_count', 'ba'::regclass)"],
    # the backlog case: an aggregate with notify => false, whose deltas only
    # the maintenance pass merges (with notify the worker merges at each push)
    "bb": ["SELECT evstream.create_topic('bb')",
           "SELECT evstream.create_aggregate('bb_count', 'bb'::regclass, notify => false)"],
    "bn": ["SELECT evstream.create_topic('bn', notify => true)"],
    "bx": ["SELECT evstream.create_topic('bx', notify => false)"],
    "bm1": ["SELECT evstream.create_topic('bm1', partition_interval => '1 second', "
            "retention => '5 seconds')"],
    "bm0": ["SELECT evstream.create_topic('bm0')"],
    "bc": ["SELECT evstream.create_topic('bc')"],
    "bca": ["SELECT evstream.create_topic('bca')",
            "SELECT evstream.create_aggregate('bca_count', 'bca'::regclass)"],
    "bl": ["SELECT evstream.create_topic('bl', notify => true)"],
    # consumers 0.2 (phase consumers2)
    "bp8": ["SELECT evstream.create_topic('bp8', shards => 8, notify => false)"],
    "bq1": ["SELECT evstream.create_topic('bq1', notify => false)"],
    "bq8": ["SELECT evstream.create_topic('bq8', shards => 8, notify => false)"],
    "bw1": ["SELECT evstream.create_topic('bw1', notify => false)"],
    "bw8": ["SELECT evstream.create_topic('bw8', shards => 8, notify => false)"],
    "bwi": ["SELECT evstream.create_topic('bwi', shards => 8, notify => false)"],
    "bf1": ["SELECT evstream.create_topic('bf1', notify => false)"],
    "bh1": ["SELECT evstream.create_topic('bh1', notify => false)"],
    # continuous transforms (phase transforms); the outputs the transforms of
    # the latency and producer cases write (tflo, tfpo) are made by
    # create_transform, as a user gets them
    "tff": ["SELECT evstream.create_topic('tff')"],
    "tffo": ["SELECT evstream.create_topic('tffo')"],
    "tfho": ["SELECT evstream.create_topic('tfho')"],
    "tfl": ["SELECT evstream.create_topic('tfl')"],
    "tfp": ["SELECT evstream.create_topic('tfp')"],
    # aggregates v2 (phase aggregates2, issue 10): 3 measures over the payload
    "bv0": ["SELECT evstream.create_topic('bv0')"],
    "bv3": ["SELECT evstream.create_topic('bv3')",
            "SELECT evstream.create_aggregate('bv3_m', 'bv3'::regclass, measures => %s)" % M3_SQL],
    "bvt": ["SELECT evstream.create_topic('bvt')",
            "SELECT evstream.create_aggregate('bvt_m', 'bvt'::regclass, bucket => '1 minute', "
            "measures => %s)" % M3_SQL],
    "bvh": ["SELECT evstream.create_topic('bvh')",
            "SELECT evstream.create_aggregate('bvh_m', 'bvh'::regclass, bucket => '1 hour', "
            "hop => '1 minute', measures => %s)" % M3_SQL],
    # its output topic bvlo is made by create_aggregate, as a user gets it
    "bvl": ["SELECT evstream.create_topic('bvl')",
            "SELECT evstream.create_aggregate('bvl_m', 'bvl'::regclass, measures => %s, "
            "output_topic => 'bvlo')" % ML_SQL],
}
SETUP_ERR = {}


def setup():
    for name, stmts in SETUP.items():
        try:
            for s in stmts:
                DB.run(s)
        except psycopg2.Error as e:
            SETUP_ERR[name] = short(e)
            log("setup %s failed: %s" % (name, short(e)))
    DB.run("ANALYZE")


# ---------------------------------------------------------------- scripts

def ins_script(table, key="'k' || :k"):
    return ("\\set k random(1, 1000)\n\\set u random(1, 1000000)\n"
            "INSERT INTO %s (key, payload) VALUES (%s, %s::jsonb);\n"
            % (table, key, PAYLOAD.format(u=":u", k=":k")))


PGQ_SCRIPT = ("\\set k random(1, 1000)\n\\set u random(1, 1000000)\n"
              "SELECT pgq.insert_event('bq', 'k' || :k, %s);\n" % PAYLOAD.format(u=":u", k=":k"))


def sleep_script(table, hot):
    # one event per transaction, ~5 ms of work held before commit
    return ("\\set k %s\n\\set u random(1, 1000000)\n"
            "BEGIN;\n"
            "INSERT INTO %s (key, payload) VALUES (%s, %s::jsonb);\n"
            "SELECT pg_sleep(0.005);\n"
            "END;\n" % ("1" if hot else "random(1, 1000)", table,
                        "'hot'" if hot else "'k' || :k", PAYLOAD.format(u=":u", k=":k")))


def multi_script(table):
    # 1000 events per statement, keys in random order
    return ("INSERT INTO %s (key, payload) SELECT 'k' || k, %s::jsonb "
            "FROM (SELECT g, 1 + floor(random() * 1000)::int AS k "
            "FROM generate_series(1, 1000) g) s;\n" % (table, PAYLOAD.format(u="g", k="k")))


# the bench payload as one constant (~95 bytes): what a client sending a batch
# of the same event shape passes, parsed once per statement
PAYLOAD_CONST = ('{"user": 4711, "action": "click", "page": "/products/item-42", '
                 '"ts": 1764500000, "ok": true}')


def bulk_script(table):
    # 1000 events per statement, no aggregate: the bulk path against the plain table (issue 12)
    return ("INSERT INTO %s (key, payload) SELECT 'k' || (random() * 1000)::int, '%s' "
            "FROM generate_series(1, 1000);\n" % (table, PAYLOAD_CONST))


def pgq_table(queue):
    return DB.one("SELECT queue_data_pfx FROM pgq.queue WHERE queue_name = %s", (queue,))


# ---------------------------------------------------------------- phases

def run_pgbench_case(key, rnd, script, truncate, sync="on", clients=CLIENTS, extra=(),
                     before=None, after=None, rows_per_xact=1, note_fn=None):
    try:
        stmts = ["TRUNCATE " + t for t in truncate]
        sleep = 0.0
        if before:
            stmts, sleep = before(stmts)
        prep(stmts, sleep)
        r = pgbench(key + ".r%d" % rnd, script, clients=clients, sync=sync, extra=extra)
        note = note_fn(r) if note_fn else None
        record(key, rnd, r["tps"] * rows_per_xact, waits=r["waits"])
        if note:
            rnote(key, rnd, note)
        return r
    except (psycopg2.Error, BenchError, OSError) as e:
        log("%s round %d: ERROR %s" % (key, rnd, short(e)))
        record(key, rnd, error=short(e))
    finally:
        if after:
            try:
                after()
            except psycopg2.Error as e:
                log("%s cleanup: %s" % (key, short(e)))


MERGE = "SELECT count(*) FROM evstream._merge_deltas()"
SOFT = {MERGE}   # set-up statements whose failure does not fail the run


def set_maint(interval):
    """Before a maintenance-cost run: fold the deltas other cases left (so the
    first pass does not merge them inside the measured window), then set the
    worker's interval."""
    def before(stmts):
        return ([MERGE, "ALTER SYSTEM SET evstream.maintenance_interval = '%s'" % interval,
                 "SELECT pg_reload_conf()"] + stmts, 2.0)
    return before


def reset_maint():
    DB.run("ALTER SYSTEM RESET evstream.maintenance_interval")
    DB.run("ALTER SYSTEM RESET evstream.notify_interval")
    DB.run("SELECT pg_reload_conf()")


def phase_single():
    """Single-row INSERT transactions, 4 clients: issues 2, 3 and 4."""
    log("phase single: single-row INSERT transactions")
    pgq_tab = None
    try:
        pgq_tab = pgq_table("bq")
    except psycopg2.Error:
        pass
    cases = []

    def add(key, label, script, truncate, sync="on", **kw):
        fig(key, label, "TPS", sync)
        cases.append((key, script, truncate, sync, kw))

    for sync in ("on", "off"):
        add("ins.topic." + sync, "INSERT 1 row/txn: evstream topic", ins_script("bt"), ["bt"], sync)
        add("ins.part." + sync, "INSERT 1 row/txn: plain partitioned + btree(id)",
            ins_script("plain_p"), ["plain_p"], sync)
        add("ins.pgq." + sync, "pgq.insert_event 1 event/txn", PGQ_SCRIPT,
            [pgq_tab] if pgq_tab else [], sync)
        if sync == "on":
            add("ins.agg", "INSERT 1 row/txn: topic + 1 aggregate (1000 keys)", ins_script("ba"), ["ba"])
            add("ins.naive", "INSERT 1 row/txn: partitioned + naive row-trigger upsert count",
                ins_script("naive_p"), ["naive_p", "naive_count"])
            add("hot.agg", "hot key, 5 ms/txn: topic + aggregate, ONE key",
                sleep_script("ba", True), ["ba"])
            add("dist.agg", "hot key, 5 ms/txn: topic + aggregate, 1000 keys",
                sleep_script("ba", False), ["ba"])
            add("hot.naive", "hot key, 5 ms/txn: naive trigger, ONE key",
                sleep_script("naive_p", True), ["naive_p", "naive_count"])
            add("dist.naive", "hot key, 5 ms/txn: naive trigger, 1000 keys",
                sleep_script("naive_p", False), ["naive_p", "naive_count"])
            add("ntf.on", "INSERT 1 row/txn: topic notify=>true + 1 listener",
                ins_script("bn"), ["bn"], note="listener")
            add("ntf.off", "INSERT 1 row/txn: topic notify=>false", ins_script("bx"), ["bx"])
            add("ntf.trig", "INSERT 1 row/txn: partitioned + pg_notify row trigger + 1 listener",
                ins_script("notify_p"), ["notify_p"], note="listener")
            add("maint.on", "INSERT 1 row/txn: 1 s partitions, retention 5 s, maintenance every 1 s",
                ins_script("bm1"), ["bm1"], before=set_maint("1s"), after=reset_maint)
            add("maint.off", "INSERT 1 row/txn: 1 day partitions, maintenance every 1 h",
                ins_script("bm0"), ["bm0"], before=set_maint("1h"), after=reset_maint)
            for k, what in (("maint.on", "every 1 s"), ("maint.off", "every 1 h")):
                fig(k + ".cpu", "maintenance worker's CPU during the run (from /proc; its set-up "
                    "and first pass included), maintenance %s" % what, "ms/s")
    # the listener stays attached to the notifying channels for the whole phase
    lst = None
    try:
        lst = Listener(["bn", "notify_p"])
    except Exception as e:
        log("listener: %s" % short(e))
    try:
        for rnd in range(ROUNDS):
            for key, script, truncate, sync, kw in alternated(cases, rnd):
                kw = dict(kw)
                ch = None
                if kw.pop("note", None) == "listener":
                    if lst is None or not lst.alive():   # e.g. after a server crash
                        try:
                            if lst:
                                lst.close()
                            wait_ready()
                            lst = Listener(["bn", "notify_p"])
                        except Exception as e:
                            record(key, rnd, error="listener: " + short(e))
                            continue
                    ch = "bn" if key == "ntf.on" else "notify_p"
                    c0 = lst.count(ch)
                if kw.get("before") and key.startswith("maint.on"):
                    kw["note_fn"] = lambda r: maint_note()
                cpu0 = worker_cpu() if key.startswith("maint.") else None
                run_pgbench_case(key, rnd, script, truncate, sync, **kw)
                if cpu0 is not None:
                    cpu1 = worker_cpu()
                    if cpu0[0] is not None and cpu1[0] is not None and cpu1[0] == cpu0[0]:
                        record(key + ".cpu", rnd, (cpu1[1] - cpu0[1]) * 1000.0 / (cpu1[2] - cpu0[2]))
                    else:
                        record(key + ".cpu", rnd, error="no maintenance worker in /proc")
                if ch is not None:
                    time.sleep(0.3)
                    rnote(key, rnd, "listener got %d notifications" % (lst.count(ch) - c0))
    finally:
        if lst:
            lst.close()


def worker_cpu():
    """(pid, CPU seconds, wall seconds) of this database's evstream worker."""
    try:
        pid = DB.one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'evstream worker' "
                     "AND datname = current_database()")
        with open("/proc/%d/stat" % pid) as f:
            st = f.read().rsplit(")", 1)[1].split()
        return pid, (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK"), time.monotonic()
    except Exception:
        return None, 0.0, time.monotonic()


def maint_note():
    try:
        n = DB.one("SELECT count(*) FROM evstream._partitions('bm1')")
        err = DB.one("SELECT string_agg(last_error, '; ') FROM evstream.workers "
                     "WHERE last_error IS NOT NULL")
        return "bm1 had %s partitions after the run%s" % (n, (", worker error: " + err[:80]) if err else "")
    except psycopg2.Error as e:
        return "views: " + short(e)


def phase_multi():
    """INSERT .. SELECT 1000 events/txn in random key order, 4 clients: issue 3;
    INSERT .. SELECT generate_series(1, 1000), topic vs plain partitioned: issue 12."""
    log("phase multi: INSERT .. SELECT 1000 events/txn")
    cases = [("mr.topic", "INSERT..SELECT 1000 rows/txn: topic", "bt", ["bt"], multi_script),
             ("mr.agg", "INSERT..SELECT 1000 rows/txn: topic + aggregate", "ba", ["ba"],
              multi_script),
             ("mr.m3", "INSERT..SELECT 1000 rows/txn: topic + aggregate of 3 measures (sum, max, "
              "avg)", "bv3", ["bv3"], multi_script),
             ("mr.naive", "INSERT..SELECT 1000 rows/txn: naive row trigger, random key order",
              "naive_p", ["naive_p", "naive_count"], multi_script),
             ("mr.bulk.topic", "INSERT..SELECT generate_series(1, 1000), constant payload, "
              "1 stmt/txn: topic", "bt", ["bt"], bulk_script),
             ("mr.bulk.part", "INSERT..SELECT generate_series(1, 1000), constant payload, "
              "1 stmt/txn: plain partitioned + btree(id)", "plain_p", ["plain_p"], bulk_script)]
    for key, label, _, _, _ in cases:
        fig(key, label, "rows/s")
    for rnd in range(ROUNDS):
        for key, label, table, trunc, script in rotated(cases, rnd):
            if key == "mr.m3" and "bv3" in SETUP_ERR:
                record(key, rnd, error="setup: " + SETUP_ERR["bv3"])
                continue
            try:
                d0 = DB.one("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            except psycopg2.Error:
                d0 = None

            def note(r, d0=d0):
                try:
                    time.sleep(0.5)
                    d1 = DB.one("SELECT deadlocks FROM pg_stat_database "
                                "WHERE datname = current_database()")
                except psycopg2.Error:
                    d1 = None
                dl = max(0, d1 - d0) if (d0 is not None and d1 is not None) else 0
                f = FIG[key]
                f.fails = getattr(f, "fails", 0) + r["failed"]
                f.retries = getattr(f, "retries", 0) + r["retries"]
                f.deadlocks = getattr(f, "deadlocks", 0) + dl
                return None

            run_pgbench_case(key, rnd, script(table), trunc, rows_per_xact=1000,
                             extra=("--max-tries=3", "--failures-detailed"), note_fn=note)
    for key, _, _, _, _ in cases:
        f = FIG[key]
        if hasattr(f, "fails"):
            f.notes.append("all rounds: %d deadlocks (pg_stat_database), pgbench: %d failed "
                           "txns, %d retries" % (f.deadlocks, f.fails, f.retries))


def alternated(items, rnd):
    """The cases of a round, in reverse order every other round: the two
    cases of a ratio (listed close together) run in one order, then in the
    other, so a drift of the machine within a round (the disk here:
    single-row commit rates differ by up to 2x from one minute to the next)
    counts against both alike instead of always against the later one."""
    return items if rnd % 2 == 0 else items[::-1]


def rotated(items, rnd):
    """The cases of a round, rotated by the round number so no case always
    runs first or right after the same other case."""
    k = rnd % len(items)
    return items[k:] + items[:k]


def timed(fn):
    t0 = time.monotonic()
    n = fn()
    return n, time.monotonic() - t0


def events_file():
    """The server-side COPY file of N events (made once, shared by phases)."""
    datafile = os.path.join(WORK, "events.copy")
    if not os.path.exists(datafile):
        DB.run("COPY (SELECT 'k' || k, %s::jsonb FROM (SELECT g, 1 + floor(random() * 1000)::int AS k "
               "FROM generate_series(1, %d) g) s) TO '%s'" % (PAYLOAD.format(u="g", k="k"), N, datafile))
    return datafile


def phase_bulk():
    """COPY 1M (issues 2, 3) and consumption of 1M in pages of 1000 (issue 2)."""
    log("phase bulk: COPY %d events, consume %d events in pages of %d" % (N, N, PAGE))
    try:
        datafile = events_file()
    except psycopg2.Error as e:
        log("bulk: cannot write the COPY file: %s" % short(e))
        return
    copies = [("copy.part", "COPY %d rows (server file) -> plain partitioned" % N, "plain_c"),
              ("copy.topic", "COPY %d rows (server file) -> topic" % N, "bc"),
              ("copy.agg", "COPY %d rows (server file) -> topic + aggregate" % N, "bca")]
    for key, label, _ in copies:
        fig(key, label, "rows/s")
    consumers = [("cons.evs", "consume %d: evstream.consume(.., 1000), 1 txn/page" % N),
                 ("cons.keyset", "consume %d: keyset id > $last LIMIT 1000 + UPDATE position, 1 txn/page" % N),
                 ("cons.pgq", "consume %d: PgQ next_batch/get_batch_events/finish_batch, "
                  "batches of 1000" % N)]
    for key, label in consumers:
        fig(key, label, "events/s")

    for rnd in range(ROUNDS):
        for key, label, table in rotated(copies, rnd):
            try:
                prep(["TRUNCATE " + table])
                conn = connect()
                try:
                    with conn.cursor() as cur:
                        _, dt = timed(lambda: cur.execute(
                            "COPY %s (key, payload) FROM '%s'" % (table, datafile)))
                finally:
                    conn.close()
                record(key, rnd, N / dt)
            except (psycopg2.Error, BenchError) as e:
                log("%s round %d: ERROR %s" % (key, rnd, short(e)))
                record(key, rnd, error=short(e))
        # PgQ: load N events in batches of 1000 with a tick after each.  Not a
        # measured case (producing is compared in the single-row phase), so the
        # rows go straight into the queue's current event table, as
        # pgq.insert_event_raw does, with synchronous_commit off.
        pgq_err = None
        try:
            tbl = DB.one("SELECT queue_data_pfx || '_' || queue_cur_table FROM pgq.queue "
                         "WHERE queue_name = 'bqc'")
            if not tbl:
                raise BenchError("no PgQ queue bqc")
            conn = connect(autocommit=False, sync="off")
            try:
                with conn.cursor() as cur:
                    for _ in range(N // PAGE):
                        cur.execute("INSERT INTO %s (ev_time, ev_type, ev_data) "
                                    "SELECT now(), 'k' || k, %s FROM (SELECT g, 1 + floor(random() * 1000)::int AS k "
                                    "FROM generate_series(1, %d) g) s"
                                    % (tbl, PAYLOAD.format(u="g", k="k"), PAGE))
                        conn.commit()
                        cur.execute("SELECT pgq.ticker('bqc')")
                        conn.commit()
            finally:
                conn.close()
        except (psycopg2.Error, BenchError) as e:
            log("pgq load round %d: %s" % (rnd, short(e)))
            pgq_err = short(e)
        for key, label in rotated(consumers, rnd):
            try:
                if key == "cons.pgq" and pgq_err:
                    raise BenchError("loading the queue: " + pgq_err)
                prep([])
                got, dt = timed(lambda: CONSUME[key](rnd))
                if got < N:
                    raise BenchError("read only %d of %d events" % (got, N))
                record(key, rnd, got / dt)
            except (psycopg2.Error, BenchError) as e:
                log("%s round %d: ERROR %s" % (key, rnd, short(e)))
                record(key, rnd, error=short(e))


def consume_evs(rnd, topic="bc", group=None):
    conn = connect(autocommit=False)
    group = group or "g%d" % rnd  # a new group starts before the oldest retained event
    got = 0
    try:
        with conn.cursor() as cur:
            deadline = time.monotonic() + 600
            while got < N and time.monotonic() < deadline:
                cur.execute("SELECT id, key, payload, created_at FROM evstream.consume(%s, %s, %s)",
                            (topic, group, PAGE))
                rows = cur.fetchall()
                conn.commit()
                if not rows:
                    break
                got += len(rows)
    finally:
        conn.close()
    return got


def consume_keyset(rnd):
    DB.run("INSERT INTO bench_pos VALUES ('c', 0) ON CONFLICT (name) DO UPDATE SET last_id = 0")
    conn = connect(autocommit=False)
    got, last = 0, 0
    try:
        with conn.cursor() as cur:
            while got < N:
                cur.execute("SELECT id, key, payload, created_at FROM plain_c WHERE id > %s "
                            "ORDER BY id LIMIT %s", (last, PAGE))
                rows = cur.fetchall()
                if not rows:
                    conn.commit()
                    break
                last = rows[-1][0]
                cur.execute("UPDATE bench_pos SET last_id = %s WHERE name = 'c'", (last,))
                conn.commit()
                got += len(rows)
    finally:
        conn.close()
    return got


def consume_pgq(rnd):
    conn = connect(autocommit=False)
    got = 0
    try:
        with conn.cursor() as cur:
            while got < N:
                cur.execute("SELECT pgq.next_batch('bqc', 'c')")
                bid = cur.fetchone()[0]
                if bid is None:
                    conn.commit()
                    break
                cur.execute("SELECT * FROM pgq.get_batch_events(%s)", (bid,))
                rows = cur.fetchall()
                cur.execute("SELECT pgq.finish_batch(%s)", (bid,))
                conn.commit()
                got += len(rows)
    finally:
        conn.close()
    return got


CONSUME = {"cons.evs": consume_evs, "cons.keyset": consume_keyset, "cons.pgq": consume_pgq}


def phase_stable():
    """stable_id latency while 32 producer sessions insert (issue 2)."""
    log("phase stable: stable_id under 32 producers")
    fig("sid.idle", "stable_id('bt'), idle server (server-side loop)", "µs/call")
    fig("sid.load", "stable_id('bt') while 32 sessions insert into bt", "µs/call")
    fig("sid.noop", "trivial function call, same load (loop overhead)", "µs/call")
    fig("sid.tps", "the 32 producers meanwhile", "TPS")
    for rnd in range(ROUNDS):
        try:
            prep(["TRUNCATE bt"])
            record("sid.idle", rnd, DB.one("SELECT bench_us_stable_id('bt', 20000)"))
            secs = T + 2
            res = {}

            def producers():
                try:
                    res["r"] = pgbench("sid.r%d" % rnd, ins_script("bt"), clients=32, secs=secs,
                                       sample=False)
                except Exception as e:  # reported below
                    res["e"] = e
            th = threading.Thread(target=producers)
            th.start()
            time.sleep(1)
            loads, noops = [], []
            t_end = time.monotonic() + secs - 2
            while time.monotonic() < t_end and th.is_alive():
                loads.append(DB.one("SELECT bench_us_stable_id('bt', 5000)"))
                noops.append(DB.one("SELECT bench_us_noop(5000)"))
            th.join()
            if "e" in res:
                raise res["e"]
            if not loads:
                raise BenchError("no measurement while the producers ran")
            record("sid.load", rnd, statistics.median(loads))
            rnote("sid.load", rnd, "median of %d loops of 5000 calls" % len(loads))
            record("sid.noop", rnd, statistics.median(noops))
            record("sid.tps", rnd, res["r"]["tps"])
        except (psycopg2.Error, BenchError) as e:
            log("stable round %d: ERROR %s" % (rnd, short(e)))
            for k in ("sid.idle", "sid.load", "sid.noop", "sid.tps"):
                if rnd not in FIG[k].runs:
                    record(k, rnd, error=short(e))


def stop_maintenance():
    """Keeps the maintenance worker from merging deltas: a very long interval,
    and the longest notify_interval (the worker folds deltas at most every
    max(notify_interval, 100 ms))."""
    err = None
    for ivl in ("24h", "6h", "1h"):
        try:
            DB.run("ALTER SYSTEM SET evstream.maintenance_interval = '%s'" % ivl)
            DB.run("ALTER SYSTEM SET evstream.notify_interval = '60s'")
            DB.run("SELECT pg_reload_conf()")
            return ivl
        except psycopg2.Error as e:
            err = e
    raise err


PENDING_ENTRIES = ("SELECT count(*) FROM evstream._delta d "
                   "CROSS JOIN LATERAL evstream._unpack(d.data) u")


def fill_deltas(target):
    """Builds a backlog of about `target` pending delta entries for bb_count:
    each INSERT .. SELECT of 1000 events over random keys, in autocommit,
    appends one packed delta row of one entry per group it touches (~630),
    about 100 of them for 'k1'.  Returns (entries, rows) pending."""
    conn = connect(sync="off")
    try:
        with conn.cursor() as cur:
            for i in range(2 * target // 500):
                cur.execute(multi_script("bb"))
                if i % 20 == 19:
                    cur.execute(PENDING_ENTRIES)
                    if cur.fetchone()[0] >= target:
                        break
            cur.execute(PENDING_ENTRIES)
            entries = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM evstream._delta")
            return entries, cur.fetchone()[0]
    finally:
        conn.close()


def phase_backlog():
    """Read latency of one group's count with the worker stopped (issue 3)."""
    log("phase backlog: aggregate read latency with 100k pending deltas")
    fig("bl.merged", "SELECT count FROM bb_count WHERE group_key = 'k1', deltas merged "
        "(aggregate notify=>false)", "µs")
    fig("bl.pending", "same read with the worker stopped and ~100k pending deltas", "µs")
    fig("bl.rows", "pending delta entries (one per group and statement) during that read",
        "entries")
    read = "SELECT count FROM bb_count WHERE group_key = 'k1';\n"
    try:
        stop_maintenance()
        time.sleep(1.5)
        for rnd in range(ROUNDS):
            try:
                DB.run("SELECT count(*) FROM evstream._merge_deltas()")
                prep(["VACUUM evstream._delta", "VACUUM evstream._count"])
                r = pgbench("bl.merged.r%d" % rnd, read, clients=1, secs=min(T, 3), sample=False)
                record("bl.merged", rnd, r["lat_ms"] * 1000)
                pending, rows = fill_deltas(100000)
                record("bl.rows", rnd, pending)
                rnote("bl.rows", rnd, "%d entries in %d packed rows" % (pending, rows))
                if pending < 50000:
                    raise BenchError("no backlog: %d pending delta entries after the inserts "
                                     "(merged by the worker?)" % pending)
                DB.run("ANALYZE evstream._delta")
                r = pgbench("bl.pending.r%d" % rnd, read, clients=1, secs=min(T, 3), sample=False)
                record("bl.pending", rnd, r["lat_ms"] * 1000)
                after = DB.one(PENDING_ENTRIES)
                rnote("bl.pending", rnd, "%d entries pending before, %d after the read"
                      % (pending, after))
            except (psycopg2.Error, BenchError) as e:
                log("backlog round %d: ERROR %s" % (rnd, short(e)))
                for k in ("bl.merged", "bl.pending", "bl.rows"):
                    if rnd not in FIG[k].runs:
                        record(k, rnd, error=short(e))
    except psycopg2.Error as e:
        for k in ("bl.merged", "bl.pending", "bl.rows"):
            record(k, 0, error=short(e))
    finally:
        try:
            reset_maint()
            DB.run("SELECT count(*) FROM evstream._merge_deltas()")
        except psycopg2.Error:
            pass


def pct(vals, p):
    if not vals:
        return None
    s = sorted(vals)
    i = min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[i]


def paced_inserts(table, rate, secs, producers, autocommit=False, row=None):
    """`producers` threads (own connections) commit single-row inserts into
    table, together paced at `rate`/s for `secs` s (fewer if commits are
    slow); returns ([(id, COMMIT sent, commit-ack)], achieved rate, errors).
    With autocommit each INSERT is its own transaction (one round trip
    instead of BEGIN, INSERT, COMMIT): "COMMIT sent" is then when the INSERT
    was sent, and its return is the commit-ack.  row(me, i), when given,
    makes the i-th event of producer me: (key, payload as JSON text, tag);
    the tag is then recorded instead of the id."""
    q = ("INSERT INTO %s (key, payload) VALUES ('k' || %%s, %s::jsonb) RETURNING id"
         % (table, PAYLOAD.format(u="%s", k="%s")))
    if row is not None:
        q = "INSERT INTO %s (key, payload) VALUES (%%s, %%s::jsonb) RETURNING %%s::bigint" % table
    sent, errors, counts = [], [], []
    t_start = time.monotonic() + 0.2
    t_stop = t_start + secs

    def produce(me):
        try:
            conn = connect(autocommit=autocommit)
        except psycopg2.Error as e:
            errors.append(e)
            return
        i = 0
        try:
            with conn.cursor() as cur:
                while True:
                    d = t_start + (i * producers + me) / rate - time.monotonic()
                    if d > 0:
                        time.sleep(d)
                    if time.monotonic() >= t_stop:
                        break
                    k = 1 + i % 1000
                    args = (k, i, k) if row is None else row(me, i)
                    if autocommit:
                        t0 = time.monotonic()
                        cur.execute(q, args)
                        eid = cur.fetchone()[0]
                    else:
                        cur.execute(q, args)
                        eid = cur.fetchone()[0]
                        t0 = time.monotonic()
                        conn.commit()
                    sent.append((eid, t0, time.monotonic()))
                    i += 1
        except psycopg2.Error as e:
            errors.append(e)
        finally:
            counts.append(i)
            conn.close()

    threads = [threading.Thread(target=produce, args=(m,)) for m in range(producers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sent, sum(counts) / secs, errors


def latency_run(table, channel, rate=1000, secs=None, producers=4, autocommit=False):
    """`producers` threads (own connections) commit single-row inserts, together
    paced at `rate`/s for `secs` s (fewer if commits are slow); returns per-event
    latencies (ms) to the listener's receipt, from commit-ack and from the
    COMMIT being sent, plus counts."""
    secs = secs or max(5, T)
    prep(["TRUNCATE " + table])
    lst = Listener([channel], keep=True)
    try:
        sent, achieved, errors = paced_inserts(table, rate, secs, producers, autocommit)
        time.sleep(1.0)
    finally:
        got = lst.close()
    if errors:
        raise BenchError("producer: " + short(errors[0]))
    # evstream: {"topic": .., "last_id": N} stands for every id <= N (stable_id),
    # so an event is announced by the first notification reaching its id;
    # plain NOTIFY: the payload is the event's own id.
    arr, marks, exact = [], [], {}
    hi = None
    for t, ch, payload in got:
        try:
            v = json.loads(payload)
        except ValueError:
            continue
        if isinstance(v, dict) and "last_id" in v:
            last = int(v["last_id"])
            hi = last if hi is None or last > hi else hi
            arr.append(t)
            marks.append(hi)
        elif isinstance(v, int):
            exact.setdefault(v, t)
    ack, com, missing = [], [], 0
    for eid, t0, t1 in sent:
        if exact:
            ta = exact.get(eid)
        else:
            j = bisect.bisect_left(marks, eid)
            ta = arr[j] if j < len(marks) else None
        if ta is None:
            missing += 1
            continue
        ack.append((ta - t1) * 1000)
        com.append((ta - t0) * 1000)
    # notifications per second the listener received while the producers ran
    # (from the first COMMIT sent to the last commit-ack)
    nps = None
    if sent:
        w0, w1 = min(t0 for _, t0, _ in sent), max(t1 for _, _, t1 in sent)
        if w1 > w0:
            nps = sum(1 for t, _, _ in got if w0 <= t <= w1) / (w1 - w0)
    return dict(ack=ack, com=com, missing=missing, sent=len(sent), notes=len(got),
                rate=achieved, nps=nps, commit=[(t1 - t0) * 1000 for _, t0, t1 in sent])


# the second push latency line (issue 12): ~10,000 events/s from 16 producer
# threads, each INSERT in autocommit.  On 2 CPUs the clients' BEGIN, INSERT,
# COMMIT (3 round trips per event) reach only ~6,000-8,000 events/s with 16-32
# threads (CPU-bound: more threads or processes do not help); one autocommit
# INSERT per event reaches ~10,000.
LAT_HI_RATE, LAT_HI_PRODUCERS = 10000, 16


def phase_latency():
    """Commit-to-listener latency at ~1000 events/s (issues 4, 12) and at ~10,000
    events/s (issue 12), with the listener's notifications per second."""
    log("phase latency: commit-to-listener at ~1000 and ~%d events/s" % LAT_HI_RATE)
    runs = (("lat.evs", "topic bl (notify=>true) -> listener", "bl", "bl", 1000, 4, False),
            ("lat.pg", "plain NOTIFY per row (trigger on partitioned) -> listener",
             "notify_p", "notify_p", 1000, 4, False),
            ("lat.hi", "topic bl (notify=>true) -> listener at ~%d ev/s (%d producers, "
             "autocommit INSERTs)" % (LAT_HI_RATE, LAT_HI_PRODUCERS), "bl", "bl", LAT_HI_RATE,
             LAT_HI_PRODUCERS, True))
    for key, label, _, ch, _, _, _ in runs:
        fig(key + ".p50", label + ", p50 from commit-ack", "ms")
        fig(key + ".p99", label + ", p99 from commit-ack", "ms")
        if ch == "bl":
            fig(key + ".nps", label + ": notifications the listener received per second "
                "during the run", "notif/s")
    fig("lat.hi.rate", "same run: achieved commit rate of the producers", "events/s")
    for rnd in range(ROUNDS):
        for key, _, table, ch, rate, producers, auto in runs:
            try:
                r = latency_run(table, ch, rate=rate, producers=producers, autocommit=auto)
                if not r["ack"]:
                    raise BenchError("no notification received (%d sent)" % r["sent"])
                note = ("%d producers, ~%.0f ev/s, %d events, %d notifications, %d never announced; "
                        "from %s sent: p50 %.2f / p99 %.2f ms"
                        % (producers, r["rate"], r["sent"], r["notes"], r["missing"],
                           "INSERT" if auto else "COMMIT", pct(r["com"], 50), pct(r["com"], 99)))
                record(key + ".p50", rnd, pct(r["ack"], 50))
                record(key + ".p99", rnd, pct(r["ack"], 99))
                rnote(key + ".p50", rnd, note)
                if key + ".nps" in FIG:
                    record(key + ".nps", rnd, r["nps"])
                    rnote(key + ".nps", rnd, "%.1f events per notification"
                          % (r["rate"] / r["nps"]) if r["nps"] else "none during the run")
                if key == "lat.hi":
                    record("lat.hi.rate", rnd, r["rate"])
                    rnote("lat.hi.rate", rnd, "paced at %d/s by %d threads, autocommit INSERT -> "
                          "ack p50 %.2f ms" % (rate, producers, pct(r["commit"], 50)))
            except (psycopg2.Error, BenchError) as e:
                log("%s round %d: ERROR %s" % (key, rnd, short(e)))
                for k in (".p50", ".p99", ".nps", ".rate"):
                    if key + k in FIG:
                        record(key + k, rnd, error=short(e))


# ---------------------------------------------------------------- consumers 0.2

LOOP_SLEEP = 0.005                     # the work a consumer does per batch, in its transaction
LOOP_CAP = 100 / LOOP_SLEEP            # events/s one such consumer can reach at most


def prefill(table, n, chunk=100000):
    """Appends n events to a topic (INSERT .. SELECT in chunks, synchronous_commit off)."""
    conn = connect(sync="off")
    try:
        with conn.cursor() as cur:
            left = n
            while left > 0:
                k = min(left, chunk)
                cur.execute("INSERT INTO %s (key, payload) SELECT 'k' || k, %s::jsonb "
                            "FROM (SELECT g, 1 + floor(random() * 1000)::int AS k "
                            "FROM generate_series(1, %d) g) s"
                            % (table, PAYLOAD.format(u="g", k="k"), k))
                left -= k
    finally:
        conn.close()


def consumer_main(spec, ready, go, window, stop, result_q):
    """Child process: one consumer on its own connection.  spec: topic, group,
    batch; sleep (None: each consume in autocommit; else BEGIN; consume;
    SELECT pg_sleep(sleep); COMMIT); wait (the consume's wait, or None); wrap
    (when a consume returns nothing, seek the group back to the start); keep
    (return the ids of each batch); sync (its synchronous_commit, default on);
    cols (the select list over consume's rows, default id, key, payload,
    created_at; the first column is what keep returns).
    Starts at window[0], starts no loop after window[1] (0: runs until stop).
    Returns dict(done=[(end time, events)], ids=[(end time, [ids])], empty,
    empty_t (their times), wraps, error)."""
    res = dict(idx=spec["idx"], done=[], ids=[], empty=0, empty_t=[], wraps=0, error=None)
    conn = None
    try:
        for attempt in range(60):   # the server may be restarting after a crash
            try:
                conn = psycopg2.connect("", application_name=spec.get("app", "evbench-consumer"))
                break
            except psycopg2.OperationalError:
                if attempt == 59:
                    raise
                time.sleep(0.5)
        psycopg2.extras.register_default_jsonb(conn_or_curs=conn, loads=lambda s: s)
        xact = spec.get("sleep") is not None
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("SET statement_timeout = '15min'")
        cur.execute("SET synchronous_commit = %s", (spec.get("sync", "on"),))
        conn.autocommit = not xact
        args = [spec["topic"], spec["group"], spec["batch"]]
        q = ("SELECT " + spec.get("cols", "id, key, payload, created_at") +
             " FROM evstream.consume(%s, %s, %s")
        if spec.get("wait"):
            q += ", wait => %s::interval"
            args.append(spec["wait"])
        q += ")"
        ready.set()
        go.wait()
        t0, t1 = window[0], window[1]
        d = t0 - time.monotonic()
        if d > 0:
            time.sleep(d)
        while not stop.is_set() and (t1 == 0 or time.monotonic() < t1):
            cur.execute(q, args)
            rows = cur.fetchall()
            if xact:
                cur.execute("SELECT pg_sleep(%s)", (spec["sleep"],))
                conn.commit()
            now = time.monotonic()
            if rows:
                res["done"].append((now, len(rows)))
                if spec.get("keep"):
                    res["ids"].append((now, [r[0] for r in rows]))
            else:
                res["empty"] += 1
                res["empty_t"].append(now)
                if spec.get("wrap"):
                    cur.execute("SELECT evstream.seek(%s, %s, 0)", (spec["topic"], spec["group"]))
                    if xact:
                        conn.commit()
                    res["wraps"] += 1
    except psycopg2.Error as e:
        res["error"] = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    finally:
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass
    result_q.put(res)


class ConsumerPool:
    """Consumer processes (consumer_main), started together by start()."""

    def __init__(self, specs):
        ctx = mp.get_context("spawn")
        self.window = ctx.Array("d", 2)
        self.go, self.stop = ctx.Event(), ctx.Event()
        self.q = ctx.Queue()
        self.procs = []
        wait_ready()
        for i, s in enumerate(specs):
            ready = ctx.Event()
            p = ctx.Process(target=consumer_main, daemon=True,
                            args=(dict(s, idx=i), ready, self.go, self.window, self.stop, self.q))
            p.start()
            self.procs.append((p, ready))
        deadline = time.monotonic() + 60
        for p, ready in self.procs:
            while not ready.wait(0.2):
                if not p.is_alive() or time.monotonic() > deadline:
                    self.close()
                    raise BenchError("consumer process did not start")

    def start(self, secs=None, delay=0.3):
        """Starts every consumer at now + delay, for secs (None: until close());
        returns the window (t0, t1 or None)."""
        t0 = time.monotonic() + delay
        self.window[0] = t0
        self.window[1] = t0 + secs if secs else 0.0
        self.go.set()
        return t0, (t0 + secs if secs else None)

    def close(self, timeout=60):
        """Stops the consumers and returns their results, in spec order (None
        for one that died without reporting)."""
        self.stop.set()
        self.go.set()
        got = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.procs) and time.monotonic() < deadline:
            try:
                r = self.q.get(timeout=0.5)
                got[r["idx"]] = r
            except queue.Empty:
                if not any(p.is_alive() for p, _ in self.procs):
                    break
        for p, _ in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
        return [got.get(i) for i in range(len(self.procs))]


def make_groups(pairs):
    """Creates the (topic, group)s before a run, positioned where a new group
    starts (seek to 0): consumers starting together on a group nobody created
    yet get no rows while one of them creates it (SPEC), which is not what a
    run measures."""
    for topic, group in sorted(set(pairs)):
        DB.run("SELECT evstream.seek(%s, %s, 0)", (topic, group))


def pool_run(specs, secs):
    """Runs consumer processes for secs (their groups made first); returns
    (their results, t0, t1)."""
    make_groups((sp["topic"], sp["group"]) for sp in specs)
    pool = ConsumerPool(specs)
    try:
        t0, t1 = pool.start(secs)
        time.sleep(max(0.0, t1 - time.monotonic()))
    finally:
        res = pool.close()
    bad = [r for r in res if r is None or r["error"]]
    if bad:
        raise BenchError("consumer: " + (bad[0]["error"] if bad[0] else "died without a result"))
    return res, t0, t1


def in_window(r, t0, t1):
    return sum(n for t, n in r["done"] if t0 <= t <= t1)


def check_ids(results):
    """Ids delivered to one group: none twice, ascending within a batch.
    Returns a note about what is wrong, or None."""
    seen, dup, unordered = set(), 0, 0
    for r in results:
        for _, ids in r["ids"]:
            if any(a >= b for a, b in zip(ids, ids[1:])):
                unordered += 1
            for i in ids:
                if i in seen:
                    dup += 1
                seen.add(i)
    if dup or unordered:
        return "BUG? %d ids delivered twice, %d batches not in id order" % (dup, unordered)
    return None


def empty_note(results, t0):
    ts = sorted(t for r in results for t in r["empty_t"])
    return ("BUG? %d consumes returned no rows while events remained (no free shard?), "
            "at +%.0f .. +%.0f ms" % (len(ts), (ts[0] - t0) * 1000, (ts[-1] - t0) * 1000))


def loop_spec(topic, group, keep=True):
    return dict(topic=topic, group=group, batch=100, sleep=LOOP_SLEEP, keep=keep)


def c2_scaling(rnd):
    """8-shard topic, 1 vs 4 consumers of one group, 5 ms of work per batch."""
    for n in rotated([1, 4], rnd):
        key = "cs.p%d" % n
        try:
            prep([])
            res, t0, t1 = pool_run([loop_spec("bp8", "ps%d_r%d" % (n, rnd)) for _ in range(n)], T)
            got = sum(in_window(r, t0, t1) for r in res)
            notes = ["%d events in %d s" % (got, T)]
            if any(r["empty"] for r in res):
                notes.append(empty_note(res, t0))
            bad = check_ids(res)
            if bad:
                notes.append(bad)
            record(key, rnd, got / (t1 - t0))
            rnote(key, rnd, "; ".join(notes))
        except (psycopg2.Error, BenchError) as e:
            log("%s round %d: ERROR %s" % (key, rnd, short(e)))
            record(key, rnd, error=short(e))


def c2_consume_n(rnd):
    """N events in pages of 1000: one-shard topic, 8-shard topic, keyset baseline."""
    readers = [("cq.one", lambda: consume_evs(rnd, "bq1", "cq1_r%d" % rnd)),
               ("cq.s8", lambda: consume_evs(rnd, "bq8", "cq8_r%d" % rnd)),
               ("cq.keyset", lambda: consume_keyset(rnd))]
    for key, fn in rotated(readers, rnd):
        try:
            prep([])
            got, dt = timed(fn)
            if got < N:
                raise BenchError("read only %d of %d events" % (got, N))
            record(key, rnd, got / dt)
        except (psycopg2.Error, BenchError) as e:
            log("%s round %d: ERROR %s" % (key, rnd, short(e)))
            record(key, rnd, error=short(e))


def c2_longpoll(rnd, sync="on"):
    """Commit-ack to long-poll arrival at ~1000 events/s, one-shard topic; the
    consumer's own commits with synchronous_commit `sync`."""
    key = "lw" if sync == "on" else "lwo"
    try:
        secs = max(5, T)
        prep(["TRUNCATE bw1"])
        pool = ConsumerPool([dict(topic="bw1", group="%s_r%d" % (key, rnd), batch=1000,
                                  wait="1 s", keep=True, sync=sync)])
        try:
            pool.start()
            time.sleep(0.5)   # the consumer is in its first wait
            sent, achieved, errors = paced_inserts("bw1", 1000, secs, 4)
            time.sleep(1.5)
        finally:
            res = pool.close()
        if errors:
            raise BenchError("producer: " + short(errors[0]))
        r = res[0]
        if r is None or r["error"]:
            raise BenchError("consumer: " + (r["error"] if r else "died without a result"))
        arrived, dup = {}, 0
        for t, ids in r["ids"]:
            for i in ids:
                if i in arrived:
                    dup += 1
                arrived.setdefault(i, t)
        ack, missing = [], 0
        for eid, _, t1 in sent:
            ta = arrived.get(eid)
            if ta is None:
                missing += 1
            else:
                ack.append((ta - t1) * 1000)
        if not ack:
            raise BenchError("no event arrived (%d sent)" % len(sent))
        note = ("4 producers, ~%.0f ev/s, %d events in %d consumes, %d never arrived, "
                "max %.2f ms" % (achieved, len(sent), len(r["ids"]) + r["empty"], missing, max(ack)))
        if dup:
            note += "; BUG? %d ids delivered twice" % dup
        record(key + ".p50", rnd, pct(ack, 50))
        record(key + ".p99", rnd, pct(ack, 99))
        rnote(key + ".p50", rnd, note)
    except (psycopg2.Error, BenchError) as e:
        log("%s round %d: ERROR %s" % (key, rnd, short(e)))
        record(key + ".p50", rnd, error=short(e))
        record(key + ".p99", rnd, error=short(e))


def c2_longpoll_async(rnd):
    c2_longpoll(rnd, "off")


class Waiters:
    """n sessions (threads, own connections) looping SELECT count(*) FROM
    evstream.consume(topic, group, 1000, wait => '10 s') in autocommit until
    close() cancels them."""

    def __init__(self, n, topic, group):
        self.stop = threading.Event()
        self.calls, self.events, self.errors = [0] * n, [0] * n, []
        self.conns = [connect(app="evbench-waiter") for _ in range(n)]
        self.threads = [threading.Thread(target=self.run, args=(i, topic, group), daemon=True)
                        for i in range(n)]
        for th in self.threads:
            th.start()

    def run(self, i, topic, group):
        q = "SELECT count(*) FROM evstream.consume(%s, %s, 1000, wait => '10 s')"
        try:
            with self.conns[i].cursor() as cur:
                while not self.stop.is_set():
                    try:
                        cur.execute(q, (topic, group))
                        self.events[i] += cur.fetchone()[0]
                        self.calls[i] += 1
                    except psycopg2.extensions.QueryCanceledError:
                        if not self.stop.is_set():
                            raise
        except psycopg2.Error as e:
            self.errors.append(short(e))

    def waiting(self, timeout=10):
        """How many of them sit in the wait (wait_event_type Extension), once
        all do or after timeout."""
        deadline = time.monotonic() + timeout
        n = 0
        while time.monotonic() < deadline:
            n = DB.one("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                       "'evbench-waiter' AND wait_event_type = 'Extension'")
            if n >= len(self.conns) or self.errors:
                break
            time.sleep(0.1)
        return n

    def close(self):
        self.stop.set()
        deadline = time.monotonic() + 20
        while any(th.is_alive() for th in self.threads) and time.monotonic() < deadline:
            for c, th in zip(self.conns, self.threads):
                if th.is_alive():
                    try:
                        c.cancel()
                    except psycopg2.Error:
                        pass
            for th in self.threads:
                th.join(0.5)
        stuck = sum(th.is_alive() for th in self.threads)
        for c in self.conns:
            try:
                c.close()
            except psycopg2.Error:
                pass
        if stuck:
            self.errors.append("%d waiters did not return after cancel" % stuck)


def c2_waiters(rnd):
    """pgbench single-row INSERT into an 8-shard topic: alone, with 8 long polls
    on an idle topic, with 8 long polls on the producers' topic."""
    variants = [("lp.none", None), ("lp.idle", "bwi"), ("lp.live", "bw8")]
    for key, topic in rotated(variants, rnd):
        w = None
        try:
            prep(["TRUNCATE bw8"])
            note = None
            if topic:
                group = "%s_r%d" % (key.replace(".", "_"), rnd)
                make_groups([(topic, group)])
                w = Waiters(8, topic, group)
                n = w.waiting()
                if w.errors:
                    raise BenchError("waiter: " + w.errors[0])
                note = "%d of 8 waiting before the run" % n
            r = pgbench(key + ".r%d" % rnd, ins_script("bw8"))
            if w:
                w.close()
                if w.errors:
                    raise BenchError("waiter: " + w.errors[0])
                note += "; meanwhile they made %d consume calls, got %d events" % (
                    sum(w.calls), sum(w.events))
                w = None
            record(key, rnd, r["tps"], waits=r["waits"])
            if note:
                rnote(key, rnd, note)
        except (psycopg2.Error, BenchError) as e:
            log("%s round %d: ERROR %s" % (key, rnd, short(e)))
            record(key, rnd, error=short(e))
        finally:
            if w:
                w.close()


def c2_fanout(rnd):
    """One-shard topic: 1 group vs 5 groups, one consumer each, the scaling loop."""
    for n in rotated([1, 5], rnd):
        key = "fo.g%d" % n
        try:
            prep([])
            res, t0, t1 = pool_run([loop_spec("bf1", "fo%d_%d_r%d" % (n, i, rnd))
                                    for i in range(n)], T)
            per = [in_window(r, t0, t1) / (t1 - t0) for r in res]
            notes = []
            if n > 1:
                notes.append("per group min %s / max %s events/s" % (fmt(min(per), "events/s"),
                                                                    fmt(max(per), "events/s")))
            if any(r["empty"] for r in res):
                notes.append(empty_note(res, t0))
            bads = [b for b in (check_ids([r]) for r in res) if b]
            if bads:
                notes.append(bads[0])
            record(key, rnd, statistics.mean(per))
            if notes:
                rnote(key, rnd, "; ".join(notes))
        except (psycopg2.Error, BenchError) as e:
            log("%s round %d: ERROR %s" % (key, rnd, short(e)))
            record(key, rnd, error=short(e))


def c2_horizon(rnd):
    """consume(.., 100) in autocommit for HORIZON_S s while a transaction holds
    the xmin horizon: the last window's throughput against the first's."""
    holder = None
    try:
        prep([])
        size0 = DB.one("SELECT pg_total_relation_size('evstream._position')")
        holder = connect(autocommit=False, app="evbench-horizon")
        with holder.cursor() as cur:
            cur.execute("SELECT txid_current()")
            xid = cur.fetchone()[0]
        res, t0, t1 = pool_run([dict(topic="bh1", group="hz_r%d" % rnd, batch=100, wrap=True)],
                               HORIZON_S)
        r = res[0]
        held = DB.one("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                      "'evbench-horizon' AND state = 'idle in transaction'")
        size1 = DB.one("SELECT pg_total_relation_size('evstream._position')")
        w = min(10.0, HORIZON_S / 3.0)
        first = in_window(r, t0, t0 + w) / w
        last = in_window(r, t1 - w, t1) / w
        record("hz.first", rnd, first)
        record("hz.last", rnd, last)
        rnote("hz.last", rnd, "windows of %.0f s of a %d s run; %d wraps (seek to the start); "
              "xid %s held%s; evstream._position %d -> %d kB"
              % (w, HORIZON_S, r["wraps"], xid, "" if held else " (NOT idle in transaction at "
                 "the end?)", size0 // 1024, size1 // 1024))
    except (psycopg2.Error, BenchError) as e:
        log("horizon round %d: ERROR %s" % (rnd, short(e)))
        record("hz.first", rnd, error=short(e))
        record("hz.last", rnd, error=short(e))
    finally:
        if holder is not None:
            holder.close()


def phase_consumers2():
    """Consumers 0.2: shards, parallel consume, long poll, fan-out, horizon (issue 9)."""
    log("phase consumers2: parallel consume, consume %d, long poll, waiters, fan-out, "
        "held horizon (%d s)" % (N, HORIZON_S))
    for n in (1, 4):
        fig("cs.p%d" % n, "8-shard topic, %d consumer process%s of one group: BEGIN; consume(.., 100); "
            "pg_sleep(0.005); COMMIT" % (n, "" if n == 1 else "es"), "events/s")
    fig("cq.one", "consume %d: one-shard topic, evstream.consume(.., 1000), 1 txn/page" % N, "events/s")
    fig("cq.s8", "consume %d: 8-shard topic, 1 consumer, evstream.consume(.., 1000), 1 txn/page"
        % N, "events/s")
    fig("cq.keyset", "consume %d: keyset id > $last LIMIT 1000 + UPDATE position, 1 txn/page" % N,
        "events/s")
    fig("lw.p50", "long poll consume(.., 1000, wait => '1 s') at ~1000 ev/s, p50 from commit-ack", "ms")
    fig("lw.p99", "long poll consume(.., 1000, wait => '1 s') at ~1000 ev/s, p99 from commit-ack", "ms")
    fig("lwo.p50", "same, the consumer with synchronous_commit off (no WAL flush wait), p50", "ms",
        "on, consumer off")
    fig("lwo.p99", "same, the consumer with synchronous_commit off (no WAL flush wait), p99", "ms",
        "on, consumer off")
    fig("lp.none", "INSERT 1 row/txn: 8-shard topic, no consumer", "TPS")
    fig("lp.idle", "INSERT 1 row/txn: 8-shard topic, 8 sessions in consume(.., wait => '10 s') "
        "on an idle 8-shard topic", "TPS")
    fig("lp.live", "INSERT 1 row/txn: 8-shard topic, 8 sessions in consume(.., wait => '10 s') "
        "on that topic (one group)", "TPS")
    fig("fo.g1", "one-shard topic, 1 group, 1 consumer, 5 ms/txn loop", "events/s")
    fig("fo.g5", "one-shard topic, 5 groups, 1 consumer each, per group (mean)", "events/s")
    fig("hz.first", "consume(.., 100) autocommit, a txn holds the horizon: first window", "events/s")
    fig("hz.last", "same, last window", "events/s")

    # the topics, once: every run reads them with a fresh group
    fills = [("bp8", int(1.5 * 4 * LOOP_CAP * T)), ("bf1", int(1.5 * LOOP_CAP * T)),
             ("bh1", 200000)]
    try:
        datafile = events_file()
        DB.run("TRUNCATE plain_c")
        for t in ("plain_c", "bq1", "bq8"):
            DB.run("COPY %s (key, payload) FROM '%s'" % (t, datafile))
        for t, n in fills:
            prefill(t, n)
        for t in ("plain_c", "bq1", "bq8", "bp8", "bf1", "bh1"):
            DB.run("SELECT count(*) FROM %s" % t)   # hint bits, before any timed read
    except psycopg2.Error as e:
        log("consumers2: cannot fill the topics: %s" % short(e))
        for k in FIG:
            if k.split(".")[0] in ("cs", "cq", "lw", "lwo", "lp", "fo", "hz"):
                record(k, 0, error="filling the topics: " + short(e))
        return
    for rnd in range(ROUNDS):
        for case in rotated([c2_scaling, c2_consume_n, c2_longpoll, c2_longpoll_async,
                             c2_waiters, c2_fanout, c2_horizon], rnd):
            case(rnd)


# ---------------------------------------------------------------- continuous transforms 0.2

TF_N = max(1000, N // 10)      # source events of the flatMap case
TF_WORDS = 5                   # output events per source event there
TF_POLL = 0.05                 # s between two looks at a transform's progress
FLAT_Q = ("SELECT w, jsonb_build_object('w', w) FROM events, "
          "regexp_split_to_table(payload->>'words', ' ') w")
HAND_Q = ("WITH e AS (SELECT * FROM evstream.consume('tff', %s, 1000)) "
          "INSERT INTO tfho (key, payload) SELECT w, jsonb_build_object('w', w) "
          "FROM e, regexp_split_to_table(e.payload->>'words', ' ') w")
MAP_SRC_Q = "SELECT key, payload || jsonb_build_object('src', id) FROM events"
MAP_Q = "SELECT key, payload FROM events"


def tf_workers():
    return DB.one("SELECT count(*) FROM pg_stat_activity "
                  "WHERE backend_type = 'evstream transform worker'")


def tf_exists(rel):
    return DB.one("SELECT to_regclass(%s) IS NOT NULL", (rel,))


def tf_drop(name):
    try:
        DB.run("SELECT evstream.drop_transform(%s)", (name,))
    except psycopg2.Error as e:
        log("drop_transform(%s): %s" % (name, short(e)))


def tf_progress(source, name):
    """(committed_id, lag_events, paused, last_error) of a transform."""
    g = DB.run("SELECT committed_id, lag_events FROM evstream.consumer_groups "
               "WHERE topic = %s::regclass AND consumer_group = %s", (source, name))
    x = DB.run("SELECT paused, last_error FROM evstream._transform WHERE name = %s", (name,))
    if not x:
        raise BenchError("transform %s is gone" % name)
    return (g[0][0] if g else None, g[0][1] if g else None, x[0][0], x[0][1])


def tf_wait(source, name, timeout):
    """Polls a transform every TF_POLL s until its group has no lag; returns
    (time done, most transform workers seen, last_error seen).  A paused
    transform or the timeout raises BenchError."""
    deadline = time.monotonic() + timeout
    workers, err, i = 0, None, 0
    while True:
        now = time.monotonic()
        _, lag, paused, last_error = tf_progress(source, name)
        err = last_error or err
        if i % 10 == 0 or lag == 0:
            workers = max(workers, tf_workers())
        i += 1
        if paused:
            raise BenchError("transform %s paused: %s" % (name, last_error))
        if lag == 0:
            return now, workers, err
        if now > deadline:
            raise BenchError("transform %s: lag %s after %.0f s (%d worker(s), last_error %s)"
                             % (name, lag, timeout, workers, last_error))
        time.sleep(TF_POLL)


def tf_wait_rows(table, n, timeout=30):
    """Waits until table has at least n rows (the warm-up event went through)."""
    deadline = time.monotonic() + timeout
    while DB.one("SELECT count(*) FROM %s" % table) < n:
        if time.monotonic() > deadline:
            raise BenchError("%s: the warm-up event did not come through in %d s (%d transform "
                             "worker(s))" % (table, timeout, tf_workers()))
        time.sleep(TF_POLL)


def tf_batches(output):
    """Transactions that wrote output: its events of one transaction share
    created_at (now())."""
    return DB.one("SELECT count(DISTINCT created_at) FROM %s" % output)


def tf_warm(source, output):
    """One event through the new transform, so its worker runs it before a run."""
    DB.run("INSERT INTO %s (key, payload) VALUES ('warmup', '{}')" % source)
    t0 = time.monotonic()
    tf_wait_rows(output, 1)
    return time.monotonic() - t0


def tf_workers_gone(timeout=20):
    """After drop_transform: waits until the idle transform workers left (about
    10 s), so the next run does not share the CPUs with them."""
    deadline = time.monotonic() + timeout
    n = tf_workers()
    while n and time.monotonic() < deadline:
        time.sleep(0.2)
        n = tf_workers()
    return n


def tf_flat_transform(key, rnd):
    """The flatMap as a transform: from create_transform to a lag of 0."""
    name = "tf_flat_r%d" % rnd
    w0 = tf_workers()
    t0 = time.monotonic()
    made = DB.run("SELECT evstream.create_transform(%s, 'tff', %s, 'tffo', batch => 1000), "
                  "clock_timestamp()", (name, FLAT_Q))[0][1]
    try:
        t1, workers, err = tf_wait("tff", name, 600)
    finally:
        tf_drop(name)
    out = DB.one("SELECT count(*) FROM tffo")
    if out != TF_WORDS * TF_N:
        raise BenchError("BUG? tffo has %d events, %d expected" % (out, TF_WORDS * TF_N))
    dt = t1 - t0
    record(key, rnd, TF_N / dt)
    # the batches' own pace, from the server's clock: a batch's output events
    # have its transaction's start as created_at; between the first batch's
    # start and the last's, all batches but the last ran
    nb, b0, bn, last = DB.run(
        "SELECT count(DISTINCT created_at), extract(epoch FROM min(created_at) - %s), "
        "extract(epoch FROM max(created_at) - min(created_at)), "
        "count(*) FILTER (WHERE created_at = (SELECT max(created_at) FROM tffo)) FROM tffo",
        (made,))[0]
    if nb > 1 and bn > 0:
        record("tf.run", rnd, (TF_N - last / TF_WORDS) / float(bn))
    note = ("%d -> %d events in %.2f s, %d batches; the first began %.0f ms after create_transform"
            % (TF_N, out, dt, nb, float(b0) * 1000))
    note += "; %d transform worker(s) before, %d seen during" % (w0, workers)
    if err:
        note += "; last_error: " + err[:80]
    rnote(key, rnd, note)


def tf_flat_hand(key, rnd):
    """The same flatMap by hand: one client, autocommit statements of 1000 events."""
    group = "tf_hand_r%d" % rnd
    make_groups([("tff", group)])
    conn = connect()
    stmts = 0
    try:
        with conn.cursor() as cur:
            t0 = time.monotonic()
            deadline = t0 + 600
            while True:
                cur.execute(HAND_Q, (group,))
                stmts += 1
                if cur.rowcount == 0:
                    break
                if time.monotonic() > deadline:
                    raise BenchError("hand loop: not done after 600 s")
            dt = time.monotonic() - t0
    finally:
        conn.close()
    out = DB.one("SELECT count(*) FROM tfho")
    if out != TF_WORDS * TF_N:
        raise BenchError("tfho has %d events, %d expected" % (out, TF_WORDS * TF_N))
    record(key, rnd, TF_N / dt)
    rnote(key, rnd, "%d -> %d events in %.2f s, %d statements" % (TF_N, out, dt, stmts))


def tf_flatmap(rnd):
    """flatMap 1 -> 5 over the prefilled tff: a transform against the hand loop."""
    for key, fn in rotated([("tf.flat", tf_flat_transform), ("tf.hand", tf_flat_hand)], rnd):
        try:
            prep(["TRUNCATE tffo", "TRUNCATE tfho"])
            fn(key, rnd)
        except (psycopg2.Error, BenchError) as e:
            log("%s round %d: ERROR %s" % (key, rnd, short(e)))
            record(key, rnd, error=short(e))


def tf_latency(rnd):
    """Commit-ack of a source event to its arrival at a long-poll consumer of
    the 1:1 transform's output, ~1000 events/s."""
    name = "tf_lat_r%d" % rnd
    made = False
    try:
        secs = max(5, T)
        prep(["TRUNCATE tfl"] + (["TRUNCATE tflo"] if tf_exists("tflo") else []))
        DB.run("SELECT evstream.create_transform(%s, 'tfl', %s, 'tflo')", (name, MAP_SRC_Q))
        made = True
        warm = tf_warm("tfl", "tflo")
        pool = ConsumerPool([dict(topic="tflo", group="tl_r%d" % rnd, batch=1000, wait="1 s",
                                  keep=True, cols="(payload->>'src')::bigint")])
        try:
            pool.start()
            time.sleep(0.5)   # the consumer is in its first wait
            sent, achieved, errors = paced_inserts("tfl", 1000, secs, 4)
            lag_end = tf_progress("tfl", name)[1]
            _, workers, err = tf_wait("tfl", name, 60)
            time.sleep(1.5)
        finally:
            res = pool.close()
        if errors:
            raise BenchError("producer: " + short(errors[0]))
        r = res[0]
        if r is None or r["error"]:
            raise BenchError("consumer: " + (r["error"] if r else "died without a result"))
        arrived, dup = {}, 0
        for t, ids in r["ids"]:
            for i in ids:
                if i in arrived:
                    dup += 1
                arrived.setdefault(i, t)
        ack, missing = [], 0
        for eid, _, t1 in sent:
            ta = arrived.get(eid)
            if ta is None:
                missing += 1
            else:
                ack.append((ta - t1) * 1000)
        if not ack:
            raise BenchError("no event arrived (%d sent)" % len(sent))
        note = ("4 producers, ~%.0f ev/s, %d events, %d consumes, %d never arrived, max %.2f ms; "
                "transform lag %s at the producers' end, %d batches; warm-up event through in "
                "%.0f ms; %d transform worker(s)"
                % (achieved, len(sent), len(r["ids"]) + r["empty"], missing, max(ack),
                   lag_end, tf_batches("tflo"), warm * 1000, workers))
        if dup:
            note += "; BUG? %d source ids arrived twice" % dup
        if err:
            note += "; last_error: " + err[:80]
        record("tl.p50", rnd, pct(ack, 50))
        record("tl.p99", rnd, pct(ack, 99))
        rnote("tl.p50", rnd, note)
    except (psycopg2.Error, BenchError) as e:
        log("tl round %d: ERROR %s" % (rnd, short(e)))
        record("tl.p50", rnd, error=short(e))
        record("tl.p99", rnd, error=short(e))
    finally:
        if made:
            tf_drop(name)


def tf_producers(rnd):
    """pgbench single-row INSERT into tfp with a running 1:1 transform, and
    without one."""
    for key, with_tf in rotated([("tp.none", False), ("tp.with", True)], rnd):
        name = "tf_prod_r%d" % rnd
        made = False
        try:
            left = tf_workers_gone()
            prep(["TRUNCATE tfp"] + (["TRUNCATE tfpo"] if tf_exists("tfpo") else []))
            note = ("%d idle transform worker(s) still there" % left) if left else None
            if with_tf:
                DB.run("SELECT evstream.create_transform(%s, 'tfp', %s, 'tfpo')", (name, MAP_Q))
                made = True
                tf_warm("tfp", "tfpo")
            r = pgbench(key + ".r%d" % rnd, ins_script("tfp"))
            if with_tf:
                lag = tf_progress("tfp", name)[1]
                t0 = time.monotonic()
                t1, workers, err = tf_wait("tfp", name, 120)
                src = DB.one("SELECT count(*) FROM tfp")
                out = DB.one("SELECT count(*) FROM tfpo")
                nb = tf_batches("tfpo")
                note = ("transform lag %s events at the end of the run, caught up in %.1f s; "
                        "%d batches (%.1f events each); %d transform worker(s)"
                        % (lag, t1 - t0, nb, out / max(1, nb), workers))
                if out != src:
                    note += "; BUG? tfpo has %d events, tfp %d" % (out, src)
                if err:
                    note += "; last_error: " + err[:80]
            record(key, rnd, r["tps"], waits=r["waits"])
            if note:
                rnote(key, rnd, note)
        except (psycopg2.Error, BenchError) as e:
            log("%s round %d: ERROR %s" % (key, rnd, short(e)))
            record(key, rnd, error=short(e))
        finally:
            if made:
                tf_drop(name)


def phase_transforms():
    """Continuous transforms 0.2: flatMap throughput, latency, producer cost (issue 11)."""
    log("phase transforms: flatMap of %d events, latency at ~1000 ev/s, producers" % TF_N)
    try:
        mtw = DB.one("SHOW evstream.max_transform_workers")
    except psycopg2.Error:
        mtw = "?"
    fig("tf.flat", "flatMap 1 -> %d, %d source events: transform (batch => 1000, "
        "max_transform_workers = %s, one-shard source), create_transform to lag 0"
        % (TF_WORDS, TF_N, mtw), "events/s")
    fig("tf.run", "same transform, its batches' pace: batches 1..n-1 from the first's start "
        "to the last's (server created_at), i.e. without the worker start-up", "events/s")
    fig("tf.hand", "same by hand: 1 client looping WITH e AS (consume(.., 1000)) INSERT INTO "
        "topic .. regexp_split_to_table, autocommit, until empty", "events/s")
    fig("tl.p50", "1:1 transform at ~1000 ev/s: source commit-ack -> long poll "
        "consume(output, .., wait => '1 s') gets it, p50", "ms")
    fig("tl.p99", "same, p99", "ms")
    fig("tp.none", "INSERT 1 row/txn: topic, no transform", "TPS")
    fig("tp.with", "INSERT 1 row/txn: same topic with a running 1:1 transform "
        "(max_transform_workers = %s)" % mtw, "TPS")

    # the flatMap source, once: every run reads it with a fresh group
    fill_err = None
    try:
        conn = connect(sync="off")
        try:
            with conn.cursor() as cur:
                left = TF_N
                while left > 0:
                    k = min(left, 100000)
                    cur.execute("INSERT INTO tff (key, payload) SELECT 'k' || k, "
                                "jsonb_build_object('words', concat_ws(' ', 'a' || k, 'b' || k, "
                                "'c' || k, 'd' || k, 'e' || k), 'user', g) "
                                "FROM (SELECT g, 1 + floor(random() * 1000)::int AS k "
                                "FROM generate_series(1, %d) g) s" % k)
                    left -= k
        finally:
            conn.close()
        DB.run("SELECT count(*) FROM tff")   # hint bits, before any timed read
    except psycopg2.Error as e:
        log("transforms: cannot fill tff: %s" % short(e))
        fill_err = "filling tff: " + short(e)
    try:
        for rnd in range(ROUNDS):
            cases = [tf_latency, tf_producers]
            if fill_err:
                for k in ("tf.flat", "tf.hand"):
                    record(k, rnd, error=fill_err)
            else:
                cases.insert(0, tf_flatmap)
            for case in rotated(cases, rnd):
                case(rnd)
    finally:
        try:   # none left running for the phases after
            for (name,) in DB.run("SELECT name FROM evstream._transform WHERE name LIKE 'tf\\_%'"):
                tf_drop(name)
        except psycopg2.Error:
            pass


# ---------------------------------------------------------------- aggregates v2

A2_PRODUCERS = 4       # divides 1000: each key of the latency case has one producer


def a2_row(base):
    """Events of the change-event latency case: a globally unique seq (base +
    i * producers + me) whose key k<1 + seq % 1000> belongs to one producer
    thread, so per key the events commit in seq order and an output event of
    that key with last_seq >= s stands for every event of the key up to s."""
    def row(me, i):
        seq = base + i * A2_PRODUCERS + me
        return ("k%d" % (1 + seq % 1000),
                '{"seq": %d, "amount": %d.%02d, "country": "de", "ts": %.6f}'
                % (seq, seq % 200, seq % 100, time.time()), seq)
    return row


def a2_latency(rnd):
    """Commit-ack of an event to the arrival of the change event carrying it
    in the aggregate's output topic, ~1000 events/s, 1000 keys."""
    key = "a2.lat"
    try:
        secs = max(5, T)
        prep(["TRUNCATE bvl"] + (["TRUNCATE bvlo"] if tf_exists("bvlo") else []))
        base = (rnd + 1) * 10 ** 9   # above every seq of an earlier round (max is all-time)
        # one warm-up event through the merge, so the worker is at it before the run
        t0 = time.monotonic()
        DB.run("INSERT INTO bvl (key, payload) VALUES ('warmup', '{\"seq\": -1, \"amount\": 0}')")
        deadline = t0 + 30
        while not DB.one("SELECT count(*) FROM bvlo"):
            if time.monotonic() > deadline:
                raise BenchError("no change event in bvlo 30 s after the warm-up event")
            time.sleep(TF_POLL)
        warm = time.monotonic() - t0
        pool = ConsumerPool([dict(topic="bvlo", group="a2l_r%d" % rnd, batch=1000, wait="1 s",
                                  keep=True, cols="(payload->>'last_seq')::bigint")])
        try:
            pool.start()
            time.sleep(0.5)   # the consumer is in its first wait
            sent, achieved, errors = paced_inserts("bvl", 1000, secs, A2_PRODUCERS,
                                                   row=a2_row(base))
            time.sleep(1.5)
        finally:
            res = pool.close()
        if errors:
            raise BenchError("producer: " + short(errors[0]))
        r = res[0]
        if r is None or r["error"]:
            raise BenchError("consumer: " + (r["error"] if r else "died without a result"))
        # per key: arrival times and the running max of last_seq, in arrival order
        arr, back, nout = {}, 0, 0
        for t, vals in r["ids"]:
            for v in vals:
                nout += 1
                if v is None or v < base:
                    continue
                g = v % 1000
                ts, hi = arr.setdefault(g, ([], []))
                if hi and v <= hi[-1]:
                    back += 1      # a value repeated or went back in the output topic
                ts.append(t)
                hi.append(max(v, hi[-1]) if hi else v)
        ack, com, missing = [], [], 0
        for seq, ts0, ts1 in sent:
            a = arr.get(seq % 1000)
            j = bisect.bisect_left(a[1], seq) if a else 0
            if not a or j >= len(a[1]):
                missing += 1
                continue
            ack.append((a[0][j] - ts1) * 1000)
            com.append((a[0][j] - ts0) * 1000)
        if not ack:
            raise BenchError("no change event carried any of the %d events" % len(sent))
        note = ("%d producers, ~%.0f ev/s, %d events, %d change events (%.1f events each) in %d "
                "consumes, %d never carried; from COMMIT sent p50 %.1f / p99 %.1f ms, max %.1f ms; "
                "warm-up event through in %.0f ms"
                % (A2_PRODUCERS, achieved, len(sent), nout, len(sent) / max(1, nout),
                   len(r["ids"]) + r["empty"], missing, pct(com, 50), pct(com, 99), max(ack),
                   warm * 1000))
        if back:
            note += "; BUG? %d change events repeated or went back (last_seq)" % back
        record(key + ".p50", rnd, pct(ack, 50))
        record(key + ".p99", rnd, pct(ack, 99))
        rnote(key + ".p50", rnd, note)
    except (psycopg2.Error, BenchError) as e:
        log("%s round %d: ERROR %s" % (key, rnd, short(e)))
        record(key + ".p50", rnd, error=short(e))
        record(key + ".p99", rnd, error=short(e))


def phase_aggregates2():
    """Aggregates v2 (issue 10): producers with 3 measures, a hot group, hopping
    windows, commit -> change event in the output topic."""
    log("phase aggregates2: measures, hot group, hopping windows, change-event latency")
    # a case whose topic or aggregate could not be made is an ERROR, not a
    # run on a topic without its aggregate
    pairs = [
        (("a2.ins.none", "INSERT 1 row/txn: topic bv0 (no aggregate)", ins_script("bv0"), ["bv0"]),
         ("a2.ins.m3", "INSERT 1 row/txn: topic + 1 aggregate of 3 measures (sum, max, avg; "
          "1000 keys)", ins_script("bv3"), ["bv3"])),
        (("a2.hot.m3", "hot key, 5 ms/txn: topic + aggregate of 3 measures, ONE key",
          sleep_script("bv3", True), ["bv3"]),
         ("a2.dist.m3", "hot key, 5 ms/txn: topic + aggregate of 3 measures, 1000 keys",
          sleep_script("bv3", False), ["bv3"])),
        (("a2.tumble", "INSERT 1 row/txn: topic + aggregate of 3 measures, bucket 1 min "
          "(tumbling, 1000 keys)", ins_script("bvt"), ["bvt"]),
         ("a2.hop", "INSERT 1 row/txn: topic + aggregate of 3 measures, bucket 1 h hop 1 min "
          "(60 windows per event, 1000 keys)", ins_script("bvh"), ["bvh"])),
    ]
    for pair in pairs:
        for key, label, _, _ in pair:
            fig(key, label, "TPS")
    fig("a2.lat.p50", "aggregate of 3 measures with output_topic, ~1000 ev/s, 1000 keys: "
        "commit-ack -> long poll consume(output, .., wait => '1 s') gets the change event "
        "carrying it, p50", "ms")
    fig("a2.lat.p99", "same, p99", "ms")
    for rnd in range(ROUNDS):
        for item in rotated(pairs + ["latency"], rnd):
            if item == "latency":
                if "bvl" in SETUP_ERR:
                    for k in ("a2.lat.p50", "a2.lat.p99"):
                        record(k, rnd, error="setup: " + SETUP_ERR["bvl"])
                else:
                    a2_latency(rnd)
                continue
            # both sides of a ratio back to back, their order alternating by round
            for key, _, script, trunc in (item if rnd % 2 == 0 else item[::-1]):
                if trunc[0] in SETUP_ERR:
                    record(key, rnd, error="setup: " + SETUP_ERR[trunc[0]])
                    continue
                run_pgbench_case(key, rnd, script, trunc)


# ---------------------------------------------------------------- the table

def ratio(num, den):
    a, b = FIG.get(num), FIG.get(den)
    if not a or not b:
        return None, []
    per = []
    for r in sorted(set(a.runs) | set(b.runs)):
        x, y = a.runs.get(r), b.runs.get(r)
        if x is not None and y:
            per.append(x / y)
    return (statistics.median(per) if per else None), per


def fmt(v, unit=""):
    if v is None:
        return "ERROR"
    if unit in ("TPS", "rows/s", "events/s", "rows"):
        return "{:,.0f}".format(v)
    if unit in ("µs/call", "µs"):
        return "%.1f" % v
    if unit == "ms":
        return "%.2f" % v
    if unit == "notif/s":
        return "{:,.1f}".format(v)
    return "%.3f" % v


ROWS = []   # (id, measure, sync, value, unit, per round, target, result, notes)


def add_fig(rid, key, target=None, ok=None, extra_note=""):
    f = FIG.get(key)
    if f is None:
        return
    m = f.median()
    per = ", ".join(fmt(f.runs[r], f.unit) for r in sorted(f.runs))
    notes = list(f.notes)
    if f.rnotes:
        rn = [f.rnotes[r] for r in sorted(f.rnotes)]
        notes.append(rn[0] if len(set(rn)) == 1 else
                     "by round: " + " / ".join("r%d: %s" % (r + 1, f.rnotes[r]) for r in sorted(f.rnotes)))
    if f.waits:
        notes.append("waits: " + top_waits(f.waits, 2))
    if f.errors:
        notes.append("error: " + f.errors[-1])
    if extra_note:
        notes.append(extra_note)
    res = "—"
    if target and ok:    # a target without a test is "info"
        res = "ERROR" if m is None else ("PASS" if ok(m) else "MISS")
    ROWS.append((rid, f.label, f.sync, fmt(m, f.unit), f.unit, per, target or "—", res,
                 "; ".join(notes)))


def add_ratio(rid, label, num, den, sync="on", target=None, info=None):
    if num not in FIG and den not in FIG:
        return      # its phase was not in BENCH_CASES: no row, not an ERROR
    v, per = ratio(num, den)
    res = "—"
    tgt = info or "—"
    if target is not None:
        tgt = "≥ %.2f" % target + (" (%s)" % info if info else "")
        res = "ERROR" if v is None else ("PASS" if v >= target else "MISS")
    errs = [e for k in (num, den) if k in FIG for e in FIG[k].errors]
    ROWS.append((rid, "**ratio** " + label, sync, fmt(v), "×", ", ".join("%.3f" % x for x in per),
                 tgt, res, ("error: " + errs[-1]) if (v is None and errs) else ""))


def deadlock_row(rid, key, label):
    """Deadlocks (pg_stat_database) + failed transactions of a multi-row case, all rounds."""
    f = FIG.get(key)
    if f is None:
        return
    dl = getattr(f, "deadlocks", None)
    fl = getattr(f, "fails", 0)
    rt = getattr(f, "retries", 0)
    bad = None if (dl is None or f.median() is None) else dl + fl
    ROWS.append((rid, label, "on", "ERROR" if bad is None else str(bad), "count", "", "= 0",
                 "ERROR" if bad is None else ("PASS" if bad == 0 else "MISS"),
                 "" if bad is None else "%d deadlocks, %d failed, %d retried" % (dl, fl, rt)))


def section(title):
    ROWS.append(("", "**%s**" % title, "", "", "", "", "", "", ""))


def build_table():
    section("issue 2 — core log: produce, COPY, consume, stable_id")
    for s in ("on", "off"):
        add_fig("2.1", "ins.topic." + s)
        add_fig("2.1", "ins.part." + s)
        add_fig("2.1", "ins.pgq." + s)
    for s in ("on", "off"):
        if s == "off":
            add_ratio("2.2", "topic / plain partitioned", "ins.topic." + s, "ins.part." + s, s, 0.97,
                      "issue 12; issue 2 asked 0.90")
        else:
            add_ratio("2.2", "topic / plain partitioned", "ins.topic." + s, "ins.part." + s, s, 0.90)
    for s in ("on", "off"):
        add_ratio("2.3", "topic / pgq.insert_event", "ins.topic." + s, "ins.pgq." + s, s, 1.3)
    for s in ("on", "off"):
        add_ratio("2.4", "pgq.insert_event / plain partitioned", "ins.pgq." + s, "ins.part." + s, s,
                  info="info: BENCH.md 0.67–0.72")
    add_fig("2.5", "copy.part")
    add_fig("2.5", "copy.topic")
    add_ratio("2.6", "COPY: topic / plain partitioned", "copy.topic", "copy.part", "on", 0.95,
              info="issue 12; issue 2 asked 0.85")
    add_fig("2.7", "cons.evs")
    add_fig("2.7", "cons.keyset")
    add_fig("2.7", "cons.pgq")
    add_ratio("2.8", "consume: evstream / keyset + position UPDATE", "cons.evs", "cons.keyset", "on", 0.8)
    add_ratio("2.8", "consume: evstream / PgQ consumer", "cons.evs", "cons.pgq", "on", 1.4)
    add_ratio("2.8", "consume: PgQ / keyset + position UPDATE", "cons.pgq", "cons.keyset", "on",
              info="info: BENCH.md ~0.6")
    add_fig("2.9", "sid.idle")
    add_fig("2.9", "sid.load", "≤ 50 µs (µs, not a scan)", lambda m: m <= 50)
    add_fig("2.9", "sid.noop")
    add_fig("2.9", "sid.tps")

    section("issue 3 — continuous aggregates")
    add_fig("3.1", "ins.agg")
    add_fig("3.1", "ins.naive")
    add_ratio("3.2", "topic + aggregate / same topic without (1000 keys)", "ins.agg", "ins.topic.on",
              "on", 0.85)
    add_ratio("3.2", "naive row trigger / plain partitioned", "ins.naive", "ins.part.on", "on",
              info="info: BENCH.md 0.69")
    for k in ("hot.agg", "dist.agg", "hot.naive", "dist.naive"):
        add_fig("3.3", k)
    add_ratio("3.4", "hot key / 1000 keys, topic + aggregate", "hot.agg", "dist.agg", "on", 0.8)
    add_ratio("3.4", "hot key / 1000 keys, naive trigger", "hot.naive", "dist.naive", "on",
              info="info: expected < 0.5 (Lock:transactionid)")
    for k in ("mr.topic", "mr.agg", "mr.naive"):
        add_fig("3.5", k)
    add_ratio("3.6", "multi-row: topic + aggregate / topic", "mr.agg", "mr.topic", "on", 0.9,
              info="issue 10; issue 3 asked 0.8")
    deadlock_row("3.6", "mr.agg", "multi-row with aggregate: deadlocks + failed txns (all rounds)")
    add_ratio("3.6", "multi-row: naive row trigger (random order) / topic", "mr.naive", "mr.topic",
              "on", info="info: BENCH.md ~0.000 (deadlocks)")
    add_fig("3.7", "copy.agg")
    add_ratio("3.7", "COPY: topic + aggregate / topic", "copy.agg", "copy.topic", "on", 0.9,
              info="issue 10; issue 3 asked 0.7")
    add_fig("3.8", "bl.merged")
    add_fig("3.8", "bl.pending", "≤ 1000 µs (O(1)-ish)", lambda m: m <= 1000)
    add_fig("3.8", "bl.rows")
    add_ratio("3.8", "read latency: 100k pending / merged", "bl.pending", "bl.merged", "on",
              info="info")

    section("issue 4 — workers and push")
    add_fig("4.1", "ntf.on")
    add_fig("4.1", "ntf.off")
    add_fig("4.1", "ntf.trig")
    add_ratio("4.2", "notify=>true + listener / notify=>false", "ntf.on", "ntf.off", "on", 0.98,
              info="issue 12; issue 4 asked 0.95")
    add_ratio("4.2", "pg_notify row trigger + listener / plain partitioned", "ntf.trig", "ins.part.on",
              "on", info="info: BENCH.md 0.40")
    add_fig("4.3", "lat.evs.p50")
    add_fig("4.3", "lat.evs.p99", "≤ 2 ms (issue 12; issue 4 asked 10)", lambda m: m <= 2)
    add_fig("4.3", "lat.evs.nps", "info (issue 12)")
    add_fig("4.3", "lat.pg.p50")
    add_fig("4.3", "lat.pg.p99")
    add_fig("4.4", "maint.on")
    add_fig("4.4", "maint.off")
    add_ratio("4.4", "maintenance every 1 s / maintenance idle", "maint.on", "maint.off", "on", 0.95)
    add_fig("4.4", "maint.on.cpu")
    add_fig("4.4", "maint.off.cpu")

    section("issue 9 — consumers 0.2: shards, parallel consume, long poll")
    add_fig("9.9", "cs.p1")
    add_fig("9.9", "cs.p4")
    add_ratio("9.9", "parallel consume, 8 shards: 4 consumers / 1", "cs.p4", "cs.p1", "on", 3.5)
    add_fig("9.9", "cq.one")
    add_fig("9.9", "cq.s8")
    add_fig("9.9", "cq.keyset")
    add_ratio("9.9", "consume: one-shard topic / keyset + position UPDATE", "cq.one", "cq.keyset",
              "on", 0.95)
    add_ratio("9.9", "consume: 8-shard topic, 1 consumer / keyset + position UPDATE", "cq.s8",
              "cq.keyset", "on", 0.8)
    add_fig("9.9", "lw.p50")
    add_fig("9.9", "lw.p99", "≤ 5 ms", lambda m: m <= 5)
    add_fig("9.9", "lwo.p50")
    add_fig("9.9", "lwo.p99")
    add_fig("9.9", "lp.none")
    add_fig("9.9", "lp.idle")
    add_fig("9.9", "lp.live")
    add_ratio("9.9", "producers with 8 consumers waiting in long poll / with none", "lp.idle",
              "lp.none", "on", 0.97)
    add_ratio("9.9", "producers with 8 long polls consuming their topic / with none", "lp.live",
              "lp.none", "on", info="info: the 8 share the CPUs and the WAL flush")
    add_fig("9.9", "fo.g1")
    add_fig("9.9", "fo.g5")
    add_ratio("9.9", "fan-out: per-group throughput, 5 groups / 1", "fo.g5", "fo.g1", "on", 0.8)
    add_fig("9.9", "hz.first")
    add_fig("9.9", "hz.last")
    add_ratio("9.9", "held horizon: last window / first window", "hz.last", "hz.first", "on", 0.9)

    section("issue 11 — continuous transforms")
    add_fig("11.6", "tf.flat")
    add_fig("11.6", "tf.hand")
    add_ratio("11.6", "flatMap: transform / hand-written consume + INSERT loop", "tf.flat", "tf.hand",
              "on", 0.9)
    add_fig("11.6", "tf.run")
    add_ratio("11.6", "flatMap: transform's batches (without start-up) / hand loop", "tf.run",
              "tf.hand", "on", info="info: the start-up is in the row above")
    add_fig("11.6", "tl.p50")
    add_fig("11.6", "tl.p99", "≤ 50 ms", lambda m: m <= 50)
    add_fig("11.6", "tp.none")
    add_fig("11.6", "tp.with")
    add_ratio("11.6", "producers with a running transform / without", "tp.with", "tp.none", "on",
              0.95)

    section("issue 10 — aggregates v2: measures, hopping windows, change events")
    add_fig("10.1", "a2.ins.none")
    add_fig("10.1", "a2.ins.m3")
    add_ratio("10.1", "topic + aggregate of 3 measures (1000 keys) / same topic without",
              "a2.ins.m3", "a2.ins.none", "on", 0.9)
    add_fig("10.2", "a2.hot.m3")
    add_fig("10.2", "a2.dist.m3")
    add_ratio("10.2", "hot key / 1000 keys, aggregate of 3 measures", "a2.hot.m3", "a2.dist.m3",
              "on", 0.9)
    add_fig("10.3", "a2.tumble")
    add_fig("10.3", "a2.hop")
    add_ratio("10.3", "hopping 1 h / 1 min (60 windows per event) / tumbling 1 min, 3 measures",
              "a2.hop", "a2.tumble", "on", info="info")
    add_fig("10.4", "mr.m3")
    add_ratio("10.4", "multi-row: topic + aggregate of 3 measures / topic", "mr.m3", "mr.topic",
              "on", info="info: the ≥ 0.9 target is 3.6's (count aggregate)")
    deadlock_row("10.4", "mr.m3", "multi-row with 3 measures: deadlocks + failed txns (all rounds)")
    add_fig("10.5", "a2.lat.p50")
    add_fig("10.5", "a2.lat.p99", "≤ 300 ms", lambda m: m <= 300)

    section("issue 12 — speed at the limit: bulk INSERT, push at ~%d events/s" % LAT_HI_RATE)
    add_fig("12.3", "mr.bulk.part")
    add_fig("12.3", "mr.bulk.topic")
    add_ratio("12.3", "INSERT..SELECT 1000 rows/stmt: topic / plain partitioned", "mr.bulk.topic",
              "mr.bulk.part", "on", 0.95)
    add_fig("12.3", "lat.hi.rate", "info: ~%d" % LAT_HI_RATE)
    add_fig("12.3", "lat.hi.p50", "info")
    add_fig("12.3", "lat.hi.p99", "info")
    add_fig("12.3", "lat.hi.nps", "info: bounded (coalesced)")


def render(env_line):
    head = ("| id | measure | sync | value | unit | per round | target | result | notes |\n"
            "|---|---|---|---:|---|---|---|---|---|\n")
    def header(r):
        return r[0] == "" and r[1].startswith("**") and r[2] == ""
    # a section whose phases were not in BENCH_CASES has no rows: drop its header
    rows = [r for i, r in enumerate(ROWS)
            if not (header(r) and (i + 1 == len(ROWS) or header(ROWS[i + 1])))]
    body = "".join("| " + " | ".join(str(c).replace("|", "/") for c in r) + " |\n" for r in rows)
    return env_line + "\n\n" + head + body


def env_line(t_total):
    try:
        ver = DB.one("SHOW server_version")
        pgq = DB.one("SELECT extversion FROM pg_extension WHERE extname = 'pgq'")
        evs = DB.one("SELECT extversion FROM pg_extension WHERE extname = 'evstream'")
    except psycopg2.Error:
        ver = pgq = evs = "?"
    try:
        mem = [l for l in open("/proc/meminfo") if l.startswith("MemTotal")][0].split()[1]
        mem = "%.0f GiB" % (int(mem) / 1048576.0)
    except Exception:
        mem = "?"
    return ("evstream %s bench: PostgreSQL %s, PgQ %s, %d CPUs, %s; shared_buffers=1GB, "
            "max_wal_size=4GB; pgbench -n -M prepared -c %d -j %d -T %d, %d interleaved rounds, "
            "TRUNCATE + CHECKPOINT before each run; N=%d; BENCH_HORIZON_S=%d; "
            "ratios = median of per-round ratios; runtime %.0f s."
            % (evs, ver, pgq, os.cpu_count() or 0, mem, CLIENTS, JOBS, T, ROUNDS, N, HORIZON_S,
               t_total))


def main():
    t0 = time.monotonic()
    wait_ready()
    setup()
    for name in ALL_PHASES:
        if name not in PHASES:
            continue
        t1 = time.monotonic()
        try:
            globals()["phase_" + name]()
        except Exception as e:   # never let one phase take the others down
            log("phase %s crashed: %s" % (name, short(e)))
            traceback.print_exc(file=sys.stderr)
        log("phase %s took %.0f s" % (name, time.monotonic() - t1))
    build_table()
    text = render(env_line(time.monotonic() - t0))
    if SETUP_ERR:
        text += "\nSetup errors: " + "; ".join("%s: %s" % kv for kv in SETUP_ERR.items()) + "\n"
    print(text, flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        for name in ("bench-%s.md" % stamp, "latest.md"):
            with open(os.path.join(OUT, name), "w") as f:
                f.write(text)
        with open(os.path.join(OUT, "bench-%s.json" % stamp), "w") as f:
            json.dump({k: dict(label=v.label, unit=v.unit, sync=v.sync, runs=v.runs,
                               errors=v.errors, notes=v.notes, waits=v.waits)
                       for k, v in FIG.items()}, f, indent=1, default=str)
        log("results in %s/latest.md" % OUT)
    except OSError as e:
        log("cannot write results to %s: %s" % (OUT, e))


if __name__ == "__main__":
    main()
