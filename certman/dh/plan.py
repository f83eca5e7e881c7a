"""DH parameters: the state file, what is observed on disk, and the pure ``plan()``.

``plan(config, state, observed, now)`` decides, without any I/O, what a run should do for each
configured file; ``certman.dh.run`` observes, plans, and carries the actions out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from certman.config.schema import DhFile, DhMode, DhParamsConfig
from certman.dh.groups import DhGroup, DhParamsError, name_of, parse_pem
from certman.errors import CertmanError
from certman.fsutil import atomic_write

GENERATED = "generated"  # FileRecord.contents of locally generated parameters
_DAY = 86400.0


@dataclass(frozen=True)
class FileRecord:
    """What certman knows about one installed file: when it was made, what it holds."""

    path: str
    bits: int
    mode: str  # the DhMode that wrote it, or "adopted" for a file found in place
    generated_at: float  # epoch; for an adopted file, its mtime
    sha256: str
    contents: str  # GENERATED, or the published group's name (ffdhe2048, modp3072, ...)


@dataclass(frozen=True)
class Job:
    """A background generation: the detached generator ``pid`` writes ``tmp`` next to ``path``."""

    path: str
    bits: int
    pid: int
    started_at: float
    tmp: str
    attempt: int = 1
    last_error: str | None = None  # why the previous attempt ended without a result


@dataclass(frozen=True)
class DhState:
    files: Mapping[str, FileRecord] = field(default_factory=dict)
    jobs: Mapping[str, Job] = field(default_factory=dict)


class FileCondition(StrEnum):
    OK = "ok"
    MISSING = "missing"
    UNREADABLE = "unreadable"
    INVALID = "invalid"
    WRONG_SIZE = "wrong-size"


@dataclass(frozen=True)
class FileObservation:
    condition: FileCondition
    detail: str = ""  # why it is not OK, naming the file
    sha256: str | None = None
    contents: str | None = None
    bits: int | None = None
    mtime: float | None = None


class JobCondition(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"  # the generator left validated parameters and its .done record
    DEAD = "dead"  # gone without a result: killed, crashed, or every worker failed


@dataclass(frozen=True)
class Observed:
    files: Mapping[str, FileObservation]
    jobs: Mapping[str, JobCondition]
    postfix_value: str | None = None  # the main.cf parameter's value; None when not asked


class ActionKind(StrEnum):
    WRITE_GROUP = "write-group"  # rfc7919 / rfc3526: write the published group, instantly
    ADOPT = "adopt"  # a valid file with no (matching) record: record it, its age is its mtime
    START = "start"  # generation due and no other running: start it
    QUEUED = "queued"  # generation due, waiting for the one running to finish
    WAIT = "wait"  # generation running
    INSTALL = "install"  # generation finished: check and install its result
    RESTART = "restart"  # generation gone without a result: clean up and start again
    CANCEL = "cancel"  # a generation no longer wanted (mode, size or file list changed)
    SET_PARAMETER = "set-parameter"  # point main.cf's parameter at the first file


@dataclass(frozen=True)
class DhAction:
    kind: ActionKind
    path: str
    bits: int
    reason: str
    group: str | None = None  # WRITE_GROUP: ffdhe<bits> or modp<bits>


# --- state file ---------------------------------------------------------------------------------


def state_path(state_dir: Path) -> Path:
    return state_dir / "dhparams" / "state.json"


def load_state(state_dir: Path) -> DhState:
    path = state_path(state_dir)
    try:
        data = json.loads(path.read_text())
        files = {k: FileRecord(**v) for k, v in data.get("files", {}).items()}
        jobs = {k: Job(**v) for k, v in data.get("jobs", {}).items()}
    except FileNotFoundError:
        return DhState()
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise CertmanError(f"{path}: unreadable DH parameter state ({exc})") from None
    return DhState(files, jobs)


def save_state(state_dir: Path, state: DhState) -> None:
    data = {
        "version": 1,
        "files": {k: asdict(v) for k, v in sorted(state.files.items())},
        "jobs": {k: asdict(v) for k, v in sorted(state.jobs.items())},
    }
    atomic_write(state_path(state_dir), (json.dumps(data, indent=2) + "\n").encode(), 0o600)


# --- observing a file (cheap: parse and size, no primality test) --------------------------------


def observe_file(path: Path, bits: int, groups: Mapping[str, DhGroup]) -> FileObservation:
    try:
        data = path.read_bytes()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return FileObservation(FileCondition.MISSING, f"{path}: missing")
    except OSError as exc:
        return FileObservation(FileCondition.UNREADABLE, f"{path}: unreadable ({exc.strerror})")
    digest = hashlib.sha256(data).hexdigest()
    try:
        group = parse_pem(data, str(path))
    except DhParamsError as exc:
        return FileObservation(FileCondition.INVALID, str(exc), digest, mtime=mtime)
    contents = name_of(group, groups) or GENERATED
    if group.bits != bits:
        detail = f"{path}: {group.bits}-bit parameters, configured for {bits}"
        return FileObservation(
            FileCondition.WRONG_SIZE, detail, digest, contents, group.bits, mtime
        )
    return FileObservation(FileCondition.OK, "", digest, contents, group.bits, mtime)


# --- plan --------------------------------------------------------------------------------------


def wanted_group(mode: DhMode, bits: int) -> str | None:
    if mode is DhMode.RFC7919:
        return f"ffdhe{bits}"
    if mode is DhMode.RFC3526:
        return f"modp{bits}"
    return None


def effective_record(
    record: FileRecord | None, seen: FileObservation, path: str
) -> tuple[FileRecord | None, bool]:
    """The record to judge the file by, and whether it is a new adoption of a file found in place.

    A valid file with no record, or changed behind certman's back, is adopted: its age is its
    mtime, so hosts that already regenerate by hand keep their schedule.
    """
    if seen.condition is not FileCondition.OK or seen.sha256 is None:
        return record, False
    if record is not None and record.sha256 == seen.sha256:
        return record, False
    assert seen.bits is not None and seen.contents is not None and seen.mtime is not None
    adopted = FileRecord(path, seen.bits, "adopted", seen.mtime, seen.sha256, seen.contents)
    return adopted, True


def due_reason(
    record: FileRecord | None, seen: FileObservation, interval_days: int, now: float
) -> str | None:
    """Why a ``generate``-mode file needs new parameters now, or None when it does not."""
    if seen.condition is not FileCondition.OK or record is None:
        return seen.detail or "no parameters yet"
    if record.contents != GENERATED:
        return f"holds the published group {record.contents}; mode generate makes fresh ones"
    age_days = (now - record.generated_at) / _DAY
    if age_days >= interval_days:
        return f"generated {age_days:.0f} days ago (interval {interval_days} days)"
    return None


def plan(
    config: DhParamsConfig, state: DhState, observed: Observed, now: float, *, force: bool = False
) -> list[DhAction]:
    """The actions a run takes now. Pure: depends on its arguments only.

    ``force`` (``certman dhparams --now``) makes every ``generate`` file due whatever its age.
    """
    wanted = {str(f.path): f for f in config.files}
    managed = config.mode in (DhMode.GENERATE, DhMode.RFC7919, DhMode.RFC3526)
    actions = [
        DhAction(ActionKind.CANCEL, path, job.bits, "no longer configured for generation")
        for path, job in state.jobs.items()
        if config.mode is not DhMode.GENERATE or path not in wanted
    ]
    if not managed:
        return actions
    busy = False
    for path, file in wanted.items():
        seen = observed.files[path]
        record, adopted = effective_record(state.files.get(path), seen, path)
        if config.mode is DhMode.GENERATE:
            action = _plan_generate(
                config, file, job=state.jobs.get(path), observed=observed, record=record,
                now=now, busy=busy, force=force,
            )  # fmt: skip
        else:
            action = _plan_published(config.mode, file, seen)
        action = action or []
        if adopted and ActionKind.WRITE_GROUP not in [a.kind for a in action]:
            actions.append(DhAction(ActionKind.ADOPT, path, file.bits, "valid file found in place"))
        if action:
            actions.extend(action)
            busy = busy or any(a.kind in _OCCUPYING for a in action)
    actions.extend(_plan_parameter(config, observed, actions))
    return actions


_OCCUPYING = (ActionKind.START, ActionKind.RESTART, ActionKind.WAIT)


def _plan_published(mode: DhMode, file: DhFile, seen: FileObservation) -> list[DhAction] | None:
    name = wanted_group(mode, file.bits)
    assert name is not None
    if seen.condition is FileCondition.OK and seen.contents == name:
        return None
    reason = seen.detail or f"holds {seen.contents}, configured for {name}"
    return [DhAction(ActionKind.WRITE_GROUP, str(file.path), file.bits, reason, name)]


def _plan_generate(
    config: DhParamsConfig,
    file: DhFile,
    *,
    job: Job | None,
    observed: Observed,
    record: FileRecord | None,
    now: float,
    busy: bool,
    force: bool,
) -> list[DhAction] | None:
    path = str(file.path)
    actions = []
    if job is not None and job.bits != file.bits:
        actions.append(DhAction(ActionKind.CANCEL, path, job.bits, f"size is now {file.bits}"))
        job = None
    if job is not None:
        condition = observed.jobs.get(path, JobCondition.DEAD)
        kind = {
            JobCondition.RUNNING: ActionKind.WAIT,
            JobCondition.FINISHED: ActionKind.INSTALL,
            JobCondition.DEAD: ActionKind.RESTART,
        }[condition]
        return [*actions, DhAction(kind, path, file.bits, f"generation {condition.value}")]
    reason = due_reason(record, observed.files[path], config.interval_days, now)
    if reason is None and force:
        reason = "regeneration asked for"
    if reason is None:
        return actions or None
    kind = ActionKind.QUEUED if busy else ActionKind.START
    return [*actions, DhAction(kind, path, file.bits, reason)]


def _plan_parameter(
    config: DhParamsConfig, observed: Observed, actions: list[DhAction]
) -> list[DhAction]:
    """Point main.cf at the first file once it holds valid parameters (never at a missing file)."""
    if config.postfix_parameter is None or not config.files or observed.postfix_value is None:
        return []
    first = config.files[0]
    if observed.postfix_value == str(first.path):
        return []
    ready = observed.files[str(first.path)].condition is FileCondition.OK or any(
        a.path == str(first.path) and a.kind in (ActionKind.WRITE_GROUP, ActionKind.INSTALL)
        for a in actions
    )
    if not ready:
        return []
    reason = f"{config.postfix_parameter} = {observed.postfix_value or '(empty)'}"
    return [DhAction(ActionKind.SET_PARAMETER, str(first.path), first.bits, reason)]
