"""RFC 2136 dynamic UPDATE over TCP with TSIG (RFC 8945), for BIND 9, Knot and friends.

A compare-and-swap is one UPDATE message whose prerequisite section states what must be there
(RFC 2136 §2.4.2 "RRset exists (value dependent)", §2.4.3 "RRset does not exist"); the server
applies the update section only when every prerequisite holds, atomically (RFC 2136 §3.2-3.4), and
answers YXRRSET/NXRRSET otherwise. Reads and the post-update SOA serial come from the same primary
server, over TCP, with the same TSIG key.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from certman.dns.provider import ANY, ChangeResult, Expected, ProviderContext, RRset, canonical_name
from certman.dns.zone import (
    Server,
    answer_rrset,
    check_expected,
    exchange,
    find_zone_name,
    in_zone,
    make_query,
    parse_server,
    rcode_text,
    resolve_addresses,
    show_rrset,
    show_server,
    soa_mname,
)
from certman.errors import ConflictError, DnsError

if TYPE_CHECKING:
    import dns.message
    import dns.update

    from certman.config.toml import Section

ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512")

_KEY_BLOCK = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', re.S)
_ALGORITHM = re.compile(r"algorithm\s+([A-Za-z0-9-]+)\s*;")
_SECRET = re.compile(r'secret\s+"([^"]+)"\s*;')


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key; ``source`` (file or variable) is what messages show, never the secret."""

    name: str
    algorithm: str
    secret: str = field(repr=False, compare=False)
    source: str = ""


def parse_tsig_key(text: str, source: str, wanted: str | None = None) -> TsigKey:
    """A key from BIND's ``tsig-keygen`` output, or nsupdate's ``-y [alg:]name:secret`` form.

    With several ``key`` blocks, ``wanted`` picks one by name. Raises ValueError with a message
    that never contains the secret.
    """
    # Drop # and // comments and /* */ blocks (named.conf syntax), but not inside quotes: a
    # base64 secret may well contain "//". A commented-out old secret must never be used.
    text = re.sub(
        r'"[^"]*"|/\*.*?\*/|(?:#|//)[^\n]*',
        lambda m: m[0] if m[0].startswith('"') else " ",
        text,
        flags=re.DOTALL,
    )
    if "/*" in re.sub(r'"[^"]*"', "", text):
        raise ValueError("a /* comment is not closed")
    blocks = _KEY_BLOCK.findall(text)
    if blocks:
        if wanted is not None:
            blocks = [b for b in blocks if canonical_name(b[0]) == canonical_name(wanted)]
            if not blocks:
                raise ValueError(f"no key named {wanted!r}")
        if len(blocks) > 1:
            raise ValueError("several keys; choose one with tsig_key_name")
        name, body = blocks[0]
        algorithm = _ALGORITHM.search(body)
        secret = _SECRET.search(body)
        if algorithm is None or secret is None:
            raise ValueError(f"key {name!r} lacks an algorithm or secret statement")
        return _checked(name, algorithm.group(1), secret.group(1), source)
    parts = text.strip().split(":")
    if len(parts) == 2:
        return _checked(wanted or parts[0], "hmac-sha256", parts[1], source)
    if len(parts) == 3:
        return _checked(parts[1], parts[0], parts[2], source)
    raise ValueError('expected a BIND key block (tsig-keygen) or "[algorithm:]name:secret"')


def _checked(name: str, algorithm: str, secret: str, source: str) -> TsigKey:
    algorithm = algorithm.lower()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r} not supported (use {', '.join(ALGORITHMS)})")
    try:
        base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the secret of key {name!r} is not valid base64") from None
    return TsigKey(canonical_name(name), algorithm, secret, source)


@dataclass(frozen=True)
class Rfc2136Options:
    """``[dns.NAME]`` with ``type = "rfc2136"``; see docs/providers/rfc2136.md."""

    server: str | None = None
    port: int = 53
    zone: str | None = None
    tsig: TsigKey | None = None
    timeout: float | None = None


class Rfc2136Provider:
    type_name: ClassVar[str] = "rfc2136"

    @classmethod
    def parse_options(cls, section: Section) -> Rfc2136Options:
        server = section.opt_string("server")
        port = section.integer("port", 53, low=1, high=65535)
        zone = section.domain("zone") if section.has("zone") else None
        wanted = section.opt_string("tsig_key_name")
        secret = section.secret("tsig_key", required=False)
        tsig = None
        if secret is not None:
            key = "tsig_key_file" if secret.source.startswith("file:") else "tsig_key_env"
            try:
                tsig = parse_tsig_key(secret.value, secret.source, wanted)
            except ValueError as exc:
                raise section.error(key, str(exc)) from None
        elif wanted is not None:
            raise section.error("tsig_key_name", "needs tsig_key_file or tsig_key_env")
        timeout = section.number("timeout", low=0.1) if section.has("timeout") else None
        return Rfc2136Options(server, port, zone, tsig, timeout)

    def __init__(self, name: str, options: Rfc2136Options, context: ProviderContext) -> None:
        self.name = name
        self.options = options
        self.context = context
        self.timeout = options.timeout or context.timeout
        self._primaries: dict[str, Server] = {}

    def __repr__(self) -> str:
        return f"Rfc2136Provider({self.name!r})"

    # -- the provider contract -------------------------------------------------------------------

    def read(self, name: str, rdtype: str) -> RRset | None:
        name = canonical_name(name)
        zone = self._zone(name)
        return self._read(self._primary(zone), name, rdtype.upper())

    def replace(self, rrset: RRset, expected: Expected = ANY) -> ChangeResult:
        import dns.rdataset

        zone = self._zone(rrset.name)
        server = self._primary(zone)
        current = self._read(server, rrset.name, rrset.rdtype)
        if current == rrset:  # already in place: a repeat of a finished write is a no-op
            return ChangeResult(zone, self._serial(zone, server))
        check_expected(current, expected, self._where("replace", rrset.name, rrset.rdtype))
        update = self._update(zone, rrset.name, rrset.rdtype, expected)
        rdataset = dns.rdataset.from_text_list("IN", rrset.rdtype, rrset.ttl, sorted(rrset.rdatas))
        update.replace(rrset.name + ".", rdataset)
        self._send(
            zone,
            server,
            update,
            name=rrset.name,
            rdtype=rrset.rdtype,
            action="replace",
            wanted=rrset,
        )
        return ChangeResult(zone, self._serial(zone, server))

    def delete(self, name: str, rdtype: str, expected: Expected = ANY) -> ChangeResult:
        name, rdtype = canonical_name(name), rdtype.upper()
        zone = self._zone(name)
        server = self._primary(zone)
        current = self._read(server, name, rdtype)
        if current is None:  # deleting what is absent is a no-op, whatever was expected
            return ChangeResult(zone, self._serial(zone, server))
        check_expected(current, expected, self._where("delete", name, rdtype))
        update = self._update(zone, name, rdtype, expected)
        update.delete(name + ".", rdtype)
        self._send(zone, server, update, name=name, rdtype=rdtype, action="delete", wanted=None)
        return ChangeResult(zone, self._serial(zone, server))

    def prove_update_allowed(self, name: str, rdtype: str) -> str:
        """Show that the key may change ``name``/``rdtype`` without changing the live RRset.

        One signed UPDATE whose prerequisite is the RRset exactly as read now (RFC 2136 §2.4.2,
        or "does not exist", §2.4.3) and whose only update deletes one record that cannot be
        there: the server checks the key's permission for that name and type (§3.3) and then
        has nothing to delete (§3.4.2.4), so the zone and its serial stay as they were. Returns
        what was proved; raises DnsError naming the server and the refusal.
        """
        import dns.rdata
        import dns.rdataclass
        import dns.rdatatype

        name, rdtype = canonical_name(name), rdtype.upper()
        zone = self._zone(name)
        server = self._primary(zone)
        current = self._read(server, name, rdtype)
        serial = self._serial(zone, server)
        update = self._update(zone, name, rdtype, current)
        impossible = {"TLSA": "3 1 1 " + "00" * 31 + "01", "TXT": '"certman-preflight"'}
        rdata = dns.rdata.from_text(
            dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), impossible.get(rdtype, "")
        )
        update.delete(name + ".", rdata)
        self._send(zone, server, update, name=name, rdtype=rdtype, action="prove", wanted=current)
        after = self._serial(zone, server)
        if after != serial:
            return f"{self._where('update', name, rdtype, server)}: allowed (serial moved: {after})"
        return f"{self._where('update', name, rdtype, server)}: allowed, nothing changed"

    def wait_in_sync(self, change: ChangeResult, timeout: float) -> None:
        """RFC 2136 has no "in sync" signal of its own; ``certman.dns.propagation`` checks."""

    # -- helpers ---------------------------------------------------------------------------------

    def _where(self, action: str, name: str, rdtype: str, server: Server | None = None) -> str:
        at = f" at {show_server(server)}" if server else ""
        return f"rfc2136 provider {self.name!r}: {action} {name} {rdtype}{at}"

    def _zone(self, name: str) -> str:
        name = canonical_name(name)
        zone = self.options.zone
        if zone is None:
            try:
                zone = find_zone_name(name, self.context.resolvers, self.timeout)
            except DnsError as exc:
                raise DnsError(f"rfc2136 provider {self.name!r}: {exc}") from None
        if not in_zone(name, zone):
            raise DnsError(f"rfc2136 provider {self.name!r}: {name} is not in zone {zone}")
        return zone

    def _primary(self, zone: str) -> Server:
        """``server`` from the config, else the zone's SOA MNAME (RFC 2136 §4.3), resolved."""
        if zone in self._primaries:
            return self._primaries[zone]
        host = self.options.server
        try:
            if host is None:
                host = soa_mname(zone, self.context.resolvers, self.timeout)
            addresses = resolve_addresses(host, self.context.resolvers, self.timeout)
        except DnsError as exc:
            raise DnsError(f"rfc2136 provider {self.name!r}: primary of {zone}: {exc}") from None
        if not addresses:
            raise DnsError(f"rfc2136 provider {self.name!r}: primary {host} has no address")
        server = parse_server(addresses[0], self.options.port)
        self._primaries[zone] = server
        return server

    def _sign(self, message: dns.message.Message) -> None:
        import dns.tsigkeyring

        key = self.options.tsig
        if key is not None:
            keyring = dns.tsigkeyring.from_text({key.name + ".": (key.algorithm, key.secret)})
            message.use_tsig(keyring, keyname=key.name + ".")

    def _ask(self, server: Server, name: str, rdtype: str, action: str) -> dns.message.Message:
        import dns.flags
        import dns.rcode

        query = make_query(name, rdtype, recurse=False)
        self._sign(query)
        try:
            reply = exchange(query, server, self.timeout, tcp=True)
        except DnsError as exc:
            raise DnsError(f"{self._where(action, name, rdtype, server)}: {exc}") from None
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise DnsError(
                f"{self._where(action, name, rdtype, server)}: answered {rcode_text(reply)}"
                " (server not authoritative for the zone, or queries refused)"
            )
        if not reply.flags & dns.flags.AA:
            raise DnsError(
                f"{self._where(action, name, rdtype, server)}: answer not authoritative"
                " (no AA flag): not a primary for this zone"
            )
        return reply

    def _read(self, server: Server, name: str, rdtype: str) -> RRset | None:
        return answer_rrset(self._ask(server, name, rdtype, "read"), name, rdtype)

    def _serial(self, zone: str, server: Server) -> int:
        soa = answer_rrset(self._ask(server, zone, "SOA", "read"), zone, "SOA")
        if soa is None:
            raise DnsError(f"{self._where('read', zone, 'SOA', server)}: no SOA record")
        return int(next(iter(soa.rdatas)).split()[2])

    def _update(
        self, zone: str, name: str, rdtype: str, expected: Expected
    ) -> dns.update.UpdateMessage:
        import dns.rdataset
        import dns.update

        update = dns.update.UpdateMessage(zone + ".")
        if expected is None:
            update.absent(name + ".", rdtype)  # RFC 2136 §2.4.3
        elif isinstance(expected, RRset):
            # §2.4.2: the whole RRset must match (TTL is not compared, it is sent as zero).
            rdataset = dns.rdataset.from_text_list("IN", rdtype, 0, sorted(expected.rdatas))
            update.present(name + ".", rdataset)
        self._sign(update)
        return update

    def _send(
        self,
        zone: str,
        server: Server,
        update: dns.update.UpdateMessage,
        *,
        name: str,
        rdtype: str,
        action: str,
        wanted: RRset | None,
    ) -> None:
        import dns.rcode

        where = self._where(action, name, rdtype, server)
        try:
            reply = exchange(update, server, self.timeout, tcp=True)
        except DnsError as exc:
            raise DnsError(f"{where}: {exc}") from None
        rcode = reply.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        if rcode in (dns.rcode.YXRRSET, dns.rcode.NXRRSET):
            now = self._read(server, name, rdtype)
            if now == wanted:  # a concurrent writer made the same change: nothing to do
                return
            raise ConflictError(
                f"{where}: prerequisite failed ({rcode_text(reply)}); now {show_rrset(now)}"
            )
        raise DnsError(f"{where}: server answered {rcode_text(reply)}{_hint(rcode)}")


def _hint(rcode: int) -> str:
    import dns.rcode

    hints = {
        dns.rcode.NOTAUTH: " (server not authoritative for the zone, or TSIG key rejected)",
        dns.rcode.REFUSED: " (update not allowed for this key/address)",
        dns.rcode.NOTZONE: " (name outside the zone)",
    }
    return hints.get(dns.rcode.Rcode(rcode), "")
