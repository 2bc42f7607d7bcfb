"""A shop with a Redis cache in front of a slow downstream, for loupe's tests: a thread per
connection (http.server's ThreadingHTTPServer), one redis-py client (a connection pool) for
database 0 and one for database 2, and one keep-alive connection to the downstream per thread.

    python cache_shop.py --port 0 --redis 127.0.0.1:6379 --downstream 127.0.0.1:PORT

Prints `listening on 127.0.0.1:PORT` on stdout once it accepts connections, nothing after.
Every id is in the path; every Redis key and downstream path carries it too.

    GET /cache/{id}     cache-aside: GET item:{id}; on a miss, GET /sleep/{id}?ms=300 from the
                        downstream, then SET item:{id} EX 60
    GET /pipeline/{id}  one pipeline (no transaction): SET p:{id}, GET p:{id}, INCR n:{id}
    GET /multi/{id}     one transaction: MULTI, SET m:{id}, GET m:{id}, EXEC
    GET /error/{id}     SET e:{id}, then LPUSH e:{id} (a WRONGTYPE error reply)
    GET /db2/{id}       GET d:{id} on database 2 (its connections SELECT 2 when they open, on
                        the first such request: database 0's pool opens at start-up)
    GET /health         no call
"""

import argparse
import http.client
import http.server
import sys
import threading

import redis

CLIENTS = {}
LOCAL = threading.local()


def downstream():
    """This thread's keep-alive connection to the downstream."""
    conn = getattr(LOCAL, "downstream", None)
    if conn is None:
        host, port = CLIENTS["downstream"]
        conn = http.client.HTTPConnection(host, port, timeout=30)
        LOCAL.downstream = conn
    return conn


def slow_fill(rid):
    conn = downstream()
    conn.request("GET", f"/sleep/{rid}?ms=300")
    response = conn.getresponse()
    return response.read()


def route(path):
    parts = path.strip("/").split("/")
    if parts == ["health"]:
        return b"ok"
    if len(parts) != 2:
        return None
    name, rid = parts
    db0, db2 = CLIENTS["db0"], CLIENTS["db2"]
    if name == "cache":
        value = db0.get(f"item:{rid}")
        if value is None:
            value = slow_fill(rid)
            db0.set(f"item:{rid}", value, ex=60)
        return value
    if name == "pipeline":
        pipe = db0.pipeline(transaction=False)
        pipe.set(f"p:{rid}", rid)
        pipe.get(f"p:{rid}")
        pipe.incr(f"n:{rid}")
        pipe.execute()
        return b"ok"
    if name == "multi":
        pipe = db0.pipeline(transaction=True)
        pipe.set(f"m:{rid}", rid)
        pipe.get(f"m:{rid}")
        pipe.execute()
        return b"ok"
    if name == "error":
        db0.set(f"e:{rid}", rid)
        try:
            db0.lpush(f"e:{rid}", "x")
        except redis.ResponseError:
            return b"wrongtype"
        return b"no error?"
    if name == "db2":
        db2.get(f"d:{rid}")
        return b"ok"
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = route(self.path)
        status = 200 if body is not None else 404
        body = body or b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--downstream", required=True)
    args = parser.parse_args()
    host, port = args.redis.rsplit(":", 1)
    CLIENTS["db0"] = redis.Redis(host=host, port=int(port), db=0)
    CLIENTS["db2"] = redis.Redis(host=host, port=int(port), db=2)
    down_host, down_port = args.downstream.rsplit(":", 1)
    CLIENTS["downstream"] = (down_host, int(down_port))
    # Database 0's pool is warm before loupe attaches; database 2's opens on its first request
    # (its SELECT 2 is then seen).
    CLIENTS["db0"].ping()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
