"""What every benchmark shares: timing a child process (wall time, peak memory, first byte),
alternating cases round by round, medians, and the result rows ``run_all.py`` prints and saves."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python")
CERTMAN = str(VENV_BIN / "certman")
# The cron no-op runs from a venv laid out like a wheel install (a plain .pth line, no pip): the
# dev venv's editable install adds an import finder that costs ~15 ms at every start-up.
DEPLOYED = ROOT / "benchmarks" / ".venv-deployed"


def deployed_venv() -> tuple[str, str]:
    """(python, certman) of a venv that finds certman and its dependencies through a .pth
    file, as a regular (non-editable) installation does; made in a second, reused after."""
    python, script = DEPLOYED / "bin" / "python", DEPLOYED / "bin" / "certman"
    if not script.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(DEPLOYED)], check=True)
        probe = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        dev_site = subprocess.run(
            [PYTHON, "-c", probe], capture_output=True, text=True, check=True
        ).stdout.strip()
        site = subprocess.run(
            [str(python), "-c", probe], capture_output=True, text=True, check=True
        ).stdout.strip()
        Path(site, "certman-bench.pth").write_text(f"{ROOT}\n{dev_site}\n")
        script.write_text(
            f"#!{python}\nimport sys\nfrom certman.cli import main\nsys.exit(main())\n"
        )
        script.chmod(0o755)
    return str(python), str(script)


@dataclass(frozen=True)
class Sample:
    seconds: float
    max_rss_kib: int  # wait4's figure: never below this process's own size (see peak_rss_kib)
    returncode: int
    stdout: str
    stderr: str
    first_byte: float | None = None  # seconds from start to the first byte on stdout


@dataclass
class Row:
    """One line of the table: a case, its figure, and the goal it is held against (if any)."""

    section: str
    case: str
    value: float | None  # the headline figure, in ``unit``
    unit: str = "s"
    detail: str = ""
    goal: str = ""
    met: bool | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def run_child(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
    first_byte: bool = False,
) -> Sample:
    """Run ``argv`` to the end: wall time, peak RSS (wait4's rusage: this child alone), output."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=err, env=None if env is None else dict(env)
        )
        assert proc.stdout is not None
        first: float | None = None
        chunks = []
        if first_byte:
            byte = proc.stdout.read(1)
            first = time.perf_counter() - start if byte else None
            chunks.append(byte)
        chunks.append(proc.stdout.read())
        _, status, usage = _wait4(proc.pid, timeout)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        err.seek(0)
        return Sample(
            seconds,
            usage.ru_maxrss,
            proc.returncode,
            b"".join(chunks).decode(errors="replace"),
            err.read().decode(errors="replace"),
            first,
        )


GNU_TIME = Path("/usr/bin/time")


def peak_rss_kib(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int | None:
    """The peak RSS of ``argv`` alone, measured by GNU time (installed by ``make deps``).

    Not wait4's rusage of our own child: Linux carries the parent's high-water mark into a
    vfork()ed child across exec, so every child of a big benchmark process looks as big as it."""
    if not GNU_TIME.exists():
        return None
    with tempfile.NamedTemporaryFile("r") as out:
        command = [str(GNU_TIME), "-f", "%M", "-o", out.name, *argv]
        env = None if env is None else dict(env)
        subprocess.run(command, env=env, capture_output=True, check=False)
        text = out.read().strip().splitlines()
    return int(text[-1]) if text and text[-1].isdigit() else None


def _wait4(pid: int, timeout: float) -> tuple[int, int, resource.struct_rusage]:
    deadline = time.monotonic() + timeout
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got:
            return got, status, usage
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            return os.wait4(pid, 0)
        time.sleep(0.001)


def alternate(
    cases: Mapping[str, Callable[[], Sample]], rounds: int, *, warmup: int = 1
) -> dict[str, list[Sample]]:
    """Run every case once per round, the order rotating each round (A B C, B C A, ...), so a
    slow moment of the shared machine hits every case alike. Warm-up rounds are discarded."""
    names = list(cases)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for index in range(warmup + rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            sample = cases[name]()
            if index >= warmup:
                samples[name].append(sample)
    return samples


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.9 + 0.5) - 1)]


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def check_ok(sample: Sample, what: str) -> None:
    if sample.returncode != 0:
        tail = (sample.stderr or sample.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{what}: exit {sample.returncode}: {' | '.join(tail)}")


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CERTMAN_NO_FASTPATH", None)
    return {**env, **extra}


@dataclass(frozen=True)
class Stream:
    """A child's stdout lines, each with the seconds since the start at which it arrived."""

    seconds: float
    returncode: int
    lines: list[tuple[float, str]]
    stderr: str

    def at(self, fragment: str) -> float | None:
        """When the first line containing ``fragment`` arrived."""
        return next((t for t, line in self.lines if fragment in line), None)


def run_stream(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 600.0
) -> Stream:
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=err,
            env=None if env is None else dict(env),
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        lines = [(time.perf_counter() - start, line.rstrip("\n")) for line in proc.stdout]
        proc.wait(timeout)
        seconds = time.perf_counter() - start
        err.seek(0)
        return Stream(seconds, proc.returncode, lines, err.read().decode(errors="replace"))


def check_stream(stream: Stream, what: str) -> None:
    if stream.returncode != 0:
        tail = [line for _, line in stream.lines[-2:]] + stream.stderr.strip().splitlines()[-2:]
        raise RuntimeError(f"{what}: exit {stream.returncode}: {' | '.join(tail)}")
