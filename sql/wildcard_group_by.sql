--
-- wildcard_group_by: '*' and 'topic.*' are not a single expression, so
-- create_aggregate refuses them -- cleanly, without a crash.  (A test of its
-- own, last in order: while the crash exists it restarts the server and
-- would fail every test running after it.)  In a transaction rolled back at
-- the end, so nothing stays behind either way.
--
BEGIN;
SELECT evstream.create_topic('star');
DO $$
DECLARE
    e text;
BEGIN
    FOREACH e IN ARRAY ARRAY['star.*', '(star).*', '*', 'key || *'] LOOP
        BEGIN
            PERFORM evstream.create_aggregate('bad_star', 'star', e);
            RAISE NOTICE '%: created', e;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE '%: refused', e;
        END;
    END LOOP;
END
$$;
ROLLBACK;
SELECT to_regclass('star');
-- the server is still up and the extension works
SELECT evstream.create_topic('star');
INSERT INTO star (key) VALUES ('a') RETURNING id, key;
SELECT evstream.drop_topic('star');
