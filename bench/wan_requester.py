"""The requesting node in a process of its own: timed fetches, and its peak memory.

Why a child process: the benchmark process also runs the owner, the share holders and
the replica holder. Sharing one event loop (and one core) with the sending side would
charge the sender's TLS and file reads to the requester, and its RSS would say nothing
about the requester. The child (``python -m bench.wan_requester ARGS``) starts the node
from its saved identity, membership and config, then serves one fetch per JSON line on
stdin and answers one JSON line on stdout; the parent samples its VmRSS every 50 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from bench.wan_links import vm_rss_kb

SAMPLE_S = 0.05
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ChildArgs:
    base: str
    name: str
    index: int
    peer_port: int


@dataclass(frozen=True)
class Fetched:
    seconds: float
    instances: int
    plain_bytes: int
    stored_bytes: int
    source: str
    attempts: tuple[str, ...]
    files: int
    peak_rss_mb: float      # sampled while the fetch ran
    start_rss_mb: float     # just before it started
    first_byte_s: float = 0.0   # first / last bundle byte handed to the decoder, after the start
    last_byte_s: float = 0.0


SPENT = "spent-output"


def spend(out: Path, spent: Path) -> None:
    """Empty a fetch's output files and move them aside; the run's scratch folder goes at the end.

    Why not delete them: this machine's ext4 has no journal, and there a new file skips
    every inode freed in the last 1-5 minutes, checking each one (``recently_deleted``).
    Deleting 300 files after every fetch made each later fetch's file creates walk
    thousands of them: 21 % of the requester's CPU samples (perf, 2026-12-07), a cost
    of the benchmark's own deleting, not of fetching. Not kept whole either: 158 MB of
    dirty pages per fetch would be written back while later fetches run. Emptied files
    hold no pages, so nothing is written back, and their inodes stay in use."""
    if not out.exists():
        return
    for path in out.rglob("*"):
        if path.is_file():
            os.truncate(path, 0)
    spent.mkdir(exist_ok=True)
    out.rename(spent / f"{len(list(spent.iterdir())):04d}")


async def _serve(args: ChildArgs) -> None:
    from bench.wan_fed import Published, bench_services, node_config, timed_fetch
    from node.identity import NodeIdentity
    from node.net.membership import MembershipPaths, load_membership
    from node.node import Node

    base = Path(args.base)
    identity = NodeIdentity.load(base / args.name / "keys")
    membership = load_membership(identity, MembershipPaths.under(base / args.name / "federation"))
    node = Node(node_config(base, args.name, args.index, args.peer_port), identity,
                membership=membership, peer_sock=None, services=bench_services(), with_dicom=False)
    await node.start()
    await node.bootstrap_dht()
    assert node.keeper is not None
    await node.keeper.stop()      # each row starts it (or not) itself: bench.wan_fed.prepare
    try:
        print(json.dumps({"ready": True}), flush=True)
        while line := await asyncio.to_thread(sys.stdin.readline):
            job = json.loads(line)
            out = Path(job["out"])
            pub = Published(job["owner_id"], job["bundle_id"], 0, int(job["instances"]), (), ())
            try:
                marks: list[float] = []
                seconds, result = await timed_fetch(node, pub, out, mode=str(job["mode"]),
                                                    marks=marks)
                files = len(list((out / pub.bundle_id).iterdir()))
                answer: dict[str, Any] = {
                    "seconds": seconds, "instances": result.instances, "plain_bytes": result.plain_bytes,
                    "stored_bytes": result.stored_bytes, "source": result.source,
                    "attempts": list(result.attempts), "files": files,
                    "first_byte_s": marks[0] if marks else 0.0, "last_byte_s": marks[-1] if marks else 0.0}
            except Exception as exc:   # report to the parent; it decides
                answer = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            spend(out, base / SPENT)
            print(json.dumps(answer), flush=True)
    finally:
        await node.stop()


def child(argv: list[str]) -> int:
    asyncio.run(_serve(ChildArgs(**json.loads(argv[0]))))
    return 0


def _rss_kb(pid: int) -> int:
    try:
        return vm_rss_kb(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0


class RequesterError(RuntimeError):
    """The requester process failed; the message carries the end of its log."""


class RequesterProcess:
    """Parent side: start the child, send fetches, sample RSS while each runs."""

    def __init__(self, args: ChildArgs, log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log: IO[bytes] | None = None
        self._proc: asyncio.subprocess.Process | None = None

    def _tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-800:] if self.log_path.exists() else ""

    async def start(self) -> None:
        self._log = self.log_path.open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.wan_requester", json.dumps(asdict(self.args)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self._log,
            cwd=str(Path(__file__).resolve().parent.parent))
        await self._answer(START_TIMEOUT_S)

    async def _answer(self, timeout_s: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        reader = asyncio.ensure_future(self._proc.stdout.readline())
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.wait([reader])
        except TimeoutError:
            reader.cancel()
            raise RequesterError(f"the requester did not answer within {timeout_s:.0f} s") from None
        line = reader.result()
        if not line.strip():
            raise RequesterError("the requester process ended: " + self._tail())
        return dict(json.loads(line))

    async def fetch(self, owner_id: str, bundle_id: str, instances: int, out: Path, *,
                    mode: str, timeout_s: float = 600.0) -> Fetched:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        start = _rss_kb(proc.pid)
        job = {"owner_id": owner_id, "bundle_id": bundle_id, "instances": instances, "out": str(out),
               "mode": mode}
        proc.stdin.write(json.dumps(job).encode() + b"\n")
        await proc.stdin.drain()
        reader = asyncio.ensure_future(proc.stdout.readline())
        peak = start
        try:
            async with asyncio.timeout(timeout_s):
                while not reader.done():
                    peak = max(peak, _rss_kb(proc.pid))
                    await asyncio.wait([reader], timeout=SAMPLE_S)
        except TimeoutError:
            reader.cancel()
            raise RequesterError(f"the fetch did not finish within {timeout_s:.0f} s") from None
        line = reader.result()
        if not line.strip():
            raise RequesterError("the requester process ended: " + self._tail())
        doc = json.loads(line)
        if "error" in doc:
            raise RequesterError(f"fetch failed: {doc['error']}")
        return Fetched(float(doc["seconds"]), int(doc["instances"]), int(doc["plain_bytes"]),
                       int(doc["stored_bytes"]), str(doc["source"]), tuple(doc["attempts"]),
                       int(doc["files"]), peak / 1024, start / 1024,
                       float(doc.get("first_byte_s", 0.0)), float(doc.get("last_byte_s", 0.0)))

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
