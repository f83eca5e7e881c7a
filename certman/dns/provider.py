"""The DNS provider contract: whole RRsets in one zone, every method idempotent.

A provider writes and reads RRsets; it does not decide when a record is "published" (that is
``certman.dns.propagation``'s job, the same for every provider). Built-in providers are found by
name; third-party ones register under the entry-point group ``certman.dns_providers`` with a
class that has ``parse_options(section)`` and a constructor ``(name, options, context)``.

Constructors must stay cheap: no network, no SDK client (build those on first use), so that a cron
run with nothing to do never pays for them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from certman.plugins import load_provider_class

if TYPE_CHECKING:
    from certman.config.toml import Section


def canonical_name(name: str) -> str:
    """Owner names are compared lower-case, absolute, without the trailing dot."""
    return name.strip().lower().removesuffix(".")


def canonical_rdata(rdtype: str, text: str) -> str:
    """One presentation form per rdata, so RRsets read back from any server compare equal."""
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
    return str(rdata.to_text()).lower() if rdtype.upper() == "TLSA" else str(rdata.to_text())


@dataclass(frozen=True)
class RRset:
    """All records of one type at one name, with the one TTL DNS gives an RRset (RFC 2181 §5.2)."""

    name: str
    rdtype: str
    ttl: int
    rdatas: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, name: str, rdtype: str, ttl: int, rdatas: Iterable[str]) -> RRset:
        kind = rdtype.upper()
        return cls(
            canonical_name(name), kind, ttl, frozenset(canonical_rdata(kind, r) for r in rdatas)
        )

    def with_rdatas(self, rdatas: Iterable[str]) -> RRset:
        return RRset.of(self.name, self.rdtype, self.ttl, rdatas)

    def to_zone_lines(self) -> list[str]:
        return [f"{self.name}. {self.ttl} IN {self.rdtype} {r}" for r in sorted(self.rdatas)]


class AnyValue:
    """Marker for "replace whatever is there" (no compare-and-swap)."""

    def __repr__(self) -> str:
        return "ANY"


ANY = AnyValue()
Expected = RRset | None | AnyValue


@dataclass(frozen=True)
class ChangeResult:
    """What a write produced: the zone and, where the provider knows it, the new SOA serial."""

    zone: str
    serial: int | None = None
    change_id: str | None = None


@dataclass(frozen=True)
class ProviderContext:
    """What every provider may use: the resolvers to find zones and a per-request timeout."""

    resolvers: tuple[str, ...] = ()
    timeout: float = 10.0


@runtime_checkable
class DnsProvider(Protocol):
    """A writer of whole RRsets. ``expected`` makes a write a compare-and-swap.

    ``expected=ANY`` replaces unconditionally; ``expected=None`` requires the RRset to be absent;
    an ``RRset`` requires exactly those rdatas to be there. A mismatch raises ``ConflictError``.
    Writing what is already there, or deleting what is absent, is a no-op.
    """

    name: str

    def read(self, name: str, rdtype: str) -> RRset | None: ...

    def replace(self, rrset: RRset, expected: Expected = ANY) -> ChangeResult: ...

    def delete(self, name: str, rdtype: str, expected: Expected = ANY) -> ChangeResult: ...

    def wait_in_sync(self, change: ChangeResult, timeout: float) -> None:
        """A provider's own "in sync" signal (Route 53 GetChange INSYNC); a no-op elsewhere."""
        ...


class ProviderClass(Protocol):
    """What a provider class offers to the registry."""

    type_name: ClassVar[str]

    @classmethod
    def parse_options(cls, section: Section) -> Any: ...

    def __call__(self, name: str, options: Any, context: ProviderContext) -> DnsProvider: ...


def create_provider(
    type_name: str, name: str, options: Any, context: ProviderContext
) -> DnsProvider:
    """Instantiate a configured provider (cheap: providers connect on first use)."""
    cls = load_provider_class(type_name, f"provider {name!r}")
    provider: DnsProvider = cls(name, options, context)
    return provider
