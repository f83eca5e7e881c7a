"""DANE steps: the TLSA records certman owns, publishing them (compare-and-swap) and confirming
that every authoritative nameserver serves them (RFC 7671 §8.1).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from certman import keys
from certman.config.schema import CertificateConfig
from certman.errors import ConflictError, DnsError, PropagationTimeout
from certman.fsutil import write_point
from certman.lifecycle import rollover
from certman.lifecycle.state import State, TlsaProgress
from certman.lifecycle.statefile import CertDir
from certman.lifecycle.steps.keys import load_key
from certman.model import KeyInfo

if TYPE_CHECKING:
    from certman.dns.provider import ChangeResult, DnsProvider, RRset
    from certman.lifecycle.context import Context


DEFAULT_TLSA_TTL = 300  # used only when neither the config nor an existing RRset gives one


MAX_CAS_ATTEMPTS = 8


LARGE_RRSET = 12  # some large senders handled only about a dozen TLSA records per name (2024)


def key_records(cert: CertificateConfig, cdir: CertDir, key_infos: list[KeyInfo]) -> set[str]:
    """The TLSA rdatas (usage 3: the key itself) for ``key_infos``, RFC 6698 §2.1."""
    from certman.dane import tlsa

    assert cert.dane is not None
    records = set()
    for info in key_infos:
        for params in cert.dane.records:
            if params.usage != 3:
                continue
            if params.selector == 1 and params.mtype == 1:
                records.add(f"3 1 1 {info.spki_sha256}")
            elif cdir.key_file(info.id).exists():
                records.add(tlsa.key_rdata(params, load_key(cdir, info).public_key()))
    return records


def issuer_records(cert: CertificateConfig, state: State, *, staged_only: bool = False) -> set[str]:
    """Usage 2 (DANE-TA) records for the issuers of the served and staged chains (opt-in only:
    they pin the CA's intermediate, which Let's Encrypt rotates; RFC 7671 §5.2)."""
    from certman.dane import tlsa

    assert cert.dane is not None
    params_list = [p for p in cert.dane.records if p.usage == 2]
    infos = [*state.staged.values()] + ([] if staged_only else [*state.certs.values()])
    records = set()
    for info in infos if params_list else []:
        chain = keys.load_pem_chain(Path(info.path).read_bytes(), info.path)
        for params in params_list:
            if len(chain) > 1:
                records.add(tlsa.key_rdata(params, chain[1].public_key()))
    return records


def owned_records(cert: CertificateConfig, cdir: CertDir, state: State) -> set[str]:
    """Records of every key this certificate ever published (for retired keys: 3 1 1 at least)."""
    known = [*state.current.values(), *state.next.values(), *state.previous.values()]
    records = key_records(cert, cdir, known)
    return (
        records
        | {f"3 1 1 {spki}" for spki in state.retired}
        | {f"3 1 1 {k.spki_sha256}" for k in known}
    )


def facts_before(ctx: Context, cert: CertificateConfig) -> TlsaProgress:
    """What every TLSA RRset holds before this PUBLISH writes anything (RFC 7671 §8.1 timing).

    Saved before the first DNS write (write-ahead) and never recomputed from what certman itself
    wrote: the largest TTL in place, whether a name had no RRset, and, for such a name, the
    negative-caching TTL of its own zone (RFC 2308 §5), the largest across zones.
    """
    from certman.dns.propagation import find_zone

    assert cert.dane is not None
    provider = ctx.provider(cert.dane.provider)
    timeout = ctx.config.propagation.query_timeout
    ttls: list[int] = []
    negative: list[int] = []
    for name in cert.dane.tlsa_names():
        existing = provider.read(name, "TLSA")
        if existing is not None:
            ttls.append(existing.ttl)
            continue
        zone = ctx.retrying(partial(find_zone, name, ctx.config.resolvers, timeout))
        negative.append(zone.negative_ttl)
    return TlsaProgress(
        ttl_before=max(ttls, default=None),
        negative_ttl=max(negative, default=None),
        name_was_empty=bool(negative),
    )


def publish(
    ctx: Context, cert: CertificateConfig, state: State, facts: TlsaProgress
) -> tuple[TlsaProgress, set[str], set[str]]:
    """Compare-and-swap our records into every TLSA RRset; other hosts' records stay.

    ``facts`` are the write-ahead facts of ``facts_before``. Returns the timing facts, the key
    digests whose records went away, and the issuer (2 1 x) records now published.
    """
    assert cert.dane is not None
    cdir = CertDir.of(ctx.config.state_dir, cert.name)
    issuers = issuer_records(cert, state)
    if issuers:
        ctx.progress(
            f"warning: {cert.name}: 2 1 x records pin the CA's intermediate; a CA that rotates "
            "intermediates (Let's Encrypt does) makes every issuance wait for a new record"
        )
    wanted = key_records(cert, cdir, rollover.wanted_keys(state)) | issuers
    owned = (owned_records(cert, cdir, state) | set(state.issuer_records)) - wanted
    provider = ctx.provider(cert.dane.provider)
    ttls_after, serials, zones = [], [], set()
    for name in cert.dane.tlsa_names():
        after, change = _swap_records(ctx, provider, name, wanted, owned, cert.dane.ttl)
        ttls_after.append(after.ttl)
        if change is not None:
            zones.add(change.zone)
            if change.serial is not None:
                serials.append(change.serial)
            # The provider's own signal (Route 53 GetChange = INSYNC), as for DNS-01.
            provider.wait_in_sync(change, ctx.config.propagation.timeout)
        if len(after.rdatas) > LARGE_RRSET:
            ctx.progress(f"warning: {name} TLSA RRset has {len(after.rdatas)} records")
    progress = TlsaProgress(
        written_at=ctx.clock(),
        serial=max(serials) if serials and len(zones) == 1 else None,
        ttl_before=facts.ttl_before,
        ttl_after=max(ttls_after),
        negative_ttl=facts.negative_ttl,
        name_was_empty=facts.name_was_empty,
    )
    spkis = {r.split()[-1] for r in owned if r.startswith("3 1 1 ")}
    return progress, spkis, issuers


def _swap_records(
    ctx: Context,
    provider: DnsProvider,
    name: str,
    wanted: set[str],
    owned: set[str],
    ttl: int | None,
) -> tuple[RRset, ChangeResult | None]:
    from certman.dns.provider import RRset

    for _attempt in range(MAX_CAS_ATTEMPTS):
        existing = provider.read(name, "TLSA")
        keep = {r for r in existing.rdatas if r not in owned} if existing else set()
        new_ttl = ttl or (existing.ttl if existing else DEFAULT_TLSA_TTL)
        rrset = RRset.of(name, "TLSA", new_ttl, keep | wanted)
        if existing is not None and existing.rdatas == rrset.rdatas and existing.ttl == new_ttl:
            return existing, None
        try:
            write_point(f"before DNS change {name} TLSA")
            change = provider.replace(rrset, expected=existing)
            write_point(f"after DNS change {name} TLSA")
        except ConflictError:
            ctx.progress(f"{name}: TLSA RRset changed under us; rereading")
            continue
        ctx.progress(f"{name}: TLSA RRset now holds {len(rrset.rdatas)} record(s)")
        return rrset, change
    raise DnsError(f"{name}: TLSA RRset kept changing; gave up after {MAX_CAS_ATTEMPTS} attempts")


def confirm(ctx: Context, cert: CertificateConfig, state: State) -> float | None:
    """One round: the confirmation time when every nameserver serves our RRsets, else None.

    With ``[propagation] validate`` the names must also validate through the resolvers (AD bit,
    RFC 4035 §3.2.3): a broken chain of trust is reported now, not after the 2 x TTL wait.
    The data may still be the old RRset there (caches), which the wait is for.
    """
    from certman.dns.propagation import check_published, find_zone, validated_rrset

    assert cert.dane is not None
    provider = ctx.provider(cert.dane.provider)
    timeout = ctx.config.propagation.query_timeout
    lagging = []
    for name in cert.dane.tlsa_names():
        zone = ctx.retrying(partial(find_zone, name, ctx.config.resolvers, timeout))
        expected = provider.read(name, "TLSA")
        report = check_published(
            name, "TLSA", expected, zone=zone, min_serial=state.tlsa.serial, timeout=timeout
        )
        if not report.published:
            lagging.append(report.summary())
    now = ctx.clock()
    if not lagging:
        if ctx.config.propagation.validate:
            for name in cert.dane.tlsa_names():
                ctx.retrying(partial(validated_rrset, name, "TLSA", ctx.config.resolvers, timeout))
        return now
    # After a timeout the clock restarts when the back-off ends (``confirm_since``): comparing
    # against the first write would fail every later attempt after a single round.
    since = state.tlsa.confirm_since or state.tlsa.written_at or now
    if now - since > ctx.config.propagation.timeout:
        raise PropagationTimeout(
            f"{cert.name}: not published after {now - since:.0f} s: {'; '.join(lagging)}"
        )
    ctx.progress("; ".join(lagging))
    return None
