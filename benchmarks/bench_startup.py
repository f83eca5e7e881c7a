#!/usr/bin/env python3
"""Start-up cost of a cron run with nothing to do: ``certman run`` on an idle host.

    PYTHONPATH=.:tests python benchmarks/bench_startup.py --runs 30

Prints the median and p90 wall time of the whole process (interpreter start included), next to
``python -c pass`` on the same machine, so the figure is certman's own share.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from startup import idle_host


def timed(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return sorted(times)


def report(label: str, times: list[float]) -> None:
    p90 = times[int(len(times) * 0.9) - 1]
    print(
        f"{label:<34} median {statistics.median(times) * 1000:6.1f} ms   p90 {p90 * 1000:6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = idle_host(Path(tmp))
        run = [sys.executable, "-m", "certman", "--config", str(config), "run", "--quiet"]
        report("python -c pass", timed([sys.executable, "-c", "pass"], args.runs))
        report("certman run (nothing to do)", timed(run, args.runs))


if __name__ == "__main__":
    main()
