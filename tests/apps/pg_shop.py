"""A small Python shop for loupe's tests: an HTTP server (a thread per request) whose routes
query PostgreSQL through three drivers: psycopg2-binary (its own bundled libpq), psycopg 3 (the
system libpq, through its send/getResult API) and pg8000 (pure Python, no libpq).

    python pg_shop.py --port 0 --dsn "host=127.0.0.1 port=5432 dbname=shop user=postgres"

Prints `listening on 127.0.0.1:PORT` once it accepts connections. Each request opens its own
connection in autocommit mode, runs one query, and closes it.
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pg8000.native
import psycopg
import psycopg2

DSN = {}


def dsn_string():
    return " ".join(f"{k}={v}" for k, v in DSN.items())


def with_psycopg2(user_id):
    conn = psycopg2.connect(dsn_string())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, total FROM orders WHERE user_id = %s", (user_id,))
            return len(cur.fetchall())
    finally:
        conn.close()


def with_psycopg(user_id):
    with psycopg.connect(dsn_string(), autocommit=True) as conn:
        return len(conn.execute("SELECT id, total FROM orders WHERE user_id = %s", (user_id,)).fetchall())


def with_pg8000(user_id):
    conn = pg8000.native.Connection(
        DSN["user"], host=DSN["host"], port=int(DSN["port"]), database=DSN["dbname"]
    )
    try:
        return len(conn.run("SELECT id, total FROM orders WHERE user_id = :u", u=user_id))
    finally:
        conn.close()


DRIVERS = {"psycopg2": with_psycopg2, "psycopg": with_psycopg, "pg8000": with_pg8000}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] in DRIVERS and parts[1].isdigit():
            rows = DRIVERS[parts[0]](int(parts[1]))
            self.reply(200, {"driver": parts[0], "orders": rows})
        else:
            self.reply(404, {"error": "not found"})

    def reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dsn", required=True)
    args = parser.parse_args()
    DSN.update(dict(pair.split("=", 1) for pair in args.dsn.split()))
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
