"""A collector that misbehaves, in front of a real one, for loupe's export tests.

    otlp_gate.py blackhole PORT
        Accepts connections and never reads or answers (a hung collector).
    otlp_gate.py delay PORT UPSTREAM_PORT SECONDS
        A TCP relay to 127.0.0.1:UPSTREAM_PORT that holds every chunk the collector sends back
        for SECONDS (a collector that answers slowly); works for OTLP/gRPC and OTLP/HTTP.
    otlp_gate.py auth PORT UPSTREAM_PORT HEADER=VALUE
        An OTLP/HTTP front that answers 401 unless the request carries HEADER: VALUE, and
        forwards what it lets in (body and Content-Encoding unchanged) to the collector's
        OTLP/HTTP port. It prints `request encoding=<gzip|identity> status=<code>` per request.

Each mode prints `ready` once it listens.
"""

import http.client
import http.server
import socket
import sys
import threading
import time


def blackhole(port):
    server = socket.create_server(("127.0.0.1", port), backlog=1024)
    held = []
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        held.append(conn)  # never read, never closed


def pump(src, dst, delay):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if delay:
                time.sleep(delay)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def delay(port, upstream, seconds):
    server = socket.create_server(("127.0.0.1", port), backlog=1024)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        try:
            back = socket.create_connection(("127.0.0.1", upstream))
        except OSError:
            client.close()
            continue
        threading.Thread(target=pump, args=(client, back, 0), daemon=True).start()
        threading.Thread(target=pump, args=(back, client, seconds), daemon=True).start()


def auth(port, upstream, header):
    name, value = header.split("=", 1)

    class Front(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            encoding = self.headers.get("Content-Encoding", "identity")
            if self.headers.get(name) != value:
                status, reply, kind = 401, b"unauthenticated", "text/plain"
            else:
                conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
                headers = {"Content-Type": self.headers.get("Content-Type", "")}
                if encoding != "identity":
                    headers["Content-Encoding"] = encoding
                conn.request("POST", self.path, body, headers)
                answer = conn.getresponse()
                status, reply = answer.status, answer.read()
                kind = answer.getheader("Content-Type", "application/x-protobuf")
                conn.close()
            print(f"request encoding={encoding} status={status}", flush=True)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Front)
    print("ready", flush=True)
    server.serve_forever()


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "blackhole":
        blackhole(port)
    elif mode == "delay":
        delay(port, int(sys.argv[3]), float(sys.argv[4]))
    elif mode == "auth":
        auth(port, int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
