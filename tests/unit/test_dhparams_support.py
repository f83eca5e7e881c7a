"""Helpers for the DH parameter tests: configs, fixtures, stand-in openssl binaries, waiting.

Real generation in tests uses 512-bit parameters (``openssl dhparam 512``, well under a second)
through ``GeneratorSettings.min_bits``, which the config file cannot reach (TESTBED-NOTES 13).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from certman.config.schema import DhFile, DhMode, DhParamsConfig
from certman.dh import gen as dhgen
from certman.dh.plan import load_state

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "dh"
DAY = 86400.0
TINY = dhgen.GeneratorSettings(workers=2, nice=0, min_bits=512, rounds=8, progress_interval=0)


def dh_config(
    mode: DhMode, *files: tuple[Path, int], parameter: str | None = None, interval: int = 30
) -> DhParamsConfig:
    return DhParamsConfig(
        mode=mode,
        files=tuple(DhFile(path, bits) for path, bits in files),
        interval_days=interval,
        postfix_parameter=parameter,
        nice=0,
        workers=2,
    )


def fake_openssl(directory: Path, body: str) -> str:
    """An executable standing in for openssl; ``$3`` is the -out file, ``$4`` the size."""
    script = directory / "fake-openssl"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


SLEEPER = f"exec {sys.executable} -c 'import time; time.sleep(300)' \"$3\""  # $3 in its cmdline


def slow_settings(directory: Path) -> dhgen.GeneratorSettings:
    """A generator whose workers never finish (they sleep), to test pending and killed jobs."""
    slow = fake_openssl(directory, "echo . >&2\n" + SLEEPER)
    return dhgen.GeneratorSettings(openssl=slow, workers=2, nice=0, min_bits=512)


def wait_for_jobs(state_dir: Path, timeout: float = 30.0) -> None:
    """Until every recorded background generation has exited (polls /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = load_state(state_dir).jobs.values()
        if not any(dhgen.is_running(job.pid, job.tmp) for job in jobs):
            return
        time.sleep(0.05)
    raise AssertionError(f"DH generation still running after {timeout} s")
