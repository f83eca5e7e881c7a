"""certman's command line: parse arguments, load the config, call a plain function, print.

This is the only module that prints, sleeps, or turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from certman import config as config_mod
from certman.config import DhMode
from certman.errors import CertmanError

if TYPE_CHECKING:
    from certman.config import CertificateConfig, Config
    from certman.engine import Context, Outcome
    from certman.rollover import Step
    from certman.state import Operation

FOREVER = 10 * 365 * 86400.0


def _say(message: str) -> None:
    print(message, flush=True)


def _stamp(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _load(args: argparse.Namespace) -> Config:
    return config_mod.load(config_mod.config_path(args.config))


def _context(cfg: Config, *, verbose: bool = True) -> Context:
    from certman.engine import Context

    return Context(cfg, time.time, time.sleep, _say if verbose else (lambda _m: None))


def _countdown(step: Step, remaining: float) -> None:
    """Shown while ``certman rollover`` waits: what for, and for how long."""
    if remaining >= 1 and (int(remaining) % 10 == 0 or remaining < 10 or not sys.stdout.isatty()):
        _say(f"  waiting {remaining:4.0f} s: {step.reason}")


def _certificates(cfg: Config, names: Sequence[str]) -> list[CertificateConfig]:
    return [cfg.certificate(n) for n in names] if names else list(cfg.certificates.values())


# -- commands -------------------------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    from certman.report import describe_config

    cfg = _load(args)
    for line in describe_config(cfg):
        _say(line)
    _say(f"{cfg.path}: OK")
    return 0


def _drive(
    args: argparse.Namespace, name: str, request: Operation | None, *, max_wait: float
) -> Outcome:
    from certman.engine import advance

    cfg = _load(args)
    cert = cfg.certificate(name)
    ctx = _context(cfg)
    outcome = advance(
        ctx,
        cert,
        request=request,
        max_wait=max_wait,
        wait_lock=getattr(args, "wait_lock", False),
        on_wait=_countdown,
    )
    _report_outcome(outcome)
    return outcome


def _report_outcome(outcome: Outcome) -> None:
    state = outcome.state
    if outcome.waiting:
        resume = _stamp(outcome.wait_until)
        _say(f"{outcome.name}: {state.phase.value}: {outcome.reason}; resume after {resume}")
    else:
        due = f"; renewal due {_stamp(state.renew_after)}" if state.renew_after else ""
        _say(f"{outcome.name}: {state.phase.value}: {outcome.reason}{due}")


def cmd_issue(args: argparse.Namespace) -> int:
    from certman.state import Operation

    _drive(args, args.name, Operation.RENEW, max_wait=FOREVER)
    return 0


def cmd_rollover(args: argparse.Namespace) -> int:
    from certman.state import Operation

    if args.dry_run:
        from certman.report import rollover_plan

        cfg = _load(args)
        for line in rollover_plan(cfg, cfg.certificate(args.name), compromised=args.compromised):
            _say(line)
        return 0
    request = Operation.COMPROMISED if args.compromised else Operation.ROLLOVER
    outcome = _drive(args, args.name, request, max_wait=FOREVER)
    if args.compromised:
        from certman.report import compromise_notice

        _say(compromise_notice(outcome.state))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """For cron and systemd: advance every certificate as far as it goes now, then exit."""
    from certman.engine import advance

    cfg = _load(args)
    ctx = _context(cfg, verbose=not args.quiet)
    failures = 0
    for cert in _certificates(cfg, args.names):
        try:
            outcome = advance(ctx, cert, max_wait=args.max_wait)
        except CertmanError as exc:
            failures += 1
            print(f"certman: {cert.name}: {exc}", file=sys.stderr, flush=True)
            continue
        if not args.quiet or outcome.waiting:
            _report_outcome(outcome)
    failures += _run_dhparams(cfg, args.quiet)
    return 1 if failures else 0


def _run_dhparams(cfg: Config, quiet: bool) -> int:
    if cfg.dhparams.mode in (DhMode.OFF, DhMode.AUTO):
        return 0
    from certman import dhparams
    from certman.postfix import Postfix

    try:
        report = dhparams.advance(cfg.dhparams, Postfix(cfg.postfix), cfg.state_dir, time.time())
    except CertmanError as exc:
        print(f"certman: dhparams: {exc}", file=sys.stderr, flush=True)
        return 1
    for line in report.lines():
        if not quiet or not report.ok:
            _say(f"dhparams: {line}")
    return 0 if report.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    from certman.report import status_lines

    cfg = _load(args)
    for cert in _certificates(cfg, args.names):
        for line in status_lines(cfg, cert, time.time()):
            _say(line)
    if not args.names and cfg.dhparams.mode is not DhMode.OFF:
        from certman import dhparams

        for line in dhparams.status(cfg.dhparams, cfg.state_dir, time.time()):
            _say(f"dhparams: {line}")
    return 0


def cmd_tlsa(args: argparse.Namespace) -> int:
    from certman.report import zone_records

    cfg = _load(args)
    for line in zone_records(cfg, cfg.certificate(args.name)):
        _say(line)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from certman.report import check_problems

    cfg = _load(args)
    problems = check_problems(cfg)
    for line in problems:
        _say(f"problem: {line}")
    _say("check: OK" if not problems else f"check: {len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_dhparams(args: argparse.Namespace) -> int:
    from certman import dhparams
    from certman.postfix import Postfix

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

    from certman.certbot import deploy_hook, lineage_from

    cfg = _load(args)
    lineage = lineage_from(args.lineage, os.environ)
    for line in deploy_hook(_context(cfg), lineage, dry_run=args.dry_run):
        _say(line)
    return 0


def cmd_account_rollover(args: argparse.Namespace) -> int:
    from certman.acme_account import rollover_account_key
    from certman.config import KeyType

    cfg = _load(args)
    key_type = KeyType(args.key_type) if args.key_type else None
    change = rollover_account_key(
        cfg.acme, cfg.state_dir, key_type=key_type, sleep=time.sleep, clock=time.time, progress=_say
    )
    _say(f"account {change.account_url}: new key in {change.key_file}")
    _say(f"  thumbprint {change.thumbprint}; the old key is kept in {change.old_key_file}")
    return 0


def cmd_account_deactivate(args: argparse.Namespace) -> int:
    from certman.acme_account import deactivate_account

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


# -- argument parsing ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certman",
        description="Certificate and DANE TLSA lifecycle manager for Postfix.",
    )
    parser.add_argument(
        "--config", "-c", help="config file (default $CERTMAN_CONFIG or /etc/certman/certman.toml)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cfg = sub.add_parser("config", help="configuration commands")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    cfg_sub.add_parser(
        "check", help="validate and print the effective config (secrets redacted)"
    ).set_defaults(func=cmd_config_check)

    issue = sub.add_parser(
        "issue", help="issue or renew a certificate now (publishing TLSA first if needed)"
    )
    issue.add_argument("name")
    issue.add_argument("--wait-lock", action="store_true", help="wait for another run's lock")
    issue.set_defaults(func=cmd_issue)

    roll = sub.add_parser("rollover", help="roll to the published next key now, waiting as needed")
    roll.add_argument("name")
    roll.add_argument(
        "--now", action="store_true", help="start now rather than at the scheduled time (default)"
    )
    roll.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    roll.add_argument("--compromised", action="store_true", help="roll to a freshly generated key")
    roll.add_argument("--wait-lock", action="store_true", help="wait for another run's lock")
    roll.set_defaults(func=cmd_rollover)

    run = sub.add_parser("run", help="for cron/systemd: advance everything that is due, then exit")
    run.add_argument("names", nargs="*", help="only these certificates")
    run.add_argument(
        "--max-wait", type=float, default=30.0, help="longest inline wait in seconds (default 30)"
    )
    run.add_argument("--quiet", "-q", action="store_true", help="print only what needs attention")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="phase, keys, records, deadlines, last error")
    status.add_argument("names", nargs="*")
    status.set_defaults(func=cmd_status)

    tlsa = sub.add_parser("tlsa", help="print the TLSA records the zone should hold now")
    tlsa.add_argument("name")
    tlsa.set_defaults(func=cmd_tlsa)

    sub.add_parser("check", help="check the Postfix settings certman depends on").set_defaults(
        func=cmd_check
    )

    dh = sub.add_parser("dhparams", help="regenerate Postfix DH parameters when due")
    dh.add_argument(
        "--now", action="store_true", help="generate in the foreground now, with progress"
    )
    dh.set_defaults(func=cmd_dhparams)

    account = sub.add_parser("account", help="ACME account commands")
    account_sub = account.add_subparsers(
        dest="account_command", required=True, metavar="SUBCOMMAND"
    )
    key_types = [k.value for k in config_mod.KeyType]
    account_roll = account_sub.add_parser(
        "rollover", help="give the ACME account a new key (RFC 8555 §7.3.5)"
    )
    account_roll.add_argument(
        "--key-type",
        choices=key_types,
        help="type of the new key (default: [acme] account_key_type)",
    )
    account_roll.set_defaults(func=cmd_account_rollover)
    account_end = account_sub.add_parser(
        "deactivate", help="deactivate the ACME account for good (RFC 8555 §7.3.6)"
    )
    account_end.add_argument("--yes", action="store_true", help="really deactivate it")
    account_end.set_defaults(func=cmd_account_deactivate)

    hook = sub.add_parser("hook", help="hooks for other tools")
    hook_sub = hook.add_subparsers(dest="hook_command", required=True, metavar="HOOK")
    certbot = hook_sub.add_parser(
        "certbot-deploy", help="certbot --deploy-hook: gate the deployment on DNS"
    )
    certbot.add_argument(
        "--dry-run", action="store_true", help="say what would happen, change nothing"
    )
    certbot.add_argument(
        "--lineage",
        metavar="DIR",
        help="certbot's live/NAME directory, to hand over again by hand "
        "(default: $RENEWED_LINEAGE and $RENEWED_DOMAINS, as certbot sets them)",
    )
    certbot.set_defaults(func=cmd_hook_certbot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CertmanError as exc:
        print(f"certman: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("certman: interrupted; the next run resumes where this one stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
