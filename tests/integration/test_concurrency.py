"""Ten `certman run` at once on one state (issue 10): exactly one acts on the certificate, the
others exit 75 with a one-line lock message, and the state is never corrupt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_rollover_e2e import fresh_host, served_spki, state_of
from testbed import Testbed

from certman.config.load import load_config as load
from certman.lifecycle.state import Phase, State
from certman.lifecycle.statefile import CertDir

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_ten_concurrent_runs_one_acts_the_others_exit_75(testbed: Testbed, tmp_path: Path) -> None:
    config = fresh_host(testbed, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "certman", "--config", str(config), "run", "--max-wait", "60"]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(10)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        results.append((proc.returncode, out, err))
    codes = sorted(code for code, _, _ in results)
    assert codes == [0] + [75] * 9, results
    for code, out, err in results:
        if code == 75:  # routine, logged as a notice (stdout): one line, no traceback
            lines = [x for x in (out + err).splitlines() if "certman: " in x]
            assert len(lines) == 1 and "locked by another certman run" in lines[0], out + err
            assert "Traceback" not in err
    cfg = load(config)
    raw = CertDir.of(cfg.state_dir, "mx1").state_file.read_text()
    json.loads(raw)  # whole, parseable JSON
    state = state_of(config)
    assert isinstance(state, State) and state.phase is Phase.STEADY
    assert sum("bootstrap finished" in h for h in state.history) == 1, state.history
    assert served_spki(testbed, "mx1") == state.current["ecdsa-p256"].spki_sha256
