"""DH parameters: ``certman status`` lines and ``certman check`` problems (read-only)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from certman.config.schema import DhMode, DhParamsConfig
from certman.dh.gen import is_running, read_done
from certman.dh.groups import group_label, published_groups
from certman.dh.plan import (
    GENERATED,
    FileCondition,
    FileRecord,
    effective_record,
    load_state,
    observe_file,
    wanted_group,
)
from certman.errors import PostfixError
from certman.postfix.commands import Postfix

DEFAULT_PARAMETER = "smtpd_tls_dh1024_param_file"
MIN_BITS = 2048
_DAY = 86400.0
_STALE_JOB = 2 * _DAY  # a 4096-bit search at nice 19 on a busy host can take hours, not days
_Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def _describe(record: FileRecord) -> str:
    if record.contents == GENERATED:
        return f"{record.bits}-bit, generated locally"
    return f"{record.bits}-bit, {group_label(record.contents)}"


def status(config: DhParamsConfig, state_dir: Path, now: float) -> list[str]:
    """Lines for ``certman status``: per file, what it holds, when it was made, what is next."""
    head = f"DH parameters: mode {config.mode.value}"
    if config.mode is DhMode.GENERATE:
        head += (
            f", every {config.interval_days} days, {config.workers} workers at nice {config.nice}"
        )
    if config.postfix_parameter and config.files:
        head += f"; main.cf {config.postfix_parameter} -> {config.files[0].path}"
    lines = [head]
    if config.mode is DhMode.AUTO:
        lines.append("  Postfix >= 3.7 with OpenSSL 3 chooses the groups; certman writes nothing")
    state = load_state(state_dir)
    for file in config.files:
        path = str(file.path)
        record = state.files.get(path)
        if record is None:
            text = f"  {path}: {file.bits}-bit, not written by certman yet"
        else:
            age = (now - record.generated_at) / _DAY
            text = (
                f"  {path}: {_describe(record)} {_when(record.generated_at)} ({age:.0f} days ago)"
                f", sha256 {record.sha256[:16]}"
            )
            if config.mode is DhMode.GENERATE:
                text += f"; due {_when(record.generated_at + config.interval_days * _DAY)}"
        if not file.path.exists():
            text += " [file missing]"
        lines.append(text)
        job = state.jobs.get(path)
        if job is not None:
            if is_running(job.pid, job.tmp):
                alive = "running"
            elif read_done(Path(job.tmp)) is not None:
                alive = "finished, installs on next run"
            else:
                alive = "ended without a result, restarts on next run"
            minutes = (now - job.started_at) / 60
            extra = f"; attempt {job.attempt}, previous: {job.last_error}" if job.last_error else ""
            lines.append(
                f"    generation {alive}: pid {job.pid}, started {_when(job.started_at)} "
                f"({minutes:.0f} min ago){extra}"
            )
    return lines


def check(
    config: DhParamsConfig,
    postfix: Postfix,
    state_dir: Path,
    now: float,
    *,
    run: _Runner = subprocess.run,
) -> list[str]:
    """Problems for ``certman check``: the file Postfix's setting points at (missing, unreadable,
    not DH parameters, below 2048 bits, older than the schedule), the configured files, and
    whether mode ``auto`` fits this Postfix. An empty list means all is well."""
    name = config.postfix_parameter or DEFAULT_PARAMETER
    try:
        values = postfix.get("mail_version", "daemon_directory", name)
    except PostfixError as exc:
        return [str(exc)]
    version, value = values.get("mail_version", ""), values.get(name, "")
    daemon_dir = values.get("daemon_directory", "")
    problems = []
    if config.mode is DhMode.AUTO:
        problems += _check_auto(version, Path(daemon_dir), name, value, run)
    state = load_state(state_dir)
    checked = set()
    if value and value != "auto":
        problems += _check_file(
            config, state.files.get(value), path=Path(value), bits=None, now=now, setting=name
        )  # fmt: skip
        checked.add(value)
    managed = config.mode in (DhMode.GENERATE, DhMode.RFC7919, DhMode.RFC3526)
    if managed and config.postfix_parameter and config.files:
        first = str(config.files[0].path)
        if value != first:
            where = f"{postfix.config_dir}/main.cf"
            problems.append(f"{where}: {name} = {value or '(empty)'}, not {first}")
    for file in config.files if managed else ():
        if str(file.path) not in checked:
            record = state.files.get(str(file.path))
            problems += _check_file(config, record, path=file.path, bits=file.bits, now=now)
    for path, job in state.jobs.items():
        if now - job.started_at > _STALE_JOB and is_running(job.pid, job.tmp):
            problems.append(
                f"{path}: generation (pid {job.pid}) running since {_when(job.started_at)}"
            )
    return problems


def _check_file(
    config: DhParamsConfig,
    record: FileRecord | None,
    *,
    path: Path,
    bits: int | None,
    now: float,
    setting: str | None = None,
) -> list[str]:
    """Problems with one file; ``bits`` None means any size from 2048 up (Postfix's file)."""
    where = f" ({setting} points here)" if setting else ""
    configured = next((f for f in config.files if f.path == path), None)
    want = bits or (configured.bits if configured else MIN_BITS)
    seen = observe_file(path, want, published_groups())
    if seen.condition in (FileCondition.MISSING, FileCondition.UNREADABLE, FileCondition.INVALID):
        return [seen.detail + where]
    if seen.bits is not None and seen.bits < MIN_BITS:
        return [f"{path}: {seen.bits}-bit DH parameters, below {MIN_BITS} bits{where}"]
    if seen.condition is FileCondition.WRONG_SIZE and configured is not None:
        return [seen.detail + where]
    record, _ = effective_record(record, seen, str(path))
    problems = []
    group = wanted_group(config.mode, want)
    if configured is not None and group is not None and seen.contents != group:
        problems.append(f"{path}: holds {seen.contents}, mode {config.mode.value} wants {group}")
    if config.mode is DhMode.GENERATE and record is not None:
        age = (now - record.generated_at) / _DAY
        if age > config.interval_days:
            problems.append(
                f"{path}: generated {age:.0f} days ago, older than the {config.interval_days}-day "
                f"schedule{where}"
            )
    return problems


def _check_auto(version: str, daemon_dir: Path, name: str, value: str, run: _Runner) -> list[str]:
    """Postfix >= 3.7 built with OpenSSL >= 3 lets OpenSSL pick the DH group when ``name`` is
    empty or ``auto`` (postconf(5), smtpd_tls_dh1024_param_file)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    new_postfix = match is not None and (int(match[1]), int(match[2])) >= (3, 7)
    try:
        linked = run(
            ["ldd", str(daemon_dir / "smtpd")], capture_output=True, text=True, check=False
        )
        openssl3 = linked.returncode == 0 and "libssl.so.3" in linked.stdout
    except OSError:
        openssl3 = False
    if not (new_postfix and openssl3):
        found = f"Postfix {version}" + ("" if openssl3 else " without OpenSSL 3")
        return [
            f"dhparams mode auto needs Postfix >= 3.7 built with OpenSSL 3 ({found}); "
            "use mode rfc7919 or generate"
        ]
    if value and value != "auto":
        return [
            f"dhparams mode auto: {name} = {value} overrides OpenSSL's own choice; "
            f"clear it (postconf -e {name}=auto) or pick another mode"
        ]
    return []
