"""An HTTP/1.1 server written on raw sockets, for the shapes a framework never sends: a thread
per connection, keep-alive, each request's response chosen by its path.

  /continues/<id>  1,000 `100 Continue` in one write, then `200` in another
  /hints/<id>      `103 Early Hints`, then `200`, in one write
  /big-head/<id>   a 1 MiB head (one header), Content-Length 10, in one write
  /upgrade/<id>    `101 Switching Protocols`, then bytes that are not HTTP both ways
  anything else    `200`, body `ok` and a newline

Prints `listening on 127.0.0.1:PORT` once it accepts connections.
"""

import argparse
import socket
import socketserver

BODY = b"0123456789"


def final(body=BODY):
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            path = head.split(b"\r\n", 1)[0].split(b" ")[1]
            if path.startswith(b"/continues/"):
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" * 1000)
                sock.sendall(final())
            elif path.startswith(b"/hints/"):
                sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + final())
            elif path.startswith(b"/big-head/"):
                filler = b"h" * (1 << 20)
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Big: " + filler + b"\r\n\r\n" + BODY
                )
            elif path.startswith(b"/upgrade/"):
                sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-raw\r\nConnection: Upgrade\r\n\r\n")
                # Not HTTP from here on: echo what comes until the client closes.
                while True:
                    data = sock.recv(65536)
                    if not data:
                        return
                    sock.sendall(data)
            else:
                sock.sendall(final(b"ok\n"))


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = Server(("127.0.0.1", args.port), Handler)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
