"""Series-bundle codec benchmark: ``python -m bench.bundle [--slices 100] [--series DIR]``.

Why: the bundle defaults (byte shuffle + zstd level) are chosen by measurement; this
prints the numbers behind them. For each codec it writes and reads a whole bundle
in memory and reports wall-clock MB/s and MB per CPU-second (the per-core figure,
which matters when zstd runs threads), both over raw DICOM bytes, and the ratio
raw / stored. The ``zstd -3`` command line on the same concatenated bytes is the
anchor ratio. Two data sets: Part-10 files from make_series.py and a numpy phantom
(smooth body + Gaussian noise, 512x512 uint16, 12 bits) in a minimal Part-10 wrapper.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from node.bundle.stream import new_bundle_key, read_bundle, write_bundle

MAKE_SERIES = Path("/work/shared/bench/make_series.py")
ZSTD_CLI = "/usr/bin/zstd"


@dataclass(frozen=True)
class Codec:
    name: str
    level: int
    shuffle: bool
    threads: int = 0


CODECS = [
    Codec("shuffle + zstd-1 (default)", 1, True),
    Codec("shuffle + zstd-3", 3, True),
    Codec("zstd-3, no shuffle", 3, False),
    Codec("zstd-1, no shuffle", 1, False),
    Codec("shuffle + zstd-3, threads=2", 3, True, 2),
]


def part10_series(slices: int, series_dir: Path | None) -> list[bytes]:
    if series_dir is None:
        if not MAKE_SERIES.exists():
            raise SystemExit(f"{MAKE_SERIES} not found; pass --series DIR with Part-10 files")
        series_dir = Path(tempfile.mkdtemp(prefix="bench-bundle-"))
        try:
            subprocess.run(
                [sys.executable, str(MAKE_SERIES), "--out", str(series_dir), "--slices", str(slices)],
                check=True, capture_output=True, timeout=600,
            )
            return [p.read_bytes() for p in sorted(series_dir.rglob("*.dcm"))]
        finally:
            shutil.rmtree(series_dir, ignore_errors=True)
    return [p.read_bytes() for p in sorted(series_dir.rglob("*.dcm"))]


def phantom_series(slices: int, seed: int = 7) -> list[bytes]:
    """Pixel data in the smallest wrapper the shuffle heuristic recognises."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1:1:512j, -1:1:512j]
    out = []
    for i in range(slices):
        z = i / max(1, slices - 1)
        body = (x / 0.8) ** 2 + (y / (0.6 + 0.05 * z)) ** 2 <= 1
        hu = np.where(body, 40 + 200 * np.exp(-((x - 0.2) ** 2 + y**2) / 0.05), -1000.0)
        hu += rng.normal(0, 1, hu.shape) * np.where(body, 12.0, 3.0)
        pixels = np.clip(hu + 1024, 0, 4095).astype("<u2").tobytes()
        element = b"\xe0\x7f\x10\x00OW\x00\x00" + len(pixels).to_bytes(4, "little")
        out.append(bytes(128) + b"DICM" + element + pixels)
    return out


def measure(instances: list[bytes], codec: Codec, repeat: int) -> tuple[float, float, float, float, float]:
    """Best-of-``repeat`` (write MB/s, write MB/cpu-s, read MB/s, read MB/cpu-s, ratio)."""
    raw = sum(map(len, instances)) / 1e6
    key = new_bundle_key()
    best = [0.0, 0.0, 0.0, 0.0]
    stored = b""
    for _ in range(repeat):
        sink = io.BytesIO()
        wall, cpu = time.perf_counter(), time.process_time()
        info = write_bundle(instances, sink, key, level=codec.level, shuffle=codec.shuffle, threads=codec.threads)
        w_wall, w_cpu = time.perf_counter() - wall, time.process_time() - cpu
        stored = sink.getvalue()
        wall, cpu = time.perf_counter(), time.process_time()
        count = sum(1 for _ in read_bundle(io.BytesIO(stored), key, info.bundle_id))
        r_wall, r_cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert count == len(instances)
        rates = [raw / w_wall, raw / max(w_cpu, 1e-9), raw / r_wall, raw / max(r_cpu, 1e-9)]
        best = [max(b, r) for b, r in zip(best, rates)]
    return best[0], best[1], best[2], best[3], raw * 1e6 / len(stored)


def zstd_cli_anchor(instances: list[bytes], level: int = 3) -> tuple[float, float]:
    """(ratio, MB/s) of the zstd command line on the concatenated raw bytes."""
    blob = b"".join(instances)
    start = time.perf_counter()
    done = subprocess.run([ZSTD_CLI, f"-{level}", "-c", "-q"], input=blob, capture_output=True, check=True, timeout=600)
    return len(blob) / len(done.stdout), len(blob) / 1e6 / (time.perf_counter() - start)


def report(title: str, instances: list[bytes], repeat: int) -> None:
    print(f"\n{title}: {len(instances)} instances, {sum(map(len, instances)) / 1e6:.1f} MB raw")
    print(f"{'codec':30s} {'ratio':>6s} {'enc MB/s':>9s} {'enc/core':>9s} {'dec MB/s':>9s} {'dec/core':>9s}")
    for codec in CODECS:
        w, wc, r, rc, ratio = measure(instances, codec, repeat)
        print(f"{codec.name:30s} {ratio:6.2f} {w:9.0f} {wc:9.0f} {r:9.0f} {rc:9.0f}")
    if Path(ZSTD_CLI).exists():
        ratio, speed = zstd_cli_anchor(instances)
        print(f"{'anchor: zstd -3 (CLI, raw)':30s} {ratio:6.2f} {speed:9.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--series", type=Path, default=None, help="directory of Part-10 files to use instead")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print("MB/s are raw DICOM megabytes per second; '/core' is per CPU-second (process time).")
    report("Part-10 CT series (make_series.py)", part10_series(args.slices, args.series), args.repeat)
    report("numpy CT phantom (512x512 uint16, 12-bit)", phantom_series(args.slices), args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
