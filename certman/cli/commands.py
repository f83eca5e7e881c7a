"""One plain function per command: load the config, call the layer below, print the result.

This package is the only place that prints, sleeps, or turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from certman.cli.log import Log, configure
from certman.config.load import config_path, load_config
from certman.config.schema import DhMode
from certman.errors import CertmanError, ConfigError
from certman.model import KeyType

if TYPE_CHECKING:
    from certman.config.schema import CertificateConfig, Config
    from certman.lifecycle.context import Context
    from certman.lifecycle.engine import Outcome
    from certman.lifecycle.rollover import Step
    from certman.lifecycle.state import Operation


FOREVER = 10 * 365 * 86400.0


def _say(message: str) -> None:
    print(message, flush=True)


def _stamp(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _load(args: argparse.Namespace) -> Config:
    return load_config(config_path(args.config))


def _log(args: argparse.Namespace) -> Log:
    """The log ``main`` configured (-v, -q, --log-format); a plain one for direct callers."""
    log = getattr(args, "log", None)
    return log if log is not None else configure()


def _context(cfg: Config, log: Log) -> Context:
    from certman.lifecycle.context import Context

    return Context(cfg, time.time, time.sleep, log.info, notice=log.notice)


class Countdown:
    """Shown while a command waits: on a terminal a countdown (every 10 s, then every second
    of the last 10); elsewhere (journal, file, pipe) one line per wait, not one per second."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.shown: tuple[str, float] | None = None

    def __call__(self, step: Step, remaining: float) -> None:
        if remaining < 1:
            return
        if self.log.terminal:
            if int(remaining) % 10 == 0 or remaining < 10:
                self.log.info(f"  waiting {remaining:4.0f} s: {step.reason}")
            return
        until = step.wait_until if step.wait_until is not None else time.time() + remaining
        if self.shown != (step.reason, until):
            self.shown = (step.reason, until)
            self.log.info(f"  waiting {remaining:.0f} s (until {_stamp(until)}): {step.reason}")


def _certificates(cfg: Config, names: Sequence[str]) -> list[CertificateConfig]:
    return [cfg.certificate(n) for n in names] if names else list(cfg.certificates.values())


def cmd_config_check(args: argparse.Namespace) -> int:
    from certman.config.render import describe_config

    cfg = _load(args)
    for line in describe_config(cfg):
        _say(line)
    _say(f"# {cfg.path}: OK")
    return 0


def _drive(
    args: argparse.Namespace, name: str, request: Operation | None, *, max_wait: float
) -> Outcome:
    from certman.lifecycle.engine import advance

    cfg = _load(args)
    cert = cfg.certificate(name)
    ctx = _context(cfg, _log(args))
    if cfg.fleet is not None:  # issue 14: the shared lineage (docs/fleet.md)
        from certman.cli import fleet

        done = fleet.advance(
            ctx,
            cert,
            request=request,
            max_wait=max_wait,
            wait_lock=getattr(args, "wait_lock", False),
            on_wait=Countdown(_log(args)),
        )
        _say(fleet.outcome_line(done))
        from certman.lifecycle.engine import Outcome as Plain

        return Plain(done.name, done.lineage, done.reason, done.wait_until)
    outcome = advance(
        ctx,
        cert,
        request=request,
        max_wait=max_wait,
        wait_lock=getattr(args, "wait_lock", False),
        on_wait=Countdown(_log(args)),
    )
    _report_outcome(outcome)
    return outcome


def _report_outcome(outcome: Outcome) -> None:
    _say(_outcome_line(outcome))


def _outcome_line(outcome: Outcome) -> str:
    state = outcome.state
    if outcome.waiting:
        resume = _stamp(outcome.wait_until)
        return f"{outcome.name}: {state.phase.value}: {outcome.reason}; resume after {resume}"
    due = f"; renewal due {_stamp(state.renew_after)}" if state.renew_after else ""
    return f"{outcome.name}: {state.phase.value}: {outcome.reason}{due}"


def cmd_issue(args: argparse.Namespace) -> int:
    from certman.lifecycle.state import Operation

    _drive(args, args.name, Operation.RENEW, max_wait=FOREVER)
    return 0


def cmd_rollover(args: argparse.Namespace) -> int:
    from certman.lifecycle.state import Operation

    if args.dry_run:
        from certman.lifecycle.report import rollover_plan

        cfg = _load(args)
        plan = rollover_plan(cfg, cfg.certificate(args.name), compromised=args.compromised)
        if getattr(args, "json", False):
            kind = "compromised" if args.compromised else "rollover"
            _print_json(
                {
                    "certificate": args.name,
                    "operation": kind,
                    "steps": [line.strip() for line in plan[1:]],
                }
            )
            return 0
        for line in plan:
            _say(line)
        return 0
    request = Operation.COMPROMISED if args.compromised else Operation.ROLLOVER
    outcome = _drive(args, args.name, request, max_wait=FOREVER)
    if args.compromised:
        from certman.lifecycle.report import compromise_notice

        _say(compromise_notice(outcome.state))
    return 0


def _print_json(document: object) -> None:
    import json

    _say(json.dumps(document, indent=2, sort_keys=True))


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split()) or 'no message'}"


def cmd_status(args: argparse.Namespace) -> int:
    from certman.lifecycle.report import status_document, status_lines

    cfg = _load(args)
    if getattr(args, "fleet", False):  # issue 14
        from certman.cli import fleet

        if cfg.fleet is None:
            raise ConfigError(f"{cfg.path}: no [fleet] table; --fleet needs one")
        return fleet.cmd_status(cfg, _certificates(cfg, args.names), args.json)
    if getattr(args, "json", False):
        now = time.time()
        certs = [status_document(cfg, c, now) for c in _certificates(cfg, args.names)]
        _print_json({"certificates": certs})
        return 0
    for cert in _certificates(cfg, args.names):
        for line in status_lines(cfg, cert, time.time()):
            _say(line)
    if not args.names and cfg.dhparams.mode is not DhMode.OFF:
        from certman.dh import run as dhparams

        for line in dhparams.status(cfg.dhparams, cfg.state_dir, time.time()):
            _say(f"dhparams: {line}")
    return 0


def cmd_tlsa(args: argparse.Namespace) -> int:
    from certman.lifecycle.report import zone_document, zone_records

    cfg = _load(args)
    if getattr(args, "json", False):
        _print_json(zone_document(cfg, cfg.certificate(args.name)))
        return 0
    for line in zone_records(cfg, cfg.certificate(args.name)):
        _say(line)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """The monitoring plugin: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (also for a config
    error, which a monitoring system must not read as CRITICAL)."""
    import json

    from certman.monitor.check import run_check
    from certman.monitor.state import Thresholds

    try:
        cfg = _load(args)
    except CertmanError as exc:
        if args.json:
            _say(json.dumps({"status": "UNKNOWN", "exit_code": 3, "summary": str(exc)}))
        else:
            _say(f"CERTMAN UNKNOWN - {exc}")
        return 3
    hours = 3600.0
    thresholds = Thresholds(
        expiry_critical_days=args.critical_days,
        renewal_grace=args.renewal_grace_hours * hours,
        error_critical=args.error_critical_hours * hours,
        hold_grace=args.hold_grace_hours * hours,
    )
    report = run_check(
        cfg,
        thresholds=thresholds,
        timeout=args.timeout,
        postfix_audit=not args.no_postfix,
        only_postfix=args.postfix,
    )
    if cfg.fleet is not None and not args.postfix:  # issue 14: hosts lagging behind the fleet
        import dataclasses

        from certman.cli import fleet

        report = dataclasses.replace(report, items=(*report.items, *fleet.check_items(cfg)))
    if args.json:
        _say(json.dumps(report.to_json(), indent=2))
    else:
        for line in report.lines():
            _say(line)
    if cfg.notify.email or cfg.notify.command:
        from certman.monitor.notify import notify_check
        from certman.monitor.result import Severity

        critical = report.severity is Severity.CRITICAL
        try:
            errors = notify_check(cfg, critical, report.summary(), time.time())
        except OSError as exc:
            errors = [str(exc)]
        for error in errors:  # the plugin's output stays as it is; the reason goes to stderr
            print(f"certman: notify: {error}", file=sys.stderr, flush=True)
    return int(report.severity)


def cmd_dhparams(args: argparse.Namespace) -> int:
    from certman.dh import run as dhparams
    from certman.postfix.commands import Postfix

    cfg = _load(args)
    postfix = Postfix(cfg.postfix)
    if args.now:
        report = dhparams.generate_now(cfg.dhparams, postfix, cfg.state_dir, progress=_say)
    else:
        report = dhparams.advance(cfg.dhparams, postfix, cfg.state_dir, time.time())
    for line in report.lines():
        _say(line)
    return 0 if report.ok else 1


def cmd_hook_certbot(args: argparse.Namespace) -> int:
    import os

    from certman.integrations.certbot import deploy_hook, lineage_from
    from certman.lifecycle.engine import backing_off

    cfg = _load(args)
    if cfg.fleet is not None:  # issue 14: the fleet's leader issues; certbot must not
        raise ConfigError(f"{cfg.path}: [fleet] is configured: the certbot hook does not apply")
    lineage = lineage_from(args.lineage, os.environ)
    lines, outcome = deploy_hook(_context(cfg, _log(args)), lineage, dry_run=args.dry_run)
    for line in lines:
        _say(line)
    # Exit codes as for `run` (docs/operations.md): a certificate left backing off after a
    # failure is in error, and certbot logs a non-zero hook status (it never retries it).
    return 1 if outcome is not None and backing_off(outcome, time.time()) else 0


def cmd_account_rollover(args: argparse.Namespace) -> int:
    from certman.acme.account import rollover_account_key

    cfg = _load(args)
    key_type = KeyType(args.key_type) if args.key_type else None
    change = rollover_account_key(
        cfg.acme, cfg.state_dir, key_type=key_type, sleep=time.sleep, clock=time.time, progress=_say
    )
    _say(f"account {change.account_url}: new key in {change.key_file}")
    _say(f"  thumbprint {change.thumbprint}; the old key is kept in {change.old_key_file}")
    return 0


def cmd_account_deactivate(args: argparse.Namespace) -> int:
    from certman.acme.account import deactivate_account

    cfg = _load(args)
    if not args.yes:
        print(
            f"certman: deactivating the ACME account at {cfg.acme.directory} cannot be undone "
            "(RFC 8555 §7.3.6); add --yes to do it",
            file=sys.stderr,
        )
        return 2
    url = deactivate_account(cfg.acme, cfg.state_dir, sleep=time.sleep, clock=time.time)
    _say(f"account {url}: deactivated; the CA refuses every request signed with its key now")
    _say(f"  to issue again, move {cfg.acme.account_key} away: a new account is then registered")
    return 0


def cmd_contrib(args: argparse.Namespace) -> int:
    from certman.cli import contrib

    if args.name == "list":
        for line in contrib.listing():
            _say(line)
        return 0
    item = contrib.find(args.name)
    if args.dest is None:
        sys.stdout.buffer.write(contrib.read(item))
        sys.stdout.flush()
        return 0
    written = contrib.install(item, Path(args.dest), force=args.force)
    _say(f"wrote {written} (mode {item.mode:o})")
    return 0


def cmd_fleet_forget(args: argparse.Namespace) -> int:
    from certman.cli import fleet

    cfg = _load(args)
    if cfg.fleet is None:
        raise ConfigError(f"{cfg.path}: no [fleet] table")
    return fleet.cmd_forget(cfg, args)
