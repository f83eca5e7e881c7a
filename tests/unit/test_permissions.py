"""Modes and symlinks (issue 10, defect 7): private directories are 0700 whatever the umask,
nothing is chmodded or locked through a symbolic link, the exec provider gets no secrets."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from certman.dns.provider import ProviderContext
from certman.dns.providers.exec import ExecOptions, ExecProvider
from certman.errors import CertmanError
from certman.fsutil import atomic_write, open_lock, private_dir
from certman.lifecycle.state import State
from certman.lifecycle.statefile import CertDir


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("loose_umask")
def test_state_dir_and_the_parents_certman_creates_are_0700_under_umask_022(
    tmp_path: Path,
) -> None:
    base = tmp_path / "root"
    base.mkdir(mode=0o755)
    state_dir = base / "var" / "lib" / "certman"
    CertDir.of(state_dir, "mx").save(State(name="mx"))
    for directory in (base / "var", base / "var" / "lib", state_dir, state_dir / "certs"):
        assert mode(directory) == 0o700, directory
    assert mode(state_dir / "certs" / "mx" / "state.json") == 0o600
    assert mode(base) == 0o755  # what existed before is left alone


@pytest.mark.usefixtures("loose_umask")
def test_an_existing_loose_private_dir_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o755)
    private_dir(directory)
    assert mode(directory) == 0o700


def test_a_symlinked_private_dir_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    link = tmp_path / "keys"
    link.symlink_to(target)
    with pytest.raises(CertmanError, match="symbolic link"):
        private_dir(link)
    assert mode(target) == 0o755


def test_a_certificate_dir_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "other"
    target.mkdir()
    (tmp_path / "state" / "certs").mkdir(parents=True)
    (tmp_path / "state" / "certs" / "mx").symlink_to(target)
    with pytest.raises(CertmanError, match="symbolic link"):
        CertDir.of(tmp_path / "state", "mx").save(State(name="mx"))
    assert list(target.iterdir()) == []


def test_a_lock_file_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("important\n")
    root = tmp_path / "state" / "certs" / "mx"
    root.mkdir(parents=True, mode=0o700)
    (root / "lock").symlink_to(victim)
    lock = CertDir.of(tmp_path / "state", "mx").lock()
    with pytest.raises(CertmanError, match="cannot open lock file"), lock:
        pass
    assert victim.read_text() == "important\n"
    with pytest.raises(CertmanError):
        open_lock(root / "lock")


def test_the_exec_provider_passes_a_minimal_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERTMAN_TSIG_SECRET", "SUPER-SECRET-TSIG")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SUPER-SECRET-AWS")
    monkeypatch.setenv("MY_DNS_TOKEN", "passed-on-purpose")
    script = tmp_path / "dump.py"
    out = tmp_path / "env.json"
    script.write_text(
        "import json, os, sys\n"
        f"open({str(out)!r}, 'w').write(json.dumps(dict(os.environ)))\n"
        "sys.stdout.write('null')\n"
    )
    options = ExecOptions(
        (sys.executable, str(script)), "example.com", 10.0, pass_variables=("MY_DNS_TOKEN",)
    )
    ExecProvider("x", options, ProviderContext()).read("_25._tcp.mx.example.com", "TLSA")
    env = json.loads(out.read_text())
    assert "SUPER-SECRET" not in json.dumps(env)
    assert env["MY_DNS_TOKEN"] == "passed-on-purpose"
    assert env["CERTMAN_ACTION"] == "read" and "PATH" in env
    allowed = {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "MY_DNS_TOKEN", "LC_CTYPE"}
    assert {k for k in env if not k.startswith("CERTMAN_")} <= allowed


def test_a_failed_write_names_the_file_and_leaves_no_debris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC from write/fsync carries no file name: atomic_write adds the target's (issue 10,
    a full Postfix directory gave "install: OSError: [Errno 28] No space left on device")."""
    import errno

    target = tmp_path / "mx1.pem"
    target.write_bytes(b"old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        atomic_write(target, b"new")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert str(target) in str(caught.value)
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
