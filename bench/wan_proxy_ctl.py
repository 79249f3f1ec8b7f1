"""Run /work/shared/bench/wan_proxy.py (the shared WAN-link emulator) as a child process.

Why one process for many ports: every ``--forward`` pair of one proxy shares the same
token bucket, like one access link; the requester's traffic to the owner, the replica
holder and the share holders therefore competes for one link, as it would in reality.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from node.testing.nodes import free_port  # noqa: F401  (re-exported for callers of this module)

SHARED_BENCH = Path(os.environ.get("MEDFED_SHARED_BENCH", "/work/shared/bench"))
WAN_PROXY = SHARED_BENCH / "wan_proxy.py"
READY_TIMEOUT_S = 15.0


class ProxyError(RuntimeError):
    """The WAN proxy did not start; the message carries its stderr."""


def ephemeral_range(text: str | None = None) -> tuple[int, int]:
    """The kernel's ephemeral port range (``/proc/sys/net/ipv4/ip_local_port_range``)."""
    if text is None:
        try:
            text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        except OSError:
            return 32768, 60999
    low, high = (int(x) for x in text.split())
    return low, high


def rebindable_ports(count: int, host: str = "127.0.0.1", *, rng: random.Random | None = None
                     ) -> list[int]:
    """``count`` distinct ports, free now for TCP and UDP, below the ephemeral range.

    Why: the benchmark starts a new proxy on the roster ports for every fetch (and binds
    the owner's server port again when it restarts). A port from the ephemeral range
    is free between two fetches, so any outgoing connection on the machine may take it
    as its local port meanwhile, and the next bind fails ("address already in use":
    one ``bench.wan`` run in about ten, 2026-12-07). Outgoing connections never take a
    port below the range."""
    rng = rng or random.Random()
    low, _high = ephemeral_range()
    chosen: list[int] = []
    for _ in range(200 * count):
        if len(chosen) == count:
            break
        port = rng.randrange(10_000, low)
        if port in chosen:
            continue
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind((host, port))
        except OSError:
            continue
        chosen.append(port)
    if len(chosen) < count:
        raise ProxyError(f"found only {len(chosen)} of {count} free ports below {low}")
    return chosen



@contextlib.asynccontextmanager
async def wan_proxy(pairs: Sequence[tuple[int, int]], *, rate_mbit: float, delay_ms: float,
                    window_kb: int = 4096) -> AsyncIterator[None]:
    """Forward each (listen, target) pair over one emulated link (rate 0 = no cap)."""
    if not pairs:
        yield
        return
    (listen, target), rest = pairs[0], pairs[1:]
    args = [sys.executable, str(WAN_PROXY), "--listen", str(listen), "--target", str(target),
            "--rate-mbit", f"{rate_mbit:g}", "--delay-ms", f"{delay_ms:g}", "--window-kb", str(window_kb)]
    for lst, tgt in rest:
        args += ["--forward", f"{lst}:{tgt}"]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                line = await proc.stdout.readline()
        except TimeoutError:
            line = b""
        if b"ready" not in line:
            proc.kill()
            err = await proc.stderr.read()
            raise ProxyError(f"wan_proxy did not start: {err.decode(errors='replace')[-500:]}")
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
