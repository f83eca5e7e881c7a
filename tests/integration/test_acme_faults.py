"""The ACME server failing under certman, on the testbed (issue 10, part 3): a proxy in front of
Pebble (tests/ariproxy.py) answers HTTP 500, or 429 rateLimited with a Retry-After. Each: one
line naming the CA, no traceback, nothing live changed (served key, main.cf, TLSA RRset), the
failure recorded, and a later `certman run` resumes and finishes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from ariproxy import AriProxy, Injected, running_proxy
from helpers import run_certman as run
from test_rollover_e2e import fresh_host, primary_tlsa, served_spki
from test_server_faults import edit, one_line_failure, state
from testbed import Testbed

from certman.config.load import load_config
from certman.config.schema import PostfixConfig
from certman.lifecycle.state import Phase
from certman.lifecycle.statefile import CertDir
from certman.postfix.commands import Postfix

pytestmark = pytest.mark.integration
TLSA = "_25._tcp.mx1.dane.test"
SERVER_ERROR = Injected(500, "serverInternal", "simulated server error")


@contextmanager
def behind_proxy(testbed: Testbed, tmp_path: Path, retries: int) -> Iterator[tuple[Path, AriProxy]]:
    """A fresh mx1 whose config asks the CA through the proxy, with ``retries`` retries."""
    config = fresh_host(testbed, tmp_path)
    with running_proxy(
        testbed.pebble.directory.rsplit("/", 1)[0], testbed.pebble.api_ca, tmp_path / "proxy-tls"
    ) as proxy:
        edit(
            config,
            f'directory = "{testbed.pebble.directory}"',
            f'directory = "{proxy.base}/dir"\nretries = {retries}',
        )
        edit(config, f'ca_bundle = "{testbed.pebble.api_ca}"', f'ca_bundle = "{proxy.tls.ca}"')
        yield config, proxy


def live(testbed: Testbed) -> tuple[str, list[str], object]:
    """What the outside world sees: the served key, the primary's TLSA RRset, main.cf's chain."""
    pf = testbed.postfix["mx1"]
    postfix = Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))
    return (
        served_spki(testbed, "mx1"),
        primary_tlsa(testbed, TLSA),
        postfix.get("smtpd_tls_chain_files"),
    )


def expire_backoff(config: Path) -> None:
    """Time passes: the recorded back-off ends now (certman's first back-off is a minute)."""
    path = CertDir.of(load_config(config).state_dir, "mx1").state_file
    data = json.loads(path.read_text())
    data["retry_after"] = time.time() - 1
    path.write_text(json.dumps(data))


def bootstrapped(config: Path) -> None:
    for _ in range(2):
        done = run(config, "run", "--max-wait", "60")
        assert done.returncode == 0, done.stdout + done.stderr
    assert state(config).phase is Phase.STEADY and state(config).certs


def test_acme_server_answering_500_is_retried_then_backs_off_and_a_later_run_finishes(
    testbed: Testbed, tmp_path: Path
) -> None:
    with behind_proxy(testbed, tmp_path, retries=2) as (config, proxy):
        # Some requests fail: the retries inside the run carry the issuance through.
        proxy.fail_next, proxy.fail_count = SERVER_ERROR, 2
        bootstrapped(config)
        assert len(proxy.refused) == 2 and proxy.refused[0] in proxy.forwarded
        before, certs = live(testbed), state(config).certs
        # Every request fails: 1 + 2 tries of the first request, then exit 75, nothing live changed.
        proxy.refused.clear()
        proxy.fail_all = SERVER_ERROR
        line = one_line_failure(run(config, "issue", "mx1"), proxy.base, "server error", code=75)
        assert "simulated server error" in line
        assert len(proxy.refused) == 3 and len(set(proxy.refused)) == 1, proxy.refused
        failed = state(config)
        assert failed.last_error and proxy.base in failed.last_error
        assert failed.retry_after and failed.retry_after > time.time()
        assert failed.ca_retry_after is None  # our back-off: the CA asked for nothing
        assert failed.certs == certs and live(testbed) == before
        # The CA recovers; `certman run` backs off (exit 1) without asking it, then resumes.
        proxy.fail_all = None
        asked = len(proxy.forwarded)
        one_line_failure(run(config, "run"), "backing off")
        assert len(proxy.forwarded) == asked and live(testbed) == before
        expire_backoff(config)
        done = run(config, "run", "--max-wait", "60")
        assert done.returncode == 0, done.stdout + done.stderr
        final = state(config)
        assert final.phase is Phase.STEADY and final.last_error is None
        assert final.certs != certs and served_spki(testbed, "mx1") == before[0]


def test_acme_rate_limit_retry_after_is_stored_and_honoured_by_run_issue_and_rollover(
    testbed: Testbed, tmp_path: Path
) -> None:
    with behind_proxy(testbed, tmp_path, retries=0) as (config, proxy):
        bootstrapped(config)
        before, certs = live(testbed), state(config).certs
        proxy.fail_all = Injected(429, "rateLimited", "simulated rate limit", retry_after="6")
        asked_at = time.time()
        line = one_line_failure(run(config, "issue", "mx1"), proxy.base, "rateLimited", code=75)
        assert "simulated rate limit" in line
        failed = state(config)
        assert failed.ca_retry_after is not None
        assert asked_at + 5 <= failed.ca_retry_after <= time.time() + 7
        assert live(testbed) == before
        # Before the Retry-After nobody asks the CA, and every command says "later" (75). (A
        # run waits a short Retry-After out inline, up to --max-wait: 0 here, 30 s by default.)
        proxy.fail_all = None
        asked = len(proxy.forwarded) + len(proxy.refused)
        for command in (("run", "--max-wait", "0"), ("issue", "mx1"), ("rollover", "mx1")):
            done = run(config, *command)
            assert done.returncode == 75, done.stdout + done.stderr
            # `run` tells what it waits for; `issue`/`rollover` refuse before asking the CA.
            lines = [x for x in done.stdout.splitlines() if "retry after" in x.lower()]
            if command[0] != "run":
                lines = done.stderr.strip().splitlines()
            assert "Traceback" not in done.stderr, done.stderr
            assert len(lines) == 1 and proxy.base in lines[0], done.stdout + done.stderr
        assert len(proxy.forwarded) + len(proxy.refused) == asked
        assert state(config).certs == certs and live(testbed) == before
        time.sleep(max(0.0, failed.ca_retry_after - time.time()) + 0.5)
        done = run(config, "run", "--max-wait", "60")
        assert done.returncode == 0, done.stdout + done.stderr
        final = state(config)
        assert final.phase is Phase.STEADY and final.last_error is None
        assert final.certs != certs and (final.ca_retry_after or 0) < time.time()
        assert len(proxy.forwarded) > asked
