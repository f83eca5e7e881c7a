"""Exit codes mean what they say (docs/operations.md, "Exit codes"): 0 done or nothing to do,
1 failed or backing off after a failure, 2 configuration error, 75 lock held or retry later."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from certman.cli.main import main
from certman.cli.unattended import worst_exit
from certman.errors import PostfixError, RetryLater
from certman.lifecycle import engine
from certman.lifecycle.state import Phase, State
from certman.lifecycle.statefile import CertDir
from certman.model import CertInfo, KeyInfo, KeyType


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "certman.toml"
    config.write_text(
        f"""
[certman]
state_dir = "{tmp_path / "state"}"
[postfix]
config_dir = "{tmp_path}"
[certificates.mx1]
domains = ["mx1.example.org"]
challenge = "http-01"
[certificates.mx1.http]
webroot = "{tmp_path}"
"""
    )
    return config


def _state(tmp_path: Path, **changes: Any) -> CertDir:
    now = time.time()
    key = KeyInfo("ecdsa-p256-00", KeyType.ECDSA_P256, "00" * 32, now)
    cert = CertInfo(key.id, "01", now, now + 90 * 86400, None, "/nonexistent")
    state = State(
        "mx1",
        phase=Phase.STEADY,
        current={"ecdsa-p256": key},
        certs={"ecdsa-p256": cert},
        renew_after=now + 86400,
        ari_recheck_at=now + 86400,
    )
    cdir = CertDir.of(tmp_path / "state", "mx1")
    cdir.save(state.evolve(**changes))
    return cdir


def _run(config: Path, *extra: str) -> int:
    return main(["--config", str(config), "run", "--quiet", *extra])


def test_nothing_due_exits_0(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _state(tmp_path)
    assert _run(config) == 0


def test_backing_off_after_a_failure_exits_1_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    _state(tmp_path, last_error="CA refused", retry_after=time.time() + 3600)
    assert _run(config) == 1
    assert "backing off after: CA refused" in capsys.readouterr().err


def test_waiting_out_the_cas_retry_after_exits_75_not_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CA's own Retry-After is temporary (75), like the run that stored it; our back-off
    after the CA failed to answer stays an error (1)."""
    config = _config(tmp_path)
    later = time.time() + 3600
    _state(tmp_path, last_error="rateLimited", retry_after=later, ca_retry_after=later)
    assert _run(config, "--max-wait", "0") == 75
    assert capsys.readouterr().err == ""  # quiet: not worth a cron mail
    _state(tmp_path, last_error="rateLimited", retry_after=later + 60, ca_retry_after=later)
    assert _run(config, "--max-wait", "0") == 1


def test_a_failing_step_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path)
    _state(tmp_path, renew_after=time.time() - 1)

    def fail(*_a: object) -> None:
        raise PostfixError("postfix reload failed")

    monkeypatch.setattr(engine, "_perform", fail)
    assert _run(config) == 1


def test_a_failure_names_its_certificate_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    _state(tmp_path, renew_after=time.time() - 1)

    def fail(*_a: object) -> None:
        raise PostfixError("mx1: postfix reload failed")

    monkeypatch.setattr(engine, "_perform", fail)
    assert _run(config) == 1
    err = capsys.readouterr().err
    assert "certman: mx1: postfix reload failed" in err and "mx1: mx1:" not in err


def test_ca_asking_to_retry_later_exits_75(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path)
    _state(tmp_path, renew_after=time.time() - 1)

    def later(*_a: object) -> None:
        raise RetryLater("rate limited", time.time() + 600)

    monkeypatch.setattr(engine, "_perform", later)
    assert _run(config) == 75


def test_lock_held_by_another_run_exits_75_for_run_and_rollover(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    cdir = _state(tmp_path)
    with cdir.lock():
        assert _run(config) == 75
        assert capsys.readouterr().err == ""  # quiet: a busy lock is not worth a cron mail
        assert main(["--config", str(config), "rollover", "mx1"]) == 75


def test_configuration_error_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[certificates.mx1]\ndomains = 3\n")
    assert _run(bad) == 2
    assert main(["--config", str(tmp_path / "missing.toml"), "status"]) == 2
    assert main(["--config", str(_config(tmp_path)), "tlsa", "nosuch"]) == 2


def test_the_worst_part_decides_the_run() -> None:
    assert worst_exit([0, 75, 0]) == 75
    assert worst_exit([75, 1, 0]) == 1
    assert worst_exit([1, 2]) == 2
    assert worst_exit([0]) == 0


@pytest.mark.parametrize(("failing", "code"), [(False, 0), (True, 1)])
def test_certbot_hook_exits_1_when_it_leaves_the_certificate_backing_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: bool, code: int
) -> None:
    """certbot logs a hook's non-zero status (and never retries it): a hand-over that ends in
    a back-off after a failure must say so, as `run` does."""
    from certman.integrations import certbot

    config = _config(tmp_path)
    cdir = _state(tmp_path)
    errors = {"last_error": "verification failed", "retry_after": time.time() + 600}
    state = cdir.load("mx1").evolve(**(errors if failing else {}))
    outcome = engine.Outcome("mx1", state, "backing off" if failing else "done")
    monkeypatch.setattr(certbot, "deploy_hook", lambda *a, **k: (["handed over"], outcome))
    lineage = tmp_path / "live" / "mx1"
    lineage.mkdir(parents=True)
    monkeypatch.setenv("RENEWED_LINEAGE", str(lineage))
    monkeypatch.setenv("RENEWED_DOMAINS", "mx1.example.org")
    assert main(["--config", str(config), "hook", "certbot-deploy"]) == code
