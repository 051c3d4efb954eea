"""The floor for the streaming benchmark: exporter/sim/relay.py's bare TCP relay (no HTTP parsing,
one read and one write per segment) on uvloop, as its own process.

    python bench/bare_relay.py --target 127.0.0.1:8000

Prints its port on one line, then relays until stdin closes or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.sim.relay import TcpRelay


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True, help="HOST:PORT to relay to")
    args = p.parse_args()
    host, _, port = args.target.rpartition(":")
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # TcpRelay's loop is then a uvloop
    except ImportError:
        pass
    relay = TcpRelay(host, int(port)).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(relay.port, flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait()
    relay.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
