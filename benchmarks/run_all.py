#!/usr/bin/env python3
"""``make bench``: every benchmark in one run, one table, one JSON file under benchmarks/results/.

    .venv/bin/python benchmarks/run_all.py [--only SECTION ...] [--rounds N] [--quick]

Starts the loopback testbed itself (tests/testbed.py) for the sections that need servers and
builds certbot in its own venv (benchmarks/.venv-certbot) on first use. Benchmarks report: a
missed goal never fails the run; a benchmark that cannot run (a server down, a command failing)
is reported as an error and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, ROOT, Row, check_ok, run_child

RESULTS = ROOT / "benchmarks" / "results"
SECTIONS = ("issue", "noop", "report", "rollover", "propagation", "renew")
TESTBED_SECTIONS = set(SECTIONS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of each timed pair")
    parser.add_argument(
        "--quick", action="store_true", help="few rounds, small sizes (a smoke run)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON")
    args = parser.parse_args()
    wanted = [s for s in SECTIONS if not args.only or s in args.only]
    rounds = 3 if args.quick else args.rounds
    started = time.time()
    rows: list[Row] = []
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="certman-bench-") as tmp:
        work = Path(tmp)
        if {"issue", "noop"} & set(wanted):
            import certbot_env

            certbot_env.ensure_venv()  # pip needs the network: before entering the namespace
        bed = _testbed(work) if TESTBED_SECTIONS & set(wanted) else None
        try:
            ctx = Context(work, bed, rounds, args.quick)
            for section in wanted:
                print(f"-- {section} ...", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                try:
                    rows += RUNNERS[section](ctx)
                except Exception as exc:
                    errors[section] = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()
                print(f"   {section}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        finally:
            if bed is not None:
                from testbed import stop_testbed

                stop_testbed(bed.dir)
    result = _result(rows, errors, started, ctx.versions)
    print(render_table(result))
    _save(result, args.out)
    return 1 if errors else 0


class Context:
    """What the sections share: a work directory, the testbed, certbot, the round count."""

    def __init__(self, work: Path, bed: object, rounds: int, quick: bool) -> None:
        self.work, self.bed, self.rounds, self.quick = work, bed, rounds, quick
        self.versions: dict[str, str] = {}
        self._certbot: object = None
        self._hosts: dict[str, Path] = {}

    def host(self, instance: str) -> Path:
        """A bootstrapped certman config for this Postfix instance (shared by the sections)."""
        if instance not in self._hosts:
            from hosts import bootstrap, write_host

            config = write_host(self.bed, self.work / f"host-{instance}", instance)
            bootstrap(config)
            self._hosts[instance] = config
        return self._hosts[instance]

    def certbot(self) -> object:
        """certbot in its own venv, pointed at the testbed, with one lineage issued."""
        if self._certbot is None:
            import certbot_env

            self.versions["certbot"] = certbot_env.version()
            bot = certbot_env.Certbot.for_testbed(self.bed, self.work / "certbot")
            sample = run_child(bot.certonly("lineage", "cb0.dane.test"), env=bot.env)
            check_ok(sample, "certbot certonly (first lineage)")
            self._certbot = bot
        return self._certbot


def _testbed(work: Path) -> object:
    from testbed import enter_netns, start_testbed

    directory = work / "testbed"
    directory.mkdir()
    print("-- starting the testbed ...", file=sys.stderr, flush=True)
    bed = start_testbed(directory, pdns=False, moto=False)
    enter_netns(bed.netns)  # before any thread: every child runs in the namespace too
    return bed


def _noop(ctx: Context) -> list[Row]:
    import bench_noop
    import certbot_env

    bot = ctx.certbot() if ctx.bed is not None else None
    renew = bot.renew() if bot is not None else None  # type: ignore[attr-defined]
    python = str(certbot_env.VENV / "bin" / "python") if bot is not None else None
    return bench_noop.run(renew, python, ctx.rounds)


def _issue(ctx: Context) -> list[Row]:
    import bench_issue

    return bench_issue.run(ctx)


def _report(ctx: Context) -> list[Row]:
    import bench_report

    return bench_report.run(ctx)


def _rollover(ctx: Context) -> list[Row]:
    import bench_rollover

    return bench_rollover.run(ctx)


def _propagation(ctx: Context) -> list[Row]:
    import bench_propagation

    return bench_propagation.run(ctx)


def _renew(ctx: Context) -> list[Row]:
    import bench_renew

    return bench_renew.run(ctx)


RUNNERS: dict[str, Callable[[Context], list[Row]]] = {
    "noop": _noop,
    "issue": _issue,
    "report": _report,
    "rollover": _rollover,
    "propagation": _propagation,
    "renew": _renew,
}


def _result(
    rows: list[Row], errors: dict[str, str], started: float, versions: dict[str, str]
) -> dict[str, object]:
    return {
        "date": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(
            timespec="seconds"
        ),
        "duration_s": round(time.time() - started, 1),
        "command": "make bench",
        "machine": _machine(),
        "versions": {**_versions(), **versions},
        "rows": [r.to_json() for r in rows],
        "errors": errors,
    }


def _machine() -> dict[str, object]:
    memory_kib = 0
    model = platform.processor()
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cores": os.cpu_count(),
        "memory_mib": memory_kib // 1024,
        "cpu": model,
        "kernel": platform.release(),
        "os": _os_name(),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _versions() -> dict[str, str]:
    def first_line(*argv: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            return "not installed"
        return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]

    probe = (
        "import importlib.metadata as m, sys; print(sys.version.split()[0], "
        "*(m.version(p) for p in ('certman', 'acme', 'dnspython', 'cryptography')))"
    )
    python, certman, acme, dnspython, cryptography = first_line(PYTHON, "-c", probe).split()
    git = first_line("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    return {
        "python": python,
        "certman": f"{certman} (git {git})",
        "acme": acme,
        "dnspython": dnspython,
        "cryptography": cryptography,
        "bind": first_line("named", "-v"),
        "unbound": first_line("unbound", "-V"),
        "pebble": first_line("dpkg-query", "-W", "-f=${Version}", "pebble"),
        "postfix": first_line("postconf", "-d", "-h", "mail_version"),
    }


def render_table(result: dict[str, object]) -> str:
    """The one table: section, case, figure, detail, goal and whether it was met."""
    rows = result["rows"]
    assert isinstance(rows, list)
    machine = result["machine"]
    assert isinstance(machine, dict)
    lines = [
        f"certman benchmarks, {result['date']} ({result['command']}, "
        f"{machine['cores']} cores, {machine['memory_mib']} MiB, {machine['cpu']})",
        "",
        "| section | case | result | goal | met | detail |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['section']} | {row['case']} | {_figure(row)} | {row['goal'] or ''} | "
            f"{_met(row['met'])} | {row['detail']} |"
        )
    errors = result["errors"]
    assert isinstance(errors, dict)
    for section, error in errors.items():
        lines.append(f"| {section} | ERROR | - | - | - | {error} |")
    return "\n".join(lines)


def _figure(row: dict[str, object]) -> str:
    value, unit = row["value"], row["unit"]
    if value is None:
        return "-"
    assert isinstance(value, int | float)
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:g} {unit}" if isinstance(value, int) else f"{value:.2f} {unit}"


def _met(met: object) -> str:
    return {True: "yes", False: "**no**", None: ""}[met]  # type: ignore[index]


def _save(result: dict[str, object], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = str(result["date"]).replace(":", "").replace("-", "")
    path = directory / f"bench-{stamp}.json"
    text = json.dumps(result, indent=1, default=str) + "\n"
    path.write_text(text)
    (directory / "latest.json").write_text(text)
    print(f"\nresults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    sys.exit(main())
