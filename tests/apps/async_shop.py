"""An asyncio shop for loupe's tests: FastAPI on uvicorn (one worker, the asyncio loop, h11) in
front of an asyncpg pool of exactly 4 connections, opened at start-up, and, given a downstream,
one shared httpx.AsyncClient (a keep-alive pool, opened with the app). asyncpg speaks the wire
protocol itself (no libpq) and prepares each statement once per connection, as
`__asyncpg_stmt_<n>__`, then runs it with Bind/Execute/Sync alone: a loupe attached after the
pool has warmed up never sees the statement's text go by.

    python async_shop.py --port 0 --dsn postgresql://postgres@127.0.0.1:5432/shop \
        [--downstream http://127.0.0.1:PORT]

Prints `listening on 127.0.0.1:PORT` on stdout once the pool is open and the server accepts
connections, and nothing on stdout after that. Every id is numeric and in the path (loupe
redacts query-string values), and every downstream call carries its request's id in its own
path, so a test can tell which request made each call:

    GET /item/{id}         one pool.fetchrow of the order with that id
    GET /n_plus_one/{id}   one connection, 6 fetchrows one after another, users id .. id+5
    GET /call/{id}         GET {downstream}/sleep/{id}?ms=5
    GET /mixed/{id}        the /item query, then GET {downstream}/sleep/{id}?ms=5
    GET /slow/{id}         GET {downstream}/sleep/{id}?ms=400 (a slow dependency)
    GET /health            no query, no call

The downstream is tests/apps/diag_shop.py's (`/sleep/<anything>?ms=N` waits N ms); without
`--downstream` the routes that call it answer 404. The pool's reset on release is a no-op (no
route changes session state), so a request runs the queries its route names and nothing else:
asyncpg's default reset would add a
`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` to every request. The
client's idle connections never expire (httpx drops them after 5 s by default), so connections
opened while warming up are the ones a test later sees.
"""

import argparse
import contextlib
import socket
import sys

import asyncpg
import httpx
import uvicorn
from fastapi import FastAPI, HTTPException

BY_ID = "SELECT id, total FROM orders WHERE id = $1"
BY_USER = "SELECT id, total FROM orders WHERE user_id = $1"

CONFIG = {}


async def keep_session(_conn):
    """The pool's reset: nothing to undo."""


@contextlib.asynccontextmanager
async def lifespan(app):
    app.state.pool = await asyncpg.create_pool(
        CONFIG["dsn"], min_size=4, max_size=4, reset=keep_session
    )
    app.state.http = None
    if CONFIG["downstream"]:
        app.state.http = httpx.AsyncClient(
            base_url=CONFIG["downstream"],
            limits=httpx.Limits(max_keepalive_connections=64, keepalive_expiry=None),
            timeout=30,
        )
    try:
        yield
    finally:
        if app.state.http is not None:
            await app.state.http.aclose()
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


def row(record):
    return None if record is None else {"id": record["id"], "total": str(record["total"])}


@app.get("/health")
async def health():
    return {"ok": True}


@app.get("/item/{item_id}")
async def item(item_id: int):
    record = await app.state.pool.fetchrow(BY_ID, item_id)
    return {"id": item_id, "row": row(record)}


@app.get("/n_plus_one/{user_id}")
async def n_plus_one(user_id: int):
    found = 0
    async with app.state.pool.acquire() as conn:
        for k in range(6):
            # One after another, each awaited, on one connection: the N+1 shape.
            if await conn.fetchrow(BY_USER, user_id + k) is not None:
                found += 1
    return {"id": user_id, "queries": 6, "found": found}


async def sleep(call_id, ms):
    """GET {downstream}/sleep/{call_id}?ms={ms} on the shared client."""
    if app.state.http is None:
        raise HTTPException(status_code=404, detail="no --downstream")
    response = await app.state.http.get(f"/sleep/{call_id}", params={"ms": ms})
    response.raise_for_status()
    return len(response.content)


@app.get("/call/{call_id}")
async def call(call_id: int):
    return {"id": call_id, "bytes": await sleep(call_id, 5)}


@app.get("/mixed/{item_id}")
async def mixed(item_id: int):
    record = await app.state.pool.fetchrow(BY_ID, item_id)
    return {"id": item_id, "row": row(record), "bytes": await sleep(item_id, 5)}


@app.get("/slow/{call_id}")
async def slow(call_id: int):
    return {"id": call_id, "bytes": await sleep(call_id, 400)}


class Server(uvicorn.Server):
    """Says where it listens once it serves (the harness reads that line first)."""

    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if not self.should_exit:
            port = sockets[0].getsockname()[1]
            print(f"listening on 127.0.0.1:{port}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--downstream", help="base URL of the service /call, /mixed and /slow call")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    CONFIG.update(dsn=args.dsn, downstream=args.downstream)
    # Port 0 needs the socket made here: uvicorn binds its own only to a port it was told.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    config = uvicorn.Config(
        app,
        loop=args.loop,
        http="h11",
        lifespan="on",
        workers=1,
        log_level="warning",
        access_log=False,
    )
    Server(config).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
