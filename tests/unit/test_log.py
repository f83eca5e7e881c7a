"""Log lines: levels, journal priorities, timestamps off a terminal, JSON, one line per wait."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import TextIO

import pytest
from test_exit_codes import _config, _state

from certman.cli.commands import Countdown
from certman.cli.log import Level, configure
from certman.cli.main import main
from certman.lifecycle.engine import _change
from certman.lifecycle.rollover import Action, Step
from certman.lifecycle.state import Phase, State


def _file(tmp_path: Path) -> TextIO:
    return (tmp_path / "log").open("w+")


def _read(stream: TextIO) -> list[str]:
    stream.seek(0)
    return stream.read().splitlines()


def test_under_systemd_each_line_carries_its_syslog_priority(tmp_path: Path) -> None:
    stream = _file(tmp_path)
    st = os.fstat(stream.fileno())
    log = configure(env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, out=stream, err=stream)
    log.notice("mx: TLSA records written")
    log.err("certman: mx: boom")
    log.info("progress")
    assert _read(stream) == ["<5>mx: TLSA records written", "<3>certman: mx: boom", "<6>progress"]


def test_a_journal_stream_of_another_file_is_not_the_journal(tmp_path: Path) -> None:
    stream = _file(tmp_path)
    log = configure(env={"JOURNAL_STREAM": "1:2"}, out=stream, err=stream)
    log.notice("x")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ x", _read(stream)[0])


def test_json_lines_and_levels(tmp_path: Path) -> None:
    stream = _file(tmp_path)
    log = configure(fmt="json", env={}, out=stream, err=stream)
    log.notice("mx: rolled back")
    record = json.loads(_read(stream)[0])
    assert record["level"] == "notice" and record["priority"] == 5
    assert record["message"] == "mx: rolled back" and record["time"].endswith("Z")


def test_quiet_keeps_warnings_and_errors_verbose_adds_debug(tmp_path: Path) -> None:
    stream = _file(tmp_path)
    quiet = configure(quiet=True, env={}, out=stream, err=stream)
    quiet.info("hidden")
    quiet.notice("hidden too")
    quiet.warning("shown")
    loud = configure(verbose=1, env={}, out=stream, err=stream)
    loud.debug("debug shown")
    assert [line.split(" ", 1)[1] for line in _read(stream)] == ["shown", "debug shown"]
    assert configure(env={}, out=stream, err=stream).threshold is Level.INFO


def test_off_a_terminal_a_wait_is_one_line_not_one_per_second(tmp_path: Path) -> None:
    stream = _file(tmp_path)
    countdown = Countdown(configure(env={}, out=stream, err=stream))
    step = Step(None, "waiting for cached TLSA answers to expire", wait_until=time.time() + 660)
    for remaining in range(660, 0, -1):
        countdown(step, float(remaining))
    lines = _read(stream)
    assert len(lines) == 1 and "waiting 660 s" in lines[0]
    countdown(Step(None, "another wait", wait_until=time.time() + 5), 5.0)
    assert len(_read(stream)) == 2


def test_a_change_is_one_notice_and_nothing_else_is() -> None:
    steady, verify = State("mx", phase=Phase.STEADY), State("mx", phase=Phase.VERIFY)
    assert _change(Action.PUBLISH, steady) == "TLSA records written"
    assert _change(Action.INSTALL, verify) == "new files switched in"
    assert _change(Action.INSTALL, steady) is None  # nothing installed
    assert _change(Action.VERIFY, State("mx", phase=Phase.ROLLBACK)) is None
    assert _change(Action.ROLLBACK, steady) is not None
    assert _change(Action.CONFIRM, steady) is None and _change(None, steady) is None


def test_json_log_of_a_failing_run_and_no_secret_anywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "U1VQRVJTRUNSRVRWQUxVRTEyMzQ1Njc4"
    tsig = tmp_path / "tsig.key"
    tsig.write_text(f'key "k" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n')
    tsig.chmod(0o600)
    config = _config(tmp_path)
    config.write_text(
        config.read_text()
        + f'[dns.bind]\ntype = "rfc2136"\nserver = "192.0.2.53"\ntsig_key_file = "{tsig}"\n'
    )
    _state(tmp_path, last_error="CA refused", retry_after=time.time() + 3600)
    assert main(["--config", str(config), "-v", "--log-format", "json", "run"]) == 1
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    record = json.loads(line)
    assert record["level"] == "err" and "backing off after: CA refused" in record["message"]
    assert secret not in captured.out + captured.err
    assert main(["--config", str(config), "-v", "config", "check"]) == 0
    assert secret not in capsys.readouterr().out


def test_stdout_is_never_decorated_for_command_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    _state(tmp_path)
    assert main(["--config", str(config), "status", "mx1"]) == 0
    assert capsys.readouterr().out.startswith("mx1: phase steady")


class _Writes:
    """A stream that records each write call and gives other threads a chance between them."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        import time

        self.writes.append(text)
        time.sleep(0)
        return len(text)

    def flush(self) -> None:
        pass


def test_lines_from_concurrent_certificates_never_interleave() -> None:
    """`certman run` with [acme] concurrency logs from several threads; print() wrote the text
    and the newline in two calls, so two lines ran together ("...one2026-12-01T... r003: ...")."""
    import threading

    from certman.cli.log import Level, Log

    out = _Writes()
    log = Log(out=out)  # type: ignore[arg-type]

    def worker(n: int) -> None:
        for i in range(50):
            log(Level.INFO, f"r{n:03d}: line {i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in out.writes)
    lines = "".join(out.writes).splitlines()
    assert len(lines) == 300
    assert all(line.startswith("r0") and ": line " in line for line in lines)
