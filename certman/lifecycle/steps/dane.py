"""DANE steps: the TLSA records certman owns, publishing them (compare-and-swap) and confirming
that every authoritative nameserver serves them (RFC 7671 §8.1).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from certman import keys
from certman.config.schema import CertificateConfig
from certman.errors import ConflictError, DnsError, PropagationTimeout
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


def publish(
    ctx: Context, cert: CertificateConfig, state: State
) -> tuple[TlsaProgress, set[str], set[str]]:
    """Compare-and-swap our records into every TLSA RRset; other hosts' records stay.

    Returns the timing facts, the key digests whose records went away, and the issuer (2 1 x)
    records now published.
    """
    from certman.dns.propagation import find_zone

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
    ttls_before, ttls_after, serials, zones, empty = [], [], [], set(), False
    for name in cert.dane.tlsa_names():
        before, after, change = _swap_records(ctx, provider, name, wanted, owned, cert.dane.ttl)
        if before is None:
            empty = True
        else:
            ttls_before.append(before.ttl)
        ttls_after.append(after.ttl)
        if change is not None:
            zones.add(change.zone)
            if change.serial is not None:
                serials.append(change.serial)
        if len(after.rdatas) > LARGE_RRSET:
            ctx.progress(f"warning: {name} TLSA RRset has {len(after.rdatas)} records")
    first = cert.dane.tlsa_names()[0]
    zone = find_zone(first, ctx.config.resolvers, ctx.config.propagation.query_timeout)
    progress = TlsaProgress(
        written_at=ctx.clock(),
        serial=max(serials) if serials and len(zones) == 1 else None,
        ttl_before=max(ttls_before, default=None),
        ttl_after=max(ttls_after),
        negative_ttl=zone.negative_ttl,
        name_was_empty=empty,
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
) -> tuple[RRset | None, RRset, ChangeResult | None]:
    from certman.dns.provider import RRset

    for _attempt in range(MAX_CAS_ATTEMPTS):
        existing = provider.read(name, "TLSA")
        keep = {r for r in existing.rdatas if r not in owned} if existing else set()
        new_ttl = ttl or (existing.ttl if existing else DEFAULT_TLSA_TTL)
        rrset = RRset.of(name, "TLSA", new_ttl, keep | wanted)
        if existing is not None and existing.rdatas == rrset.rdatas and existing.ttl == new_ttl:
            return existing, existing, None
        try:
            change = provider.replace(rrset, expected=existing)
        except ConflictError:
            ctx.progress(f"{name}: TLSA RRset changed under us; rereading")
            continue
        ctx.progress(f"{name}: TLSA RRset now holds {len(rrset.rdatas)} record(s)")
        return existing, rrset, change
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
        zone = find_zone(name, ctx.config.resolvers, timeout)
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
                validated_rrset(name, "TLSA", ctx.config.resolvers, timeout)
        return now
    written = state.tlsa.written_at or now
    if now - written > ctx.config.propagation.timeout:
        raise PropagationTimeout(
            f"{cert.name}: not published after {now - written:.0f} s: {'; '.join(lagging)}"
        )
    ctx.progress("; ".join(lagging))
    return None
