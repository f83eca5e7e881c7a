"""Postfix DH parameters: regenerate on schedule, install atomically, never block a cron run.

``advance()`` is what ``certman run`` calls: it installs a finished background generation, starts
a due one (a detached, niced ``certman.dh.gen`` process) or writes a published RFC 7919 / RFC 3526
group, points main.cf at the first file and reloads Postfix; it never waits for a generation.
``generate_now()`` does the same in the foreground with progress (``certman dhparams --now``).
``check()`` and ``status()`` report. See ``certman.dh.plan`` for the state and the pure plan.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from certman.config.schema import DhMode, DhParamsConfig
from certman.dh import gen as dhgen
from certman.dh.groups import DhParamsError, name_of, parse_pem, published_groups, to_pem
from certman.dh.plan import (
    GENERATED,
    ActionKind,
    DhAction,
    DhState,
    FileRecord,
    Job,
    JobCondition,
    Observed,
    load_state,
    observe_file,
    plan,
    save_state,
)
from certman.dh.report import check, status
from certman.errors import CertmanError, PostfixError
from certman.fsutil import atomic_write, open_lock, private_dir
from certman.postfix.commands import Postfix

__all__ = ["DhReport", "advance", "check", "generate_now", "status"]

_GEN_TAG = ".certman-dhgen-"


@dataclass(frozen=True)
class DhReport:
    """What a run did: ``messages`` for the log or terminal; any ``errors`` mean exit code 1."""

    messages: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    written: tuple[str, ...] = ()  # files installed or rewritten
    pending: tuple[str, ...] = ()  # files whose generation runs in the background
    reloaded: bool = False
    locked: bool = False  # another certman process held the DH lock: nothing was done

    @property
    def ok(self) -> bool:
        return not self.errors

    def lines(self) -> list[str]:
        """Every message, then every error as ``error: ...``: what the CLI prints."""
        return [*self.messages, *(f"error: {e}" for e in self.errors)]


@dataclass
class _Run:
    """The mutable working set of one run; frozen into a DhReport at the end."""

    config: DhParamsConfig
    postfix: Postfix
    state_dir: Path
    now: float
    postfix_value: str | None
    settings: dhgen.GeneratorSettings
    background: bool
    progress: Callable[[str], None] | None
    files: dict[str, FileRecord]
    jobs: dict[str, Job]
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    reloaded: bool = False
    reload: Callable[[], None] | None = None  # the caller reloads (once for its whole run)

    def save(self) -> None:
        save_state(self.state_dir, DhState(dict(self.files), dict(self.jobs)))

    def report(self) -> DhReport:
        return DhReport(
            tuple(self.lines), tuple(self.errors), tuple(self.written), tuple(self.pending),
            self.reloaded,
        )  # fmt: skip


def settings_for(config: DhParamsConfig) -> dhgen.GeneratorSettings:
    return dhgen.GeneratorSettings(openssl=config.openssl, workers=config.workers, nice=config.nice)


@contextlib.contextmanager
def _lock(state_dir: Path) -> Iterator[bool]:
    """The DH lock, without waiting: False when another certman process holds it."""
    path = state_dir / "dhparams" / "lock"
    private_dir(path.parent)
    fd = open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def observe(config: DhParamsConfig, state: DhState, postfix_value: str | None) -> Observed:
    """Look at the files and the generator processes (cheap: no primality tests)."""
    groups = published_groups()
    files = {str(f.path): observe_file(f.path, f.bits, groups) for f in config.files}
    jobs = {path: _job_condition(job) for path, job in state.jobs.items()}
    return Observed(files, jobs, postfix_value)


def _postfix_value(config: DhParamsConfig, postfix: Postfix, errors: list[str]) -> str | None:
    """main.cf's value of ``postfix_parameter`` when certman manages it, else None."""
    name = config.postfix_parameter
    if not name or config.mode in (DhMode.OFF, DhMode.AUTO) or not config.files:
        return None
    try:
        return postfix.get(name).get(name, "")
    except PostfixError as exc:
        errors.append(str(exc))
        return None


def _job_condition(job: Job) -> JobCondition:
    tmp = Path(job.tmp)
    if dhgen.is_running(job.pid, job.tmp):
        return JobCondition.RUNNING
    if dhgen.read_done(tmp) is not None and tmp.is_file():
        return JobCondition.FINISHED
    return JobCondition.DEAD


def advance(
    config: DhParamsConfig,
    postfix: Postfix,
    state_dir: Path,
    now: float,
    *,
    background: bool = True,
    force: bool = False,
    settings: dhgen.GeneratorSettings | None = None,
    progress: Callable[[str], None] | None = None,
    reload: Callable[[], None] | None = None,
) -> DhReport:
    """One pass over the DH parameter files; what ``certman run`` calls.

    ``reload``, when given, replaces Postfix's reload: `certman run` reloads each instance once
    for all its changes (certificates and DH files).

    With ``background`` (cron) a due generation is started detached and installed by a later
    call; this returns in milliseconds whatever is pending. Without it (``--now``) generation
    runs here, reporting through ``progress``, and ``force`` regenerates files not yet due.
    Per-file failures land in ``report.errors``; nothing here raises for them.
    """
    with _lock(state_dir) as locked:
        if not locked:
            line = "DH parameters: another certman process is working on them; skipped"
            return DhReport(messages=(line,), locked=True)
        state = load_state(state_dir)
        errors: list[str] = []
        value = _postfix_value(config, postfix, errors)
        work = _Run(
            config, postfix, state_dir, now, value, settings or settings_for(config),
            background, progress, dict(state.files), dict(state.jobs), errors=errors,
            reload=reload,
        )  # fmt: skip
        observed = observe(config, state, value)
        actions = plan(config, state, observed, now, force=force)
        for action in actions if background else _foreground(actions):
            _perform(work, action)
        if work.written and config.mode is not DhMode.OFF:
            _reload(work)
        if not actions:
            work.lines.append("DH parameters: nothing to do")
        return work.report()


def generate_now(
    config: DhParamsConfig,
    postfix: Postfix,
    state_dir: Path,
    *,
    force: bool = True,
    progress: Callable[[str], None] | None = None,
    settings: dhgen.GeneratorSettings | None = None,
    now: Callable[[], float] = time.time,
) -> DhReport:
    """``certman dhparams --now``: generate (or write) in the foreground, with progress."""
    return advance(
        config, postfix, state_dir, now(), background=False, force=force, settings=settings,
        progress=progress,
    )  # fmt: skip


def _foreground(actions: list[DhAction]) -> list[DhAction]:
    """--now: a running background generation is cancelled and redone here, queued ones too."""
    out = []
    for action in actions:
        if action.kind is ActionKind.WAIT:
            out.append(replace(action, kind=ActionKind.CANCEL, reason="redone in the foreground"))
            out.append(replace(action, kind=ActionKind.START))
        elif action.kind is ActionKind.QUEUED:
            out.append(replace(action, kind=ActionKind.START))
        else:
            out.append(action)
    return out


def _perform(work: _Run, action: DhAction) -> None:
    path = action.path
    try:
        if action.kind is ActionKind.ADOPT:
            work.files[path] = _adopted(path)
            work.lines.append(f"{path}: found valid parameters, recorded (age from mtime)")
        elif action.kind is ActionKind.WRITE_GROUP:
            assert action.group is not None
            work.files[path] = _write_group(work, action, action.group)
        elif action.kind is ActionKind.CANCEL:
            _stop_job(work.jobs.pop(path, None))
            work.lines.append(f"{path}: generation cancelled: {action.reason}")
        elif action.kind in (ActionKind.START, ActionKind.RESTART):
            _start(work, action)
        elif action.kind is ActionKind.WAIT:
            job = work.jobs[path]
            work.pending.append(path)
            work.lines.append(
                f"{path}: {action.bits}-bit generation running for "
                f"{(work.now - job.started_at) / 60:.0f} min (pid {job.pid})"
            )
        elif action.kind is ActionKind.QUEUED:
            work.lines.append(f"{path}: due ({action.reason}); queued behind the running one")
        elif action.kind is ActionKind.INSTALL:
            work.files[path] = _install(work, work.jobs.pop(path))
        elif action.kind is ActionKind.SET_PARAMETER:
            _set_parameter(work, action)
    except CertmanError as exc:  # DhParamsError, PostfixError
        work.errors.append(str(exc))
    except OSError as exc:
        work.errors.append(f"{exc.filename or path}: {exc.strerror or exc}")
    work.save()


def _adopted(path: str) -> FileRecord:
    data = Path(path).read_bytes()
    group = parse_pem(data, path)
    contents = name_of(group) or GENERATED
    mtime = Path(path).stat().st_mtime
    return FileRecord(
        path, group.bits, "adopted", mtime, hashlib.sha256(data).hexdigest(), contents
    )


def _write_group(work: _Run, action: DhAction, name: str) -> FileRecord:
    """RFC 7919 / RFC 3526 modes: the published group, written in one atomic rename."""
    data = to_pem(published_groups()[name])
    atomic_write(Path(action.path), data, 0o644)
    work.written.append(action.path)
    work.lines.append(f"{action.path}: wrote {name} ({action.reason})")
    mode = work.config.mode.value
    digest = hashlib.sha256(data).hexdigest()
    return FileRecord(action.path, action.bits, mode, work.now, digest, name)


def _tmp_for(target: Path) -> Path:
    return target.with_name(f".{target.name}{_GEN_TAG}{secrets.token_hex(4)}")


def _sweep(target: Path) -> None:
    """Remove leftovers of earlier generations for ``target`` (and stop their processes)."""
    prefix = f".{target.name}{_GEN_TAG}"
    bases = {p.name[: len(prefix) + 8] for p in target.parent.glob(prefix + "*")}
    for base in bases:
        dhgen.stop(0, target.with_name(base))


def _stop_job(job: Job | None) -> None:
    if job is not None:
        dhgen.stop(job.pid, Path(job.tmp))


def _start(work: _Run, action: DhAction) -> None:
    target = Path(action.path)
    old = work.jobs.pop(action.path, None)
    attempt, last_error = 1, None
    if action.kind is ActionKind.RESTART and old is not None:
        attempt, last_error = old.attempt + 1, _failure(old)
        work.lines.append(f"{target}: generation ended without a result ({last_error}); restarting")
    _stop_job(old)
    _sweep(target)
    tmp = _tmp_for(target)
    if work.background:
        pid = dhgen.start_background(action.bits, tmp, work.settings)
        job = Job(action.path, action.bits, pid, work.now, str(tmp), attempt, last_error)
        work.jobs[action.path] = job
        work.pending.append(action.path)
        work.lines.append(
            f"{target}: {action.reason}; started {action.bits}-bit generation in the background "
            f"(pid {pid}, {work.settings.workers} workers, nice {work.settings.nice})"
        )
        return
    if work.progress:
        work.progress(f"{target}: {action.reason}; generating {action.bits}-bit parameters")
    result = dhgen.generate(action.bits, tmp, work.settings, progress=work.progress)
    try:
        work.files[action.path] = _put(work, tmp, target, result.sha256, made=work.now)
    finally:
        dhgen.stop(0, tmp)
    work.lines[-1] += f" in {result.seconds:.0f} s"


def _failure(job: Job) -> str:
    try:
        lines = dhgen.log_path(Path(job.tmp)).read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return lines[-1].split(" ", 1)[-1] if lines else "process gone, no log"


def _put(work: _Run, tmp: Path, target: Path, sha256: str, *, made: float) -> FileRecord:
    """Install ``tmp`` as ``target`` if it is complete, of the configured size and what the
    generator validated: it ran the safe-prime test on exactly these bytes (``sha256``); here they
    are re-read, re-hashed and re-parsed, then written with one atomic rename (fsutil).
    """
    bits = next(f.bits for f in work.config.files if f.path == target)
    data = tmp.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise DhParamsError(f"{tmp}: content changed after validation; not installed")
    group = parse_pem(data, str(tmp))
    if group.bits != bits:
        raise DhParamsError(f"{tmp}: {group.bits}-bit parameters, expected {bits}; not installed")
    atomic_write(target, data, 0o644)
    work.written.append(str(target))
    work.lines.append(f"{target}: installed new {bits}-bit parameters")
    return FileRecord(str(target), bits, DhMode.GENERATE.value, made, digest, GENERATED)


def _install(work: _Run, job: Job) -> FileRecord:
    tmp = Path(job.tmp)
    try:
        done = dhgen.read_done(tmp) or {}
        return _put(work, tmp, Path(job.path), str(done.get("sha256")), made=work.now)
    finally:
        dhgen.stop(job.pid, tmp)


def _set_parameter(work: _Run, action: DhAction) -> None:
    """``postconf -c DIR -e PARAM=PATH``; the file may hold any size despite the "1024" in
    smtpd_tls_dh1024_param_file (postconf(5)). Only ever pointed at an installed file."""
    name = work.config.postfix_parameter
    assert name is not None
    if not Path(action.path).is_file():
        raise DhParamsError(f"{action.path}: not installed; {name} left unchanged")
    work.postfix.set({name: action.path})
    work.written.append(f"{work.postfix.config_dir}/main.cf")
    work.lines.append(f"main.cf: {name} = {action.path} (was {work.postfix_value or 'empty'})")


def _reload(work: _Run) -> None:
    """``postfix reload``: running smtpd processes exit and new ones read the new file."""
    try:
        if not work.postfix.running():
            work.lines.append("Postfix is not running; it reads the new file when it starts")
            return
        if work.reload is not None:
            work.reload()
            work.reloaded = True
            work.lines.append("Postfix reloads once for the whole run")
            return
        work.postfix.reload()
    except PostfixError as exc:
        work.errors.append(str(exc))
        return
    work.reloaded = True
    work.lines.append("Postfix reloaded")
