"""Shared fixtures. The ``testbed`` fixture brings up the real loopback servers once per session.

The pytest process enters the testbed's network namespace, so tests reach BIND, Unbound, Pebble,
Postfix, PowerDNS and moto at their 127.0.0.x addresses on standard ports. A server that does not
start fails the session: integration tests never skip.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from testbed import Testbed, enter_netns, start_testbed, stop_testbed


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI time-out, a killed make) tears the testbed down like Ctrl-C does."""
    signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    directory = tmp_path_factory.mktemp("testbed")
    bed = start_testbed(directory)
    try:
        enter_netns(bed.netns)
        SECRETS.extend(testbed_secrets(bed))
        yield bed
    finally:
        stop_testbed(directory)


# Secrets never appear in logs or errors: every test's captured output (certman run in-process,
# and whatever a test prints of a subprocess's) is searched for the testbed's secrets.
SECRETS: list[str] = []
SCANNED = {"phases": 0, "leaks": 0}  # tests searched (after the testbed came up), with a leak


def testbed_secrets(bed: Testbed) -> list[str]:
    found = [bed.bind.tsig.secret]
    if bed.pdns is not None:
        found.append(bed.pdns.api_key)
    if bed.pebble.eab is not None:
        found.append(bed.pebble.eab.hmac_key)
    return [s for s in found if len(s) >= 12]  # long enough never to occur by chance


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not SECRETS or call.when != "teardown":  # by then it holds every phase's output
        return
    SCANNED["phases"] += 1
    text = report.capstdout + report.capstderr
    if not any(s in text for s in SECRETS):
        return
    SCANNED["leaks"] += 1
    if report.outcome != "failed":
        report.outcome = "failed"
        report.longrepr = f"a testbed secret appears in the output of {item.nodeid}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SCANNED["phases"]:
        terminalreporter.write_line(
            f"secrets scan: the output of {SCANNED['phases']} tests searched for "
            f"{len(SECRETS)} testbed secrets; {SCANNED['leaks']} with a secret"
        )


# Integration tests share the testbed's two Postfix instances: each test gets them back as the
# testbed made them (main.cf restored and Postfix reloaded only when a test changed it).


@pytest.fixture(scope="session")
def pristine_main_cf(testbed: Testbed) -> dict[str, tuple[Path, bytes]]:
    return {
        f"{name}/{cf}": (pf.config_dir / cf, (pf.config_dir / cf).read_bytes())
        for name, pf in testbed.postfix.items()
        for cf in ("main.cf", "master.cf")
    }


@pytest.fixture(autouse=True)
def restore_postfix(request: pytest.FixtureRequest) -> Iterator[None]:
    if "testbed" not in request.fixturenames:
        yield
        return
    saved: dict[str, tuple[Path, bytes]] = request.getfixturevalue("pristine_main_cf")
    bed: Testbed = request.getfixturevalue("testbed")
    yield
    changed = set()
    for key, (path, content) in saved.items():
        if path.read_bytes() == content:
            continue
        path.write_bytes(content)
        # Backdated: Postfix programs stall while main.cf is under a second old ("cool down").
        then = time.time() - 10
        os.utime(path, (then, then))
        changed.add(key.split("/")[0])
    for name in sorted(changed):
        config_dir = str(bed.postfix[name].config_dir)
        subprocess.run(["postfix", "-c", config_dir, "reload"], check=True, capture_output=True)
