"""Commands, the network namespace, and the server processes started inside it."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")
NETNS_ETC_DIR = Path("/etc/netns")
POLL_SECONDS = 0.02


class TestbedError(Exception):
    """A step failed; the message names the server, command or file at fault."""


def one_line(text: str, limit: int = 600) -> str:
    """The end of a log or an error output, as one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines)[-limit:]


def run(
    cmd: Sequence[str], *, stdin: str | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Run a command to completion and return its stdout; raise with its stderr on failure."""
    proc = subprocess.run(
        list(cmd), input=stdin, capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        detail = one_line(proc.stderr or proc.stdout)
        raise TestbedError(f"{' '.join(cmd)}: exit status {proc.returncode}: {detail}")
    return proc.stdout


# --- the namespace -------------------------------------------------------------------------


def create_netns(name: str, addresses: Iterable[str], resolver: str) -> None:
    """A namespace with only `lo` up: no packet can leave it.

    BIND listens only on addresses configured on an interface (127.0.0.1/8 on lo does not
    cover 127.0.0.11), so its addresses are added; the other servers bind any 127/8 address.
    `ip netns exec` bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf.
    """
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])
    for address in addresses:
        run(["ip", "-n", name, "addr", "add", f"{address}/8", "dev", "lo"])
    etc = NETNS_ETC_DIR / name
    etc.mkdir(parents=True, exist_ok=True)
    # glibc passes the resolver's AD bit on to programs only with trust-ad (glibc 2.31+).
    (etc / "resolv.conf").write_text(f"nameserver {resolver}\noptions trust-ad\n")


def delete_netns(name: str) -> None:
    if (NETNS_RUN_DIR / name).exists():
        run(["ip", "netns", "delete", name])
    shutil.rmtree(NETNS_ETC_DIR / name, ignore_errors=True)


def netns_inode(name: str) -> int | None:
    try:
        return (NETNS_RUN_DIR / name).stat().st_ino
    except OSError:
        return None


def enter_netns(name: str) -> None:
    """Move the calling thread (and the threads it starts later) into the namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    with (NETNS_RUN_DIR / name).open("rb") as handle:
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise TestbedError(f"setns into {name}: {os.strerror(errno)}")


# --- process identity ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    state: str
    session: int
    start: int


def proc_stat(pid: int) -> ProcStat | None:
    """Fields 3, 6 and 22 of /proc/PID/stat (proc(5)); None when the PID is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return ProcStat(state=fields[0], session=int(fields[3]), start=int(fields[19]))


def proc_netns(pid: int) -> int | None:
    try:
        link = os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return int(link.removeprefix("net:[").removesuffix("]"))


def is_running(pid: int, start: int | None = None) -> bool:
    """Running, and the same process: PID 1 here does not reap orphans, so a dead daemon can
    linger as a zombie that `kill -0` still finds; a start time guards against PID reuse."""
    stat = proc_stat(pid)
    if stat is None or stat.state in ("Z", "X"):
        return False
    return start is None or stat.start == start


# --- the record of started processes ---------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One started process; `start` is its /proc start time, so a reused PID is never hit.
    `pid_file` names where a daemon that forks away (Postfix's master) writes its PID."""

    name: str
    pid: int
    start: int
    pid_file: str = ""


class PidFile:
    """Append-only, fsynced as each process starts, so `down` works after a crash of `up`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def add(self, name: str, pid: int, pid_file: str = "") -> None:
        stat = proc_stat(pid) if pid else None
        record = Record(name, pid, stat.start if stat else 0, pid_file)
        with self._lock, self.path.open("a") as handle:
            handle.write(json.dumps(asdict(record)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def records(self) -> list[Record]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(Record(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line cut short by a crash
        return records


# --- starting and waiting ----------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """A started server; `proc` is None for a daemon that forked away from its starter."""

    name: str
    pid: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def exit_status(self) -> str | None:
        """Why the server no longer runs, or None while it does."""
        if self.proc is not None:
            status = self.proc.poll()
            return None if status is None else f"exited with status {status}"
        return None if is_running(self.pid) else "exited"


class StartError(TestbedError):
    def __init__(self, server: str, reason: str, log: Path) -> None:
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
        lines = tail.splitlines()[-8:]
        super().__init__(f"{server}: {reason} (log {log}: {one_line(chr(10).join(lines))})")


def spawn(
    netns: str,
    pids: PidFile,
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
) -> Started:
    """Start a server inside the namespace (`ip netns exec` execs: the PID is the server's)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    pids.add(name, proc.pid)
    return Started(name, proc.pid, log, proc)


@dataclass(frozen=True)
class Deadline:
    """When waiting stops: at `at` (monotonic) or as soon as another server has failed."""

    at: float
    abort: threading.Event

    @classmethod
    def after(cls, seconds: float, abort: threading.Event) -> Deadline:
        return cls(time.monotonic() + seconds, abort)

    def check(self, server: str, what: str, log: Path) -> None:
        if self.abort.is_set():
            raise StartError(server, f"abandoned while waiting for {what}", log)
        if time.monotonic() > self.at:
            raise StartError(server, f"no {what} in time", log)


def wait_for(started: Started, what: str, probe: Callable[[], bool], deadline: Deadline) -> None:
    """Poll `probe` until true; fail early when the server exits."""
    while not _probe_ok(probe):
        status = started.exit_status()
        if status is not None:
            raise StartError(started.name, status, started.log)
        deadline.check(started.name, what, started.log)
        time.sleep(POLL_SECONDS)


def _probe_ok(probe: Callable[[], bool]) -> bool:
    try:
        return probe()
    except (OSError, TestbedError):
        return False


# --- stopping ----------------------------------------------------------------------------------


def stop_all(records: Iterable[Record], inode: int | None, grace: float = 2.0) -> None:
    """SIGTERM every recorded process still running and its session inside the namespace,
    SIGKILL what is left after `grace` seconds. SIGTERM to Postfix's master is what
    `postfix stop` sends (postfix-script), without its one-second polling sleep."""
    targets = _targets(list(records), inode)
    _signal(targets, signal.SIGTERM)
    if not _wait_gone(targets, grace):
        _signal(targets, signal.SIGKILL)
        _wait_gone(targets, 1.0)


def _targets(records: list[Record], inode: int | None) -> dict[int, int]:
    """PID -> start time of every process to stop: the recorded ones, daemons found through
    their pid files, and whatever runs in the namespace in the session of either (Postfix's
    children; their master may have died first)."""
    targets = {r.pid: r.start for r in records if r.pid and is_running(r.pid, r.start)}
    for record in records:
        targets |= _from_pid_file(record.pid_file, inode)
    if inode is not None:
        sessions = {r.pid for r in records if r.pid} | set(targets)
        targets |= _session_members(sessions, inode)
    targets.pop(os.getpid(), None)
    return targets


def _from_pid_file(pid_file: str, inode: int | None) -> dict[int, int]:
    """The daemon named by a pid file, if it runs inside the namespace."""
    if not pid_file or inode is None:
        return {}
    try:
        pid = int(Path(pid_file).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    stat = proc_stat(pid)
    if stat is None or not is_running(pid) or proc_netns(pid) != inode:
        return {}
    return {pid: stat.start}


def _session_members(sessions: set[int], inode: int) -> dict[int, int]:
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = proc_stat(pid)
        if stat and stat.session in sessions and proc_netns(pid) == inode:
            members[pid] = stat.start
    return members


def _signal(targets: Mapping[int, int], signum: int) -> None:
    for pid, start in targets.items():
        if is_running(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def _wait_gone(targets: Mapping[int, int], seconds: float) -> bool:
    end = time.monotonic() + seconds
    while any(is_running(pid, start) for pid, start in targets.items()):
        if time.monotonic() > end:
            return False
        time.sleep(POLL_SECONDS)
    return True
