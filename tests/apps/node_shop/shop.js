// A small Node.js shop for loupe's tests: node:http in front of a node-postgres pool (pure
// JavaScript, no libpq: loupe sees its queries on the wire only).
//
//     node shop.js --port 0 --dsn postgres://postgres@127.0.0.1:5432/shop
//
// Prints `listening on 127.0.0.1:PORT` on stdout once it accepts connections, and nothing on
// stdout after that (the harness stops reading it). The pool holds at most 4 connections, opened
// on first use. Every id is in the path (loupe redacts query-string values):
//
//     GET /item/<id>         one parameterized query (node-postgres writes Parse, Bind, Describe,
//                            Execute and Sync with one writev, an iovec per message)
//     GET /named/<id>        the same query as the named prepared statement `order_by_id`
//                            (Parse once per connection, then Bind, Describe, Execute, Sync)
//     GET /n_plus_one/<id>   6 parameterized queries one after another, each with another user
//     GET /repeated/<id>     the /item query twice, one after the other, with the same value (a
//                            repeated call only a reader of the Bind, the writev's second iovec,
//                            can tell)
//     GET /health            no query
//
// Replies are JSON with a Content-Length; a database error is a 500.

'use strict';

const http = require('node:http');
const { Pool } = require('pg');

const BY_ID = 'SELECT id, total FROM orders WHERE id = $1';
const BY_USER = 'SELECT id, total FROM orders WHERE user_id = $1';

function parseArgs(argv) {
  const args = { port: 0, dsn: null };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--port') {
      args.port = Number(argv[(i += 1)]);
    } else if (argv[i] === '--dsn') {
      args.dsn = argv[(i += 1)];
    } else {
      throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  if (!args.dsn || !Number.isInteger(args.port)) {
    throw new Error('usage: node shop.js --port <P|0> --dsn postgres://USER@HOST:PORT/DB');
  }
  return args;
}

function reply(res, status, payload) {
  const body = Buffer.from(JSON.stringify(payload));
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': body.length,
  });
  res.end(body);
}

async function route(pool, method, path) {
  const parts = path.split('?')[0].split('/').filter(Boolean);
  if (method !== 'GET') {
    return [404, { error: 'not found' }];
  }
  if (parts.length === 1 && parts[0] === 'health') {
    return [200, { ok: true }];
  }
  if (parts.length !== 2 || !/^\d+$/.test(parts[1])) {
    return [404, { error: 'not found' }];
  }
  const n = Number(parts[1]);
  switch (parts[0]) {
    case 'item': {
      const result = await pool.query(BY_ID, [n]);
      return [200, { id: n, rows: result.rows }];
    }
    case 'named': {
      const result = await pool.query({ name: 'order_by_id', text: BY_ID, values: [n] });
      return [200, { id: n, rows: result.rows }];
    }
    case 'n_plus_one': {
      let rows = 0;
      for (let k = 0; k < 6; k += 1) {
        // One after another, each awaited: the N+1 shape.
        const result = await pool.query(BY_USER, [n + k]);
        rows += result.rowCount;
      }
      return [200, { id: n, queries: 6, rows }];
    }
    case 'repeated': {
      const first = await pool.query(BY_ID, [n]);
      const second = await pool.query(BY_ID, [n]);
      return [200, { id: n, rows: first.rowCount + second.rowCount }];
    }
    default:
      return [404, { error: 'not found' }];
  }
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const pool = new Pool({ connectionString: args.dsn, max: 4 });
  // An idle connection the server drops must not take the process down.
  pool.on('error', (err) => process.stderr.write(`node_shop: idle client error: ${err.message}\n`));
  const server = http.createServer((req, res) => {
    route(pool, req.method, req.url).then(
      ([status, payload]) => reply(res, status, payload),
      (err) => {
        process.stderr.write(`node_shop: ${req.url}: ${err.message}\n`);
        reply(res, 500, { error: err.code || 'error' });
      },
    );
  });
  server.listen(args.port, '127.0.0.1', () => {
    process.stdout.write(`listening on 127.0.0.1:${server.address().port}\n`);
  });
}

main();
