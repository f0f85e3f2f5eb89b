--
-- views: evstream.topics, evstream.consumer_groups (lag_events, lag_seconds),
-- evstream.aggregates and evstream.workers -- their columns and values.
-- Times, sizes and pids are checked, never printed.
--
\set SHOW_CONTEXT never
SELECT table_name, string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position) AS columns
  FROM information_schema.columns
 WHERE table_schema = 'evstream' AND table_name IN ('topics', 'consumer_groups', 'aggregates', 'workers')
 GROUP BY table_name ORDER BY table_name;

SELECT evstream.create_topic('v_orders', retention => '7 days');
SELECT evstream.create_topic('v_empty', partition_interval => '1 hour', notify => false);
INSERT INTO v_orders (key) SELECT 'k' || g FROM generate_series(1, 5) g;
ANALYZE v_orders;

------------------------------------------------------------------ topics
SELECT topic, partitions >= 4 AS partitions_ahead, events, bytes > 0 AS has_bytes,
       first_id, last_id, stable_id, oldest <= newest AS oldest_first,
       newest > now() - interval '1 hour' AS recent, retention, partition_interval, notify
  FROM evstream.topics WHERE topic::text LIKE 'v\_%' ORDER BY topic::text;
-- an open transaction's events are not stable yet
BEGIN;
INSERT INTO v_orders (key) VALUES ('open');
SELECT topic, last_id, stable_id FROM evstream.topics WHERE topic = 'v_orders'::regclass;
COMMIT;
SELECT topic, last_id, stable_id FROM evstream.topics WHERE topic = 'v_orders'::regclass;
-- retention changes show
SELECT evstream.set_retention('v_orders', NULL);
SELECT topic, retention FROM evstream.topics WHERE topic = 'v_orders'::regclass;

------------------------------------------------------------------ consumer_groups
SELECT id FROM evstream.consume('v_orders', 'behind', 2);
SELECT id FROM evstream.consume('v_orders', 'caught_up') ORDER BY id;
SELECT evstream.commit('v_empty', 'idle', 0);
SELECT topic, consumer_group, committed_id, lag_events,
       lag_seconds > 0 AND lag_seconds < 3600 AS lagging, lag_seconds = 0 AS no_lag,
       updated_at > now() - interval '1 hour' AS updated
  FROM evstream.consumer_groups WHERE topic::text LIKE 'v\_%' ORDER BY topic::text, consumer_group;
-- lag_seconds is the age of the oldest unconsumed event
SELECT abs(g.lag_seconds - extract(epoch FROM now() - o.created_at)) < 0.001 AS age_of_oldest_unconsumed
  FROM evstream.consumer_groups g, v_orders o
 WHERE g.topic = 'v_orders'::regclass AND g.consumer_group = 'behind' AND o.id = 3;
-- (0.2) lag_events counts the events after the position that the viewer
-- sees, also those not stable yet (here: its own transaction's)
BEGIN;
INSERT INTO v_orders (key) VALUES ('open');
SELECT consumer_group, lag_events FROM evstream.consumer_groups
 WHERE topic = 'v_orders'::regclass ORDER BY consumer_group;
COMMIT;
SELECT consumer_group, lag_events FROM evstream.consumer_groups
 WHERE topic = 'v_orders'::regclass ORDER BY consumer_group;
-- after a truncate only the events left count
TRUNCATE v_orders;
SELECT topic, first_id, last_id, stable_id FROM evstream.topics WHERE topic = 'v_orders'::regclass;
SELECT consumer_group, committed_id, lag_events, lag_seconds FROM evstream.consumer_groups
 WHERE topic = 'v_orders'::regclass ORDER BY consumer_group;
INSERT INTO v_orders (key) VALUES ('after'), ('truncate');
SELECT topic, first_id, last_id, stable_id FROM evstream.topics WHERE topic = 'v_orders'::regclass;
SELECT consumer_group, committed_id, lag_events, lag_seconds > 0 AS lagging FROM evstream.consumer_groups
 WHERE topic = 'v_orders'::regclass ORDER BY consumer_group;

------------------------------------------------------------------ aggregates
SELECT evstream.create_aggregate('v_counts', 'v_orders', group_by => 'length(key)');
SELECT evstream.create_aggregate('v_hourly', 'v_orders', bucket => '1 hour', output_topic => 'v_hourly_out', notify => false);
SELECT name, topic, group_by, bucket, output_topic, notify, groups
  FROM evstream.aggregates WHERE name::text LIKE 'v\_%' ORDER BY name::text;

------------------------------------------------------------------ workers
-- one maintenance worker for this database; it has run at least once
DO $$
BEGIN
    FOR i IN 1..300 LOOP
        EXIT WHEN EXISTS (SELECT 1 FROM evstream.workers
                           WHERE database = current_database() AND last_maintenance IS NOT NULL);
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
SELECT database, pid > 0 AS has_pid, last_maintenance > now() - interval '1 minute' AS recent_maintenance
  FROM evstream.workers WHERE database = current_database();
SELECT a.backend_type, a.datname = current_database() AS this_database
  FROM evstream.workers w JOIN pg_stat_activity a ON a.pid = w.pid
 WHERE w.database = current_database();

------------------------------------------------------------------ privileges
-- the views are for every role: ids and times only, never payloads; group
-- positions only of topics the role can read
CREATE ROLE regress_evs_monitor;
SET ROLE regress_evs_monitor;
SELECT topic, first_id, last_id, stable_id FROM evstream.topics WHERE topic::text LIKE 'v\_%' ORDER BY topic::text;
SELECT consumer_group, committed_id, lag_events FROM evstream.consumer_groups
 WHERE topic::text LIKE 'v\_%' ORDER BY consumer_group;
SELECT name, groups FROM evstream.aggregates WHERE name::text LIKE 'v\_%' ORDER BY name::text;
SELECT count(*) FROM evstream.workers WHERE database = current_database();
SELECT * FROM v_orders;
RESET ROLE;
DROP ROLE regress_evs_monitor;

------------------------------------------------------------------ clean up
SELECT evstream.drop_topic('v_orders', cascade => true);
SELECT evstream.drop_topic('v_empty');
SELECT count(*) FROM evstream.topics WHERE topic::text LIKE 'v\_%';
SELECT count(*) FROM evstream.consumer_groups WHERE topic::text LIKE 'v\_%';
SELECT count(*) FROM evstream.aggregates WHERE name::text LIKE 'v\_%';
