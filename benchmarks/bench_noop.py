"""The cron no-op, side by side: ``certman run`` with 1, 100 and 1,000 certificates none due
(fast path, and the full path as it was before it: ``CERTMAN_NO_FASTPATH=1``), ``certbot renew``
with one lineage not due, and ``python -c pass``, alternating; medians and peak memory. Also
where the time goes: ``-X importtime`` and the time to the first byte of output."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from common import (
    Row,
    Sample,
    alternate,
    check_ok,
    deployed_venv,
    environment,
    median,
    ms,
    p90,
    peak_rss_kib,
    run_child,
)
from startup import idle_host

SIZES = (1, 100, 1000)
SECTION = "cron no-op"
GOALS_MS = {1: None, 100: 60.0, 1000: 200.0}  # 1: within 15 ms of the interpreter (below)


def run(certbot_renew: list[str] | None, certbot_python: str | None, rounds: int) -> list[Row]:
    python, certman = deployed_venv()
    with tempfile.TemporaryDirectory(prefix="certman-bench-noop-") as tmp:
        configs = {}
        for size in SIZES:
            (Path(tmp) / str(size)).mkdir()
            configs[size] = idle_host(Path(tmp) / str(size), size, own_postfix=True)
        fast_env, full_env = environment(), environment(CERTMAN_NO_FASTPATH="1")
        commands: dict[str, tuple[list[str], dict[str, str] | None]] = {
            "python -c pass": ([python, "-c", "pass"], None),
        }
        for size, config in configs.items():
            argv = [certman, "--config", str(config), "run", "--quiet"]
            check_ok(run_child(argv, env=fast_env), f"certman run ({size})")  # writes the record
            commands[f"certman run, {size} cert(s), fast path"] = (argv, fast_env)
            commands[f"certman run, {size} cert(s), full path"] = (argv, full_env)
        if certbot_renew is not None and certbot_python is not None:
            check_ok(run_child(certbot_renew), "certbot renew")
            commands["certbot renew, 1 lineage not due"] = (certbot_renew, None)
            commands["certbot's python -c pass"] = ([certbot_python, "-c", "pass"], None)
        cases = {name: _bind(*command) for name, command in commands.items()}
        samples = alternate(cases, rounds)
        for name, runs in samples.items():
            for sample in runs:
                check_ok(sample, name)
        memory = {name: _peak(*command) for name, command in commands.items()}
        rows = _rows(samples, memory)
        rows += _where_the_time_goes(python, certman, configs[1])
    return rows


def _bind(argv: list[str], env: dict[str, str] | None) -> Callable[[], Sample]:
    return lambda: run_child(argv, env=env)


def _peak(argv: list[str], env: dict[str, str] | None) -> float | None:
    """Median peak RSS of three runs, in MiB (None without GNU time)."""
    found = [peak_rss_kib(argv, env) for _ in range(3)]
    values = [k for k in found if k is not None]
    return median(values) / 1024 if values else None


def _rows(samples: dict[str, list[Sample]], memory: dict[str, float | None]) -> list[Row]:
    med = {name: median([s.seconds for s in runs]) for name, runs in samples.items()}
    bare = med["python -c pass"]
    rows = []
    for name, runs in samples.items():
        times = [s.seconds for s in runs]
        rss = memory[name]
        peak = "-" if rss is None else f"{rss:.1f} MiB"
        detail = f"p90 {ms(p90(times))}, peak {peak}, +{ms(med[name] - bare)} over python"
        rows.append(Row(SECTION, name, med[name], detail=detail, extra={"max_rss_mib": rss}))
    by_name = {r.case: r for r in rows}
    one = by_name["certman run, 1 cert(s), fast path"]
    one.goal, one.met = "<= python + 15 ms", med[one.case] - bare <= 0.015
    for size, goal in GOALS_MS.items():
        if goal is not None:
            row = by_name[f"certman run, {size} cert(s), fast path"]
            row.goal, row.met = f"< {goal:.0f} ms", med[row.case] < goal / 1000
    certbot = med.get("certbot renew, 1 lineage not due")
    if certbot:
        ratio = med[one.case] / certbot
        rows.append(
            Row(
                SECTION,
                "ratio certman (1 cert, fast) / certbot renew",
                ratio,
                unit="x",
                goal="< 0.10",
                met=ratio < 0.10,
            )
        )
    for path in ("fast", "full"):
        cost = [med[f"certman run, {n} cert(s), {path} path"] - bare for n in SIZES]
        low = (cost[1] - cost[0]) / (SIZES[1] - SIZES[0])
        high = (cost[2] - cost[1]) / (SIZES[2] - SIZES[1])
        linear = high <= 2 * max(low, 0.0) + 20e-6  # not growing faster: 20 us/cert of noise
        rows.append(
            Row(
                SECTION,
                f"per added certificate, {path} path",
                high * 1000,
                unit="ms",
                detail=f"1->100: {low * 1000:.3f} ms/cert, 100->1000: {high * 1000:.3f} ms/cert",
                goal="linear" if path == "fast" else "",
                met=linear if path == "fast" else None,
            )
        )
    return rows


def _where_the_time_goes(python: str, certman: str, config: Path) -> list[Row]:
    """-X importtime of both paths (module count, slowest modules), time to first byte."""
    rows = []
    for path, env in (("fast", environment()), ("full", environment(CERTMAN_NO_FASTPATH="1"))):
        argv = [python, "-X", "importtime", certman, "--config", str(config), "run", "--quiet"]
        sample = run_child(argv, env=env)
        check_ok(sample, "importtime")
        bare = run_child([python, "-X", "importtime", "-c", "pass"])
        added = _modules(sample.stderr).keys() - _modules(bare.stderr).keys()
        mods = _modules(sample.stderr)
        top = sorted(((mods[m], m) for m in added), reverse=True)[:8]
        cert_total = sum(mods[m] for m in added) / 1e6
        rows.append(
            Row(
                "where the time goes",
                f"imports beyond python's own, {path} path (run --quiet)",
                len(added),
                unit="modules",
                detail=f"self time {cert_total * 1000:.1f} ms; slowest: "
                + ", ".join(f"{m} {t / 1000:.1f} ms" for t, m in top[:5]),
                extra={"modules": sorted(added), "slowest_us": top},
            )
        )
    # The fast path prints nothing (quiet): the time to its exit is the figure. A run by hand
    # (no --quiet) prints each certificate's line: the time to that first byte.
    quiet = [certman, "--config", str(config), "run", "--quiet"]
    runs = [run_child(quiet, env=environment()) for _ in range(7)]
    rows.append(
        Row(
            "where the time goes",
            "time to exit, fast path (run --quiet)",
            median([s.seconds for s in runs]),
        )
    )
    loud = [certman, "--config", str(config), "run"]
    ttfb = [run_child(loud, env=environment(), first_byte=True) for _ in range(7)]
    rows.append(
        Row(
            "where the time goes",
            "time to first byte, full path (run, printing)",
            median([s.first_byte or s.seconds for s in ttfb]),
            detail=f"whole run {ms(median([s.seconds for s in ttfb]))}",
        )
    )
    return rows


def _modules(importtime: str) -> dict[str, int]:
    """module -> self time in microseconds, from ``-X importtime`` output."""
    found = {}
    for line in importtime.splitlines():
        if line.startswith("import time:") and "|" in line:
            self_us, _, name = line.removeprefix("import time:").split("|")
            if self_us.strip().isdigit():
                found[name.strip()] = int(self_us)
    return found
