"""The Postfix TLS audit against the testbed's real Postfix mx1: each misconfiguration made on
purpose is found (with a fix that works), and a correctly configured instance gives nothing.

main.cf comes back through tests/conftest.py; master.cf through the fixture here.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from certgen import issue, make_pki
from testbed import PostfixInstance, Testbed

from certman.config.schema import PostfixConfig
from certman.monitor.check import resolver_validates
from certman.postfix.audit import audit
from certman.postfix.commands import Postfix
from certman.postfix.tlsfiles import Finding

pytestmark = pytest.mark.integration

# What the testbed's Postfix 3.7 lacks by default: TLS 1.0/1.1 off, server cipher order, no
# RSA key transport. Applying these is what "a correct instance" means below.
HARDENED = {
    "smtpd_tls_protocols": ">=TLSv1.2",
    "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
    "tls_preempt_cipherlist": "yes",
    "smtpd_tls_exclude_ciphers": "kRSA",
}


# RFC 2409 §6.2, the 1024-bit MODP group (g = 2), as `openssl dhparam` PEM: fixed, no generation.
_P1024 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF",
    16,
)


def _dh_pem(p: int) -> bytes:
    import base64

    def der_int(n: int) -> bytes:
        raw = n.to_bytes(n.bit_length() // 8 + 1, "big")
        return b"\x02" + _der_len(len(raw)) + raw

    body = der_int(p) + der_int(2)
    der = b"\x30" + _der_len(len(body)) + body
    lines = base64.encodebytes(der).replace(b"\n", b"")
    wrapped = b"\n".join(lines[i : i + 64] for i in range(0, len(lines), 64))
    return b"-----BEGIN DH PARAMETERS-----\n" + wrapped + b"\n-----END DH PARAMETERS-----\n"


def _der_len(n: int) -> bytes:
    return (
        bytes([n])
        if n < 128
        else bytes([0x81 if n < 256 else 0x82]) + n.to_bytes(1 if n < 256 else 2, "big")
    )


OAKLEY_GROUP_2_PEM = _dh_pem(_P1024)


def _backdate(path: Path) -> None:
    then = time.time() - 10
    os.utime(path, (then, then))


@pytest.fixture
def mx1(testbed: Testbed) -> Iterator[tuple[PostfixInstance, Postfix]]:
    instance = testbed.postfix["mx1"]
    master = instance.config_dir / "master.cf"
    saved = master.read_bytes()
    postfix = Postfix(PostfixConfig(instance.config_dir, "postconf", "postfix", None))
    yield instance, postfix
    if master.read_bytes() != saved:
        master.write_bytes(saved)
        _backdate(master)


def _set(postfix: Postfix, values: dict[str, str], instance: PostfixInstance) -> None:
    postfix.set(values)
    _backdate(instance.config_dir / "main.cf")


def _codes(findings: list[Finding]) -> set[str]:
    return {f.code for f in findings}


def _apply(fix: str) -> None:
    """Run a finding's fix line as an operator would paste it."""
    subprocess.run(shlex.split(fix), check=True, capture_output=True)


def test_a_correct_instance_gives_no_findings(
    mx1: tuple[PostfixInstance, Postfix], testbed: Testbed
) -> None:
    instance, postfix = mx1
    _set(postfix, HARDENED | {"smtp_tls_security_level": "dane"}, instance)
    validates = resolver_validates(["_25._tcp.mx1.dane.test"], [testbed.resolver], 3.0)
    assert audit(postfix, validates=validates) == []


def test_the_testbed_default_is_found_weak_and_the_fix_lines_repair_it(
    mx1: tuple[PostfixInstance, Postfix],
) -> None:
    instance, postfix = mx1
    findings = audit(postfix)
    assert _codes(findings) == {
        "old-tls-allowed",
        "no-server-cipher-preference",
        "no-forward-secrecy",
    }
    for finding in findings:
        assert finding.fix.startswith(f"postconf -c {instance.config_dir} -e ")
        assert finding.why
        _apply(finding.fix)
    _backdate(instance.config_dir / "main.cf")
    assert audit(postfix) == []


@pytest.mark.parametrize(
    ("settings", "code"),
    [
        ({"smtp_tls_security_level": "dane", "smtp_dns_support_level": ""}, "dane-without-dnssec"),
        (
            {"smtp_tls_security_level": "dane-only", "smtp_host_lookup": "native"},
            "dane-without-dns-lookup",
        ),
        ({"smtpd_tls_security_level": "encrypt"}, "encrypt-on-port-25"),
        ({"smtpd_tls_protocols": "!SSLv2, !SSLv3, !TLSv1"}, "old-tls-allowed"),
        ({"smtpd_tls_protocols": "<=TLSv1.1"}, "no-modern-tls"),
        ({"smtpd_tls_exclude_ciphers": ""}, "no-forward-secrecy"),
        ({"tls_preempt_cipherlist": "no"}, "no-server-cipher-preference"),
        ({"smtpd_tls_loglevel": "2"}, "tls-loglevel-high"),
    ],
)
def test_each_main_cf_misconfiguration_is_found_and_its_fix_clears_it(
    mx1: tuple[PostfixInstance, Postfix], settings: dict[str, str], code: str
) -> None:
    instance, postfix = mx1
    _set(postfix, HARDENED | settings, instance)
    found = [f for f in audit(postfix) if f.code == code]
    assert len(found) == 1, audit(postfix)
    assert found[0].where == "main.cf" and found[0].what and found[0].why
    _apply(found[0].fix)
    _backdate(instance.config_dir / "main.cf")
    assert code not in _codes(audit(postfix))


def test_a_resolver_that_does_not_validate_is_found(
    mx1: tuple[PostfixInstance, Postfix], testbed: Testbed
) -> None:
    instance, postfix = mx1
    _set(postfix, HARDENED | {"smtp_tls_security_level": "dane"}, instance)
    # The primary is authoritative only: it never sets AD on an answer.
    validates = resolver_validates(["_25._tcp.mx1.dane.test"], [testbed.bind.primary], 3.0)
    found = [f for f in audit(postfix, validates=validates) if f.code == "resolver-not-validating"]
    assert len(found) == 1
    assert testbed.bind.primary in found[0].what


def test_master_cf_overrides_are_audited_per_service(
    mx1: tuple[PostfixInstance, Postfix],
) -> None:
    instance, postfix = mx1
    _set(postfix, HARDENED, instance)
    service = next(
        line.split()[0]
        for line in postfix._postconf("-M").splitlines()
        if line.split()[1:2] == ["inet"]
    )
    subprocess.run(
        [
            "postconf",
            "-c",
            str(instance.config_dir),
            "-P",
            f"{service}/inet/smtpd_tls_security_level=encrypt",
            f"{service}/inet/smtpd_tls_loglevel=3",
        ],
        check=True,
    )
    _backdate(instance.config_dir / "master.cf")
    found = {f.code: f for f in audit(postfix)}
    assert set(found) == {"encrypt-on-port-25", "tls-loglevel-high"}
    assert found["encrypt-on-port-25"].where == f"master.cf {service}/inet"
    assert " -P " in found["encrypt-on-port-25"].fix
    for finding in found.values():
        _apply(finding.fix)
    assert audit(postfix) == []


def test_tls_file_problems_are_found(mx1: tuple[PostfixInstance, Postfix], tmp_path: Path) -> None:
    instance, postfix = mx1
    pki = make_pki()
    leaf = pki.leaf(instance.host)
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    key.write_bytes(leaf.key_pem)
    key.chmod(0o644)
    other = issue(instance.host)
    cert.write_bytes(leaf.cert_pem)  # the leaf alone: no intermediate
    _set(
        postfix,
        HARDENED
        | {
            "smtpd_tls_chain_files": "",
            "smtpd_tls_key_file": str(key),
            "smtpd_tls_cert_file": str(cert),
        },
        instance,
    )
    assert _codes(audit(postfix)) == {"key-readable-by-others", "chain-missing"}
    key.chmod(0o600)
    cert.write_bytes(other.cert_pem)  # another key's (self-signed) certificate
    assert _codes(audit(postfix)) == {"key-cert-mismatch"}


def test_weak_or_missing_dh_parameters_are_found(
    mx1: tuple[PostfixInstance, Postfix], tmp_path: Path
) -> None:
    instance, postfix = mx1
    weak = tmp_path / "dh1024.pem"
    weak.write_bytes(OAKLEY_GROUP_2_PEM)  # 1024 bits, as many old Postfix guides generated
    _set(postfix, HARDENED | {"smtpd_tls_dh1024_param_file": str(weak)}, instance)
    assert _codes(audit(postfix)) == {"dh-file-weak"}
    _set(postfix, {"smtpd_tls_dh1024_param_file": str(tmp_path / "missing.pem")}, instance)
    assert _codes(audit(postfix)) == {"dh-file-unreadable"}
