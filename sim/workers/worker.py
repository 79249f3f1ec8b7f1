"""One worker process: ``python -m sim.workers.worker``, driven through its stdin/stdout.

The parent sends a configuration frame, then one frame per window: the datagrams
arriving from other workers, the step to start (if any) and the barrier time. The
worker runs its loop to the barrier and answers with the datagrams its nodes sent to
other workers, when its next event is, and whether its part of the step is done.
A ``finish`` frame stops the nodes; the last answer has the worker's peak memory.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
from pathlib import Path
from typing import Any

from sim.dbtemplate import DbTemplate
from sim.grid import keep_out_of_gc, virtual_host
from sim.options import SimOptions
from sim.run import fewer_gc_passes, quiet_logs
from sim.vclock import run_virtual
from sim.workers.framing import BlockingChannel
from sim.workers.loop import WindowLoop, run_until
from sim.workers.memory import own_peak_rss_mb
from sim.workers.network import PartitionedNetwork
from sim.workers.nodes import start_nodes, stop_nodes
from sim.workers.partition import local_nodes
from sim.workers.plan import Step
from sim.workers.steps import StepRunner


def _loop() -> WindowLoop:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, WindowLoop)
    return loop


async def serve(channel: BlockingChannel, config: dict[str, Any]) -> None:
    opts = SimOptions.from_params(config["params"])
    directory = Path(config["directory"])
    index, workers = int(config["index"]), int(config["workers"])
    mine = local_nodes(opts.nodes, index, workers)
    model = opts.net_model()
    network = PartitionedNetwork(model, opts.seed, {virtual_host(i) for i in mine}, index)
    for i in range(opts.nodes):
        network.add_host(virtual_host(i), model.region_of(i))
    nodes = await start_nodes(directory, mine, network, opts.seed,
                              DbTemplate(directory / f"templates-worker{index}"))
    keep_out_of_gc()            # as sim.grid: long-lived objects leave the collector's walks
    runner = StepRunner(nodes, network, opts.seed)
    loop = _loop()
    channel.send({"now": loop.time(), "next": loop.next_event(), "nodes": len(mine)})
    try:
        while True:
            cmd = channel.receive()
            if cmd.get("finish"):
                break
            network.deliver(cmd["inbox"])
            if cmd.get("step") is not None:
                runner.start(Step.from_doc(cmd["step"]))
            await run_until(float(cmd["until"]))
            reply: dict[str, Any] = {"outbox": network.take_outbox(), "next": loop.next_event(),
                                     "done": runner.done()}
            if reply["done"]:
                step_op = runner.op
                reply["results"], reply["error"] = runner.outcome()
                if step_op == "join":
                    keep_out_of_gc()
            channel.send(reply)
    finally:
        await stop_nodes(nodes)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    channel.send({"peak_rss_mb": round(own_peak_rss_mb(), 1),
                  "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                  "datagrams_lost": network.datagrams_lost,
                  "bytes_sent": sum(network.bytes_sent.values()),
                  "streams_between_workers": network.remote_streams_opened})


def main() -> None:
    quiet_logs()
    out = os.fdopen(os.dup(1), "wb")     # the channel; stray prints go to stderr
    os.dup2(2, 1)
    channel = BlockingChannel(sys.stdin.buffer, out)
    config = channel.receive()
    with fewer_gc_passes():
        run_virtual(serve(channel, config), loop_factory=WindowLoop)


if __name__ == "__main__":
    main()
