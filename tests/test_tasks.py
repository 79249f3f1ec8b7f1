"""node.tasks.TaskSet: background tasks iterate in start order and leave when done."""

from __future__ import annotations

import asyncio

from node.tasks import TaskSet


def test_tasks_iterate_in_start_order_and_leave_when_done() -> None:
    async def main() -> None:
        tasks = TaskSet()
        gates = [asyncio.Event() for _ in range(50)]
        started = [asyncio.get_running_loop().create_task(g.wait()) for g in gates]
        for task in reversed(started):          # added newest first: the order kept is this one
            tasks.add(task)
        assert list(tasks) == started[::-1] and len(tasks) == 50
        gates[10].set()
        await started[10]
        await asyncio.sleep(0)
        assert started[10] not in list(tasks) and len(tasks) == 49
        taken = tasks.take()
        assert taken == [t for t in started[::-1] if t is not started[10]]
        assert not tasks and len(tasks) == 0
        for gate in gates:
            gate.set()
        await asyncio.gather(*taken)
        assert len(tasks) == 0                  # a taken task ending does not come back

    asyncio.run(main())
