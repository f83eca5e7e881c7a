"""Notifications: one per state change, remembered across runs; the command gets valid JSON."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from test_exit_codes import _config, _state

from certman.cli.main import main
from certman.lifecycle.state import Phase, State
from certman.model import CertInfo
from certman.monitor.notify import certificate_events

NOW = 2_000_000_000.0


def _kinds(state: State, memory: dict[str, object]) -> tuple[list[str], dict[str, object]]:
    events, remembered = certificate_events(state, memory, NOW, 14.0)
    return [e.kind for e in events], remembered


def test_a_failure_is_told_once_and_so_is_the_recovery() -> None:
    failing = State("mx", phase=Phase.STEADY, last_error="CA refused").note(NOW, "error: x")
    kinds, memory = _kinds(failing, {})
    assert kinds == ["failure"]
    assert _kinds(failing.note(NOW, "error: x"), memory)[0] == []
    healed = failing.evolve(last_error=None).note(NOW, "renew finished: ok")
    kinds, memory = _kinds(healed, memory)
    assert kinds == ["recovered"]
    assert _kinds(healed, memory)[0] == []


def test_rollbacks_and_finished_rollovers_come_from_new_history_entries() -> None:
    state = State("mx", phase=Phase.STEADY).note(NOW, "adopted")
    kinds, memory = _kinds(state, {})
    assert kinds == []  # first look: old history is not news
    state = state.note(NOW, "rolled back: mismatch").evolve(last_error="mismatch")
    kinds, memory = _kinds(state, memory)
    assert kinds == ["failure", "rollback"]
    state = state.evolve(last_error=None).note(NOW, "new key live and verified; retiring")
    kinds, memory = _kinds(state, memory)
    assert kinds == ["recovered", "rollover-finished"]


def test_expiring_is_told_once_per_certificate_lifetime() -> None:
    cert = CertInfo("k", "01", NOW - 80 * 86400, NOW + 10 * 86400, None, "/x")
    state = State("mx", phase=Phase.STEADY, certs={"ecdsa-p256": cert})
    kinds, memory = _kinds(state, {})
    assert kinds == ["expiring"]
    assert _kinds(state, memory)[0] == []
    renewed = state.evolve(
        certs={"ecdsa-p256": cert.__class__("k", "02", NOW, NOW + 90 * 86400, None, "/x")}
    )
    kinds, memory = _kinds(renewed, memory)
    assert kinds == [] and memory["expiring"] is False


def test_the_command_gets_the_event_as_json_once_per_change(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    script = tmp_path / "hook.py"
    script.write_text(
        "import sys\nwith open(sys.argv[1], 'a') as f:\n    f.write(sys.stdin.read())\n"
    )
    config = _config(tmp_path)
    config.write_text(
        config.read_text()
        + f"[notify]\ncommand = {json.dumps([sys.executable, str(script), str(out)])}\n"
    )
    _state(tmp_path, last_error="CA refused", retry_after=time.time() + 3600)
    for _ in range(3):
        assert main(["--config", str(config), "run", "--quiet"]) == 1
    [line] = out.read_text().splitlines()
    event = json.loads(line)
    assert event["event"] == "failure" and event["certificate"] == "mx1"
    assert event["message"] == "CA refused" and event["time"].endswith("Z")


def test_a_failing_command_is_reported_and_retried_next_run(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.write_text(config.read_text() + '[notify]\ncommand = ["/bin/false"]\n')
    _state(tmp_path, last_error="CA refused", retry_after=time.time() + 3600)
    assert main(["--config", str(config), "run", "--quiet"]) == 1
    memory = json.loads((tmp_path / "state" / "notify.json").read_text())
    assert "mx1" not in memory  # not delivered: not remembered, so the next run tries again


def test_check_turning_critical_is_told_once(tmp_path: Path) -> None:
    from certman.config.load import load_config
    from certman.monitor.notify import notify_check

    out = tmp_path / "events.jsonl"
    script = tmp_path / "hook.py"
    script.write_text(
        "import sys\nwith open(sys.argv[1], 'a') as f:\n    f.write(sys.stdin.read())\n"
    )
    config = _config(tmp_path)
    argv = json.dumps([sys.executable, str(script), str(out)])
    config.write_text(config.read_text() + f"[notify]\ncommand = {argv}\n")
    cfg = load_config(config)
    for critical in (False, True, True, False, True):
        assert notify_check(cfg, critical, "mx:25: no TLSA record matches", NOW) == []
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["event"] for e in events] == ["check-critical", "check-critical"]
    assert events[0]["message"] == "mx:25: no TLSA record matches"
