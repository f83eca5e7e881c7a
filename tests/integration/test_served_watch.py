"""The kill sweep's watch (served_watch.py) sees the defects it is there for, on a deliberately
broken build: a new key served without the 2 x TTL wait, and the compromised key's record
removed while that key is still served. Without this, a watch that never looked would pass."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from served_watch import Watch
from test_rollover_e2e import bootstrap, fresh_host
from testbed import Testbed

from certman.config.load import load_config as load
from certman.errors import CertmanError
from certman.lifecycle import rollover
from certman.lifecycle.context import Context
from certman.lifecycle.engine import advance
from certman.lifecycle.state import Operation, State
from certman.lifecycle.steps import deploy
from certman.model import KeyInfo, KeyType

pytestmark = pytest.mark.integration
TLSA = "_25._tcp.mx1.dane.test"
TTL, MARGIN = 1, 1.0


def _watch_a_broken_compromised_rollover(bed: Testbed, config: Path) -> Watch:
    watch = Watch(bed, TLSA, bed.postfix["mx1"].address, (KeyType.ECDSA_P256,))
    with watch.running():
        time.sleep(0.5)
        cfg = load(config)
        ctx = Context(cfg, time.time, time.sleep)
        # The broken build may fail its own verification: the watch saw what it did.
        with contextlib.suppress(CertmanError):
            advance(ctx, cfg.certificate("mx1"), request=Operation.COMPROMISED, max_wait=60)
        time.sleep(1.0)
    return watch


def test_the_watch_sees_a_key_served_before_its_record_aged(
    testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = fresh_host(testbed, tmp_path, ttl=TTL)
    bootstrap(testbed, config)
    monkeypatch.setattr(
        "certman.lifecycle.state.TlsaProgress.wait_seconds", lambda self, margin: 0.0
    )
    monkeypatch.setattr(deploy, "_unpublished", lambda *args: (set(), set()))
    watch = _watch_a_broken_compromised_rollover(testbed, config)
    assert watch.served_without_record() == []
    early = watch.early_swaps(2 * TTL + MARGIN)
    assert len(early) == 1 and 0 <= early[0][1] < 2 * TTL + MARGIN - watch.resolution(), early


def test_the_watch_sees_a_served_keys_record_removed(
    testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = fresh_host(testbed, tmp_path, ttl=TTL)
    bootstrap(testbed, config)
    time.sleep(2 * TTL + MARGIN + 1)
    served = Watch(testbed, TLSA, testbed.postfix["mx1"].address, (KeyType.ECDSA_P256,)).sample()
    real = rollover.wanted_keys

    def next_only(state: State) -> list[KeyInfo]:  # "forgets" the key still served
        return list(state.next.values()) or real(state)

    monkeypatch.setattr(rollover, "wanted_keys", next_only)
    watch = _watch_a_broken_compromised_rollover(testbed, config)
    missing = {spki for _, _, spki in watch.served_without_record()}
    # The compromised key while still served (and, later, the new one: the broken build drops
    # every record but the next key's).
    assert served.served[KeyType.ECDSA_P256.value] in missing, watch.served_without_record()[:3]
