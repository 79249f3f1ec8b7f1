"""A medfed node serving DICOMweb in a process of its own, for bench.dicomweb.

Why a process: the benchmark's HTTP client would otherwise share one interpreter (and
its GIL) with the node it measures, while Orthanc runs apart. Prints one line
``dicomweb ready: PORT TOKEN`` (a bearer token of the local user "bench") and serves
until stdin closes (the benchmark ends it that way).
``python -m bench.dicomweb_server DATA_DIR``
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from node.datadir import make_private_dir
from node.node import Node
from node.testing.dicomweb import serve_dicomweb, user_token
from node.testing.nodes import loopback_config


async def serve(data_dir: Path) -> None:
    make_private_dir(data_dir)
    node = Node(loopback_config(data_dir, name="bench"), with_dicom=False)
    await node.start()
    token = await asyncio.to_thread(user_token, node, "bench")
    served = await serve_dicomweb(node)
    print(f"dicomweb ready: {served.port} {token}", flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await served.stop()
        await node.stop()


def run(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.dicomweb_server DATA_DIR", file=sys.stderr)
        return 2
    asyncio.run(serve(Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
