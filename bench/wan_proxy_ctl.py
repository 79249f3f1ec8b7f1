"""Run /work/shared/bench/wan_proxy.py (the shared WAN-link emulator) as a child process.

Why one process for many ports: every ``--forward`` pair of one proxy shares the same
token bucket, like one access link; the requester's traffic to the owner, the replica
holder and the share holders therefore competes for one link, as it would in reality.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from node.testing.nodes import free_port  # noqa: F401  (re-exported for callers of this module)

SHARED_BENCH = Path(os.environ.get("MEDFED_SHARED_BENCH", "/work/shared/bench"))
WAN_PROXY = SHARED_BENCH / "wan_proxy.py"
READY_TIMEOUT_S = 15.0


class ProxyError(RuntimeError):
    """The WAN proxy did not start; the message carries its stderr."""



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
