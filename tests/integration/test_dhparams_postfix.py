"""DH parameters against the testbed's real Postfix mx1: main.cf points at what was written,
Postfix reloads, ``certman check`` reads the real setting, and a cron run never waits for a
pending 4096-bit generation.

Real generation here is 512-bit (``GeneratorSettings.min_bits``); the one 4096-bit search is
killed as soon as the cron run has been timed (TESTBED-NOTES 13). Each test puts mx1's main.cf
back (tests/conftest.py: backdated, TESTBED-NOTES 16) and reloads.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from testbed import PostfixInstance, Testbed

from certman.config.schema import DhFile, DhMode, DhParamsConfig, PostfixConfig
from certman.dh import gen as dhgen
from certman.dh.groups import check_group, parse_pem, published_groups, to_pem
from certman.dh.plan import load_state
from certman.dh.run import advance, check, status
from certman.postfix.commands import Postfix

pytestmark = pytest.mark.integration

PARAM = "smtpd_tls_dh1024_param_file"
TINY = dhgen.GeneratorSettings(workers=2, nice=0, min_bits=512, rounds=8)
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "dh"
DAY = 86400.0


@dataclass
class Mx:
    instance: PostfixInstance
    postfix: Postfix
    directory: Path
    state: Path

    def config(self, mode: DhMode, *files: tuple[str, int], interval: int = 30) -> DhParamsConfig:
        dh_files = tuple(DhFile(self.directory / name, bits) for name, bits in files)
        return DhParamsConfig(mode, dh_files, interval, PARAM, nice=19, workers=2)

    def setting(self) -> str:
        return self.postfix.get(PARAM).get(PARAM, "")

    def reloads(self) -> int:
        """master's "reload" lines in mx1's maillog (postfix(1) logs each reload)."""
        try:
            text = self.instance.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return sum(" reload " in line and "postfix/master" in line for line in text.splitlines())

    def wait_for_reloads(self, count: int) -> None:
        deadline = time.monotonic() + 5
        while self.reloads() < count:
            assert time.monotonic() < deadline, f"mx1 logged {self.reloads()} reloads, not {count}"
            time.sleep(0.05)


def backdate(path: Path, seconds: float = 10) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def mx1(testbed: Testbed, tmp_path: Path) -> Iterator[Mx]:
    instance = testbed.postfix["mx1"]
    postfix = Postfix(PostfixConfig(instance.config_dir, "postconf", "postfix", None))
    directory = tmp_path / "dh"
    directory.mkdir()
    directory.chmod(0o755)
    mx = Mx(instance, postfix, directory, tmp_path / "state")
    try:
        yield mx
    finally:
        # main.cf comes back through tests/conftest.py's restore_postfix.
        for job in load_state(mx.state).jobs.values():
            dhgen.stop(job.pid, Path(job.tmp))


def test_generated_file_is_what_postfix_points_at_and_postfix_reloads(mx1: Mx) -> None:
    config = mx1.config(DhMode.GENERATE, ("dh2048.pem", 512))
    target = config.files[0].path
    before = mx1.reloads()
    first = advance(config, mx1.postfix, mx1.state, time.time(), settings=TINY)
    assert first.ok, first.errors
    assert first.pending == (str(target),) and mx1.setting() == ""  # not at a missing file
    deadline = time.monotonic() + 30
    while any(dhgen.is_running(j.pid, j.tmp) for j in load_state(mx1.state).jobs.values()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = advance(config, mx1.postfix, mx1.state, time.time(), settings=TINY)
    assert second.ok and second.reloaded, second.lines()
    assert mx1.setting() == str(target)
    check_group(parse_pem(target.read_bytes(), str(target)), 512, str(target))
    mx1.wait_for_reloads(before + 1)
    mx1.postfix.check()  # `postfix check` accepts the result


def test_rfc7919_group_written_and_set_in_one_run(mx1: Mx) -> None:
    config = mx1.config(DhMode.RFC7919, ("dh2048.pem", 2048), ("dh4096.pem", 4096))
    before = mx1.reloads()
    timed: list[tuple[str, float]] = []

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        start = time.monotonic()
        try:
            return subprocess.run(argv, **kwargs)  # noqa: PLW1510 (check is in kwargs)
        finally:
            timed.append((" ".join(argv[3:5]), time.monotonic() - start))

    postfix = Postfix(mx1.postfix.config, run=run)
    start = time.monotonic()
    report = advance(config, postfix, mx1.state, time.time())
    elapsed = time.monotonic() - start
    assert report.ok, report.errors
    assert mx1.setting() == str(mx1.directory / "dh2048.pem")
    for name, group in (("dh2048.pem", "ffdhe2048"), ("dh4096.pem", "ffdhe4096")):
        assert (mx1.directory / name).read_bytes() == to_pem(published_groups()[group])
    mx1.wait_for_reloads(before + 1)
    print(f"rfc7919 run: {elapsed:.2f} s; " + ", ".join(f"{c} {t:.2f} s" for c, t in timed))
    assert check(config, mx1.postfix, mx1.state, time.time()) == []


def test_cron_run_during_a_pending_4096_bit_generation_returns_well_under_a_second(
    mx1: Mx,
) -> None:
    config = mx1.config(DhMode.GENERATE, ("dh4096.pem", 4096))
    started = advance(config, mx1.postfix, mx1.state, time.time())  # real openssl, 4096 bits
    assert started.ok and started.pending, started.lines()
    job = load_state(mx1.state).jobs[str(config.files[0].path)]
    assert _nice_of(job.pid) == 19
    timings = []
    for _ in range(5):
        start = time.monotonic()
        report = advance(config, mx1.postfix, mx1.state, time.time())
        timings.append(time.monotonic() - start)
        assert report.pending == (str(config.files[0].path),), report.lines()
    print(f"cron run during a 4096-bit generation: median {statistics.median(timings):.3f} s")
    assert max(timings) < 0.5, timings
    assert dhgen.is_running(job.pid, job.tmp)  # the search went on meanwhile
    lines = status(config, mx1.state, time.time())
    assert any(f"generation running: pid {job.pid}" in line for line in lines), lines


def _nice_of(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])  # proc(5): field 19, nice


def test_check_reports_what_postfixs_setting_points_at(mx1: Mx) -> None:
    config = mx1.config(DhMode.GENERATE, ("dh2048.pem", 2048), interval=30)
    target = config.files[0].path
    mx1.postfix.set({PARAM: str(target)})
    now = time.time()
    [missing, *_] = check(config, mx1.postfix, mx1.state, now)
    assert missing == f"{target}: missing ({PARAM} points here)"
    target.write_bytes((FIXTURES / "dh1024.pem").read_bytes())
    assert check(config, mx1.postfix, mx1.state, now) == [
        f"{target}: 1024-bit DH parameters, below 2048 bits ({PARAM} points here)"
    ]
    target.write_bytes((FIXTURES / "dh2048.pem").read_bytes())
    backdate(target, 40 * DAY)
    assert check(config, mx1.postfix, mx1.state, now) == [
        f"{target}: generated 40 days ago, older than the 30-day schedule ({PARAM} points here)"
    ]
    target.unlink()
    target.mkdir()  # exists, but cannot be read as a file
    [unreadable] = check(config, mx1.postfix, mx1.state, now)
    assert unreadable == f"{target}: unreadable (Is a directory) ({PARAM} points here)"


def test_check_in_auto_mode_on_postfix_3_7_with_openssl_3(mx1: Mx) -> None:
    config = mx1.config(DhMode.AUTO)
    assert mx1.postfix.version().startswith("3.")
    assert check(config, mx1.postfix, mx1.state, time.time()) == []
    (mx1.directory / "old.pem").write_bytes((FIXTURES / "dh2048.pem").read_bytes())
    mx1.postfix.set({PARAM: str(mx1.directory / "old.pem")})
    [problem] = check(config, mx1.postfix, mx1.state, time.time())
    assert "overrides OpenSSL's own choice" in problem
