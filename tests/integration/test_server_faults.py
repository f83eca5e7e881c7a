"""Servers failing under certman, on the testbed (issue 10): the ACME server down, the validating
resolver down, a Postfix reload that fails. Each: a one-line error, exit 1, nothing live changed
(Postfix serves what it served, DNS holds what it held), and a later run resumes and finishes."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from helpers import run_certman as run
from test_rollover_e2e import fresh_host, primary_tlsa, served_spki, state_of
from testbed import Testbed

from certman.config.schema import PostfixConfig
from certman.lifecycle.state import Phase, State
from certman.postfix.commands import Postfix

pytestmark = pytest.mark.integration

TLSA = "_25._tcp.mx1.dane.test"


def edit(config: Path, old: str, new: str) -> str:
    text = config.read_text()
    assert old in text, old
    config.write_text(text.replace(old, new, 1))
    return text


def one_line_failure(done: subprocess.CompletedProcess[str], *fragments: str, code: int = 1) -> str:
    assert done.returncode == code, done.stdout + done.stderr
    # Errors go to stderr; a temporary failure (75) is routine and logged to stdout.
    lines = done.stderr.strip().splitlines() or [
        x for x in done.stdout.splitlines() if "certman: " in x
    ]
    assert len(lines) == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def state(config: Path) -> State:
    found = state_of(config)
    assert isinstance(found, State)
    return found


def test_acme_server_down_changes_nothing_live_and_a_later_run_resumes(
    testbed: Testbed, tmp_path: Path
) -> None:
    config = fresh_host(testbed, tmp_path)
    served = served_spki(testbed, "mx1")
    good = edit(
        config,
        f'directory = "{testbed.pebble.directory}"',
        'directory = "https://127.0.0.1:1/dir"\nretries = 0',
    )
    # A CA that does not answer is temporary (exit 75), with a back-off.
    one_line_failure(run(config, "run", "--max-wait", "60"), "127.0.0.1:1", code=75)
    failed = state(config)
    assert failed.phase is Phase.ISSUE and failed.last_error and failed.retry_after
    assert served_spki(testbed, "mx1") == served  # Postfix untouched
    records = primary_tlsa(testbed, TLSA)
    config.write_text(good)
    one_line_failure(run(config, "run"), "backing off")  # exit 1 while backing off
    assert primary_tlsa(testbed, TLSA) == records
    config_state = state(config)
    assert config_state.retry_after is not None
    # The operator fixed the CA; `certman issue` goes now instead of waiting out the back-off.
    done = run(config, "issue", "mx1")
    assert done.returncode == 0, done.stdout + done.stderr
    final = state(config)
    assert final.phase is Phase.STEADY and final.certs and final.failures == 0
    assert served_spki(testbed, "mx1") == served == final.current["ecdsa-p256"].spki_sha256


def test_validating_resolver_down_writes_nothing_and_a_later_run_resumes(
    testbed: Testbed, tmp_path: Path
) -> None:
    config = fresh_host(testbed, tmp_path)
    good = edit(config, f'resolvers = ["{testbed.resolver}"]', 'resolvers = ["127.0.0.99"]')
    edit(config, "timeout = 60", "timeout = 3")  # the lost answers are retried this long
    before = primary_tlsa(testbed, TLSA)
    line = one_line_failure(run(config, "run", "--max-wait", "60"), "no resolver answered")
    assert "127.0.0.99" in line
    assert primary_tlsa(testbed, TLSA) == before  # the write-ahead facts came first: no write
    failed = state(config)
    assert failed.phase is Phase.PUBLISH and failed.publish_facts is None
    config.write_text(good)
    done = run(config, "rollover", "mx1")  # the operator does not wait out the back-off
    assert done.returncode == 0, done.stdout + done.stderr
    assert state(config).phase is Phase.STEADY


def test_a_failing_postfix_reload_rolls_back_and_a_later_run_finishes(
    testbed: Testbed, tmp_path: Path
) -> None:
    config = fresh_host(testbed, tmp_path)
    served = served_spki(testbed, "mx1")
    flag = tmp_path / "reload-fails-once"
    flag.touch()
    script = tmp_path / "reload.sh"
    pf = testbed.postfix["mx1"]
    script.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{flag}" ]; then rm -f "{flag}"\n'
        '  echo "postfix: fatal: simulated" >&2; exit 1\nfi\n'
        f'exec postfix -c "{pf.config_dir}" reload\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    edit(config, "[postfix]\n", f'[postfix]\nreload_command = ["{script}"]\n')
    postfix = Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))
    chain_before = postfix.get("smtpd_tls_chain_files")
    done = run(config, "run", "--max-wait", "60")
    line = one_line_failure(done, "previous certificate restored")
    assert "simulated" in line
    rolled = state(config)
    assert rolled.phase is Phase.STEADY and rolled.operation is None and rolled.retry_after
    assert served_spki(testbed, "mx1") == served
    assert postfix.get("smtpd_tls_chain_files") == chain_before  # main.cf put back
    done = run(config, "issue", "mx1")
    assert done.returncode == 0, done.stdout + done.stderr
    final = state(config)
    assert final.phase is Phase.STEADY and final.certs
    assert served_spki(testbed, "mx1") == served


def test_postfix_serving_another_certificate_after_the_reload_is_rolled_back(
    testbed: Testbed, tmp_path: Path
) -> None:
    """The reload "works" but Postfix then serves another certificate (here: a reload command
    that points main.cf at mx2's certificate afterwards, once): VERIFY fails, the previous
    files and main.cf come back, exit 1; a later run installs and verifies."""
    config = fresh_host(testbed, tmp_path)
    served = served_spki(testbed, "mx1")
    pf, other = testbed.postfix["mx1"], testbed.postfix["mx2"].initial_chain_file
    flag = tmp_path / "serve-another-once"
    flag.touch()
    script = tmp_path / "reload.sh"
    script.write_text(
        "#!/bin/sh\nset -e\n"
        f'postfix -c "{pf.config_dir}" reload\n'
        f'if [ -e "{flag}" ]; then rm -f "{flag}"\n'
        f'  postconf -c "{pf.config_dir}" -e "smtpd_tls_chain_files = {other}"\n'
        f'  postfix -c "{pf.config_dir}" reload\nfi\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    edit(config, "[postfix]\n", f'[postfix]\nreload_command = ["{script}"]\n')
    postfix = Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))
    chain_before = postfix.get("smtpd_tls_chain_files")
    records = primary_tlsa(testbed, TLSA)
    done = run(config, "run", "--max-wait", "60")
    line = one_line_failure(done, "previous certificate restored", pf.address)
    assert not flag.exists()  # the fault was injected
    rolled = state(config)
    assert rolled.phase is Phase.STEADY and rolled.operation is None and rolled.retry_after
    assert rolled.last_error and rolled.last_error in line
    assert served_spki(testbed, "mx1") == served
    assert postfix.get("smtpd_tls_chain_files") == chain_before
    assert primary_tlsa(testbed, TLSA) != records  # published: current and next, as planned
    done = run(config, "issue", "mx1")
    assert done.returncode == 0, done.stdout + done.stderr
    final = state(config)
    assert final.phase is Phase.STEADY and final.certs and final.last_error is None
    assert served_spki(testbed, "mx1") == served  # the same (adopted) key, now Pebble's cert
    chain = Path(postfix.get("smtpd_tls_chain_files")["smtpd_tls_chain_files"])
    assert chain.parent == tmp_path / "postfix-files"
