"""Commands for getting onto a host safely: ``certman init`` and ``certman preflight``.

Kept apart from ``commands.py`` so that they stay read-only in one place: neither writes to
Postfix, DNS or the CA.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from certman.errors import CertmanError

if TYPE_CHECKING:
    from certman.config.schema import CertificateConfig
    from certman.lifecycle.context import Context
    from certman.postfix.targets import ServedFiles


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = sub.add_parser(
        "init", help="read what Postfix serves and write a starting configuration (read-only)"
    )
    init.add_argument("output", nargs="?", help="a NEW file to write (default: stdout)")
    init.add_argument("--postfix-config-dir", default="/etc/postfix", metavar="DIR")
    init.add_argument(
        "--resolver",
        action="append",
        default=[],
        metavar="ADDR",
        help="validating resolver (repeatable; default: /etc/resolv.conf's)",
    )
    init.add_argument("--acme-directory", default="https://acme-v02.api.letsencrypt.org/directory")
    init.add_argument("--email")
    init.add_argument("--ca-bundle", metavar="FILE")
    init.add_argument("--tsig-key-file", metavar="FILE", help="RFC 2136 key for the TLSA names")
    init.add_argument("--dns-server", metavar="ADDR", help="default: the zone's SOA MNAME")
    init.add_argument("--state-dir", default="/var/lib/certman", metavar="DIR")
    init.add_argument(
        "--directory",
        default=None,
        metavar="DIR",
        help="where certman writes Postfix's files (default: CONFIG_DIR/certman)",
    )
    init.set_defaults(func=cmd_init)


def _system_resolvers() -> list[str]:
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        return ["127.0.0.1"]
    found = [ln.split()[1] for ln in lines if ln.startswith("nameserver") and len(ln.split()) > 1]
    return found or ["127.0.0.1"]


def cmd_init(args: argparse.Namespace) -> int:
    from certman.config.schema import PostfixConfig
    from certman.integrations.hostscan import InitOptions, render, scan
    from certman.postfix.commands import Postfix

    config_dir = Path(args.postfix_config_dir)
    if args.output and Path(args.output).exists():
        raise CertmanError(f"{args.output}: exists; certman init never overwrites a file")
    options = InitOptions(
        resolvers=tuple(args.resolver or _system_resolvers()),
        acme_directory=args.acme_directory,
        email=args.email,
        ca_bundle=args.ca_bundle,
        tsig_key_file=args.tsig_key_file,
        dns_server=args.dns_server,
        state_dir=args.state_dir,
        directory=args.directory or str(config_dir / "certman"),
    )
    postfix = Postfix(PostfixConfig(config_dir, "postconf", "postfix", None))
    text = render(scan(postfix, options), options, time.time())
    if not args.output:
        sys.stdout.write(text)
        return 0
    try:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CertmanError(f"{args.output}: exists; certman init never overwrites a file") from None
    except OSError as exc:
        raise CertmanError(f"{args.output}: cannot create: {exc.strerror}") from None
    with os.fdopen(fd, "w") as out:
        out.write(text)
    print(f"wrote {args.output}; next: certman --config {args.output} config check", flush=True)
    return 0


def _say(message: str) -> None:
    print(message, flush=True)


def add_preflight(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pre = sub.add_parser(
        "preflight",
        help="read-only: resolver validates, zones signed, DNS key allowed, CA up, ports answer",
    )
    pre.set_defaults(func=cmd_preflight)


def cmd_preflight(args: argparse.Namespace) -> int:
    """0: every check passed (or could not be proved, said so); 1: a check failed."""
    from certman.config.load import config_path, load_config
    from certman.integrations.preflight import Verdict, preflight
    from certman.lifecycle.context import Context

    cfg = load_config(config_path(args.config))
    findings = preflight(Context(cfg, time.time, time.sleep))
    for finding in findings:
        _say(finding.line())
    failed = [f for f in findings if f.verdict is Verdict.FAIL]
    _say(f"preflight: {len(failed)} problem(s)" if failed else "preflight: OK")
    return 1 if failed else 0


def cmd_run_dry(args: argparse.Namespace) -> int:
    """``certman run --dry-run``: the preflight, then each certificate's next step; no change."""
    from certman.config.load import config_path, load_config
    from certman.lifecycle import rollover
    from certman.lifecycle.engine import policy_for
    from certman.lifecycle.statefile import CertDir

    code = cmd_preflight(args)
    cfg = load_config(config_path(args.config))
    names = args.names or list(cfg.certificates)
    for cert in (cfg.certificate(n) for n in names):
        state = CertDir.of(cfg.state_dir, cert.name).load(cert.name)
        step = rollover.decide(state, time.time(), policy_for(cert))
        _say(
            f"{cert.name}: would {step.reason}" if not step.done else f"{cert.name}: {step.reason}"
        )
    return code


def add_adopt(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    adopt = sub.add_parser(
        "adopt", help="take a target over from certbot: its key, then certman's own files"
    )
    adopt.add_argument("name", nargs="?", help="the certificate (default: by the lineage's names)")
    adopt.add_argument(
        "--from-certbot",
        required=True,
        metavar="LINEAGE",
        help="certbot's live/NAME directory Postfix reads now",
    )
    adopt.add_argument(
        "--max-wait",
        type=float,
        default=3600.0,
        help="longest wait for DNS in seconds (default 3600)",
    )
    adopt.set_defaults(func=cmd_adopt)


def cmd_adopt(args: argparse.Namespace) -> int:
    from certman.config.load import config_path, load_config
    from certman.integrations.certbot_move import take_over
    from certman.lifecycle.context import Context
    from certman.lifecycle.rollover import Step

    def waiting(step: Step, remaining: float) -> None:
        if remaining >= 1 and (int(remaining) % 10 == 0 or remaining < 10):
            _say(f"  waiting {remaining:4.0f} s: {step.reason}")

    cfg = load_config(config_path(args.config))
    ctx = Context(cfg, time.time, time.sleep, _say)
    for line in take_over(
        ctx, args.from_certbot, args.name, max_wait=args.max_wait, on_wait=waiting
    ):
        _say(line)
    return 0


def foreign_warnings(
    ctx: Context, cert: CertificateConfig, snapshots: dict[str, ServedFiles] | None = None
) -> list[str]:
    """For ``certman run``: a target that still reads a certbot lineage (certbot would replace
    the key behind certman's back, RFC 7671 §8.1). ``snapshots`` (per instance directory,
    filled as needed) lets a run's certificates share one ``postconf`` per instance."""
    from certman.integrations.certbot_move import target_lineages
    from certman.postfix.targets import ServedFiles

    try:
        served = None
        if snapshots is not None:
            key = str(cert.install.config_dir)
            served = snapshots.setdefault(key, ServedFiles(ctx.postfix_for(cert)))
        lineages = sorted(target_lineages(ctx, cert, served))
    except CertmanError:
        return []  # what Postfix serves could not be read: the run itself reports that
    return [
        f"{cert.name}: Postfix reads certbot's lineage {lineage}; certbot will replace that key "
        f"behind certman's back: certman adopt --from-certbot {lineage} (docs/certbot.md)"
        for lineage in lineages
    ]
