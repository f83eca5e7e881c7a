"""Nameservers failing under certman, on the testbed (issue 10, part 3): the primary down during
PUBLISH, and a secondary that never catches up during a rollover. Each: one line naming the
server at fault, no traceback, no swap (served key and TLSA RRset as before), a DANE prober that
never fails, and a later `certman run` that resumes and finishes."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import Prober, in_background, write_config
from helpers import run_certman as run
from test_acme_faults import expire_backoff
from test_rollover_e2e import fresh_host, primary_tlsa, rfc2136, served_spki
from test_server_faults import edit, one_line_failure, state
from testbed import Testbed

from certman.lifecycle.state import Operation, Phase

pytestmark = pytest.mark.integration
TLSA = "_25._tcp.mx1.dane.test"
LAG_TLSA = "_25._tcp.mx1.lag.test"


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The server is down for the block: SIGSTOP, so it answers nothing (queries time out), and
    SIGCONT afterwards brings it back exactly as it was."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_primary_nameserver_down_during_publish_writes_nothing_and_a_later_run_resumes(
    testbed: Testbed, tmp_path: Path
) -> None:
    config = fresh_host(testbed, tmp_path)
    edit(
        config,
        f'server = "{testbed.bind.primary}"',
        f'server = "{testbed.bind.primary}"\ntimeout = 2',
    )
    edit(config, "timeout = 60", "timeout = 4")
    served, records = served_spki(testbed, "mx1"), primary_tlsa(testbed, TLSA)
    with stopped(testbed.pids["named-primary"]):
        done = run(config, "run", "--max-wait", "60")
    line = one_line_failure(done, testbed.bind.primary)
    failed = state(config)
    assert failed.phase is Phase.PUBLISH and failed.last_error and failed.retry_after
    assert served_spki(testbed, "mx1") == served and primary_tlsa(testbed, TLSA) == records
    assert "no answer" in line and failed.operation is Operation.BOOTSTRAP
    # The primary is back; the back-off ends; the next runs publish, issue and install.
    one_line_failure(run(config, "run", "--max-wait", "0"), "backing off")
    expire_backoff(config)
    for _ in range(2):
        done = run(config, "run", "--max-wait", "60")
        assert done.returncode == 0, done.stdout + done.stderr
    final = state(config)
    assert final.phase is Phase.STEADY and final.certs and final.last_error is None
    assert served_spki(testbed, "mx1") == final.current["ecdsa-p256"].spki_sha256


def lag_host(testbed: Testbed, directory: Path) -> Path:
    """mx1 with its certificate for mx1.dane.test (DNS-01 in dane.test, whose secondary gets
    NOTIFY) and its TLSA records in lag.test, whose secondary lags until told to transfer."""
    fresh_host(testbed, directory)
    rfc2136(testbed).delete(LAG_TLSA, "TLSA")
    testbed.retransfer("lag.test")
    config = write_config(
        testbed, directory, domains=["mx1.dane.test"], dane_hosts=["mx1.lag.test"]
    )
    edit(config, "timeout = 60", "timeout = 3")
    return config


def transferring(testbed: Testbed, stop: threading.Event) -> None:
    """The secondary catches up: a zone transfer every 0.3 s."""
    while not stop.is_set():
        testbed.retransfer("lag.test")
        stop.wait(0.3)


def test_a_secondary_that_never_catches_up_holds_the_rollover_without_a_swap(
    testbed: Testbed, tmp_path: Path
) -> None:
    config = lag_host(testbed, tmp_path)
    stop = threading.Event()
    with in_background(lambda: transferring(testbed, stop), stop):
        for _ in range(2):
            done = run(config, "run", "--max-wait", "60")
            assert done.returncode == 0, done.stdout + done.stderr
    before = state(config)
    assert before.phase is Phase.STEADY and before.certs
    served = served_spki(testbed, "mx1")
    assert served == before.current["ecdsa-p256"].spki_sha256
    prober = Prober(testbed, "mx1.lag.test", testbed.postfix["mx1"].address)
    with prober.running():
        # A compromised key: a fresh key's record must reach every nameserver before the swap.
        line = one_line_failure(run(config, "rollover", "mx1", "--compromised"), "127.0.0.12")
        held = state(config)
        assert held.operation is Operation.COMPROMISED and held.phase is not Phase.STEADY
        assert held.last_error and "127.0.0.12" in held.last_error, line
        assert served_spki(testbed, "mx1") == served
        # Later runs keep trying at the propagation interval (a compromised key), still no swap.
        time.sleep(0.5)
        for _ in range(2):
            line = one_line_failure(run(config, "run", "--max-wait", "10"), "127.0.0.12")
            assert "mx1: mx1:" not in line  # named once
            assert served_spki(testbed, "mx1") == served
        assert state(config).current == before.current
        # The secondary catches up: the next run swaps, verifies and retires.
        stop = threading.Event()
        with in_background(lambda: transferring(testbed, stop), stop):
            done = run(config, "run", "--max-wait", "60")
            assert done.returncode == 0, done.stdout + done.stderr
            for _ in range(3):
                if state(config).phase is Phase.STEADY:
                    break
                done = run(config, "run", "--max-wait", "60")
                assert done.returncode == 0, done.stdout + done.stderr
        time.sleep(1)
    final = state(config)
    assert final.phase is Phase.STEADY and final.last_error is None
    assert final.current["ecdsa-p256"] != before.current["ecdsa-p256"]
    assert served_spki(testbed, "mx1") == final.current["ecdsa-p256"].spki_sha256
    assert len(prober.results) >= 10 and prober.failures == [], prober.failures[:3]
