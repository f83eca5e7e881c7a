"""Run certman and SIGKILL it right after it saved the state at a given phase boundary.

Usage: crashing_certman.py PHASE CERTMAN-ARGS...  ``install-planned`` kills it after the install
plan was saved but before the files were switched; ``retire-wait`` after the new key was verified,
before the old key's record goes. Test-only: certman itself has no such hook.
"""

from __future__ import annotations

import os
import signal
import sys

from certman.cli.main import main
from certman.lifecycle.state import Operation, Phase, State
from certman.lifecycle.statefile import CertDir

CRASH_AT = sys.argv[1]
original_save = CertDir.save


def save_then_die(self: CertDir, state: State) -> None:
    original_save(self, state)
    planned = state.phase is Phase.INSTALL and state.install_record is not None
    retiring = state.phase is Phase.AGE and state.operation is Operation.RETIRE
    if (
        state.phase.value == CRASH_AT
        or (CRASH_AT == "install-planned" and planned)
        or (CRASH_AT == "retire-wait" and retiring)
    ):
        if CRASH_AT == "install" and planned:
            return
        os.kill(os.getpid(), signal.SIGKILL)


CertDir.save = save_then_die  # type: ignore[method-assign]
sys.exit(main(sys.argv[2:]))
