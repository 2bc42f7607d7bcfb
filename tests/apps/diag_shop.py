"""A shop with one route per performance anti-pattern, and clean control routes, for loupe's
diagnosis tests. Standard library plus psycopg2 (from the venv `cargo xtask setup` makes).

    python diag_shop.py shop --port 0 --dsn "host=... dbname=shop user=postgres" \
        --peer-a http://127.0.0.1:A --peer-b http://127.0.0.1:B
    python diag_shop.py downstream --port 0

Both print `listening on 127.0.0.1:PORT` once they accept connections. Every shop request runs on
its own thread and makes its calls from that thread, one after another unless the route says
otherwise. Each database request opens its own connection (autocommit: no BEGIN/COMMIT), with
psycopg2 (values inlined in the text, simple protocol) unless the route says psycopg 3 (values
bound separately, extended protocol).

Shop routes (the timings are what a test plants):
    /n_plus_one            10 queries `SELECT ... WHERE id = <i>`, one after another
    /sequential            GET A /sleep?ms=150, then GET B /sleep?ms=150
    /repeated              GET A /rates?cur=EUR three times
    /repeated_bound        psycopg 3: the same query with the same bound value three times
    /oversized             a 2 MiB response body
    /oversized_rows        SELECT of 2000 rows
    /slow_dependency       100 ms of its own work, then GET A /sleep?ms=400
    /burn                  600 ms of CPU in the handler, no calls
    /control/db            two different queries
    /control/parallel      GET A /sleep?ms=100 and GET B /sleep?ms=100, overlapping
    /control/fast          one GET A /rates?cur=USD
    /control/bound         psycopg 3: one query with three different bound values

Shop routes may end in /id-<anything> (a request's own id, ignored).
Downstream routes: /sleep?ms=N and /sleep/<anything>?ms=N (waits, answers 2 bytes), /rates?cur=X
(answers at once).
"""

import argparse
import http.client
import sys
import time
from http.server import ThreadingHTTPServer

from json_handler import JsonHandler
from urllib.parse import parse_qs, urlsplit

CONFIG = {}


def query(sqls):
    import psycopg2

    conn = psycopg2.connect(CONFIG["dsn"])
    conn.autocommit = True
    rows = 0
    try:
        with conn.cursor() as cur:
            for sql, params in sqls:
                cur.execute(sql, params)
                rows += len(cur.fetchall())
    finally:
        conn.close()
    return rows


def query_bound(sql, values):
    import psycopg

    rows = 0
    with psycopg.connect(CONFIG["dsn"], autocommit=True) as conn:
        for value in values:
            rows += len(conn.execute(sql, (value,)).fetchall())
    return rows


def connect(peer):
    parts = urlsplit(CONFIG[peer])
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)


def get(peer, path):
    conn = connect(peer)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def together(calls):
    """Sends every request, then reads every response: the calls overlap, on this thread."""
    conns = []
    for peer, path in calls:
        conn = connect(peer)
        conn.request("GET", path)
        conns.append(conn)
    bodies = [conn.getresponse().read() for conn in conns]
    for conn in conns:
        conn.close()
    return bodies


def burn(ms):
    end = time.process_time() + ms / 1000
    x = 0
    while time.process_time() < end:
        x = (x * 31 + 7) % 1000003
    return x


ORDER = "SELECT id, total FROM orders WHERE id = %s"


def shop_route(path):
    if path == "/n_plus_one":
        return {"rows": query([(ORDER, (i,)) for i in range(1, 11)])}
    if path == "/sequential":
        get("a", "/sleep?ms=150")
        get("b", "/sleep?ms=150")
        return {"ok": True}
    if path == "/repeated":
        for _ in range(3):
            get("a", "/rates?cur=EUR")
        return {"ok": True}
    if path == "/repeated_bound":
        return {"rows": query_bound(ORDER, [3, 3, 3])}
    if path == "/control/bound":
        return {"rows": query_bound(ORDER, [1, 2, 3])}
    if path == "/oversized":
        return b"x" * (2 << 20)
    if path == "/oversized_rows":
        return {"rows": query([("SELECT g FROM generate_series(1, 2000) g", ())])}
    if path == "/slow_dependency":
        time.sleep(0.1)
        get("a", "/sleep?ms=400")
        return {"ok": True}
    if path == "/burn":
        return {"x": burn(600)}
    if path == "/control/db":
        rows = query(
            [
                ("SELECT id, total FROM orders WHERE user_id = %s", (7,)),
                ("SELECT count(*) FROM orders", ()),
            ]
        )
        return {"rows": rows}
    if path == "/control/parallel":
        together([("a", "/sleep?ms=100"), ("b", "/sleep?ms=100")])
        return {"ok": True}
    if path == "/control/fast":
        get("a", "/rates?cur=USD")
        return {"ok": True}
    return None


def downstream_route(path, params):
    if path == "/sleep" or path.startswith("/sleep/"):
        time.sleep(int(params.get("ms", ["0"])[0]) / 1000)
        return b"ok"
    if path == "/rates":
        return {"cur": params.get("cur", ["EUR"])[0], "rate": 1.1}
    return None


class Handler(JsonHandler):
    def do_GET(self):
        parts = urlsplit(self.path)
        if CONFIG["role"] == "shop":
            # A request may carry its own id after its route: /n_plus_one/id-t3r7.
            payload = shop_route(parts.path.split("/id-")[0])
        else:
            payload = downstream_route(parts.path, parse_qs(parts.query))
        if payload is None:
            return self.reply(404, {"error": "not found"})
        self.reply(200, payload)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["shop", "downstream"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dsn")
    parser.add_argument("--peer-a")
    parser.add_argument("--peer-b")
    args = parser.parse_args()
    CONFIG.update(role=args.role, dsn=args.dsn, a=args.peer_a, b=args.peer_b)
    if args.role == "shop":
        import psycopg  # noqa: F401  (loaded before loupe attaches)
        import psycopg2  # noqa: F401
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
