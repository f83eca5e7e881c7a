"""Real certbot against the testbed's Pebble, with certman as its deploy hook.

certbot runs in the pytest process's network namespace: standalone HTTP-01 on 127.0.0.25:80 (the
address mx1.dane.test has; Pebble validates there), ``REQUESTS_CA_BUNDLE`` set to Pebble's API CA
for certbot alone, and ``--deploy-hook`` pointing at hooks/certbot-deploy with ``CERTMAN_CONFIG``
and a ``certman`` on ``PATH``. A prober checks the live Postfix as a DANE-validating sender would
through the caching resolver the whole time; TLSA TTLs are 3 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import Prober, write_config
from testbed import Testbed

from certman import keys
from certman.cli.main import main
from certman.config.load import load_config as load
from certman.config.schema import PostfixConfig
from certman.dane.probe import fetch_chain
from certman.dns.provider import DnsProvider, ProviderContext, RRset, create_provider
from certman.lifecycle.state import Operation, Phase, State
from certman.lifecycle.statefile import CertDir
from certman.postfix.commands import Postfix

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "hooks" / "certbot-deploy"
TLSA_NAME = "_25._tcp.mx1.dane.test"
SLOT = "ecdsa-p256"


@dataclass(frozen=True)
class Certbot:
    """certbot with its own config/work/logs directories and the environment the hook needs."""

    bed: Testbed
    home: Path
    config: Path
    env: dict[str, str]

    @property
    def live(self) -> Path:
        return self.home / "config" / "live" / "mx1"

    def run(self, *args: str, hook: bool = True) -> subprocess.CompletedProcess[str]:
        program = Path(sys.executable).with_name("certbot")
        assert program.exists(), f"{program}: certbot is not installed (pip install certbot)"
        dirs = [f"--{d}-dir={self.home / d}" for d in ("config", "work", "logs")]
        standalone = [
            "--standalone",
            "--preferred-challenges=http",
            f"--http-01-address={self.bed.postfix['mx1'].address}",
            "--http-01-port=80",
        ]
        command = [str(program), *args, "--non-interactive", *dirs, *standalone]
        command += [f"--server={self.bed.pebble.directory}", "--cert-name=mx1"]
        command += [f"--deploy-hook={HOOK}"] if hook else []
        return subprocess.run(
            command, capture_output=True, text=True, env=self.env, timeout=180, check=False
        )

    def certonly(self, *, hook: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(
            "certonly",
            "--agree-tos",
            "--register-unsafely-without-email",
            "-d",
            "mx1.dane.test",
            hook=hook,
        )

    def renew(self, *flags: str) -> subprocess.CompletedProcess[str]:
        return self.run("renew", "--force-renewal", "--no-random-sleep-on-renew", *flags)

    def key_spki(self) -> str:
        key = keys.read_private_key(self.live / "privkey.pem")
        return keys.spki_sha256(key.public_key())

    def serial(self) -> int:
        return keys.load_pem_chain((self.live / "cert.pem").read_bytes(), "cert.pem")[
            0
        ].serial_number


def certbot_for(bed: Testbed, config: Path, home: Path) -> Certbot:
    """The hook finds ``certman`` on PATH: a wrapper running this interpreter on this tree."""
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True)
    wrapper = bin_dir / "certman"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m certman "$@"\n')
    wrapper.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(ROOT),
        "CERTMAN_CONFIG": str(config),
        "REQUESTS_CA_BUNDLE": str(bed.pebble.api_ca),  # certbot (requests) trusts Pebble
    }
    return Certbot(bed, home, config, env)


def rfc2136(bed: Testbed) -> DnsProvider:
    cfg = load(write_config(bed, bed.dir / "certbot-provider-only"))
    spec = cfg.providers["bind"]
    return create_provider(spec.type, "bind", spec.options, ProviderContext((bed.resolver,)))


def tlsa(bed: Testbed) -> RRset | None:
    """The TLSA RRset as the primary serves it (no cache in between)."""
    return rfc2136(bed).read(TLSA_NAME, "TLSA")


def published(bed: Testbed) -> set[str]:
    rrset = tlsa(bed)
    return {r.split()[-1] for r in rrset.rdatas} if rrset else set()


def served(bed: Testbed) -> tuple[str, int]:
    """The key digest and serial of the leaf mx1 presents now."""
    leaf = fetch_chain(bed.postfix["mx1"].address, 25, timeout=5)[0]
    return keys.cert_spki_sha256(leaf), leaf.serial_number


def state_of(config: Path) -> State:
    return CertDir.of(load(config).state_dir, "mx1").load("mx1")


def run_until(config: Path, done: Callable[[State], bool], runs: int = 4) -> State:
    """`certman run` as cron would, until ``done``; each run waits inline at most 30 s."""
    for _ in range(runs):
        assert main(["--config", str(config), "run", "--max-wait", "30"]) == 0
        state = state_of(config)
        if done(state):
            return state
    raise AssertionError(f"not done after {runs} runs: {state_of(config)}")


def finished(state: State) -> bool:
    return state.phase is Phase.STEADY and not state.staged


@pytest.fixture
def mx1(testbed: Testbed, tmp_path: Path) -> Path:
    """A fresh host: mx1 serves the testbed's self-signed key, no TLSA RRset exists."""
    pf = testbed.postfix["mx1"]
    postfix = Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))
    postfix.set({"smtpd_tls_chain_files": str(pf.initial_chain_file)})
    postfix.reload()
    rfc2136(testbed).delete(TLSA_NAME, "TLSA")
    return write_config(testbed, tmp_path / "certman")


def adopt(config: Path) -> State:
    return run_until(config, finished)


def test_certbot_new_key_is_published_first_and_a_reused_key_installs_at_once(
    testbed: Testbed, mx1: Path, tmp_path: Path
) -> None:
    state = adopt(mx1)
    old_key, old_next = state.current[SLOT].spki_sha256, state.next[SLOT].spki_sha256
    assert served(testbed)[0] == old_key
    certbot = certbot_for(testbed, mx1, tmp_path / "certbot")
    prober = Prober(testbed, "mx1.dane.test", testbed.postfix["mx1"].address)
    with prober.running():
        # 1. certonly: a key certman never saw. The hook stages it as the next key and publishes
        #    its record; Postfix keeps serving the adopted key.
        issued = certbot.certonly()
        assert issued.returncode == 0, issued.stdout + issued.stderr
        first_key, first_serial = certbot.key_spki(), certbot.serial()
        assert served(testbed)[0] == old_key, "the hook swapped keys before the record aged"
        state = state_of(mx1)
        assert state.operation is Operation.ROLLOVER
        assert state.phase in (Phase.CONFIRM, Phase.AGE)
        assert state.next[SLOT].spki_sha256 == first_key
        assert published(testbed) == {old_key, first_key}  # the unused next key gave way
        assert old_next in state.retired

        # 2. cron finishes the rollover after propagation and 2 x TTL.
        state = run_until(mx1, finished)
        assert served(testbed) == (first_key, first_serial)
        assert state.current[SLOT].spki_sha256 == first_key
        new_next = state.next[SLOT].spki_sha256
        assert published(testbed) == {first_key, new_next}

        # 3. renew --reuse-key: the served key; installed by the hook itself, DNS untouched.
        before = tlsa(testbed)
        started = time.monotonic()
        renewed = certbot.renew("--reuse-key")
        elapsed = time.monotonic() - started
        assert renewed.returncode == 0, renewed.stdout + renewed.stderr
        assert certbot.key_spki() == first_key and certbot.serial() != first_serial
        assert served(testbed) == (first_key, certbot.serial())
        assert tlsa(testbed) == before
        state = state_of(mx1)
        assert finished(state) and state.certs[SLOT].serial == f"{certbot.serial():x}"
        print(f"certbot renew --reuse-key, hook included: {elapsed:.1f} s")

        # 4. renew with a new key again: staged and published, swapped in by cron later.
        rekeyed = certbot.renew("--no-reuse-key")
        assert rekeyed.returncode == 0, rekeyed.stdout + rekeyed.stderr
        second_key = certbot.key_spki()
        assert second_key != first_key
        assert served(testbed)[0] == first_key
        assert published(testbed) == {first_key, second_key}
        state = run_until(mx1, finished)
        assert served(testbed) == (second_key, certbot.serial())
        assert first_key not in published(testbed)
        time.sleep(7)  # 2 x TTL + 1: the prober's resolver drops the retired record meanwhile
    ok, output = testbed.posttls_finger("mx1.dane.test", testbed.postfix["mx1"].address)
    assert ok, output
    assert len(prober.results) >= 20
    assert prober.failures == []
    print(f"prober: {len(prober.results)} verified connections, 0 failures")


def test_hook_without_certman_state_fails_loudly_and_a_dry_run_changes_nothing(
    testbed: Testbed, mx1: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certbot = certbot_for(testbed, mx1, tmp_path / "certbot")
    # Before the first `certman run` the hook refuses (certbot logs it and never retries).
    issued = certbot.certonly()
    output = issued.stdout + issued.stderr
    assert issued.returncode == 0, output  # certbot reports a failed hook, and carries on
    assert "Hook 'deploy-hook' reported error code 1" in output, output
    assert "run `certman run` first" in output, output
    assert f"--lineage {certbot.live}" in output
    assert served(testbed)[0] != certbot.key_spki()

    state = adopt(mx1)
    cdir = CertDir.of(load(mx1).state_dir, "mx1")
    files_before = sorted(p.name for p in cdir.root.rglob("*"))
    state_before, rrset_before = cdir.state_file.read_bytes(), tlsa(testbed)
    capsys.readouterr()
    args = ["--config", str(mx1), "hook", "certbot-deploy", "--dry-run", "--lineage"]
    assert main([*args, str(certbot.live)]) == 0
    said = capsys.readouterr().out
    assert "dry run" in said and "new key" in said
    assert cdir.state_file.read_bytes() == state_before
    assert sorted(p.name for p in cdir.root.rglob("*")) == files_before
    assert tlsa(testbed) == rrset_before
    assert served(testbed)[0] == state.current[SLOT].spki_sha256

    # The same lineage handed over by hand, as the error message said: staged and published.
    by_hand = ["--config", str(mx1), "hook", "certbot-deploy", "--lineage", str(certbot.live)]
    assert main(by_hand) == 0
    assert state_of(mx1).next[SLOT].spki_sha256 == certbot.key_spki()
    assert certbot.key_spki() in published(testbed)
