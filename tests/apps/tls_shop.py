"""A shop that calls an HTTPS downstream, for loupe's tests: a thread per connection
(http.server's ThreadingHTTPServer), and per thread one `requests` Session (keep-alive, TLS
through CPython's ssl module, that is OpenSSL) to the downstream, verified against its CA file.

    python tls_shop.py --port 0 --downstream https://127.0.0.1:PORT --ca cert.pem

Prints `listening on 127.0.0.1:PORT` on stdout once it accepts connections, nothing after.

    GET /fetch/{id}?ms=N   GET {downstream}/sleep/{id}?ms=N, then answers its status
    GET /warm              GET {downstream}/ (opens this thread's TLS connection)
"""

import argparse
import http.server
import sys
import threading
import urllib.parse

import requests

CONFIG = {}
LOCAL = threading.local()


def session():
    found = getattr(LOCAL, "session", None)
    if found is None:
        found = requests.Session()
        LOCAL.session = found
    return found


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        query = urllib.parse.parse_qs(url.query)
        if parts == ["warm"]:
            body = session().get(CONFIG["downstream"] + "/", verify=CONFIG["ca"]).content
        elif len(parts) == 2 and parts[0] == "fetch":
            ms = query.get("ms", ["5"])[0]
            answer = session().get(
                f"{CONFIG['downstream']}/sleep/{parts[1]}?ms={ms}", verify=CONFIG["ca"]
            )
            body = str(answer.status_code).encode()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--downstream", required=True)
    parser.add_argument("--ca", required=True)
    args = parser.parse_args()
    CONFIG.update(downstream=args.downstream, ca=args.ca)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
