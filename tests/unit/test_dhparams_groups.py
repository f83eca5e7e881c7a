"""PKCS#3 PEM, the safe-prime test, and the RFC 7919 / RFC 3526 groups certman writes."""

from __future__ import annotations

import base64
import random
import subprocess
from pathlib import Path

import pytest
from test_dhparams_support import FIXTURES

from certman.dh.groups import (
    DhGroup,
    DhParamsError,
    check_group,
    group_label,
    is_probable_prime,
    is_safe_prime,
    name_of,
    parse_pem,
    published_groups,
    to_pem,
)

SIZES = (2048, 3072, 4096, 6144, 8192)


def openssl_group_pem(name: str) -> bytes:
    """OpenSSL's own built-in copy of a named group, as PEM."""
    argv = ["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", f"group:{name}"]
    return subprocess.run(argv, capture_output=True, check=True).stdout


@pytest.mark.parametrize("bits", SIZES)
def test_rfc7919_group_matches_openssls_builtin_ffdhe_byte_for_byte(bits: int) -> None:
    assert to_pem(published_groups()[f"ffdhe{bits}"]) == openssl_group_pem(f"ffdhe{bits}")


@pytest.mark.parametrize("bits", SIZES)
def test_rfc3526_group_matches_openssls_builtin_modp_byte_for_byte(bits: int) -> None:
    assert to_pem(published_groups()[f"modp{bits}"]) == openssl_group_pem(f"modp_{bits}")


@pytest.mark.parametrize("name", sorted(published_groups()))
def test_every_published_group_is_a_safe_prime_of_its_size_with_generator_2(name: str) -> None:
    group = published_groups()[name]
    assert group.bits == int(name.removeprefix("ffdhe").removeprefix("modp"))
    assert group.g == 2
    # Two rounds suffice to catch a wrong constant; the primes are known (RFC 7919, RFC 3526).
    assert is_safe_prime(group.p, rounds=2, rng=random.Random(7))


def test_group_labels_name_the_rfc_and_the_ike_group_number() -> None:
    assert group_label("ffdhe3072") == "ffdhe3072 (RFC 7919)"
    assert group_label("modp2048") == "modp2048 (RFC 3526 group 14)"
    assert group_label("modp8192") == "modp8192 (RFC 3526 group 18)"


def test_openssl_generated_fixture_parses_as_a_2048_bit_safe_prime() -> None:
    group = parse_pem((FIXTURES / "dh2048.pem").read_bytes(), "dh2048.pem")
    assert group.bits == 2048 and group.g == 2
    check_group(group, 2048, "dh2048.pem")
    assert name_of(group) is None


def test_pem_round_trip_and_openssl_accepts_what_certman_writes(tmp_path: Path) -> None:
    group = parse_pem((FIXTURES / "dh512.pem").read_bytes(), "dh512.pem")
    written = tmp_path / "ours.pem"
    written.write_bytes(to_pem(group))
    assert parse_pem(written.read_bytes(), "ours") == group
    assert written.read_bytes() == (FIXTURES / "dh512.pem").read_bytes()
    done = subprocess.run(
        ["openssl", "dhparam", "-check", "-noout", "-in", str(written)],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "no complete '-----BEGIN DH PARAMETERS-----' block"),
        (b"-----BEGIN DH PARAMETERS-----\nMIIBCAKCAQEA", "no complete"),
        (b"-----BEGIN DH PARAMETERS-----\n!!!!\n-----END DH PARAMETERS-----\n", "base64"),
        (b"-----BEGIN DH PARAMETERS-----\nMAA=\n-----END DH PARAMETERS-----\n", "expected p, g"),
        (b"-----BEGIN DH PARAMETERS-----\nMAYCAf8CAQI=\n-----END DH PARAMETERS-----\n", "negative"),
    ],
    ids=["empty", "cut-short", "not-base64", "empty-sequence", "negative-p"],
)
def test_malformed_pem_is_refused_naming_the_file(data: bytes, fragment: str) -> None:
    with pytest.raises(DhParamsError, match=r"^/etc/postfix/dh\.pem: ") as error:
        parse_pem(data, "/etc/postfix/dh.pem")
    assert fragment in str(error.value)


def test_half_written_file_is_refused() -> None:
    whole = (FIXTURES / "dh2048.pem").read_bytes()
    for cut in (len(whole) // 2, len(whole) - 30):
        with pytest.raises(DhParamsError):
            parse_pem(whole[:cut], "half.pem")


def test_truncated_der_inside_a_complete_pem_block_is_refused() -> None:
    lines = (FIXTURES / "dh2048.pem").read_text().splitlines()
    der = base64.b64decode("".join(lines[1:-1]))[:-20]  # the PEM armour is whole, the DER not
    pem = f"{lines[0]}\n{base64.b64encode(der).decode()}\n{lines[-1]}\n".encode()
    with pytest.raises(DhParamsError, match="truncated DH parameters"):
        parse_pem(pem, "x")


def test_check_group_refuses_wrong_size_and_says_both_sizes() -> None:
    group = parse_pem((FIXTURES / "dh1024.pem").read_bytes(), "dh1024.pem")
    with pytest.raises(DhParamsError, match="1024-bit prime, expected 2048 bits"):
        check_group(group, 2048, "dh1024.pem")


def test_check_group_refuses_a_generator_out_of_range() -> None:
    group = parse_pem((FIXTURES / "dh512.pem").read_bytes(), "x")
    with pytest.raises(DhParamsError, match="generator g=1"):
        check_group(DhGroup(group.p, 1), 512, "x")


def test_check_group_refuses_a_prime_that_is_not_safe() -> None:
    rng = random.Random(3)
    while True:  # a 512-bit prime p whose (p-1)/2 is composite
        p = rng.getrandbits(512) | (1 << 511) | 1
        if is_probable_prime(p, 16, rng) and not is_probable_prime((p - 1) // 2, 16, rng):
            break
    with pytest.raises(DhParamsError, match="not a safe prime"):
        check_group(DhGroup(p, 2), 512, "x")


def test_check_group_refuses_a_composite_modulus_close_to_a_safe_prime() -> None:
    group = parse_pem((FIXTURES / "dh2048.pem").read_bytes(), "x")
    composite = group.p ^ (1 << 1000)  # one bit flipped: 2048 bits, odd, not prime
    assert not is_probable_prime(composite, 8, random.Random(1))
    with pytest.raises(DhParamsError, match="not a safe prime"):
        check_group(DhGroup(composite, 2), 2048, "x")


@pytest.mark.parametrize(
    ("n", "safe"),
    [
        (5, True),
        (7, True),
        (11, True),
        (13, False),
        (23, True),
        (29, False),
        (47, True),
        (9, False),
    ],
)
def test_small_safe_primes(n: int, safe: bool) -> None:
    assert is_safe_prime(n, rounds=8, rng=random.Random(0)) is safe


def test_name_of_recognises_published_groups_only() -> None:
    groups = published_groups()
    assert name_of(groups["modp3072"], groups) == "modp3072"
    assert name_of(DhGroup(groups["modp3072"].p, 5), groups) == "modp3072"  # named by p
    assert name_of(DhGroup(23, 5), groups) is None
