"""DH parameter generation: ``openssl dhparam`` workers, first valid result wins.

The safe-prime search is a random walk with a long tail (2048 bits: 1 to 70 s here), so
``workers`` independent searches on a multi-core host finish with the fastest of them. The
generator runs either in the foreground (``generate``, with progress) or as a detached process
(``python -m certman.dh.gen``, started by ``start_background``) at low CPU priority, so that a
cron run never waits for it: the process leaves ``OUT`` (validated parameters) and ``OUT.done``
(their sha256), or ``OUT.log`` with the reason it failed, and a later run installs the result.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from certman.dh.groups import DhParamsError, check_group, parse_pem

MIN_BITS = 2048  # issue 6: never below 2048. Only tests lower it (GeneratorSettings.min_bits).
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class GeneratorSettings:
    openssl: str = "openssl"
    workers: int = 2
    nice: int = 19
    rounds: int = 32  # Miller-Rabin rounds on (p-1)/2: error below 2^-64 even for chosen input
    min_bits: int = MIN_BITS  # not reachable from the config file
    progress_interval: float = 10.0


@dataclass(frozen=True)
class GenResult:
    path: Path
    sha256: str
    bits: int
    seconds: float
    worker: int
    candidates: int  # progress dots openssl printed: a rough count of candidates tried


def done_path(out: Path) -> Path:
    return out.with_name(out.name + ".done")


def log_path(out: Path) -> Path:
    return out.with_name(out.name + ".log")


def worker_path(out: Path, index: int) -> Path:
    return out.with_name(f"{out.name}.w{index}")


def _die_with_parent() -> None:
    """Worker preexec: SIGKILL when the generator dies, even by SIGKILL (prctl(2), Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _start_workers(
    bits: int, out: Path, settings: GeneratorSettings
) -> list[subprocess.Popen[bytes]]:
    workers = []
    for index in range(settings.workers):
        argv = [settings.openssl, "dhparam", "-out", str(worker_path(out, index)), str(bits)]
        try:
            workers.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    preexec_fn=_die_with_parent,  # noqa: PLW1509 (single-threaded caller)
                )
            )
        except OSError as exc:
            _stop_workers(workers, out)
            raise DhParamsError(f"{settings.openssl}: cannot run openssl: {exc.strerror}") from None
    return workers


def _stop_workers(workers: Sequence[subprocess.Popen[bytes]], out: Path) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
        if worker.stderr:
            worker.stderr.close()
    for index in range(len(workers)):
        worker_path(out, index).unlink(missing_ok=True)


def _accept(bits: int, out: Path, index: int, settings: GeneratorSettings) -> str:
    """Validate worker ``index``'s file; rename it to ``out``; return its sha256."""
    source = worker_path(out, index)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise DhParamsError(f"{source}: openssl wrote no output: {exc.strerror}") from None
    check_group(parse_pem(data, str(source)), bits, str(source), rounds=settings.rounds)
    os.chmod(source, 0o644)  # DH parameters are public; Postfix's smtpd runs unprivileged
    os.replace(source, out)
    return hashlib.sha256(data).hexdigest()


def generate(
    bits: int,
    out: Path,
    settings: GeneratorSettings,
    *,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> GenResult:
    """Run ``settings.workers`` ``openssl dhparam`` searches; the first valid result is ``out``.

    Blocks until done (in select(), not sleeping); the other workers are killed. Raises
    DhParamsError when ``bits`` is below the minimum or every worker failed.
    """
    if bits < settings.min_bits:
        raise DhParamsError(
            f"{out}: {bits}-bit DH parameters refused (minimum {settings.min_bits})"
        )
    started = last_report = clock()
    workers = _start_workers(bits, out, settings)
    selector = selectors.DefaultSelector()
    candidates, errors, tails = 0, [], [b""] * len(workers)
    try:
        for index, worker in enumerate(workers):
            assert worker.stderr is not None
            selector.register(worker.stderr, selectors.EVENT_READ, index)
        while selector.get_map():
            for key, _ in selector.select():
                index = key.data
                chunk = os.read(key.fd, 4096)
                if chunk:
                    candidates += chunk.count(b".")
                    tails[index] = (tails[index] + chunk)[-300:]
                    if progress and clock() - last_report >= settings.progress_interval:
                        last_report = clock()
                        progress(
                            f"{out.name}: {bits}-bit search, {last_report - started:.0f} s, "
                            f"{len(workers)} workers, {candidates} candidates"
                        )
                    continue
                selector.unregister(key.fileobj)
                code = workers[index].wait()
                if code != 0:
                    lines = tails[index].decode("ascii", "replace").strip().splitlines()
                    errors.append(f"openssl exited {code}: {lines[-1] if lines else 'no output'}")
                    continue
                try:
                    digest = _accept(bits, out, index, settings)
                except DhParamsError as exc:
                    errors.append(str(exc))
                    continue
                seconds = clock() - started
                return GenResult(out, digest, bits, seconds, index, candidates)
    finally:
        selector.close()
        _stop_workers(workers, out)
    raise DhParamsError(f"{out}: every openssl dhparam worker failed; last: {errors[-1]}")


# --- the detached generator process ----------------------------------------------------------


def start_background(bits: int, out: Path, settings: GeneratorSettings) -> int:
    """Start ``python -m certman.dh.gen`` detached (own session, niced); return its PID.

    The generator forks once more and its first process exits at once, so nothing here waits
    for the search and the generator is no child of ours (no zombie in a long-lived caller).
    """
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "certman.dh.gen", "--detach", "--bits", str(bits)]
    argv += ["--out", str(out), "--workers", str(settings.workers), "--nice", str(settings.nice)]
    argv += ["--openssl", settings.openssl, "--rounds", str(settings.rounds)]
    argv += ["--min-bits", str(settings.min_bits)]
    with log_path(out).open("wb") as log:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env,
            cwd="/", timeout=30, check=False,
        )  # fmt: skip
    if proc.returncode != 0 or not proc.stdout.strip().isdigit():
        detail = log_path(out).read_text(errors="replace").strip().splitlines()
        raise DhParamsError(
            f"{out}: cannot start the DH generator: {detail[-1:] or proc.returncode}"
        )
    return int(proc.stdout)


def _read_proc(pid: int, name: str) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return None


def is_running(pid: int, marker: str) -> bool:
    """True when ``pid`` is alive, no zombie, and its command line names ``marker``.

    The marker (the job's output path) guards against a reused PID; the state check against a
    zombie, which ``kill -0`` still reports alive (PID 1 here does not reap orphans).
    """
    stat = _read_proc(pid, "stat")
    if stat is None or stat.rsplit(b")", 1)[-1].split()[:1] in ([b"Z"], [b"X"], [b"x"]):
        return False
    cmdline = _read_proc(pid, "cmdline") or b""
    return any(marker.encode() in arg for arg in cmdline.split(b"\0"))


def stop(pid: int, out: Path) -> None:
    """Kill the generator ``pid`` and any worker of it still alive; remove its files."""
    marker = str(out)
    pids = [pid] if is_running(pid, marker) else []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != pid and is_running(int(entry.name), marker):
            pids.append(int(entry.name))
    for victim in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    for path in (out, done_path(out), log_path(out), *out.parent.glob(f"{out.name}.w*")):
        path.unlink(missing_ok=True)


def read_done(out: Path) -> dict[str, object] | None:
    """The generator's result record, or None while there is none."""
    try:
        data = json.loads(done_path(out).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _detach() -> None:
    """Fork: the parent prints the child's PID and exits; the child gets its own session."""
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # let the starter's read of our PID end now
    os.close(devnull)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through generate(), which kills the workers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m certman.dh.gen")
    parser.add_argument("--bits", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--nice", type=int, default=19)
    parser.add_argument("--openssl", default="openssl")
    parser.add_argument("--rounds", type=int, default=32)
    parser.add_argument("--min-bits", type=int, default=MIN_BITS)
    parser.add_argument("--detach", action="store_true")
    args = parser.parse_args(argv)
    if args.detach:
        _detach()
    os.nice(args.nice)  # inherited by the openssl workers
    signal.signal(signal.SIGTERM, _on_sigterm)
    settings = GeneratorSettings(args.openssl, args.workers, args.nice, args.rounds, args.min_bits)
    try:
        result = generate(args.bits, args.out, settings, progress=_log, clock=time.monotonic)
    except DhParamsError as exc:
        _log(f"failed: {exc}")
        return 1
    record = asdict(result) | {"path": str(result.path), "finished_at": time.time()}
    tmp = args.out.with_name(args.out.name + ".done.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, done_path(args.out))  # .done appears whole, after the parameters
    _log(f"done: worker {result.worker} after {result.seconds:.1f} s")
    return 0


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
