"""Peak memory of this process's own address space.

``getrusage``'s ru_maxrss survives fork and exec on Linux: a worker started by a large
parent would report the parent's peak. VmHWM in /proc/self/status is the high-water
mark of the current address space, which exec replaces.
"""

from __future__ import annotations

from pathlib import Path

from sim.run import peak_rss_mb


def own_peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0    # kB
    except (OSError, ValueError, IndexError):
        pass
    return peak_rss_mb()
