"""DH parameters as data: the PKCS#3 PEM format, the safe-prime test and the published groups.

Pure Python on purpose: ``cryptography`` 50 marks its finite-field DH support deprecated (it warns
on use), and parsing ``SEQUENCE { INTEGER p, INTEGER g }`` (PKCS#3 §9) needs twenty lines.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Mapping
from dataclasses import dataclass

from certman.errors import CertmanError

PEM_BEGIN = "-----BEGIN DH PARAMETERS-----"
PEM_END = "-----END DH PARAMETERS-----"

# RFC 7919 Appendix A: p = 2^b - 2^(b-64) + {[2^(b-130) e] + X} * 2^64 - 1, g = 2.
RFC7919_X = {2048: 560316, 3072: 2625351, 4096: 5736041, 6144: 15705020, 8192: 10965728}
# RFC 3526 §2-7: p = 2^b - 2^(b-64) - 1 + 2^64 * {[2^(b-130) pi] + k}, g = 2; value (group, k).
RFC3526_K = {
    2048: (14, 124476),
    3072: (15, 1690314),
    4096: (16, 240904),
    6144: (17, 929484),
    8192: (18, 4743158),
}
_MAX_BITS = 8192


class DhParamsError(CertmanError):
    """A DH parameter file is missing, malformed, of the wrong size or not a safe prime."""


@dataclass(frozen=True)
class DhGroup:
    """Finite-field DH domain parameters: prime modulus ``p`` and generator ``g``."""

    p: int
    g: int

    @property
    def bits(self) -> int:
        return self.p.bit_length()


# --- PKCS#3 DER / PEM -----------------------------------------------------------------------


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_integer(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")  # leading 0 keeps it positive
    return b"\x02" + _der_length(len(raw)) + raw


def to_pem(group: DhGroup) -> bytes:
    """The group as ``BEGIN DH PARAMETERS`` PEM, as ``openssl dhparam`` writes it."""
    body = _der_integer(group.p) + _der_integer(group.g)
    der = b"\x30" + _der_length(len(body)) + body
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return ("\n".join([PEM_BEGIN, *lines, PEM_END]) + "\n").encode("ascii")


def _read_tlv(der: bytes, pos: int, tag: int, where: str) -> tuple[int, int]:
    """(start, end) of the content of the DER element of ``tag`` at ``pos``."""
    if pos + 2 > len(der) or der[pos] != tag:
        raise DhParamsError(f"{where}: malformed DH parameters (expected DER tag {tag:#04x})")
    length, pos = der[pos + 1], pos + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(der):
            raise DhParamsError(f"{where}: malformed DH parameters (bad DER length)")
        length, pos = int.from_bytes(der[pos : pos + count], "big"), pos + count
    if pos + length > len(der):
        raise DhParamsError(f"{where}: truncated DH parameters")
    return pos, pos + length


def _parse_der(der: bytes, where: str) -> DhGroup:
    start, end = _read_tlv(der, 0, 0x30, where)
    if end != len(der):
        raise DhParamsError(f"{where}: trailing data after the DH parameters")
    values = []
    pos = start
    while pos < end:  # p, g and the optional privateValueLength (PKCS#3 §9)
        first, pos = _read_tlv(der, pos, 0x02, where)
        if first == pos or der[first] & 0x80:
            raise DhParamsError(f"{where}: malformed DH parameters (negative or empty integer)")
        values.append(int.from_bytes(der[first:pos], "big"))
    if len(values) not in (2, 3):
        raise DhParamsError(f"{where}: malformed DH parameters (expected p, g)")
    return DhGroup(values[0], values[1])


def parse_pem(data: bytes, where: str) -> DhGroup:
    """The group in a ``BEGIN DH PARAMETERS`` PEM file; ``where`` names the file in errors."""
    text = data.decode("ascii", errors="replace")
    start = text.find(PEM_BEGIN)
    stop = text.find(PEM_END, start + 1)
    if start < 0 or stop < 0:
        raise DhParamsError(f"{where}: no complete '{PEM_BEGIN}' block")
    try:
        der = base64.b64decode("".join(text[start + len(PEM_BEGIN) : stop].split()), validate=True)
    except ValueError:
        raise DhParamsError(f"{where}: DH parameters are not valid base64") from None
    return _parse_der(der, where)


# --- primality ------------------------------------------------------------------------------


def _small_primes(limit: int = 2000) -> list[int]:
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\x00\x00"
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, limit, n)))
    return [n for n in range(limit) if sieve[n]]


def is_probable_prime(n: int, rounds: int, rng: random.Random) -> bool:
    """Trial division, then ``rounds`` Miller-Rabin rounds with random bases (FIPS 186-5 B.3)."""
    if n < 2:
        return False
    for small in _small_primes():
        if n % small == 0:
            return n == small
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def is_safe_prime(p: int, rounds: int = 32, rng: random.Random | None = None) -> bool:
    """True when ``p`` and ``q = (p-1)/2`` are both prime.

    ``q`` gets Miller-Rabin; ``p`` then needs one modular exponentiation by Pocklington's theorem:
    p - 1 = 2q with q prime and q > sqrt(p), so 2^(p-1) = 1 (mod p) and gcd(2^2 - 1, p) = 1
    prove p prime. That halves the cost of testing both numbers with Miller-Rabin.
    """
    if p in (5, 7):
        return True
    if p < 11 or p % 2 == 0 or p % 3 == 0:
        return False
    if not is_probable_prime((p - 1) // 2, rounds, rng or random.SystemRandom()):
        return False
    return pow(2, p - 1, p) == 1


def check_group(group: DhGroup, bits: int, where: str, *, rounds: int = 32) -> None:
    """Raise DhParamsError unless ``group`` has a ``bits``-bit safe prime and a usable generator."""
    if group.bits != bits:
        raise DhParamsError(f"{where}: {group.bits}-bit prime, expected {bits} bits")
    if not 1 < group.g < group.p - 1:
        raise DhParamsError(f"{where}: generator g={group.g} is out of range")
    if not is_safe_prime(group.p, rounds):
        raise DhParamsError(f"{where}: p is not a safe prime ((p-1)/2 or p is composite)")


# --- the published groups -------------------------------------------------------------------


def _arctan_inv(x: int, precision: int) -> int:
    """atan(1/x) * 2^precision, each truncated term off by less than one unit."""
    total = term = (1 << precision) // x
    n, sign = 1, 1
    while term:
        term //= x * x
        n, sign = n + 2, -sign
        total += sign * (term // n)
    return total


def _scaled_pi(bits: int) -> int:
    """floor(pi * 2^bits) (Machin: pi = 16 atan(1/5) - 4 atan(1/239)), with 64 guard bits."""
    precision = bits + 64
    return (16 * _arctan_inv(5, precision) - 4 * _arctan_inv(239, precision)) >> 64


def _scaled_e(bits: int) -> int:
    """floor(e * 2^bits) from sum 1/k!, with 64 guard bits."""
    total = term = 1 << (bits + 64)
    k = 1
    while term:
        term //= k
        total += term
        k += 1
    return total >> 64


def published_groups() -> dict[str, DhGroup]:
    """``ffdhe<bits>`` (RFC 7919) and ``modp<bits>`` (RFC 3526), computed from the RFCs' formulas.

    The unit tests compare each with OpenSSL's built-in copy and check that it is a safe prime.
    """
    e_scaled = _scaled_e(_MAX_BITS - 130)
    pi_scaled = _scaled_pi(_MAX_BITS - 130)
    groups = {}
    for bits, x in RFC7919_X.items():
        top = 2**bits - 2 ** (bits - 64) - 1
        groups[f"ffdhe{bits}"] = DhGroup(top + ((e_scaled >> (_MAX_BITS - bits)) + x) * 2**64, 2)
        k = RFC3526_K[bits][1]
        groups[f"modp{bits}"] = DhGroup(top + ((pi_scaled >> (_MAX_BITS - bits)) + k) * 2**64, 2)
    return groups


def group_label(name: str) -> str:
    """A human name: ``ffdhe2048 (RFC 7919)`` or ``modp2048 (RFC 3526 group 14)``."""
    if name.startswith("modp"):
        return f"{name} (RFC 3526 group {RFC3526_K[int(name[4:])][0]})"
    return f"{name} (RFC 7919)"


def name_of(group: DhGroup, groups: Mapping[str, DhGroup] | None = None) -> str | None:
    """The published group ``group`` is (from ``groups``, computed if not given), or None."""
    for name, known in (groups or published_groups()).items():
        if known.p == group.p:
            return name
    return None
