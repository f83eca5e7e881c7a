"""The state file: round trip, atomic 0600 save, the per-certificate lock."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from certman.errors import CertmanError, LockedError
from certman.lifecycle.state import Operation, Phase, State, TlsaProgress
from certman.lifecycle.statefile import CertDir
from certman.model import CertInfo, KeyInfo, KeyType


def sample() -> State:
    k = KeyInfo("ecdsa-p256-aa", KeyType.ECDSA_P256, "aa" * 32, 1.0, "/etc/postfix/key.pem")
    return State(
        name="mx1",
        phase=Phase.AGE,
        operation=Operation.ROLLOVER,
        current={"ecdsa-p256": k},
        next={"ecdsa-p256": k},
        certs={"ecdsa-p256": CertInfo(k.id, "0a", 1.0, 2.0, "x.y", "/p")},
        tlsa=TlsaProgress(written_at=5.0, serial=7, ttl_before=60, not_before=99.0),
        history=("a", "b"),
    )


def test_state_round_trips_through_the_file(tmp_path: Path) -> None:
    cdir = CertDir.of(tmp_path, "mx1")
    cdir.save(sample())
    assert cdir.load("mx1") == sample()


def test_state_file_is_private_and_holds_no_key_material(tmp_path: Path) -> None:
    cdir = CertDir.of(tmp_path, "mx1")
    cdir.save(sample())
    mode = stat.S_IMODE(os.stat(cdir.state_file).st_mode)
    assert mode == 0o600
    assert "PRIVATE KEY" not in cdir.state_file.read_text()


def test_missing_state_is_a_new_certificate(tmp_path: Path) -> None:
    assert CertDir.of(tmp_path, "mx1").load("mx1").phase is Phase.NEW


def test_corrupt_state_names_the_file(tmp_path: Path) -> None:
    cdir = CertDir.of(tmp_path, "mx1")
    cdir.root.mkdir(parents=True)
    cdir.state_file.write_text("{not json")
    with pytest.raises(CertmanError, match=str(cdir.state_file)):
        cdir.load("mx1")


def test_unknown_schema_is_refused(tmp_path: Path) -> None:
    cdir = CertDir.of(tmp_path, "mx1")
    cdir.root.mkdir(parents=True)
    cdir.state_file.write_text(json.dumps({"schema": 99}))
    with pytest.raises(CertmanError, match="unsupported state schema"):
        cdir.load("mx1")


def _try_lock(root: str, queue: multiprocessing.Queue[str]) -> None:
    try:
        with CertDir(Path(root)).lock():
            queue.put("acquired")
    except LockedError as exc:
        queue.put(str(exc))


def test_second_run_gets_a_clear_lock_error(tmp_path: Path) -> None:
    cdir = CertDir.of(tmp_path, "mx1")
    queue: multiprocessing.Queue[str] = multiprocessing.Queue()
    with cdir.lock():
        proc = multiprocessing.Process(target=_try_lock, args=(str(cdir.root), queue))
        proc.start()
        proc.join(10)
    message = queue.get(timeout=5)
    assert "locked by another certman run" in message and f"pid {os.getpid()}" in message


def test_lock_is_free_again_after_release(tmp_path: Path) -> None:
    cdir = CertDir.of(tmp_path, "mx1")
    with cdir.lock():
        pass
    queue: multiprocessing.Queue[str] = multiprocessing.Queue()
    proc = multiprocessing.Process(target=_try_lock, args=(str(cdir.root), queue))
    proc.start()
    proc.join(10)
    assert queue.get(timeout=5) == "acquired"
