"""The pure parts of `certman check`: severities, thresholds, plugin output, protocol syntax."""

from __future__ import annotations

from pathlib import Path

import pytest
from certgen import certificate_config as certificate
from schemas import validate

from certman.cli.main import main
from certman.lifecycle.state import Operation, Phase, State, TlsaProgress
from certman.monitor.result import Item, Perf, Report, Severity
from certman.monitor.state import DAY, Thresholds, expiry_item, state_items
from certman.postfix.audit import allowed_protocols, port_of

T = Thresholds()
NOW = 2_000_000_000.0


def test_critical_beats_unknown_beats_warning_and_a_timeout_is_unknown() -> None:
    items: tuple[Item, ...] = (
        Item(Severity.WARNING, "state", "a", "w"),
        Item(Severity.UNKNOWN, "tlsa", "b", "u"),
    )
    assert Report(items).severity is Severity.UNKNOWN
    items += (Item(Severity.CRITICAL, "tls", "c", "c"),)
    assert Report(items).severity is Severity.CRITICAL
    assert Report((), timed_out=True).severity is Severity.UNKNOWN
    assert Report((Item(Severity.OK, "state", "a", "fine"),)).severity is Severity.OK


def test_plugin_output_is_status_line_with_perfdata_then_details_worst_first() -> None:
    report = Report(
        (Item(Severity.OK, "tlsa", "mx:25", "match"), Item(Severity.WARNING, "state", "mx", "x")),
        (Perf("mx:25 days", 40.5, "", None, 7),),
        elapsed=0.25,
    )
    status, first, second = report.lines()
    assert status == "CERTMAN WARNING - mx: x | 'mx:25 days'=40.5;;7 'time'=0.25s;;"
    assert first.startswith("WARNING: state: mx: x") and second.startswith("OK: tlsa")
    validate("check", report.to_json())


def test_expiry_ok_then_warning_past_renewal_plus_grace_then_critical() -> None:
    start, end = NOW - 60 * DAY, NOW + 30 * DAY
    assert expiry_item("s", start, end, NOW + DAY, NOW, T).severity is Severity.OK
    assert expiry_item("s", start, end, NOW - 3 * DAY, NOW, T).severity is Severity.WARNING
    assert expiry_item("s", start, NOW + 6 * DAY, None, NOW, T).severity is Severity.CRITICAL
    expired = expiry_item("s", start, NOW - 1, None, NOW, T)
    assert expired.severity is Severity.CRITICAL and "expired" in expired.message


def _failing(since: float) -> State:
    state = State(
        "mx", phase=Phase.STEADY, last_success=since - 10, last_error="boom", retry_after=NOW + 60
    )
    return state.note(since, "error: boom").note(NOW - 5, "error: boom")


def test_failures_warn_then_turn_critical_after_the_threshold(tmp_path: Path) -> None:
    cert = certificate(tmp_path)
    [item] = state_items(cert, _failing(NOW - 3600), NOW, T)
    assert item.severity is Severity.WARNING and "backing off after: boom" in item.message
    [item] = state_items(cert, _failing(NOW - 2 * DAY), NOW, T)
    assert item.severity is Severity.CRITICAL


def test_a_rollover_held_past_not_before_plus_grace_warns(tmp_path: Path) -> None:
    cert = certificate(tmp_path)
    held = State(
        "mx",
        phase=Phase.AGE,
        operation=Operation.ROLLOVER,
        tlsa=TlsaProgress(not_before=NOW - T.hold_grace - 60),
    )
    [item] = state_items(cert, held, NOW, T)
    assert item.severity is Severity.WARNING and "held in phase age" in item.message
    fresh = held.evolve(tlsa=TlsaProgress(not_before=NOW - 60))
    assert state_items(cert, fresh, NOW, T)[0].severity is Severity.OK


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("", {"SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"}),
        ("!SSLv2, !SSLv3", {"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"}),
        (">=TLSv1.2", {"TLSv1.2", "TLSv1.3"}),
        ("<=TLSv1.1", {"SSLv2", "SSLv3", "TLSv1", "TLSv1.1"}),
        ("TLSv1.2 TLSv1.3", {"TLSv1.2", "TLSv1.3"}),
        ("!SSLv2:!SSLv3:!TLSv1:!TLSv1.1", {"TLSv1.2", "TLSv1.3"}),
    ],
)
def test_postfix_protocol_syntax(value: str, allowed: set[str]) -> None:
    assert allowed_protocols(value) == allowed


def test_ports_of_master_cf_service_names() -> None:
    assert port_of("smtp") == 25 and port_of("127.0.0.25:smtp") == 25
    assert port_of("submission") == 587 and port_of("[::1]:2525") == 2525
    assert port_of("smtps") == 465 and port_of("nonsense") is None


def test_a_config_error_is_unknown_for_the_monitoring_system(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(tmp_path / "missing.toml"), "check"]) == 3
    assert capsys.readouterr().out.startswith("CERTMAN UNKNOWN - ")
