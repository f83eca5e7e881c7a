#!/usr/bin/env python3
"""``make demo``: certman's main job, for real, against the loopback testbed.

Starts Pebble, BIND (signed primary + secondary), Unbound and Postfix in a network namespace,
writes a certman config for them, runs ``certman run`` (adopt, publish current + next TLSA,
age, issue via ACME DNS-01, install, verify) and ``certman rollover`` while a DANE prober checks
the live server every 200 ms, then shows status and tears everything down.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

from helpers import Prober, write_config  # noqa: E402
from testbed import Testbed, enter_netns, start_testbed, stop_testbed  # noqa: E402

from certman.cli.main import main  # noqa: E402


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def dane_check(bed: Testbed, when: str) -> bool:
    ok, output = bed.posttls_finger("mx1.dane.test", bed.postfix["mx1"].address)
    lines = [ln for ln in output.splitlines() if "posttls-finger:" in ln][-2:]
    banner(f"DANE check {when}: {'VERIFIED' if ok else 'NOT verified'} (posttls-finger -l dane)")
    for line in lines:
        print("   ", line)
    return ok


def certman(config: Path, *args: str) -> int:
    print(f"$ certman {' '.join(args)}", flush=True)
    return main(["--config", str(config), *args])


def demo(bed: Testbed, work: Path) -> int:
    config = write_config(bed, work / "certman", ttl=5, margin=1.0)
    banner(f"certman config ({config})")
    print(config.read_text())
    dane_check(bed, "before certman (self-signed certificate, no TLSA records)")
    banner("first run: adopt, publish current + next TLSA, wait 2 x TTL, issue, install, verify")
    if certman(config, "run", "--max-wait", "120") or certman(config, "run", "--max-wait", "120"):
        return 1
    if not dane_check(bed, "after the first run"):
        return 1
    certman(config, "tlsa", "mx1")
    banner("key rollover with a DANE prober checking the live server every 200 ms")
    prober = Prober(bed, "mx1.dane.test", bed.postfix["mx1"].address)
    with prober.running():
        rc = certman(config, "rollover", "mx1")
        time.sleep(11)  # keep probing while resolvers drop the retired record (2 x TTL)
    good, bad = len(prober.results) - len(prober.failures), len(prober.failures)
    banner(f"prober: {good} verified DANE connections, {bad} failed, during and after the rollover")
    dane_check(bed, "after the rollover")
    certman(config, "status", "mx1")
    certman(config, "tlsa", "mx1")
    return 1 if rc or bad or not good else 0


def run() -> int:
    work = Path(tempfile.mkdtemp(prefix="certman-demo-"))
    os.chmod(work, 0o755)
    banner("starting the loopback testbed (Pebble, BIND x2, Unbound, Postfix, ...)")
    started = time.monotonic()
    bed = start_testbed(work / "testbed", pdns=False, moto=False)
    print(f"    up in {time.monotonic() - started:.1f} s, network namespace {bed.netns}")
    try:
        enter_netns(bed.netns)
        status = demo(bed, work)
    finally:
        stop_testbed(work / "testbed")
        banner("testbed stopped")
    banner("demo " + ("succeeded" if status == 0 else "FAILED"))
    return status


if __name__ == "__main__":
    sys.exit(run())
