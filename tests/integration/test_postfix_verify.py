"""verify_live against mx1 and TLSA records published in dane.test (RFC 2136 UPDATE + TSIG),
read back through the validating resolver 127.0.0.53 with the AD bit.

Every test uses a fresh host name (the TLSA owner and the SNI name; the probe still connects to
mx1's address), so the resolver's cache never holds an answer from another test.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import pytest
from certgen import Issued, certificate_config, make_pki
from testbed import Testbed

from certman.config.schema import CertificateConfig, DaneConfig, Layout, PostfixConfig, TlsaParams
from certman.dane.probe import VerifyResult, verify_live
from certman.dane.tlsa import key_rdata, tlsa_rdata
from certman.keys import cert_spki_sha256
from certman.model import KeyType
from certman.postfix.commands import Postfix
from certman.postfix.install import KeyBundle, install

pytestmark = pytest.mark.integration

EC, RSA = KeyType.ECDSA_P256, KeyType.RSA2048
P311, P211 = TlsaParams(3, 1, 1), TlsaParams(2, 1, 1)


def backdate(path: Path, seconds: float = 10) -> None:
    """Postfix pauses up to ~2.4 s on a main.cf younger than a second (TESTBED-NOTES 16)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def publish(
    testbed: Testbed, name: str, rdatas: list[str], ttl: int = 30, rdtype: str = "TLSA"
) -> None:
    """Replace the RRset at ``name`` on the primary, then wait until both nameservers serve
    it, so the resolver's first question gets the new data."""
    tsig = testbed.bind.tsig
    keyring = dns.tsigkeyring.from_text({tsig.name: (tsig.algorithm, tsig.secret)})
    update = dns.update.UpdateMessage("dane.test", keyring=keyring)
    update.replace(name.rstrip(".") + ".", ttl, rdtype, *rdatas)  # absolute, not zone-relative
    reply = dns.query.tcp(update, testbed.bind.primary, timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(reply.rcode())
    deadline = time.monotonic() + 5
    for server in (testbed.bind.primary, testbed.bind.secondary):
        while True:
            query = dns.message.make_query(name, rdtype)
            query.flags &= ~dns.flags.RD
            answer = dns.query.udp(query, server, timeout=1)
            if answer.answer and len(answer.answer[0]) == len(rdatas):
                break
            assert time.monotonic() < deadline, f"{server} does not serve {name} {rdtype}"
            time.sleep(0.02)


class Site:
    """mx1 serving certificates for a fresh host name, and its DANE configuration."""

    def __init__(self, testbed: Testbed, tmp_path: Path) -> None:
        self.testbed = testbed
        self.instance = testbed.postfix["mx1"]
        self.postfix = Postfix(PostfixConfig(self.instance.config_dir, "postconf", "postfix", None))
        self.host = f"v{uuid.uuid4().hex[:10]}.dane.test"
        self.pki = make_pki()
        self.tmp_path = tmp_path

    def cert(self, *kinds: KeyType, host: str | None = None) -> CertificateConfig:
        dane = DaneConfig(
            (host or self.host,), (25,), (P311,), 30, 0.0, "dns", self.instance.address, 0
        )
        return certificate_config(
            self.tmp_path / "certs",
            name="verify",
            layout=Layout.CHAIN_FILES,
            key_types=kinds or (EC,),
            dane=dane,
            domains=(self.host,),
        )

    def serve(self, *kinds: KeyType) -> dict[KeyType, Issued]:
        """Install a fresh leaf per key type on mx1 and reload; returns the leaves."""
        leaves = {kind: self.pki.leaf(self.host, kind) for kind in kinds}
        bundles = [
            KeyBundle(k, leaf.key_pem, self.pki.fullchain_pem(leaf)) for k, leaf in leaves.items()
        ]
        install(
            self.cert(*kinds),
            bundles,
            postfix=self.postfix,
            state_dir=self.tmp_path / "state",
            clock=time.time,
        )
        backdate(self.instance.config_dir / "main.cf")
        self.postfix.reload()
        return leaves

    def verify(self, leaves: dict[KeyType, Issued], host: str | None = None) -> list[VerifyResult]:
        expected = {kind: cert_spki_sha256(leaf.cert) for kind, leaf in leaves.items()}
        return verify_live(
            self.cert(*leaves, host=host),
            resolvers=[self.testbed.resolver],
            expected=expected,
            timeout=10,
        )

    @property
    def tlsa_name(self) -> str:
        return f"_25._tcp.{self.host}"


@pytest.fixture
def site(testbed: Testbed, tmp_path: Path) -> Iterator[Site]:
    instance = testbed.postfix["mx1"]
    main_cf = instance.config_dir / "main.cf"
    saved = main_cf.read_bytes()
    site = Site(testbed, tmp_path)
    try:
        yield site
    finally:
        main_cf.write_bytes(saved)
        backdate(main_cf)
        site.postfix.reload()


def test_a_matching_3_1_1_record_verifies_as_posttls_finger_agrees(site: Site) -> None:
    leaves = site.serve(EC)
    # The A record goes in first: a lookup of the TLSA name makes the resolver cache NODATA for
    # the host's A (an empty non-terminal until then) for the negative TTL (RFC 2308).
    publish(site.testbed, site.host, [site.instance.address], rdtype="A")
    publish(site.testbed, site.tlsa_name, [tlsa_rdata(P311, leaves[EC].cert)])
    [result] = site.verify(leaves)
    assert result.ok, result.detail
    assert result.detail.startswith(f"{site.host} port 25 via 127.0.0.25:25: leaf key ")
    verified, output = site.testbed.posttls_finger(site.host, site.instance.address)
    assert verified, output  # an independent DANE client (RFC 7672) says the same


def test_a_record_for_another_key_fails_with_a_clear_detail_as_posttls_finger_agrees(
    site: Site,
) -> None:
    leaves = site.serve(EC)
    other = make_pki().leaf(site.host).key.public_key()
    publish(site.testbed, site.host, [site.instance.address], rdtype="A")
    publish(site.testbed, site.tlsa_name, [key_rdata(P311, other)])
    [result] = site.verify(leaves)
    assert not result.ok
    assert result.detail.endswith(f"matches none of the 1 usable TLSA records at {site.tlsa_name}")
    verified, output = site.testbed.posttls_finger(site.host, site.instance.address)
    assert not verified and "TLS" in output


def test_current_plus_next_record_verifies_the_current_key(site: Site) -> None:
    leaves = site.serve(EC)
    next_key = make_pki().leaf(site.host).key.public_key()
    publish(
        site.testbed, site.tlsa_name, [tlsa_rdata(P311, leaves[EC].cert), key_rdata(P311, next_key)]
    )
    assert [r.ok for r in site.verify(leaves)] == [True]


def test_dual_rsa_and_ecdsa_each_chain_is_verified(site: Site) -> None:
    leaves = site.serve(RSA, EC)
    publish(site.testbed, site.tlsa_name, [tlsa_rdata(P311, leaf.cert) for leaf in leaves.values()])
    results = site.verify(leaves)
    assert [r.ok for r in results] == [True, True], [r.detail for r in results]
    assert "(rsa2048)" in results[0].detail and "(ecdsa-p256)" in results[1].detail


def test_dual_with_a_record_for_one_key_only_fails_the_other(site: Site) -> None:
    leaves = site.serve(RSA, EC)
    publish(site.testbed, site.tlsa_name, [tlsa_rdata(P311, leaves[EC].cert)])
    rsa, ec = site.verify(leaves)
    assert ec.ok and not rsa.ok
    assert "(rsa2048)" in rsa.detail and "matches none" in rsa.detail


def test_a_stale_issuer_record_fails_though_the_leaf_record_matches(site: Site) -> None:
    leaves = site.serve(EC)
    stale = make_pki("Old").intermediate.cert
    publish(
        site.testbed, site.tlsa_name, [tlsa_rdata(P311, leaves[EC].cert), tlsa_rdata(P211, stale)]
    )
    [result] = site.verify(leaves)
    assert not result.ok and "no 2 1 1 record" in result.detail


def test_a_matching_issuer_record_with_the_leaf_record_verifies(site: Site) -> None:
    leaves = site.serve(EC)
    publish(
        site.testbed,
        site.tlsa_name,
        [tlsa_rdata(P311, leaves[EC].cert), tlsa_rdata(P211, site.pki.intermediate.cert)],
    )
    [result] = site.verify(leaves)
    assert result.ok, result.detail
    assert "TLSA 2 1 1, 3 1 1" in result.detail


def test_no_tlsa_rrset_at_all_fails(site: Site) -> None:
    leaves = site.serve(EC)
    [result] = site.verify(leaves)
    assert not result.ok and "no DNSSEC-validated TLSA RRset" in result.detail


def test_a_bogus_zone_fails_on_the_lookup(site: Site) -> None:
    leaves = site.serve(EC)
    [result] = site.verify(leaves, host="mx1.broken.test")
    assert not result.ok
    assert result.detail.startswith("mx1.broken.test port 25: TLSA lookup: ")
    assert "not DNSSEC-validated" in result.detail
