"""A service that burns CPU in Python and in C, for loupe's Python-frame profile tests. Standard
library only, so it runs on every interpreter the tests find.

    python py_burn.py --port 0

Prints `listening on 127.0.0.1:PORT` once it accepts connections. Each request runs on its own
thread (ThreadingHTTPServer). Routes (ms is how long each part burns):
    /burn/<id>?ms=N   `crunch_numbers`: N ms of pure-Python arithmetic, then `hash_password`:
                      PBKDF2-HMAC-SHA256 in OpenSSL's libcrypto (hashlib) for about N ms
    /fast/<id>        answers at once
"""

import argparse
import hashlib
import sys
import time
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from json_handler import JsonHandler

# PBKDF2 rounds per millisecond, measured at start-up.
ROUNDS_PER_MS = 1


def crunch_numbers(ms):
    deadline = time.monotonic() + ms / 1000
    total = 0
    while time.monotonic() < deadline:
        for i in range(2000):
            total = (total * 31 + i) % 1000003
    return total


def hash_password(ms):
    rounds = max(1, int(ROUNDS_PER_MS * ms))
    return hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", rounds).hex()


def calibrate():
    global ROUNDS_PER_MS
    rounds = 20000
    start = time.monotonic()
    hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", rounds)
    elapsed_ms = max((time.monotonic() - start) * 1000, 0.1)
    ROUNDS_PER_MS = rounds / elapsed_ms


class Handler(JsonHandler):
    def do_GET(self):
        url = urlsplit(self.path)
        ms = int(parse_qs(url.query).get("ms", ["0"])[0])
        if url.path.startswith("/burn/"):
            total = crunch_numbers(ms)
            digest = hash_password(ms)
            self.reply(200, {"total": total, "digest": digest[:16]})
        elif url.path.startswith("/fast/"):
            self.reply(200, {"ok": True})
        else:
            self.reply(404, {"error": "no such route"})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    calibrate()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
