"""The command line: parse arguments, call one function per command, map errors to exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from certman.cli import commands, setup, unattended
from certman.cli.log import configure
from certman.errors import CertmanError
from certman.model import KeyType

if TYPE_CHECKING:
    pass


class _VersionAction(argparse.Action):
    """``--version``, looked up only when asked (importlib.metadata costs ~13 ms per run)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS)

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from importlib import metadata

        try:
            version = metadata.version("certman")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        print(f"certman {version}")
        parser.exit(0)


def _seconds(text: str) -> float:
    """A finite, non-negative number of seconds (``nan`` would never wait, ``inf`` never end)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certman",
        description="Certificate and DANE TLSA lifecycle manager for Postfix.",
    )
    parser.add_argument(
        "--config", "-c", help="config file (default $CERTMAN_CONFIG or /etc/certman/certman.toml)"
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log debug lines too")
    parser.add_argument(
        "-q", "--quiet", dest="log_quiet", action="store_true", help="log warnings and errors only"
    )
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log lines as text or JSON"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cfg = sub.add_parser("config", help="configuration commands")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    cfg_sub.add_parser(
        "check", help="validate; print the effective config as TOML (secrets by their source)"
    ).set_defaults(func=commands.cmd_config_check)

    issue = sub.add_parser(
        "issue", help="issue or renew a certificate now (publishing TLSA first if needed)"
    )
    issue.add_argument("name")
    issue.add_argument("--wait-lock", action="store_true", help="wait for another run's lock")
    issue.set_defaults(func=commands.cmd_issue)

    roll = sub.add_parser("rollover", help="roll to the published next key now, waiting as needed")
    roll.add_argument("name")
    roll.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    roll.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    roll.add_argument("--compromised", action="store_true", help="roll to a freshly generated key")
    roll.add_argument("--wait-lock", action="store_true", help="wait for another run's lock")
    roll.set_defaults(func=commands.cmd_rollover)

    run = sub.add_parser("run", help="for cron/systemd: advance everything that is due, then exit")
    run.add_argument("names", nargs="*", help="only these certificates")
    run.add_argument(
        "--max-wait",
        type=_seconds,
        default=30.0,
        help="longest inline wait in seconds (default 30)",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="print only what needs attention")
    run.add_argument(
        "--dry-run", action="store_true", help="preflight, then each certificate's next step"
    )
    run.set_defaults(func=unattended.cmd_run)

    status = sub.add_parser("status", help="phase, keys, records, deadlines, last error")
    status.add_argument("names", nargs="*")
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    status.add_argument("--fleet", action="store_true", help="every host of the [fleet] (issue 14)")
    status.set_defaults(func=commands.cmd_status)

    tlsa = sub.add_parser("tlsa", help="print the TLSA records the zone should hold now")
    tlsa.add_argument("name")
    tlsa.add_argument("--json", action="store_true", help="print the records as JSON")
    tlsa.set_defaults(func=commands.cmd_tlsa)

    _add_check(sub)

    dh = sub.add_parser("dhparams", help="regenerate Postfix DH parameters when due")
    dh.add_argument(
        "--now", action="store_true", help="generate in the foreground now, with progress"
    )
    dh.set_defaults(func=commands.cmd_dhparams)

    _add_tool_commands(sub)
    fleet = sub.add_parser("fleet", help="fleet mode: hosts sharing one lineage (docs/fleet.md)")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="SUBCOMMAND")
    forget = fleet_sub.add_parser("forget", help="a host left the fleet: stop waiting for it")
    forget.add_argument("host")
    forget.add_argument("--cert", help="only this certificate (default: all)")
    forget.set_defaults(func=commands.cmd_fleet_forget)
    setup.add_commands(sub)
    setup.add_preflight(sub)
    setup.add_adopt(sub)
    return parser


def _add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``certman check``: a monitoring plugin (docs/monitoring.md)."""
    check = sub.add_parser(
        "check",
        help="monitoring plugin: live TLS vs TLSA, expiry, state, DH files, Postfix TLS audit "
        "(exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)",
    )
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.add_argument(
        "--timeout", type=float, default=30.0, help="for the whole check, then UNKNOWN (30 s)"
    )
    check.add_argument(
        "--postfix", action="store_true", help="only the Postfix TLS audit (findings CRITICAL)"
    )
    check.add_argument("--no-postfix", action="store_true", help="skip the Postfix TLS audit")
    check.add_argument(
        "--critical-days", type=float, default=7.0, help="CRITICAL at this many days left (7)"
    )
    check.add_argument(
        "--renewal-grace-hours",
        type=float,
        default=48.0,
        help="WARNING when renewal is overdue by this long (48)",
    )
    check.add_argument(
        "--error-critical-hours",
        type=float,
        default=24.0,
        help="a certificate failing for this long is CRITICAL, before that WARNING (24)",
    )
    check.add_argument(
        "--hold-grace-hours",
        type=float,
        default=6.0,
        help="WARNING when a rollover is still unfinished this long after not_before (6)",
    )
    check.set_defaults(func=commands.cmd_check)


def _add_tool_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ACME account, hook and contrib commands."""
    account = sub.add_parser("account", help="ACME account commands")
    account_sub = account.add_subparsers(
        dest="account_command", required=True, metavar="SUBCOMMAND"
    )
    key_types = [k.value for k in KeyType]
    account_roll = account_sub.add_parser(
        "rollover", help="give the ACME account a new key (RFC 8555 §7.3.5)"
    )
    account_roll.add_argument(
        "--key-type",
        choices=key_types,
        help="type of the new key (default: [acme] account_key_type)",
    )
    account_roll.set_defaults(func=commands.cmd_account_rollover)
    account_end = account_sub.add_parser(
        "deactivate", help="deactivate the ACME account for good (RFC 8555 §7.3.6)"
    )
    account_end.add_argument("--yes", action="store_true", help="really deactivate it")
    account_end.set_defaults(func=commands.cmd_account_deactivate)

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
    certbot.set_defaults(func=commands.cmd_hook_certbot)

    contrib = sub.add_parser(
        "contrib", help="print or install the shipped systemd units, cron file, hook, example"
    )
    contrib.add_argument("name", help="a file from `certman contrib list`, or `list`")
    contrib.add_argument("dest", nargs="?", help="install to this file or directory")
    contrib.add_argument("--force", action="store_true", help="replace an existing DEST")
    contrib.set_defaults(func=commands.cmd_contrib)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    args.log = configure(verbose=args.verbose, quiet=args.log_quiet, fmt=args.log_format)
    try:
        return func(args)
    except CertmanError as exc:
        args.log.err(f"certman: {exc}")
        return exc.exit_code
    except OSError as exc:  # a full or read-only disk outside any recorded step
        print(f"certman: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("certman: interrupted; the next run resumes where this one stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
