"""The disk failing under an install (issue 10): the Postfix directory read-only, or a full
filesystem (a small tmpfs) while the new files are written. The old files stay intact and in
use, the state stays readable, the error is one line, and a later run finishes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_certman as run
from test_rollover_e2e import fresh_host, served_spki, state_of
from testbed import Testbed

from certman.lifecycle.state import Phase, State

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 1024)
    return filler


def installed(config: Path) -> State:
    done = run(config, "run", "--max-wait", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    state = state_of(config)
    assert isinstance(state, State) and state.phase is Phase.STEADY and state.certs
    return state


def assert_failed_cleanly(done: subprocess.CompletedProcess[str], *fragments: str) -> State:
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    state = state_of(Path(done.args[4]))  # python -m certman --config PATH ...
    assert isinstance(state, State) and state.last_error  # the state is readable
    return state


def test_a_full_filesystem_while_writing_new_files_leaves_the_old_ones_served(
    testbed: Testbed, tmp_path: Path
) -> None:
    """certman's own directory (keys, staged chains, archive, state) on a small tmpfs that fills
    up during a renewal. (A mount is private to the test's mount namespace: Postfix, started by
    `ip netns exec` in a namespace of its own, would not see a tmpfs over its directory.)"""
    with tmpfs(tmp_path / "state", "size=256k,mode=0700") as state_dir:
        config = fresh_host(testbed, tmp_path)
        first = installed(config)
        files = tmp_path / "postfix-files"
        target = files / "mx1-ecdsa-p256.pem"
        old = target.read_bytes()
        filler = fill(state_dir)
        done = run(config, "issue", "mx1")
        assert done.returncode == 1, done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "No space left on device" in lines[0], done.stderr
        assert "Traceback" not in done.stderr
        assert target.read_bytes() == old  # intact, and still what Postfix serves
        assert served_spki(testbed, "mx1") == first.current["ecdsa-p256"].spki_sha256
        readable = state_of(config)  # the state file is whole: the old one, or one step on
        assert isinstance(readable, State)
        assert readable.certs == first.certs
        assert sorted(files.iterdir()) == [target]  # no debris where Postfix reads
        filler.unlink()
        done = run(config, "issue", "mx1")
        assert done.returncode == 0, done.stdout + done.stderr
        final = state_of(config)
        assert isinstance(final, State) and final.certs != first.certs
        assert served_spki(testbed, "mx1") == first.current["ecdsa-p256"].spki_sha256


def test_a_read_only_postfix_directory_leaves_the_old_files_served(
    testbed: Testbed, tmp_path: Path
) -> None:
    config = fresh_host(testbed, tmp_path)
    first = installed(config)
    files = tmp_path / "postfix-files"
    target = files / "mx1-ecdsa-p256.pem"
    old = target.read_bytes()
    subprocess.run(["mount", "--bind", str(files), str(files)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(files)], check=True)
        failed = assert_failed_cleanly(run(config, "issue", "mx1"), "Read-only file system")
        assert failed.phase is Phase.STEADY
        assert target.read_bytes() == old
        assert served_spki(testbed, "mx1") == first.current["ecdsa-p256"].spki_sha256
    finally:
        subprocess.run(["umount", "-l", str(files)], check=False)
    done = run(config, "issue", "mx1")
    assert done.returncode == 0, done.stdout + done.stderr


def in_postfix_ns(testbed: Testbed, *argv: str) -> subprocess.CompletedProcess[str]:
    """A command in mx1's Postfix's mount namespace (``ip netns exec`` gave it its own)."""
    pid = str(testbed.pids["postfix-mx1"])
    return subprocess.run(
        ["nsenter", "--target", pid, "--mount", "--", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_a_full_filesystem_on_the_postfix_side_leaves_the_old_files_served(
    testbed: Testbed, tmp_path: Path
) -> None:
    """The directory certman writes Postfix's files into is a small tmpfs that fills up. The
    tmpfs is mounted in Postfix's own mount namespace and certman runs there too, so Postfix
    reads exactly what certman writes (the state directory stays on the ordinary disk)."""
    config = fresh_host(testbed, tmp_path)
    files = tmp_path / "postfix-files"
    files.mkdir(mode=0o700)
    mounted = in_postfix_ns(testbed, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(files))
    assert mounted.returncode == 0, mounted.stderr
    certman = (sys.executable, "-m", "certman", "--config", str(config))
    try:
        for _ in range(2):
            done = in_postfix_ns(testbed, *certman, "run", "--max-wait", "60")
            assert done.returncode == 0, done.stdout + done.stderr
        first = state_of(config)
        assert isinstance(first, State) and first.phase is Phase.STEADY and first.certs
        target = files / "mx1-ecdsa-p256.pem"
        old = in_postfix_ns(testbed, "cat", str(target)).stdout
        assert "BEGIN CERTIFICATE" in old and not target.exists()  # only on the tmpfs
        filler = files / "filler"
        in_postfix_ns(testbed, "sh", "-c", f"cat /dev/zero > {filler}")
        done = in_postfix_ns(testbed, *certman, "issue", "mx1")
        assert done.returncode == 1, done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert "No space left on device" in lines[0] and str(files) in lines[0], lines[0]
        failed = state_of(config)  # readable, and the served certificate still the one
        assert isinstance(failed, State) and failed.last_error and failed.phase is Phase.STEADY
        assert failed.current == first.current
        assert in_postfix_ns(testbed, "cat", str(target)).stdout == old
        assert served_spki(testbed, "mx1") == first.current["ecdsa-p256"].spki_sha256
        listing = in_postfix_ns(testbed, "ls", "-A", str(files)).stdout.split()
        assert sorted(listing) == ["filler", target.name], listing  # no debris
        in_postfix_ns(testbed, "rm", "-f", str(filler))
        done = in_postfix_ns(testbed, *certman, "issue", "mx1")
        assert done.returncode == 0, done.stdout + done.stderr
        final = state_of(config)
        assert isinstance(final, State) and final.certs != first.certs
        assert in_postfix_ns(testbed, "cat", str(target)).stdout != old
        assert served_spki(testbed, "mx1") == first.current["ecdsa-p256"].spki_sha256
    finally:
        in_postfix_ns(testbed, "umount", "-l", str(files))
