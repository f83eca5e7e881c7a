"""Questions to the servers: does it really answer? Run from inside the namespace."""

from __future__ import annotations

import re
import socket
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .proc import run

TIMEOUT = 1.0


@dataclass(frozen=True)
class DigAnswer:
    status: str
    flags: frozenset[str]
    answer: tuple[str, ...]

    def has(self, rdtype: str) -> bool:
        return any(line.split()[3] == rdtype for line in self.answer)

    def serial(self) -> int | None:
        for line in self.answer:
            fields = line.split()
            if fields[3] == "SOA":
                return int(fields[6])
        return None


def dig(server: str, name: str, rdtype: str, *, recurse: bool = False) -> DigAnswer:
    """One DNSSEC-aware query (DO bit set) with dig."""
    output = run(
        [
            "dig",
            f"@{server}",
            name,
            rdtype,
            "+dnssec",
            "+rec" if recurse else "+norec",
            "+time=1",
            "+tries=1",
            "+noall",
            "+comments",
            "+answer",
        ]
    )
    status = re.search(r"status: (\w+)", output)
    flags = re.search(r";; flags: ([a-z ]+);", output)
    answer = tuple(line for line in output.splitlines() if line and not line.startswith(";"))
    return DigAnswer(
        status.group(1) if status else "NONE",
        frozenset(flags.group(1).split()) if flags else frozenset(),
        answer,
    )


def signed(server: str, zone: str) -> bool:
    """The authoritative server answers the zone's SOA with its RRSIG."""
    return dig(server, zone, "SOA").has("RRSIG")


def fully_signed(server: str, zone: str) -> bool:
    """Every RRset in a transfer of the zone has its RRSIG: BIND signs a new zone in
    batches, so one signed SOA does not mean the zone is done."""
    output = run(["dig", f"@{server}", zone, "AXFR", "+time=1", "+tries=1", "+nocmd", "+nostats"])
    records = [line.split() for line in output.splitlines() if line and line[0] != ";"]
    rrsets = {(r[0], r[3]) for r in records if r[3] not in ("RRSIG", "TYPE65534")}
    covered = {(r[0], r[4]) for r in records if r[3] == "RRSIG"}
    return bool(rrsets) and rrsets <= covered


def validated(resolver: str, zone: str) -> bool:
    """The validating resolver answers the zone's SOA with the AD bit."""
    reply = dig(resolver, zone, "SOA", recurse=True)
    return reply.status == "NOERROR" and "ad" in reply.flags


def smtp_banner(address: str, port: int = 25) -> bool:
    with socket.create_connection((address, port), timeout=TIMEOUT) as sock:
        return sock.recv(512).startswith(b"220 ")


def http_get(
    url: str, *, cafile: Path | None = None, headers: Mapping[str, str] | None = None
) -> bytes:
    """GET through no proxy, trusting only `cafile` for HTTPS (the machine's
    REQUESTS_CA_BUNDLE / SSL_CERT_FILE must not decide what is trusted)."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if cafile is not None:
        context = ssl.create_default_context(cafile=str(cafile))
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers=dict(headers or {}))
    with opener.open(request, timeout=TIMEOUT) as response:
        body: bytes = response.read()
        return body


def http_ok(
    url: str, *, cafile: Path | None = None, headers: Mapping[str, str] | None = None
) -> bool:
    http_get(url, cafile=cafile, headers=headers)
    return True
