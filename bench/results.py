"""bench/RESULTS.md: one section per benchmark, each replaced by its latest run.

Why sections: several benchmarks write the same file; each owns only the text between
its own `## name` heading and the next `## ` heading, so runs never clobber each other.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = ("# Benchmark results\n\n"
          "Written by `make bench` (`python -m bench`). Each section is replaced by the "
          "latest run of its benchmark. Compare ratios, not absolute figures: the same "
          "machine varies by 10-30 % between runs.\n")


@dataclass(frozen=True)
class Machine:
    cpus: int
    cpu_model: str
    ram_gb: float
    python: str

    def line(self) -> str:
        return (f"{self.cpus} CPUs (`nproc`), {self.cpu_model}, {self.ram_gb:.1f} GB RAM, "
                f"Python {self.python}")


def machine() -> Machine:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) / 1024 / 1024
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    return Machine(cpus, model, ram, platform.python_version())


def load_average() -> str:
    """1/5/15-minute load: other work on the box skews figures, so say how busy it was."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def stamp() -> str:
    """Date, machine and load lines that open every section."""
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"- date: {now}\n- machine: {machine().line()}\n"
            f"- load average when the section was written (1/5/15 min): {load_average()}\n")


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the section ``## name`` set to ``body`` (appended if absent)."""
    heading = f"## {name}"
    section = f"{heading}\n\n{body.strip()}\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == heading), None)
    if start is None:
        base = text if text.strip() else HEADER
        return base.rstrip("\n") + "\n\n" + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def write_section(name: str, body: str, path: Path = RESULTS) -> Path:
    """Replace (or add) one benchmark's section; other sections stay as they are."""
    old = path.read_text() if path.exists() else ""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(replace_section(old, name, body))
    os.replace(tmp, path)
    return path
