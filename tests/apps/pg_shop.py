"""A small Python shop for loupe's tests: an HTTP server (a thread per request) whose routes
query PostgreSQL through three drivers: psycopg2-binary (its own bundled libpq), psycopg 3 (the
system libpq, through its send/getResult API) and pg8000 (pure Python, no libpq).

    python pg_shop.py --port 0 --dsn "host=127.0.0.1 port=5432 dbname=shop user=postgres" [--lazy]

Prints `listening on 127.0.0.1:PORT` once it accepts connections. Each request opens its own
connection in autocommit mode, runs one query, and closes it:

    GET /<driver>/<user id>   the user's orders (one query)
    GET /<driver>/sleep       SELECT pg_sleep(0.2)
    GET /<driver>/fail        a query on a table that does not exist (500)

With --lazy a driver is imported on its first request, so its libpq is loaded after start-up (as
a lazily imported driver or a dlopen would). sslmode and the rest of the DSN go to the libpq
drivers as given.
"""

import argparse
import importlib
import sys
from http.server import ThreadingHTTPServer

from json_handler import JsonHandler

DSN = {}
MODULES = {}


def module(name):
    if name not in MODULES:
        MODULES[name] = importlib.import_module(name)
    return MODULES[name]


def dsn_string():
    return " ".join(f"{k}={v}" for k, v in DSN.items())


ORDERS = "SELECT id, total FROM orders WHERE user_id = %s"
SLEEP = "SELECT pg_sleep(0.2)"
FAIL = "SELECT * FROM no_such_table WHERE token = 'secret-token'"


def with_psycopg2(sql, params):
    conn = module("psycopg2").connect(dsn_string())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return len(cur.fetchall())
    finally:
        conn.close()


def with_psycopg(sql, params):
    with module("psycopg").connect(dsn_string(), autocommit=True) as conn:
        return len(conn.execute(sql, params).fetchall())


def with_pg8000(sql, params):
    native = module("pg8000.native")
    conn = native.Connection(
        DSN["user"], host=DSN["host"], port=int(DSN["port"]), database=DSN["dbname"]
    )
    try:
        if params:
            sql = sql.replace("%s", ":p")
            return len(conn.run(sql, p=params[0]))
        return len(conn.run(sql))
    finally:
        conn.close()


DRIVERS = {"psycopg2": with_psycopg2, "psycopg": with_psycopg, "pg8000": with_pg8000}


class Handler(JsonHandler):
    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in DRIVERS:
            return self.reply(404, {"error": "not found"})
        driver, what = parts
        if what.isdigit():
            rows = DRIVERS[driver](ORDERS, (int(what),))
            self.reply(200, {"driver": driver, "orders": rows})
        elif what == "sleep":
            DRIVERS[driver](SLEEP, ())
            self.reply(200, {"driver": driver, "slept": True})
        elif what == "fail":
            try:
                DRIVERS[driver](FAIL, ())
                self.reply(200, {"driver": driver, "failed": False})
            except Exception as err:  # the driver's own error type
                self.reply(500, {"driver": driver, "error": type(err).__name__})
        else:
            self.reply(404, {"error": "not found"})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--lazy", action="store_true")
    args = parser.parse_args()
    DSN.update(dict(pair.split("=", 1) for pair in args.dsn.split()))
    if not args.lazy:
        for name in ("psycopg2", "psycopg", "pg8000.native"):
            module(name)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
