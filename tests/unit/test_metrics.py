"""The Prometheus textfile: written atomically by every run, parsed by the Prometheus text
parser, and an idle run with metrics on still imports no heavy library."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from startup import idle_host
from test_startup import HEAVY, ROOT

from certman.config.load import load_config
from certman.dh.plan import DhState, FileRecord, save_state
from certman.lifecycle.statefile import CertDir
from certman.monitor.metrics import render


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_an_idle_run_writes_the_textfile_without_heavy_imports(tmp_path: Path) -> None:
    config = idle_host(tmp_path)
    textfile = tmp_path / "textfile" / "certman.prom"
    config.write_text(config.read_text() + f'\n[metrics]\ntextfile = "{textfile}"\n')
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "certman", "--config", str(config), "run"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
    samples = _samples(textfile.read_text())
    cert = (("certificate", "mx1"),)
    assert samples[("certman_phase", (*cert, ("phase", "steady")))] == 1
    assert samples[("certman_phase", (*cert, ("phase", "age")))] == 0
    assert samples[("certman_consecutive_failures", cert)] == 0
    assert samples[("certman_seconds_since_last_success", cert)] == -1  # never
    expiry = samples[
        ("certman_certificate_expiry_timestamp_seconds", (*cert, ("key_type", "ecdsa-p256")))
    ]
    assert expiry > started + 364 * 86400
    assert samples[("certman_next_key_age_seconds", (*cert, ("key_type", "ecdsa-p256")))] >= 0
    assert [p.name for p in textfile.parent.iterdir()] == ["certman.prom"]  # no temporary left


def test_failures_and_dh_file_age_are_counted(tmp_path: Path) -> None:
    config = idle_host(tmp_path)
    dh = tmp_path / "dh2048.pem"
    config.write_text(
        config.read_text() + f'\n[dhparams]\nmode = "rfc7919"\n[[dhparams.file]]\npath = "{dh}"\n'
    )
    cfg = load_config(config)
    now = time.time()
    save_state(
        cfg.state_dir,
        DhState({str(dh): FileRecord(str(dh), 2048, "rfc7919", now - 3600, "00", "ffdhe2048")}),
    )
    cdir = CertDir.of(cfg.state_dir, "mx1")
    state = cdir.load("mx1").evolve(last_success=now - 7200, last_error="boom")
    state = state.note(now - 100, "error: boom").note(now - 50, "rolled back: boom")
    cdir.save(state)
    samples = _samples(render(cfg, now))
    cert = (("certificate", "mx1"),)
    assert samples[("certman_consecutive_failures", cert)] == 2
    assert samples[("certman_seconds_since_last_success", cert)] == 7200
    assert samples[("certman_dhparams_age_seconds", (("file", str(dh)),))] == 3600
