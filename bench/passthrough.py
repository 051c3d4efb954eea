"""A rung of ``bench/bench_floor.py``'s ladder: plain HTTP forwarding on the proxy's own framework
(aiohttp's web server for the client side, the proxy's keep-alive client exporter/proxy/upstream_client.py
for the upstream side) with no authentication, no usage reading, no counters and no ledger. What it
costs per request is what any proxy built on these two parts costs before it does its job.

    python bench/passthrough.py --target 127.0.0.1:8000

Prints its port on one line, then serves until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.proxy.upstream_client import UpstreamPool

POOL = web.AppKey("pool", UpstreamPool)


def app_for(host: str, port: int) -> web.Application:
    app = web.Application()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {
            "Content-Type": "application/json",
            "Authorization": request.headers.get("Authorization", ""),
        }
        upstream = await request.app[POOL].post((host, port, ""), request.path, headers, body)
        try:
            if upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
                response = web.StreamResponse(status=upstream.status)
                response.content_type = "text/event-stream"
                await response.prepare(request)
                while chunk := await upstream.content.readany():
                    await response.write(chunk)
                await response.write_eof()
                return response
            data = await upstream.read()
            return web.Response(status=upstream.status, body=data, content_type="application/json")
        finally:
            upstream.release()

    async def pool(app: web.Application):  # type: ignore[no-untyped-def]
        app[POOL] = UpstreamPool(5.0, 60.0)
        yield
        await app[POOL].close()

    app.router.add_post("/{tail:.*}", forward)
    app.cleanup_ctx.append(pool)
    return app


async def main(target: str) -> None:
    host, _, port = target.rpartition(":")
    runner = web.AppRunner(app_for(host, int(port)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True, help="HOST:PORT of the upstream")
    import uvloop

    uvloop.run(main(p.parse_args().target))
