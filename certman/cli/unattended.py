"""``certman run``, what cron and the systemd timer start: advance everything, write the metrics
file, send notifications, and exit with the code that says how it went (docs/operations.md,
"Exit codes")."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from certman.cli.commands import (
    Countdown,
    _certificates,
    _context,
    _load,
    _log,
    _one_line,
    _outcome_line,
)
from certman.cli.log import Level, Log
from certman.config.load import config_path
from certman.config.schema import Config, DhMode
from certman.errors import CertmanError

if TYPE_CHECKING:
    from certman.config.schema import CertificateConfig
    from certman.lifecycle.context import Context, ReloadBatch
    from certman.lifecycle.engine import Outcome
    from certman.postfix.targets import ServedFiles


def cmd_run(args: argparse.Namespace) -> int:
    """For cron and systemd: advance every certificate as far as it goes now, then exit.

    Exit code (docs/operations.md, "Exit codes"): 1 when any certificate failed or is backing
    off after a failure, else 75 when one was locked by another run or the CA asked to retry
    later, else 0. ``--quiet`` prints only what makes the run fail, so cron mails only then.
    """
    from certman.cli import fastpath
    from certman.cli.setup import foreign_warnings
    from certman.lifecycle.context import ReloadBatch

    if getattr(args, "dry_run", False):
        from certman.cli.setup import cmd_run_dry

        return cmd_run_dry(args)
    config_identity = fastpath.identity(config_path(args.config))
    start = time.time()
    cfg = _load(args)
    log = _log(args)
    if args.quiet:
        log.threshold = min(log.threshold, Level.WARNING)
    ctx = _context(cfg, log)
    ctx.reloads = batch = ReloadBatch()
    before = _state_identities(cfg)
    certs = _certificates(cfg, args.names)
    results = _advance_all(ctx, certs, args, log)  # pass 1: everything up to the reload
    codes = [_run_dhparams(cfg, log, batch)]
    for where, error, waited in batch.flush():  # one reload per instance for the whole run
        if error is None:
            log.notice(f"postfix -c {where}: reloaded once for this run's changes")
        elif not waited:  # only the DH files changed; else each certificate says it (pass 2)
            log(Level.ERR, f"certman: dhparams: {_one_line(error)}")
            codes.append(1)
    again = [c for c in certs if _waiting_reload(results.get(c.name))]
    results.update(_advance_all(ctx, again, args, log))  # pass 2: verify what was switched
    outcomes: list[Outcome] = []
    warned = False
    snapshots: dict[str, ServedFiles] = {}  # one postconf per instance for the warnings
    for cert in certs:
        code, outcome = results[cert.name]
        codes.append(code)
        if outcome is None:
            continue
        outcomes.append(outcome)
        level = {0: Level.INFO, 1: Level.ERR}.get(code, Level.NOTICE)
        log(level, _outcome_line(outcome))
        for line in foreign_warnings(ctx, cert, snapshots):  # certbot's live/ files: issue 12
            warned = True
            log(Level.WARNING, f"certman: warning: {line}")
    codes.append(_write_metrics(cfg, log))
    codes.append(_notify(cfg, log))
    if not any(codes) and not warned and not args.names and before == _state_identities(cfg):
        _remember_idle_run(cfg, config_identity, before, outcomes, start)
    return worst_exit(codes)


Result = tuple[int, "Outcome | None"]  # exit code of one certificate, its outcome if it has one


def _advance_all(
    ctx: Context, certs: Sequence[CertificateConfig], args: argparse.Namespace, log: Log
) -> dict[str, Result]:
    """Advance ``certs``, up to ``[acme] concurrency`` at once; certificates answering http-01
    on a port of their own (``listen``) take turns, since only one can hold the port."""
    width = min(ctx.config.acme.concurrency, len(certs))
    if width <= 1:
        return {c.name: _advance_one(ctx, c, args, log) for c in certs}
    from concurrent.futures import ThreadPoolExecutor

    listening = [c for c in certs if c.http is not None and c.http.listen is not None]
    others = [c for c in certs if c not in listening]

    def in_turn(group: Sequence[CertificateConfig]) -> dict[str, Result]:
        return {c.name: _advance_one(ctx, c, args, log) for c in group}

    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="certman") as pool:
        turns = pool.submit(in_turn, listening)
        each = {c.name: pool.submit(_advance_one, ctx, c, args, log) for c in others}
        results = turns.result()
        results.update({name: future.result() for name, future in each.items()})
    return results


def _advance_one(
    ctx: Context, cert: CertificateConfig, args: argparse.Namespace, log: Log
) -> Result:
    """One certificate as far as it goes now; its failure never stops the others."""
    from certman.lifecycle.engine import advance, backing_off, ca_asked_later

    if ctx.config.fleet is not None:  # issue 14: through the shared lineage (docs/fleet.md)
        from certman.cli import fleet

        return fleet.run_one(ctx, cert, args.max_wait, log), None
    try:
        outcome = advance(ctx, cert, max_wait=args.max_wait, on_wait=Countdown(log))
    except CertmanError as exc:
        # A held lock or "retry later" is routine (exit 75): not worth a cron mail.
        level = Level.NOTICE if exc.exit_code == TEMPFAIL else Level.ERR
        log(level, f"certman: {_named(cert.name, str(exc))}")
        return exc.exit_code, None
    except Exception as exc:  # one certificate's failure never stops the others
        log(Level.ERR, f"certman: {_named(cert.name, _one_line(exc))}")
        return 1, None
    now = time.time()
    if not backing_off(outcome, now):
        return 0, outcome
    # The CA's own Retry-After is routine, like the run that stored it (exit 75).
    return (TEMPFAIL if ca_asked_later(outcome, now) else 1), outcome


def _waiting_reload(result: Result | None) -> bool:
    from certman.lifecycle.engine import RELOAD_WAIT

    return result is not None and result[1] is not None and result[1].reason == RELOAD_WAIT


def _named(name: str, text: str) -> str:
    """``NAME: text``, once: many errors name their certificate already."""
    return text if text.startswith(f"{name}: ") else f"{name}: {text}"


FASTPATH_HORIZON = 86400.0  # a record is trusted for a day at most, then a full run renews it


def _state_identities(cfg: Config) -> list[tuple[str, str]]:
    from certman.cli import fastpath
    from certman.lifecycle.statefile import CertDir

    files = [str(CertDir.of(cfg.state_dir, name).state_file) for name in cfg.certificates]
    # What the run's certbot-lineage warning reads (issue 12): each instance's main.cf, master.cf.
    instances = sorted({str(c.install.config_dir) for c in cfg.certificates.values()})
    files += [f"{d}/{name}" for d in instances for name in ("main.cf", "master.cf")]
    return [(path, fastpath.identity(path)) for path in files]


def _remember_idle_run(
    cfg: Config,
    config_identity: str,
    files: list[tuple[str, str]],
    outcomes: list[Outcome],
    start: float,
) -> None:
    """A run that changed nothing and printed nothing quiet: record when anything is next due,
    for the fast path (``certman/cli/fastpath.py``).

    Only for what the record describes fully: no DH files, metrics file or notifications of
    certman's own (each run would have work there), no fleet (another host may change the
    shared lineage), the same config file from start to end,
    state files untouched by this run or another (identities before == after).
    """
    from certman.cli import fastpath
    from certman.lifecycle.engine import policy_for
    from certman.lifecycle.rollover import next_change

    if cfg.dhparams.mode not in (DhMode.OFF, DhMode.AUTO):
        return
    if any(ident == "-" for path, ident in files if path.endswith("/state.json")):
        return  # a certificate without state is adopted by the next run
    if cfg.metrics.textfile is not None or cfg.notify.email or cfg.notify.command:
        return
    if cfg.fleet is not None:  # the shared lineage can change in S3, behind every local file
        return
    if config_identity != fastpath.identity(cfg.path):
        return
    due = min(
        (next_change(o.state, start, policy_for(cfg.certificate(o.name))) for o in outcomes),
        default=float("inf"),
    )
    text = fastpath.render_record(config_identity, files, min(due, start + FASTPATH_HORIZON))
    if text is not None:
        fastpath.write_record(cfg.state_dir, text)


def _notify(cfg: Config, log: Log) -> int:
    """``[notify]``: one message per state change of each certificate (nothing when unset)."""
    if not (cfg.notify.email or cfg.notify.command):
        return 0
    from certman.lifecycle.statefile import CertDir
    from certman.monitor.notify import notify_run

    try:
        states = {n: CertDir.of(cfg.state_dir, n).load(n) for n in cfg.certificates}
        sent, errors = notify_run(cfg, states, time.time())
    except (OSError, CertmanError) as exc:
        log.err(f"certman: notify: {exc}")
        return 1
    for event in sent:
        log.notice(f"{event.certificate}: notified: {event.kind}")
    for error in errors:
        log.err(f"certman: notify: {error}")
    return 1 if errors else 0


def _write_metrics(cfg: Config, log: Log) -> int:
    """``[metrics] textfile``, rewritten after every run (nothing to do when unset)."""
    if cfg.metrics.textfile is None:
        return 0
    from certman.monitor.metrics import write_textfile

    try:
        write_textfile(cfg, time.time())
    except (OSError, CertmanError) as exc:
        log.err(f"certman: metrics: {cfg.metrics.textfile}: {exc}")
        return 1
    return 0


TEMPFAIL = 75  # EX_TEMPFAIL (sysexits.h): lock held, CA asked to retry later


def worst_exit(codes: Sequence[int]) -> int:
    """The run's exit code from its parts: configuration > failure > temporary > success."""
    for code in (2, 1, TEMPFAIL):
        if code in codes:
            return code
    return max(codes, default=0)


def _run_dhparams(cfg: Config, log: Log, batch: ReloadBatch) -> int:
    if cfg.dhparams.mode in (DhMode.OFF, DhMode.AUTO):
        return 0
    from certman.dh import run as dhparams
    from certman.postfix.commands import Postfix

    postfix = Postfix(cfg.postfix)
    try:
        report = dhparams.advance(
            cfg.dhparams,
            postfix,
            cfg.state_dir,
            time.time(),
            reload=lambda: batch.due(postfix),  # the run's one reload of the instance
        )
    except CertmanError as exc:
        log.err(f"certman: dhparams: {exc}")
        return 1
    except Exception as exc:  # reported in one line, never a traceback
        log.err(f"certman: dhparams: {_one_line(exc)}")
        return 1
    for line in report.lines():
        log(Level.INFO if report.ok else Level.ERR, f"dhparams: {line}")
    return 0 if report.ok else 1
