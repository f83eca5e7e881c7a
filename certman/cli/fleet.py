"""Fleet-mode commands (docs/fleet.md): ``run``/``rollover``/``issue`` through the shared lineage,
``status --fleet``, ``fleet forget HOST``, and the lagging-host warnings of ``certman check``."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from certman.errors import CertmanError

if TYPE_CHECKING:
    from certman.cli.log import Log
    from certman.config.schema import CertificateConfig, Config
    from certman.fleet.reports import HostReport
    from certman.lifecycle.context import Context
    from certman.lifecycle.fleetrun import FleetOutcome
    from certman.lifecycle.rollover import Step
    from certman.lifecycle.state import Operation
    from certman.monitor.result import Item


def _stamp(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def advance(
    ctx: Context,
    cert: CertificateConfig,
    *,
    request: Operation | None = None,
    max_wait: float = 0.0,
    wait_lock: bool = False,
    on_wait: Callable[[Step, float], None] | None = None,
) -> FleetOutcome:
    from certman.lifecycle import fleetrun

    fleet = fleetrun.open_fleet(ctx, cert)
    return fleetrun.run(
        fleet, request=request, max_wait=max_wait, on_wait=on_wait, wait_lock=wait_lock
    )


def outcome_line(outcome: FleetOutcome) -> str:
    lead = f"leader {outcome.leader}" if outcome.leader else "no leader"
    resume = f"; resume after {_stamp(outcome.wait_until)}" if outcome.waiting else ""
    host = f"; this host: {outcome.host.message}" if outcome.host else ""
    return (
        f"{outcome.name}: fleet {outcome.lineage.phase.value} ({lead}): {outcome.reason}{resume}"
        f"{host} [{outcome.requests} S3 requests]"
    )


def run_one(ctx: Context, cert: CertificateConfig, max_wait: float, log: Log) -> int:
    """``certman run`` with ``[fleet]``, one certificate: its exit code (0, 1 or 75)."""
    from certman.cli.log import Level

    try:
        outcome = advance(ctx, cert, max_wait=max_wait)
    except CertmanError as exc:
        level = Level.NOTICE if exc.exit_code == 75 else Level.ERR
        log(level, f"certman: {cert.name}: {exc}")
        return exc.exit_code
    from certman.lifecycle.engine import Outcome, backing_off

    plain = Outcome(outcome.name, outcome.lineage, outcome.reason, outcome.wait_until)
    error = outcome.host is not None and outcome.host.report.last_error is not None
    error = error or backing_off(plain, time.time())  # the lineage is in error (docs/operations.md)
    log(Level.ERR if error else Level.INFO, outcome_line(outcome))
    return 1 if error else 0


# -- status, check, forget ------------------------------------------------------------------------


def _view(cfg: Config, cert: CertificateConfig, now: float) -> dict[str, Any]:
    from certman.fleet import lease as leases
    from certman.fleet.reports import serves
    from certman.lifecycle import fleetrun
    from certman.lifecycle.context import Context
    from certman.lifecycle.fleethost import (
        fleet_target,
        load_lineage,
        read_reports,
        target_served,
    )

    assert cfg.fleet is not None
    fleet = fleetrun.open_fleet(Context(cfg, time.time, time.sleep), cert)
    lineage = load_lineage(fleet.store, cert.name)
    lease, _ = leases.read(fleet.store)
    reports = read_reports(fleet.store)
    target = target_served(*fleet_target(lineage.state))
    hosts = []
    for report in sorted(reports, key=lambda r: r.host):
        silent = now - report.reported_at > cfg.fleet.silent_after
        ok = bool(target) and serves(report, target)
        hosts.append({**_host(report), "status": _status(silent, ok, report)})
    return {
        "certificate": cert.name,
        "phase": lineage.state.phase.value,
        "operation": lineage.state.operation.value if lineage.state.operation else None,
        "lease": None
        if lease is None
        else {"holder": lease.holder, "term": lease.term, "expires_at": lease.expires_at},
        "target": {slot: s.__dict__ for slot, s in target.items()},
        "last_error": lineage.state.last_error,
        "hosts": hosts,
        "s3_requests": fleet.store.requests,
    }


def _host(report: HostReport) -> dict[str, Any]:
    return {
        "host": report.host,
        "served": {slot: s.__dict__ for slot, s in report.served.items()},
        "verified_at": report.verified_at,
        "reported_at": report.reported_at,
        "last_error": report.last_error,
    }


def _status(silent: bool, ok: bool, report: HostReport) -> str:
    if silent:
        return "silent"
    if report.last_error:
        return "error"
    return "ok" if ok else "lagging"


def cmd_status(cfg: Config, certs: list[CertificateConfig], as_json: bool) -> int:
    now = time.time()
    views = [_view(cfg, cert, now) for cert in certs]
    if as_json:
        print(json.dumps({"fleet": views, "generated_at": now}, indent=2, sort_keys=True))
        return 0
    for view in views:
        lease = view["lease"]
        holder = (
            f"lease {lease['holder']} (term {lease['term']}) until {_stamp(lease['expires_at'])}"
            if lease
            else "no lease yet"
        )
        op = f" ({view['operation']})" if view["operation"] else ""
        print(f"{view['certificate']}: fleet phase {view['phase']}{op}; {holder}")
        for slot, served in view["target"].items():
            print(f"  target   {slot} 3 1 1 {served['spki_sha256']} serial {served['serial']}")
        if view["last_error"]:
            print(f"  error    {view['last_error']}")
        for host in view["hosts"]:
            keys = ", ".join(
                f"{slot} {s['spki_sha256'][:16]} serial {s['serial']}"
                for slot, s in host["served"].items()
            )
            print(
                f"  host     {host['host']:<16} {host['status']:<8} serves {keys or '-'}; "
                f"verified {_stamp(host['verified_at'])}, "
                f"reported {_stamp(host['reported_at'])}"
            )
            if host["last_error"]:
                print(f"           error: {host['last_error']}")
    return 0


def check_items(cfg: Config) -> list[Item]:
    """``certman check`` items: WARNING for each lagging, failing or silent host."""
    from certman.monitor.result import Item, Severity

    return [Item(Severity.WARNING, "fleet", subject, message) for subject, message in problems(cfg)]


def problems(cfg: Config) -> list[tuple[str, str]]:
    """Hosts that lag behind the fleet, report errors, or went silent: (subject, message)."""
    found = []
    now = time.time()
    for cert in cfg.certificates.values():
        try:
            view = _view(cfg, cert, now)
        except CertmanError as exc:
            found.append((cert.name, f"fleet store: {exc}"))
            continue
        for host in view["hosts"]:
            subject = f"{cert.name} host {host['host']}"
            if host["status"] == "lagging":
                found.append((subject, "fleet host lags behind the fleet"))
            elif host["status"] == "error":
                found.append((subject, f"fleet host failed: {host['last_error']}"))
            elif host["status"] == "silent":
                found.append(
                    (
                        subject,
                        f"fleet host silent since {_stamp(host['reported_at'])} "
                        f"(`certman fleet forget {host['host']}` if it left the fleet)",
                    )
                )
    return found


def cmd_forget(cfg: Config, args: argparse.Namespace) -> int:
    from certman.lifecycle import fleetrun
    from certman.lifecycle.context import Context

    certs = [cfg.certificate(args.cert)] if args.cert else list(cfg.certificates.values())
    for cert in certs:
        fleet = fleetrun.open_fleet(Context(cfg, time.time, time.sleep), cert)
        fleetrun.forget(fleet, args.host)
        print(f"{cert.name}: host {args.host} forgotten; it no longer counts for retirement")
    return 0
