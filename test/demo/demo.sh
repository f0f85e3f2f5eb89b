#!/usr/bin/env bash
# test/demo/demo.sh — the word-count demo behind `make demo`.
#
# The Kafka Streams word count, inside PostgreSQL with evstream:
#
#   producers ──> topic sentences ──> transform split_words ──> topic words
#                                      (flatMap: one event per word,
#                                       exactly once, in a background worker)
#   words ──> aggregate word_counts ──> topic word_count_changes
#             (count per word,          (one event per changed
#              always exact)              count)
#
# plus a listener woken by pushes (examples/listener.py), consumer groups
# reading with evstream.consume, and a replay with evstream.seek.  Then
# revenue per country per minute over a topic of orders: an aggregate with
# measures (sum, count, max) on tumbling windows of the orders' own time
# (event_time, grace, a late order not counted), and a hopping aggregate with
# emit => 'final' whose output topic gets one result per country and window
# once the window has closed; both are checked against plain SQL.
#
# test/harness.sh runs it with: the current directory a private copy of the
# repository, PATH starting with the bin directory of a throwaway PostgreSQL
# 15 installation that has evstream installed ($EVSTREAM_BIN), TMPDIR
# private, and as the postgres OS user when started as root.  By hand, with
# evstream installed into the server on PATH:
#     PATH=/usr/lib/postgresql/15/bin:$PATH bash test/demo/demo.sh
set -euo pipefail

cd "$(dirname "$0")/../.."
TOP=$PWD
NPROD=4          # producer sessions
ROUNDS=3         # each producer sends its share of the sentences this often

D=$(mktemp -d "${TMPDIR:-/tmp}/demo.XXXXXX")
export PGHOST=$D PGPORT=54329 PGDATABASE=demo PGUSER=$(id -un)
unset PGSERVICE PGSERVICEFILE PGOPTIONS PGPASSWORD 2>/dev/null || true

BG=()            # background processes we started
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${BG[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -f "$D/data/postmaster.pid" ]; then
    if [ $rc != 0 ]; then
      if [ -s "$D/listener.out" ] || [ -s "$D/listener.err" ]; then
        echo "--- listener output (last 10 lines)"; tail -n 10 "$D/listener.out" "$D/listener.err" 2>/dev/null
      fi
      echo "--- evstream.topics and evstream.consumer_groups"
      timeout 10 psql -X -q -c "SELECT topic, last_id, stable_id FROM evstream.topics" \
                         -c "SELECT * FROM evstream.consumer_groups" 2>&1 || true
      echo "--- server log (last 40 lines)"; tail -n 40 "$D/server.log"
    fi
    pg_ctl -D "$D/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$D"
  [ $rc = 0 ] && echo "=== done: the demo cluster is stopped and removed" \
              || echo "=== demo FAILED (exit $rc)" >&2
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ helpers
step() { printf '\n=== %s\n' "$*"; }
say()  { printf '    %s\n' "$*"; }
# sql "STATEMENTS": print them, run them, print the result indented
sql() {
  printf '%s\n' "$1" | sed 's/^/  sql> /'
  psql -X -q -v ON_ERROR_STOP=1 -P footer=off -c "$1" 2>&1 | sed 's/^/        /'
}
# sqlq "STATEMENTS": print them and run them, without showing their result
sqlq() {
  printf '%s\n' "$1" | sed 's/^/  sql> /'
  psql -X -q -v ON_ERROR_STOP=1 -o /dev/null -c "$1"
}
# val "QUERY": one value, unaligned
val() { psql -X -q -v ON_ERROR_STOP=1 -tA -c "$1"; }
# wait_for "BOOLEAN QUERY" seconds "what"
wait_for() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    [ "$(val "$1")" = t ] && return 0
    listener_alive
    sleep 0.1
  done
  echo "demo: timed out after $2 s waiting for $3" >&2
  return 1
}
ms() { date +%s%3N; }
# fail early, with its output, if the background listener died
LISTENER=
listener_alive() {
  [ -z "$LISTENER" ] && return 0
  kill -0 "$LISTENER" 2>/dev/null && return 0
  local rc=0
  wait "$LISTENER" || rc=$?
  [ $rc = 0 ] && { LISTENER=; return 0; }
  echo "demo: the listener exited with status $rc:" >&2
  tail -n 5 "$D/listener.out" >&2; cat "$D/listener.err" >&2
  exit 1
}
q() { printf '%s' "${1//\'/\'\'}"; }     # quote for a SQL string literal

START=$(ms)

# ------------------------------------------------------------------ cluster
step "1. A throwaway cluster with evstream preloaded"
initdb -D "$D/data" -A trust -E UTF8 --no-locale --no-sync >/dev/null
cat >> "$D/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$D'
port = $PGPORT
shared_preload_libraries = 'evstream'
evstream.maintenance_interval = '5s'
EOF
say "postgresql.conf: shared_preload_libraries = 'evstream', evstream.maintenance_interval = '5s'"
pg_ctl -D "$D/data" -l "$D/server.log" -w start >/dev/null
say "PostgreSQL $(psql -X -d postgres -tAc 'SHOW server_version') started, socket in $D"
createdb demo
sql "CREATE EXTENSION evstream;"
wait_for "SELECT EXISTS (SELECT 1 FROM evstream.workers WHERE pid IS NOT NULL)" 15 "the maintenance worker"
sql "SELECT database, pid > 0 AS running FROM evstream.workers;"
say "the launcher started a maintenance worker for this database"

# ------------------------------------------------------------------ topics
step "2. Topics, a continuous transform and a continuous aggregate"
sqlq "SELECT evstream.create_topic('sentences');
SELECT evstream.create_topic('words', partition_interval => '1 hour', retention => '7 days');
SELECT evstream.create_transform('split_words', 'sentences',
  \$\$SELECT w, jsonb_build_object('sentence_id', key, 'word', w)
      FROM events, regexp_split_to_table(lower(payload->>'text'), '[^a-z]+') AS w
     WHERE w <> ''\$\$,
  'words');
SELECT evstream.create_aggregate('word_counts', 'words', output_topic => 'word_count_changes');"
say "split_words is Kafka Streams' flatMapValues(split): evstream's background workers"
say "consume each new batch of sentences and insert its words into 'words', in one"
say "transaction per batch (exactly once), woken by the producers' commits."
say "word_counts counts the events of 'words' per key (group_by defaults to 'key');"
say "every change of a count is also published to the topic word_count_changes,"
say "which create_aggregate created since it did not exist."
sql "SELECT topic, partitions, retention, partition_interval FROM evstream.topics ORDER BY topic::text;"

# ------------------------------------------------------------------ listener
step "3. A listener, woken by pushes (examples/listener.py, in the background)"
say "python3 examples/listener.py --group listener words word_counts"
python3 -u "$TOP/examples/listener.py" --group listener --timeout 120 words word_counts \
  > "$D/listener.out" 2> "$D/listener.err" &
LISTENER=$!
BG+=("$LISTENER")
for ((i = 0; i < 100; i++)); do
  grep -q '^listening on' "$D/listener.out" 2>/dev/null && break
  kill -0 "$LISTENER" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q '^listening on' "$D/listener.out" 2>/dev/null; then
  echo "demo: the listener did not start:" >&2; cat "$D/listener.out" "$D/listener.err" >&2; exit 1
fi
say "$(head -n 1 "$D/listener.out")"

# ------------------------------------------------------------------ producers
SENTENCES=(
  "All streams lead to Kafka"
  "Hello Kafka Streams"
  "Join Kafka Summit"
  "Postgres can be a log too"
  "The log is the database"
  "Every event has an offset"
  "Consumers commit their offsets in the same transaction"
  "A stable offset never skips a late commit"
  "The quick brown fox jumps over the lazy dog"
  "Counts stay exact in every transaction"
  "Hot keys do not serialize producers"
  "Listeners are woken after the commit"
  "Replay the log from any offset"
  "Retention drops whole partitions"
  "Events are immutable and the log is append only"
  "The worker keeps partitions ahead of time"
  "Streams and tables are two sides of the same coin"
  "A table is a stream of changes"
  "The stream is the source of truth"
  "Words flow in and counts flow out"
  "One notification can stand for many events"
  "Postgres keeps the log and the counts together"
  "Exactly once inside the database"
  "Hello Postgres"
)

# One SQL script per producer: its share of the sentences, ROUNDS times,
# one transaction per sentence.  Each transaction stays open for a random
# few milliseconds, so the producers commit out of id order.  The first
# transaction of round 2 rolls back: its ids become gaps, never delivered.
make_producer() {
  local p=$1 f=$D/producer$1.sql n=0 r i sid s end
  : > "$f"
  for ((r = 1; r <= ROUNDS; r++)); do
    for ((i = p - 1; i < ${#SENTENCES[@]}; i += NPROD)); do
      n=$((n + 1)); sid="p$p-$n"; s=$(q "${SENTENCES[$i]}")
      end=COMMIT
      if [ "$r" = 2 ] && [ "$i" = $((p - 1)) ]; then end=ROLLBACK; fi
      cat >> "$f" <<EOF
BEGIN;
INSERT INTO sentences (key, payload)
     VALUES ('$sid', jsonb_build_object('producer', $p, 'text', '$s'));
SELECT pg_sleep(random() * 0.04);
$end;
SELECT pg_sleep(random() * 0.06);
EOF
    done
  done
}

step "4. $NPROD producer sessions in parallel: one event per sentence"
for ((p = 1; p <= NPROD; p++)); do make_producer "$p"; done
say "each producer transaction writes a sentence (the transform splits it into words):"
sed -n '1,5p' "$D/producer1.sql" | sed 's/^/  sql> /'
T0=$(val "SELECT now()")
P0=$(ms)
PRODS=()
for ((p = 1; p <= NPROD; p++)); do
  psql -X -q -v ON_ERROR_STOP=1 -f "$D/producer$p.sql" >/dev/null 2> "$D/producer$p.err" &
  PRODS+=("$!"); BG+=("$!")
done
failed=0
for ((p = 1; p <= NPROD; p++)); do
  wait "${PRODS[$((p - 1))]}" || { failed=1; echo "producer $p failed:" >&2; cat "$D/producer$p.err" >&2; }
done
[ $failed = 0 ] || exit 1
ntx=$(grep -c '^COMMIT;' "$D"/producer*.sql | awk -F: '{s += $2} END {print s}')
nrb=$(grep -c '^ROLLBACK;' "$D"/producer*.sql | awk -F: '{s += $2} END {print s}')
say "$NPROD producers committed $ntx transactions and rolled back $nrb in $(( $(ms) - P0 )) ms"
sql "SELECT count(*) AS events, min(id) AS first_id, max(id) AS last_id,
       max(id) - min(id) + 1 - count(*) AS gaps,
       evstream.stable_id('sentences') AS stable_id
  FROM sentences;"
say "ids are assigned on insert; the rolled-back transactions left gaps, which are normal."
say "stable_id (the last stable offset): every id up to it is committed or will never appear."

# ------------------------------------------------------------------ what the listener saw
step "5. The transform, and what the listener received meanwhile"
wait_for "SELECT COALESCE((SELECT lag_events = 0 FROM evstream.transforms WHERE name = 'split_words'), false)" \
         30 "the transform to catch up"
sql "SELECT name, source, output_topic, lag_events, paused, last_error FROM evstream.transforms;"
sql "SELECT (SELECT count(*) FROM words) AS words,
       (SELECT count(*) FROM sentences s, regexp_split_to_table(lower(s.payload->>'text'), '[^a-z]+') w
         WHERE w <> '') AS words_in_sentences;"
[ "$(val "SELECT (SELECT count(*) FROM words) = (SELECT count(*) FROM sentences s, regexp_split_to_table(lower(s.payload->>'text'), '[^a-z]+') w WHERE w <> '')")" = t ] \
  || { echo "demo: the transform lost or repeated words" >&2; exit 1; }
say "every committed sentence was split exactly once; the rolled-back ones never were."
wait_for "SELECT COALESCE((SELECT lag_events = 0 FROM evstream.consumer_groups
                             WHERE topic = 'words'::regclass AND consumer_group = 'listener'), false)" \
         20 "the listener to catch up"
sleep 0.5      # let the last aggregate notifications arrive
listener_alive
if [ -n "$LISTENER" ]; then
  kill -INT "$LISTENER"
  wait "$LISTENER" || { echo "demo: the listener failed:" >&2; cat "$D/listener.err" >&2; exit 1; }
  LISTENER=
fi
# print the listener's output, showing only the first two events of each run
awk '
  /^  words #/ { run++; if (run <= 2) print; next }
  { if (run > 2) printf "    ... (%d more events)\n", run - 2; run = 0; print }
  END { if (run > 2) printf "    ... (%d more events)\n", run - 2 }' "$D/listener.out" > "$D/listener.short"
head -n 24 "$D/listener.short" | sed 's/^/  | /'
n=$(wc -l < "$D/listener.short")
if [ "$n" -gt 24 ]; then
  [ "$n" -gt 25 ] && echo "  | ... ($((n - 25)) more lines)"
  tail -n 1 "$D/listener.short" | sed 's/^/  | /'
fi
nwords=$(val "SELECT count(*) FROM words")
ngot=$(grep -c '^  words #' "$D/listener.out" || true)
nuniq=$(grep '^  words #' "$D/listener.out" | awk '{print $2}' | sort -u | wc -l)
ntopic=$(grep -c '^notification on words:' "$D/listener.out" || true)
nagg=$(grep -c '^notification on word_counts:' "$D/listener.out" || true)
say "$ntopic pushes on channel words (coalesced: each stands for many events),"
say "$nagg pushes on channel word_counts with the latest counts of the changed words;"
say "the listener consumed $ngot events ($nuniq distinct ids); the topic holds $nwords."
[ "$ngot" = "$nwords" ] && [ "$nuniq" = "$nwords" ] || { echo "demo: the listener missed or repeated events" >&2; exit 1; }

# ------------------------------------------------------------------ the aggregate
step "6. The aggregate: always exact"
sql "SELECT group_key AS word, count FROM word_counts ORDER BY count DESC, group_key LIMIT 8;"
sql "SELECT count(*) AS words_counted,
       NOT EXISTS ((SELECT key, count(*) FROM words GROUP BY key
                    EXCEPT SELECT group_key, count FROM word_counts)
                   UNION ALL
                   (SELECT group_key, count FROM word_counts
                    EXCEPT SELECT key, count(*) FROM words GROUP BY key)) AS equals_group_by
  FROM word_counts;"
[ "$(val "SELECT NOT EXISTS ((SELECT key, count(*) FROM words GROUP BY key EXCEPT SELECT group_key, count FROM word_counts) UNION ALL (SELECT group_key, count FROM word_counts EXCEPT SELECT key, count(*) FROM words GROUP BY key))")" = t ] \
  || { echo "demo: word_counts differs from GROUP BY over words" >&2; exit 1; }

# ------------------------------------------------------------------ consumer groups
step "7. A consumer group, exactly once: consume and write in one transaction"
sql "CREATE TABLE word_log (id bigint PRIMARY KEY, word text, sentence_id text);"
CONSUME="WITH e AS (SELECT * FROM evstream.consume('words', 'audit', 100)),
     w AS (INSERT INTO word_log SELECT id, key, payload->>'sentence_id' FROM e RETURNING 1)
SELECT count(*) FROM w;"
printf '%s\n' "$CONSUME" | sed 's/^/  sql> /'
batches=()
while :; do
  n=$(val "$CONSUME")
  batches+=("$n")
  [ "$n" -lt 100 ] && break
done
say "batches: ${batches[*]} events (the position and the rows commit together)"
sql "SELECT (SELECT count(*) FROM word_log) AS logged, (SELECT count(*) FROM words) AS in_topic;"

step "8. The output topic: the aggregate's changelog, read by another group"
# Each change event carries the count its producing transaction saw; when
# concurrent producers of a word made the latest one stale, the worker
# publishes a correction as it folds the pending deltas (design).  Wait for
# that fold, so the changelog is complete.
wait_for "SELECT NOT EXISTS (SELECT 1 FROM evstream._delta)" 20 "the worker to fold the aggregate deltas"
sql "SELECT id, key AS word, payload FROM evstream.poll('word_count_changes', 'dashboard', 5);"
sql "CREATE TABLE dashboard (word text PRIMARY KEY, count bigint NOT NULL);
WITH e AS (SELECT * FROM evstream.consume('word_count_changes', 'dashboard', 100000))
INSERT INTO dashboard
SELECT DISTINCT ON (key) key, (payload->>'count')::bigint FROM e ORDER BY key, id DESC
    ON CONFLICT (word) DO UPDATE SET count = excluded.count;"
sql "SELECT (SELECT count(*) FROM word_count_changes) AS change_events,
       (SELECT count(*) FROM dashboard) AS words,
       (SELECT count(*) FROM dashboard d JOIN word_counts c
                ON c.group_key = d.word AND c.count = d.count) AS latest_change_equals_count;"
nsame=$(val "SELECT count(*) FROM dashboard d JOIN word_counts c ON c.group_key = d.word AND c.count = d.count")
nall=$(val "SELECT count(*) FROM word_counts")
[ "$nsame" = "$nall" ] || { echo "demo: the latest change event of $((nall - nsame)) of $nall words differs from word_counts" >&2; exit 1; }
say "the latest change event of each word is its count: replaying the changelog rebuilds the"
say "table (a stream and a table are two views of one thing)."

# ------------------------------------------------------------------ replay
step "9. Replay with seek"
sid=p3-2
first=$(val "SELECT min(id) FROM words WHERE payload->>'sentence_id' = '$sid'")
sqlq "SELECT evstream.seek('words', 'audit', $first);   -- the first word of sentence $sid"
sql "SELECT id, key AS word, payload->>'sentence_id' AS sentence_id FROM evstream.poll('words', 'audit', 5);"
sqlq "SELECT evstream.seek('words', 'audit', since => '$T0');   -- when the producers started"
sql "SELECT consumer_group, committed_id, lag_events FROM evstream.consumer_groups
 WHERE topic = 'words'::regclass ORDER BY consumer_group;"
say "group audit will now read all $nwords events again; the other groups are untouched."
say "(lag_events counts the committed events after the position.)"

# ------------------------------------------------------------------ append-only
step "10. Events are immutable"
printf '  sql> %s\n' "UPDATE words SET key = 'kafka' WHERE key = 'postgres';"
psql -X -q -c "UPDATE words SET key = 'kafka' WHERE key = 'postgres';" 2>&1 | sed 's/^/        /' || true

# ------------------------------------------------------------------ revenue per country
step "11. Revenue per country per minute: measures, event time, late orders, emit final"
sqlq "SELECT evstream.create_topic('orders');
SELECT evstream.create_aggregate('revenue_per_minute', 'orders',
  group_by   => \$\$payload->>'country'\$\$,
  measures   => \$\$sum((payload->>'amount')::numeric) AS revenue,
                 count(payload->>'amount') AS orders,
                 max((payload->>'amount')::numeric) AS biggest\$\$,
  bucket     => '1 minute',
  event_time => \$\$(payload->>'ts')::timestamptz\$\$,
  grace      => '10 seconds');
SELECT evstream.create_aggregate('revenue_5s', 'orders',
  group_by     => \$\$payload->>'country'\$\$,
  measures     => \$\$sum((payload->>'amount')::numeric) AS revenue,
                   count(payload->>'amount') AS orders,
                   max((payload->>'amount')::numeric) AS biggest\$\$,
  bucket       => '5 seconds',
  hop          => '1 second',
  emit         => 'final',
  output_topic => 'revenue_final');"
say "revenue_per_minute: per country and minute of the order's own time (payload ts);"
say "an order may arrive up to 10 s after its minute ended (grace), a later one is not counted."
say "revenue_5s: hopping windows of 5 s, one starting every second (each order counts in 5),"
say "on created_at, with ONE final result per country and window published to the topic"
say "revenue_final once the window has closed (Kafka Streams' suppress(untilWindowCloses))."
say "(A dashboard would use bucket => '1 minute', hop => '10 seconds'; the demo uses windows"
say "of 5 s starting every 1 s so that they close while you watch.)"
COUNTRIES=(DE FR US JP)
NORD=40
: > "$D/orders.sql"
for ((i = 1; i <= NORD; i++)); do
  c=${COUNTRIES[$((i % 4))]}
  amount=$(printf '%d.%02d' $(( (i * 37) % 200 + 5 )) $(( (i * 13) % 100 )))
  printf '%s\n' "INSERT INTO orders (key, payload)" \
    "     VALUES ('order-$i', jsonb_build_object('country', '$c', 'amount', $amount, 'ts', now()));" \
    "SELECT pg_sleep(0.05);" >> "$D/orders.sql"
done
say "a shop session inserts $NORD orders, one transaction each, over about 2 s:"
sed -n '1,2p' "$D/orders.sql" | sed 's/^/  sql> /'
O0=$(ms)
psql -X -q -v ON_ERROR_STOP=1 -f "$D/orders.sql" >/dev/null
say "$NORD orders in $(( $(ms) - O0 )) ms"
sql "INSERT INTO orders (key, payload) VALUES   -- 5 s late: within the grace, counted
  ('order-41', jsonb_build_object('country', 'DE', 'amount', 120.00, 'ts', now() - interval '5 seconds'));
INSERT INTO orders (key, payload) VALUES   -- 2 minutes late: its minute is over, not counted
  ('order-42', jsonb_build_object('country', 'DE', 'amount', 999.00, 'ts', now() - interval '2 minutes'));"
sql "SELECT group_key AS country, bucket_start, count, revenue, orders, biggest
  FROM revenue_per_minute ORDER BY bucket_start, country;"
say "the same by plain SQL over the topic: the orders whose minute (by their ts) had not"
say "ended more than 10 s before they were inserted (created_at), per country and minute:"
sqlq "CREATE VIEW revenue_per_minute_sql AS
SELECT payload->>'country' AS country,
       date_bin('1 minute', (payload->>'ts')::timestamptz, 'epoch') AS bucket_start,
       count(*) AS count, sum((payload->>'amount')::numeric) AS revenue,
       count(payload->>'amount') AS orders, max((payload->>'amount')::numeric) AS biggest
  FROM orders
 WHERE date_bin('1 minute', (payload->>'ts')::timestamptz, 'epoch')
       + interval '1 minute' + interval '10 seconds' >= created_at
 GROUP BY 1, 2;"
SAME_MINUTE="SELECT NOT EXISTS (SELECT * FROM revenue_per_minute_sql EXCEPT ALL SELECT * FROM revenue_per_minute)
   AND NOT EXISTS (SELECT * FROM revenue_per_minute EXCEPT ALL SELECT * FROM revenue_per_minute_sql)"
sql "$SAME_MINUTE AS equals_plain_sql;"
[ "$(val "$SAME_MINUTE")" = t ] ||
  { echo "demo: revenue_per_minute differs from plain SQL over orders" >&2; exit 1; }
wait_for "SELECT COALESCE((SELECT late_events = 1 FROM evstream.aggregates
                             WHERE name = 'revenue_per_minute'::regclass), false)" \
         10 "late_events = 1 on revenue_per_minute"
sql "SELECT name, bucket, hop, event_time, grace, emit, output_topic, late_events
  FROM evstream.aggregates WHERE topic = 'orders'::regclass ORDER BY name::text;"
say "the revenue per country and minute equals plain SQL over the orders; the order 2 minutes"
say "late is in no group (late_events = 1), the one 5 s late is counted."

say "the hopping windows by plain SQL: each order in the 5 windows of 5 s containing its"
say "created_at, one starting every second (revenue_5s has no event_time: the two late"
say "orders count there, at their created_at); and the final results as rows:"
sqlq "CREATE VIEW revenue_5s_sql AS
SELECT o.payload->>'country' AS country,
       date_bin('1 second', o.created_at, 'epoch') - k * interval '1 second' AS bucket_start,
       count(*) AS count, sum((o.payload->>'amount')::numeric) AS revenue,
       count(o.payload->>'amount') AS orders, max((o.payload->>'amount')::numeric) AS biggest
  FROM orders o, generate_series(0, 4) AS k
 GROUP BY 1, 2;
CREATE VIEW revenue_final_rows AS
SELECT key AS country, (payload->>'bucket_start')::timestamptz AS bucket_start,
       (payload->>'count')::bigint AS count, (payload->>'revenue')::numeric AS revenue,
       (payload->>'orders')::bigint AS orders, (payload->>'biggest')::numeric AS biggest
  FROM revenue_final;"
nwin=$(val "SELECT count(*) FROM revenue_5s_sql")
say "right after the last order revenue_final holds $(val "SELECT count(*) FROM revenue_final") final results, of $nwin (country, window) pairs"
W0=$(ms)
wait_for "SELECT count(DISTINCT (key, payload->>'bucket_start')) >= $nwin FROM revenue_final" \
         30 "a final result for each of the $nwin (country, window) pairs"
say "the last window closed: all $nwin final results were there $(( $(ms) - W0 )) ms later"
sql "SELECT key AS country, payload->>'bucket_start' AS bucket_start, payload->>'count' AS count,
       payload->>'revenue' AS revenue, payload->>'biggest' AS biggest,
       created_at - (payload->>'bucket_start')::timestamptz - interval '5 seconds' AS after_window_end
  FROM revenue_final WHERE key = 'DE' ORDER BY id LIMIT 6;"
SAME_FINAL="SELECT NOT EXISTS (SELECT * FROM revenue_5s_sql EXCEPT ALL SELECT * FROM revenue_final_rows)
   AND NOT EXISTS (SELECT * FROM revenue_final_rows EXCEPT ALL SELECT * FROM revenue_5s_sql)"
sql "SELECT count(*) AS final_results,
       count(DISTINCT (key, payload->>'bucket_start')) AS windows,
       bool_and(created_at > (payload->>'bucket_start')::timestamptz + interval '5 seconds')
         AS all_after_window_end,
       ($SAME_FINAL) AS equals_plain_sql
  FROM revenue_final;"
[ "$(val "SELECT bool_and(created_at > (payload->>'bucket_start')::timestamptz + interval '5 seconds') FROM revenue_final")" = t ] ||
  { echo "demo: revenue_final has a result published before its window ended" >&2; exit 1; }
[ "$(val "$SAME_FINAL")" = t ] ||
  { echo "demo: the final results in revenue_final differ from plain SQL over orders (or repeat)" >&2; exit 1; }
say "exactly one final result per country and window, published after its window ended,"
say "each equal to plain SQL over the orders of its window."

# ------------------------------------------------------------------ monitoring
step "12. Monitoring views"
sql "SELECT topic, partitions, first_id, last_id, stable_id, retention FROM evstream.topics ORDER BY topic::text;"
sql "SELECT topic, consumer_group, committed_id, lag_events, round(lag_seconds::numeric, 1) AS lag_seconds
  FROM evstream.consumer_groups ORDER BY topic::text, consumer_group;"
sql "SELECT name, topic, group_by, bucket, hop, emit, output_topic, groups, late_events
  FROM evstream.aggregates ORDER BY name::text;"
sql "SELECT name, source, output_topic, lag_events, paused FROM evstream.transforms;"
sql "SELECT database, pid > 0 AS running, last_maintenance IS NOT NULL AS maintained, last_error
  FROM evstream.workers;"

step "13. Stopping"
say "whole demo: $(( ($(ms) - START) / 1000 )) s"
