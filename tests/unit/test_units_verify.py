"""The shipped systemd units pass `systemd-analyze verify` (the Debian package `systemd`, which
contrib/testbed/install-deps installs; it starts nothing there)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parents[2] / "certman" / "contrib_data"


def test_service_and_timer_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: run contrib/testbed/install-deps"
    certman = Path(sys.executable).with_name("certman")
    assert certman.exists()
    service = (DATA / "certman.service").read_text()
    # ExecStart must name an executable that exists here; everything else is verified as shipped.
    service = service.replace("/usr/local/bin/certman", str(certman))
    (tmp_path / "certman.service").write_text(service)
    (tmp_path / "certman.timer").write_text((DATA / "certman.timer").read_text())
    result = subprocess.run(
        [analyze, "verify", "--man=no", "certman.service", "certman.timer"],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
