#!/usr/bin/env node
// examples/node-consumer.js — N parallel, exactly-once consumers of one
// evstream consumer group, with node-postgres ("pg" on npm, node-pg on
// Debian).
//
//   node examples/node-consumer.js TOPIC GROUP [WORKERS]
//
// Each worker has its own connection and loops over one transaction:
//
//   BEGIN;
//   SELECT id, key, payload FROM evstream.consume(TOPIC, GROUP, BATCH, wait => WAIT);
//   ... the work, on the same connection, in the same transaction ...
//   COMMIT;
//
// consume() claims one shard of the group for the transaction and moves that
// shard's position; the position and the work commit or roll back together,
// so every event's work is done exactly once, and the events of one key are
// handled in id order. WORKERS workers handle up to WORKERS shards at once.
// `wait` makes consume() block until there are events (a long poll): no
// LISTEN connection and no sleeping loop.
//
// If the connection breaks (server restart, pg_terminate_backend, network),
// the open transaction is rolled back by the server — its events stay
// unconsumed — and the worker reconnects with exponential backoff and goes
// on. SIGTERM or SIGINT: every worker finishes its current transaction and
// the program exits 0 (within WAIT).
//
// Settings: the connection comes from the libpq environment variables
// (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, ...); WORKERS defaults to
// $EVS_WORKERS or 4, the batch size to $EVS_BATCH or 100, the wait to
// $EVS_WAIT or '1 s'.  The work in this example: with $EVS_TABLE set, each
// event is inserted into that table as (id, key, worker) — replace work()
// with yours; without it, events are printed (a demo only: output is not
// part of the transaction, so it is not exactly-once).
//
// Log lines go to stderr; exit status 0 after a signal, 1 on a fatal error
// (a bad topic, a missing privilege, ...), 2 on bad usage.
'use strict';

const os = require('os');
const { Client } = require('pg');

const [topic, group, workersArg] = process.argv.slice(2);
if (!topic || !group) {
  console.error('usage: node node-consumer.js TOPIC GROUP [WORKERS]');
  process.exit(2);
}
const WORKERS = parseInt(workersArg || process.env.EVS_WORKERS || '4', 10);
const BATCH = parseInt(process.env.EVS_BATCH || '100', 10);
const WAIT = process.env.EVS_WAIT || '1 s';
const TABLE = process.env.EVS_TABLE || '';

let stopping = false;
let failed = false;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const log = (msg) => console.error(`node-consumer: ${msg}`);

// The work.  It runs inside the consuming transaction, on its connection:
// whatever it writes commits together with the new position.
async function work(db, events, worker) {
  if (TABLE) {
    await db.query(
      `INSERT INTO ${db.escapeIdentifier(TABLE)} (id, key, worker)
       SELECT id, key, $3 FROM unnest($1::bigint[], $2::text[]) AS e (id, key)`,
      [events.map((e) => e.id), events.map((e) => e.key), worker]);
  } else {
    for (const e of events) console.log(JSON.stringify({ worker, ...e }));
  }
}

// Errors that retrying will not cure: a wrong topic or group name, a
// missing privilege, a bad setting.  Anything else (a lost connection, a
// server shutting down, a serialization failure) means: reconnect, go on.
function fatal(err) {
  return typeof err.code === 'string' && /^(42|22|0A)/.test(err.code);
}

async function worker(n) {
  const name = `${os.hostname()}:${process.pid}:${n}`;
  let db = null;
  let backoff = 100;
  let events = 0;
  while (!stopping) {
    try {
      if (!db) {
        db = new Client({ application_name: `node-consumer ${name}` });
        // a connection that dies while idle reports here; the next query
        // then fails and the catch below reconnects
        db.on('error', (err) => log(`${name}: connection error: ${err.message}`));
        await db.connect();
        log(`${name}: connected (backend pid ${db.processID})`);
      }
      await db.query('BEGIN');
      const { rows } = await db.query(
        'SELECT id, key, payload FROM evstream.consume($1::regclass, $2::text, $3::int, wait => $4::interval)',
        [topic, group, BATCH, WAIT]);
      if (rows.length > 0) await work(db, rows, name);
      await db.query('COMMIT');
      events += rows.length;
      backoff = 100;
    } catch (err) {
      if (fatal(err)) {
        log(`${name}: fatal: ${err.message} (SQLSTATE ${err.code})`);
        failed = stopping = true;
        break;
      }
      // The transaction is lost either way (the server rolls it back).  A
      // fresh connection is the simplest correct state to go on from.
      log(`${name}: ${err.message}${err.code ? ` (SQLSTATE ${err.code})` : ''}; reconnecting in ${backoff} ms`);
      if (db) db.end().catch(() => {});
      db = null;
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 5000);
    }
  }
  if (db) await db.end().catch(() => {});
  log(`${name}: stopped after ${events} events`);
  return events;
}

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    log(`${sig}: finishing the current transactions`);
    stopping = true;
  });
}

log(`${WORKERS} workers consuming ${topic} as group ${group}`);
Promise.all(Array.from({ length: WORKERS }, (_, n) => worker(n))).then((counts) => {
  log(`exit: ${counts.reduce((a, b) => a + b, 0)} events`);
  process.exit(failed ? 1 : 0);
});
