"""A cron run with nothing to do must not import the heavy libraries (DESIGN: lazy imports)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from startup import idle_host

HEAVY = ("acme", "josepy", "boto3", "botocore", "cryptography", "requests", "dns")
ROOT = Path(__file__).resolve().parents[2]


def test_idle_cron_run_imports_no_heavy_library(tmp_path: Path) -> None:
    config = idle_host(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "certman", "--config", str(config), "run"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do; renewal due " in proc.stdout
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "certman" in imported
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
