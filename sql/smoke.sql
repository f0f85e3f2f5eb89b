-- smoke: the extension installs, a topic takes events, a group reads them
SELECT evstream.create_topic('smoke');
INSERT INTO smoke (key, payload) VALUES ('a', '{"n": 1}'), ('b', '{"n": 2}');
SELECT id, key, payload FROM evstream.consume('smoke', 'g');
SELECT evstream.stable_id('smoke');
