"""A notification for a forced failure goes through the testbed's real Postfix (sendmail,
pickup, cleanup, qmgr, virtual) into a local Maildir, where the test reads it back."""

from __future__ import annotations

import email
import email.policy
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import write_config
from testbed import PostfixInstance, Testbed

from certman.cli.main import main
from certman.config.load import load_config
from certman.lifecycle.state import Phase, State
from certman.lifecycle.statefile import CertDir

pytestmark = pytest.mark.integration

VIRTUAL = "virtual    unix      -  n  n  -     -  virtual\n"


def _reload(instance: PostfixInstance) -> None:
    for name in ("main.cf", "master.cf"):
        then = time.time() - 10
        os.utime(instance.config_dir / name, (then, then))
    subprocess.run(
        ["postfix", "-c", str(instance.config_dir), "reload"], check=True, capture_output=True
    )


@pytest.fixture
def mailbox(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """mx1 delivers mail for postmaster@mx1.dane.test to a Maildir; master.cf comes back after
    the test (main.cf through tests/conftest.py)."""
    instance = testbed.postfix["mx1"]
    master = instance.config_dir / "master.cf"
    saved = master.read_bytes()
    base = tmp_path_factory.mktemp("mail")
    nobody = pwd.getpwnam("nobody")
    os.chown(base, nobody.pw_uid, nobody.pw_gid)
    for parent in base.parents:  # the virtual agent runs as nobody: let it reach the base
        parent.chmod(parent.stat().st_mode | 0o001)
    master.write_bytes(saved + VIRTUAL.encode())
    subprocess.run(
        [
            "postconf",
            "-c",
            str(instance.config_dir),
            "-e",
            f"virtual_mailbox_domains = {instance.host}",
            f"virtual_mailbox_base = {base}",
            "virtual_mailbox_maps = static:postmaster/",
            f"virtual_uid_maps = static:{nobody.pw_uid}",
            f"virtual_gid_maps = static:{nobody.pw_gid}",
        ],
        check=True,
    )
    _reload(instance)
    yield base / "postmaster" / "new"
    master.write_bytes(saved)
    _reload(instance)


def test_a_forced_failure_is_mailed_once_through_the_local_postfix(
    testbed: Testbed, tmp_path: Path, mailbox: Path
) -> None:
    instance = testbed.postfix["mx1"]
    config = write_config(testbed, tmp_path / "cfg")
    config.write_text(
        config.read_text() + f'\n[notify]\nemail = ["postmaster@{instance.host}"]\n'
        f'sender = "certman@{instance.host}"\n'
    )
    cfg = load_config(config)
    now = time.time()
    failing = State(
        "mx1",
        phase=Phase.STEADY,
        last_error="forced: the CA refused the order",
        retry_after=now + 3600,
    ).note(now, "error: forced")
    CertDir.of(cfg.state_dir, "mx1").save(failing)
    assert main(["--config", str(config), "run", "--quiet"]) == 1
    assert main(["--config", str(config), "run", "--quiet"]) == 1  # still failing: no 2nd mail
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (mailbox.exists() and any(mailbox.iterdir())):
        time.sleep(0.2)
    messages = sorted(mailbox.iterdir()) if mailbox.exists() else []
    assert len(messages) == 1, f"nothing delivered; see {instance.maillog}"
    time.sleep(2)
    assert len(list(mailbox.iterdir())) == 1
    msg = email.message_from_bytes(messages[0].read_bytes(), policy=email.policy.default)
    assert msg["Subject"].endswith("mx1: failure")
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["From"] == f"certman@{instance.host}"
    body = msg.get_body(("plain",))
    assert body is not None and "forced: the CA refused the order" in body.get_content()
