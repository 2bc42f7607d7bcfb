"""An asyncio HTTP service on the standard library alone, to run under any CPython 3.11+:
`asyncio.start_server` runs each client connection in a task of its own, which reads the
connection's requests one after another (keep-alive) and answers each; calls go to a downstream
over a pool of keep-alive connections opened with `asyncio.open_connection`.

    python stdlib_async.py --port 0 --downstream 127.0.0.1:PORT [--pool 4]

Prints `listening on 127.0.0.1:PORT` on stdout once it accepts connections, nothing after.

    GET /call/{id}     one GET /sleep/{id}?ms=5 to the downstream, then the answer
    GET /two/{id}      GET /sleep/{id}-a then /sleep/{id}-b, one after the other
    GET /gather/{id}   /sleep/{id}-a and /sleep/{id}-b at once, each in a task of its own
    GET /health        no call
"""

import argparse
import asyncio
import sys


class Pool:
    """Keep-alive connections to the downstream, opened at start-up, one caller at a time."""

    def __init__(self, host, port, size):
        self.host, self.port, self.size = host, port, size
        self.idle = asyncio.Queue()

    async def open(self):
        for _ in range(self.size):
            self.idle.put_nowait(await asyncio.open_connection(self.host, self.port))

    async def get(self, path):
        reader, writer = await self.idle.get()
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode()
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            return head.split(b" ", 2)[1], body
        finally:
            self.idle.put_nowait((reader, writer))


async def route(pool, path):
    parts = path.strip("/").split("/")
    if parts == ["health"]:
        return b"ok"
    if len(parts) != 2:
        return None
    name, rid = parts
    if name == "call":
        await pool.get(f"/sleep/{rid}?ms=5")
    elif name == "two":
        await pool.get(f"/sleep/{rid}-a?ms=5")
        await pool.get(f"/sleep/{rid}-b?ms=5")
    elif name == "gather":
        await asyncio.gather(
            pool.get(f"/sleep/{rid}-a?ms=5"), pool.get(f"/sleep/{rid}-b?ms=5")
        )
    else:
        return None
    return rid.encode()


async def serve(pool, reader, writer):
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            path = head.split(b" ", 2)[1].decode()
            body = await route(pool, path)
            status = b"200 OK" if body is not None else b"404 Not Found"
            body = body or b""
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
    finally:
        writer.close()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--downstream", required=True)
    parser.add_argument("--pool", type=int, default=4)
    args = parser.parse_args()
    host, port = args.downstream.rsplit(":", 1)
    pool = Pool(host, int(port), args.pool)
    await pool.open()
    server = await asyncio.start_server(
        lambda r, w: serve(pool, r, w), "127.0.0.1", args.port
    )
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    sys.stdout.close()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
