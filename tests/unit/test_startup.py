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


def test_idle_cron_run_after_a_full_one_imports_only_the_fast_path(tmp_path: Path) -> None:
    """The second idle cron run is answered from the record, before argparse or the config."""
    config = idle_host(tmp_path)
    argv = [sys.executable, "-X", "importtime", "-m", "certman", "--config", str(config)]
    argv += ["run", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CERTMAN_NO_FASTPATH", None)
    first = subprocess.run(argv, capture_output=True, text=True, check=False, env=env, timeout=60)
    second = subprocess.run(argv, capture_output=True, text=True, check=False, env=env, timeout=60)
    assert (first.returncode, second.returncode) == (0, 0), second.stderr
    assert second.stdout == first.stdout == ""
    assert "argparse" in first.stderr
    bare = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    )
    # What the run adds to a bare interpreter (whose site may import pathlib etc. already).
    added = _modules(second.stderr) - _modules(bare.stderr)
    assert added - {"runpy"} == {"certman", "certman.cli", "certman.cli.fastpath"}


def _modules(importtime: str) -> set[str]:
    return {
        line.split("|")[-1].strip()
        for line in importtime.splitlines()
        if line.startswith("import time:") and "|" in line
    }
