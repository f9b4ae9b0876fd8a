"""A round-robin TCP proxy for the scale-out benchmark: each new connection goes to the next
backend in turn (an L4 load balancer such as HAProxy in TCP mode, or a cloud NLB, does the
same). Runs in a process of its own, so its CPU is not the uploaders' nor the cores'.

    python bench/_rr_proxy.py PORT BACKEND_PORT [BACKEND_PORT ...]
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.close()


async def serve(port: int, backends: list[int]) -> None:
    turn = itertools.cycle(backends)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", next(turn))
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=256)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    run = asyncio.run
    with contextlib.suppress(ImportError):  # the core extra installs uvloop
        import uvloop

        run = uvloop.run
    run(serve(int(sys.argv[1]), [int(p) for p in sys.argv[2:]]))
