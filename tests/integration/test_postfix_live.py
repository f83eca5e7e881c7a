"""store + postfix + probe against the testbed's real Postfix mx1 (127.0.0.25).

Each test leaves mx1 as it found it: tests/conftest.py puts main.cf back (backdated, see
TESTBED-NOTES gotcha 16) and reloads Postfix.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from certgen import Pki, certificate_config, make_pki
from cryptography import x509
from testbed import PostfixInstance, Testbed

from certman.config.schema import CertificateConfig, Layout, PostfixConfig
from certman.dane.probe import fetch_chain
from certman.errors import PostfixError
from certman.keys import cert_spki_sha256
from certman.model import KeyType
from certman.postfix.commands import Postfix
from certman.postfix.install import InstallRecord, KeyBundle, install, rollback, served_keys

pytestmark = pytest.mark.integration

EC, RSA = KeyType.ECDSA_P256, KeyType.RSA2048


@dataclass
class Mx:
    """mx1, wrapped for a test: its Postfix, a PKI, and directories under tmp_path."""

    instance: PostfixInstance
    postfix: Postfix
    pki: Pki
    directory: Path
    state: Path

    def cert(self, layout: Layout, *kinds: KeyType) -> CertificateConfig:
        return certificate_config(
            self.directory, name="it", layout=layout, key_types=kinds or (EC,)
        )

    def bundle(self, kind: KeyType = EC) -> KeyBundle:
        leaf = self.pki.leaf(self.instance.host, kind)
        return KeyBundle(kind, leaf.key_pem, self.pki.fullchain_pem(leaf))

    def install(self, cert: CertificateConfig, *bundles: KeyBundle) -> InstallRecord:
        record = install(cert, bundles, postfix=self.postfix, state_dir=self.state, clock=time.time)
        self.cool_down()
        return record

    def rollback(self, record: InstallRecord) -> None:
        rollback(record, postfix=self.postfix)
        self.cool_down()

    def cool_down(self) -> None:
        """Backdate main.cf so the next Postfix program does not pause up to ~2.4 s (gotcha 16;
        measured in the last test). Keeps the suite fast; production pays the pause."""
        backdate(self.instance.config_dir / "main.cf")

    def served(self, kind: KeyType | None = None) -> list[x509.Certificate]:
        return fetch_chain(self.instance.address, 25, timeout=10, key_type=kind)


def backdate(path: Path, seconds: float = 10) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def mx1(testbed: Testbed, tmp_path: Path) -> Iterator[Mx]:
    # main.cf comes back through tests/conftest.py's restore_postfix.
    instance = testbed.postfix["mx1"]
    postfix = Postfix(PostfixConfig(instance.config_dir, "postconf", "postfix", None))
    yield Mx(instance, postfix, make_pki(), tmp_path / "certs", tmp_path / "state")


def wait_for_leaf(mx: Mx, want: x509.Certificate, kind: KeyType | None = None) -> float:
    """Seconds until mx presents ``want`` (polling every 10 ms, at most 10 s; a failed
    connection is polled past like a stale answer)."""
    began = time.monotonic()
    seen = "nothing"
    while time.monotonic() - began < 10:
        try:
            leaf = mx.served(kind)[0]
        except PostfixError as exc:
            seen = str(exc)
        else:
            if leaf == want:
                return time.monotonic() - began
            seen = leaf.subject.rfc4514_string()
        time.sleep(0.01)
    raise AssertionError(f"{mx.instance.address} does not present {want.subject}: {seen}")


def leaf_of(bundle: KeyBundle) -> x509.Certificate:
    return x509.load_pem_x509_certificates(bundle.fullchain_pem)[0]


def test_served_keys_adopts_the_certificate_mx1_serves_before_certman(mx1: Mx) -> None:
    [served] = served_keys(mx1.cert(Layout.CHAIN_FILES), mx1.postfix)
    assert served.key_type is EC
    assert served.source_path == str(mx1.instance.initial_chain_file)
    leaf = x509.load_pem_x509_certificates(served.chain_pem)[0]
    assert f"3 1 1 {cert_spki_sha256(leaf)}" == mx1.instance.initial_tlsa
    assert mx1.served()[0] == leaf


def test_chain_files_install_and_reload_serves_the_new_chain(mx1: Mx) -> None:
    bundle = mx1.bundle()
    mx1.install(mx1.cert(Layout.CHAIN_FILES), bundle)
    mx1.postfix.check()
    mx1.postfix.reload()
    wait_for_leaf(mx1, leaf_of(bundle))
    assert mx1.served() == [leaf_of(bundle), mx1.pki.intermediate.cert]
    [served] = served_keys(mx1.cert(Layout.CHAIN_FILES), mx1.postfix)
    assert served.private_key_pem == bundle.key_pem


def test_rollback_restores_the_previously_served_certificate(mx1: Mx) -> None:
    before = mx1.served()[0]
    cert = mx1.cert(Layout.CHAIN_FILES)
    record = mx1.install(cert, mx1.bundle())
    mx1.postfix.reload()
    assert mx1.served()[0] != before
    mx1.rollback(record)
    mx1.postfix.reload()
    wait_for_leaf(mx1, before)
    assert mx1.postfix.get("smtpd_tls_chain_files") == {
        "smtpd_tls_chain_files": str(mx1.instance.initial_chain_file)
    }


def test_key_cert_layout_switches_versions_and_rolls_back(mx1: Mx) -> None:
    cert = mx1.cert(Layout.KEY_CERT)
    first, second = mx1.bundle(), mx1.bundle()
    mx1.install(cert, first)
    mx1.postfix.reload()
    wait_for_leaf(mx1, leaf_of(first))
    record = mx1.install(cert, second)
    mx1.postfix.reload()
    wait_for_leaf(mx1, leaf_of(second))
    assert mx1.postfix.get("smtpd_tls_chain_files")["smtpd_tls_chain_files"] == ""
    mx1.rollback(record)
    mx1.postfix.reload()
    wait_for_leaf(mx1, leaf_of(first))


def test_dual_rsa_and_ecdsa_chain_files_serve_each_chain_to_its_clients(mx1: Mx) -> None:
    rsa, ec = mx1.bundle(RSA), mx1.bundle(EC)
    mx1.install(mx1.cert(Layout.CHAIN_FILES, RSA, EC), rsa, ec)
    mx1.postfix.reload()
    wait_for_leaf(mx1, leaf_of(ec), EC)
    assert mx1.served(RSA) == [leaf_of(rsa), mx1.pki.intermediate.cert]
    assert mx1.served(EC) == [leaf_of(ec), mx1.pki.intermediate.cert]


def test_dual_key_cert_layout_uses_the_ecdsa_parameters(mx1: Mx) -> None:
    rsa, ec = mx1.bundle(RSA), mx1.bundle(EC)
    mx1.install(mx1.cert(Layout.KEY_CERT, RSA, EC), rsa, ec)
    mx1.postfix.check()
    mx1.postfix.reload()
    wait_for_leaf(mx1, leaf_of(rsa), RSA)
    assert mx1.served(EC)[0] == leaf_of(ec)


def test_postconf_e_is_one_rename_of_main_cf(mx1: Mx) -> None:
    main_cf = mx1.instance.config_dir / "main.cf"
    inode = main_cf.stat().st_ino
    mx1.postfix.set({"smtpd_tls_loglevel": "0", "smtpd_tls_received_header": "no"})
    assert main_cf.stat().st_ino != inode
    mx1.cool_down()
    assert mx1.postfix.get_raw("smtpd_tls_loglevel", "smtpd_tls_received_header") == {
        "smtpd_tls_loglevel": "0",
        "smtpd_tls_received_header": "no",
    }


def test_postfix_version_and_a_failing_command(mx1: Mx, tmp_path: Path) -> None:
    assert mx1.postfix.version().startswith("3.")
    broken = Postfix(PostfixConfig(tmp_path / "nowhere", "postconf", "postfix", None))
    with pytest.raises(PostfixError, match=r"nowhere/main\.cf"):
        broken.get("mail_version")


# --- measurements (TESTBED-NOTES gotcha 16) ---------------------------------------------------


def seconds(values: list[float]) -> str:
    return ", ".join(f"{value:.3f}" for value in values) + " s"


def timed(action: Callable[[], object]) -> float:
    began = time.monotonic()
    action()
    return time.monotonic() - began


@pytest.mark.benchmark  # timings: run with `pytest -m benchmark`, not by make test
def test_measure_reload_latency_and_the_main_cf_cool_down(mx1: Mx) -> None:
    """Figures for the report; the bounds only catch a regression by an order of magnitude.

    Postfix re-reads main.cf until its mtime is more than a (whole) second older than the
    start of the read (util/dict.c, "pausing to let main.cf cool down"), so a reload right
    after ``postconf -e`` pays up to ~2.4 s.
    """
    main_cf = mx1.instance.config_dir / "main.cf"
    cert = mx1.cert(Layout.CHAIN_FILES)
    mx1.install(cert, mx1.bundle())  # first install: main.cf now names the chain file
    mx1.postfix.reload()
    cold, switch, hot = [], [], []
    for _ in range(3):
        bundle = mx1.bundle()
        install(cert, [bundle], postfix=mx1.postfix, state_dir=mx1.state, clock=time.time)
        assert time.time() - main_cf.stat().st_mtime > 2  # steady state: main.cf untouched
        began = time.monotonic()
        cold.append(timed(mx1.postfix.reload))
        wait_for_leaf(mx1, leaf_of(bundle))
        switch.append(time.monotonic() - began)
        mx1.postfix.set({"smtpd_tls_loglevel": "1"})
        hot.append(timed(mx1.postfix.reload))
        backdate(main_cf)
    print(
        f"\nreload (main.cf old): {seconds(cold)}; reload -> new leaf served: {seconds(switch)}; "
        f"postconf -e then reload at once: {seconds(hot)}"
    )
    assert max(cold) < 1.0 and max(switch) < 1.5
    assert max(hot) < 4.0
