#!/usr/bin/env python3
"""DH parameter generation: certman's generator next to plain ``openssl dhparam``.

Standalone (not run by the test suite; it takes minutes of CPU):

    PYTHONPATH=. python benchmarks/bench_dhparams.py --bits 2048 --runs 8
    PYTHONPATH=. python benchmarks/bench_dhparams.py --bits 3072 --runs 3 --json out.json

For each size it times, alternating so that machine load hits every variant alike:
  - ``openssl dhparam -out F BITS``, one process (what a cron one-liner does);
  - ``certman.dh.gen.generate`` with 1 worker and with ``--workers`` workers (first valid result
    wins, the others are killed), including certman's own safe-prime validation;
and the validation alone: certman's Python check (Miller-Rabin on q, Pocklington on p) versus
``openssl dhparam -check``. Figures are wall-clock seconds; medians over ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from certman.dh.gen import GeneratorSettings, generate
from certman.dh.groups import is_safe_prime, parse_pem


def time_openssl(bits: int, out: Path, openssl: str) -> float:
    start = time.monotonic()
    subprocess.run(
        [openssl, "dhparam", "-out", str(out), str(bits)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
    )  # fmt: skip
    return time.monotonic() - start


def time_certman(bits: int, out: Path, openssl: str, workers: int) -> float:
    settings = GeneratorSettings(openssl=openssl, workers=workers, nice=0, min_bits=min(bits, 2048))
    start = time.monotonic()
    generate(bits, out, settings)
    return time.monotonic() - start


def time_checks(path: Path, openssl: str) -> tuple[float, float]:
    group = parse_pem(path.read_bytes(), str(path))
    start = time.monotonic()
    assert is_safe_prime(group.p, 32, random.SystemRandom())
    python_s = time.monotonic() - start
    start = time.monotonic()
    subprocess.run(
        [openssl, "dhparam", "-check", "-noout", "-in", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
    )  # fmt: skip
    return python_s, time.monotonic() - start


def bench(bits: int, runs: int, workers: int, openssl: str, work: Path) -> dict[str, object]:
    variants: dict[str, list[float]] = {
        "openssl dhparam": [],
        "certman 1 worker": [],
        f"certman {workers} workers": [],
    }
    checks: dict[str, list[float]] = {"python safe-prime": [], "openssl -check": []}
    for run in range(runs):
        for name, times in variants.items():
            out = work / f"dh{bits}-{run}-{name.replace(' ', '_')}.pem"
            if name == "openssl dhparam":
                seconds = time_openssl(bits, out, openssl)
            else:
                seconds = time_certman(bits, out, openssl, int(name.split()[1]))
            times.append(seconds)
            print(f"  {bits} run {run + 1}/{runs} {name}: {seconds:.1f} s", flush=True)
        python_s, openssl_s = time_checks(out, openssl)
        checks["python safe-prime"].append(python_s)
        checks["openssl -check"].append(openssl_s)
    return {
        "bits": bits,
        "runs": runs,
        "generation": {k: _summary(v) for k, v in variants.items()},
        "validation": {k: _summary(v) for k, v in checks.items()},
    }


def _summary(values: list[float]) -> dict[str, object]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "all": [round(v, 2) for v in values],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[2048])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--openssl", default="openssl")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    version = subprocess.run(
        [args.openssl, "version"], capture_output=True, text=True, check=False
    ).stdout
    print(f"{version.strip()}; {os.cpu_count()} CPUs; {args.runs} runs per variant", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-dh-") as tmp:
        for bits in args.bits:
            results.append(bench(bits, args.runs, args.workers, args.openssl, Path(tmp)))
    for result in results:
        print(f"\n{result['bits']} bits, median of {result['runs']} runs (min-max):")
        for section in ("generation", "validation"):
            for name, summary in result[section].items():  # type: ignore[attr-defined]
                print(
                    f"  {section:10} {name:20} {summary['median']:7.2f} s "
                    f"({summary['min']:.2f}-{summary['max']:.2f})"
                )
    if args.json:
        args.json.write_text(json.dumps({"openssl": version.strip(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
