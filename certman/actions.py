"""The engine's actions: each one idempotent, each one touching the outside world once.

``engine.advance`` calls these with the state as last saved; a crash before the next save
repeats the action, so every action first looks at what is already done.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from certman import keys, rollover
from certman.config import CertificateConfig, KeyType
from certman.errors import CertmanError, ConflictError, DnsError, PropagationTimeout
from certman.fsutil import atomic_write, private_dir
from certman.state import CertDir, CertInfo, KeyInfo, Operation, State, TlsaProgress

if TYPE_CHECKING:
    from cryptography import x509

    from certman.acme_ari import RenewalWindow
    from certman.dns.provider import ChangeResult, DnsProvider, RRset
    from certman.engine import Context
    from certman.postfix import ServedKey

DEFAULT_TLSA_TTL = 300  # used only when neither the config nor an existing RRset gives one
MAX_CAS_ATTEMPTS = 8
LARGE_RRSET = 12  # some large senders handled only about a dozen TLSA records per name (2024)


# -- keys --------------------------------------------------------------------------------------


def new_key(cdir: CertDir, kind: KeyType, now: float) -> KeyInfo:
    key = keys.generate_key(kind)
    spki = keys.spki_sha256(key.public_key())
    info = KeyInfo(KeyInfo.make_id(kind, spki), kind, spki, now)
    private_dir(cdir.root / "keys")
    keys.write_private_key(cdir.key_file(info.id), key)
    return info


def load_key(cdir: CertDir, info: KeyInfo) -> keys.PrivateKey:
    return keys.read_private_key(cdir.key_file(info.id))


def adopt(ctx: Context, cert: CertificateConfig, cdir: CertDir, state: State) -> State:
    """Take what Postfix serves now as the current key; make one where nothing is served."""
    from certman.postfix import served_keys

    now = ctx.clock()
    served = {s.key_type.is_rsa: s for s in served_keys(cert, ctx.postfix)}
    current: dict[str, KeyInfo] = {}
    certs: dict[str, CertInfo] = {}
    for kind in cert.key_types:
        found = served.get(kind.is_rsa)
        if found is None:
            current[kind.value] = new_key(cdir, kind, now)
            ctx.progress(f"{cert.name}: no {kind.value} key served; generated one")
            continue
        info, cert_info = _adopt_served(cdir, found, now)
        current[kind.value] = info
        certs[kind.value] = cert_info
        ctx.progress(
            f"{cert.name}: adopted the {info.key_type.value} key served from {found.source_path}"
        )
    nxt = {k: new_key(cdir, KeyType(k), now) for k in current}
    state = state.evolve(current=current, next=nxt, certs=certs)
    if certs:
        due = any(_needs_replacing(cert, info) for info in certs.values())
        state = state.evolve(renew_after=now if due else renew_after(cert, state))
    return state.note(now, "adopted the served state; next key staged")


def _adopt_served(cdir: CertDir, served: ServedKey, now: float) -> tuple[KeyInfo, CertInfo]:
    key = keys.load_private_key(served.private_key_pem, served.source_path)
    kind = keys.key_type_of(key)
    spki = keys.spki_sha256(key.public_key())
    info = KeyInfo(KeyInfo.make_id(kind, spki), kind, spki, now, served.source_path)
    private_dir(cdir.root / "keys")
    keys.write_private_key(cdir.key_file(info.id), key)
    return info, _store_chain(cdir, info, served.chain_pem)


def _needs_replacing(cert: CertificateConfig, info: CertInfo) -> bool:
    """An adopted certificate that is self-signed or misses a configured name is renewed now."""
    from cryptography import x509

    leaf = keys.load_pem_chain(Path(info.path).read_bytes(), info.path)[0]
    if leaf.issuer == leaf.subject:
        return True
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    names = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    return not set(cert.domains) <= names


def _store_chain(cdir: CertDir, key: KeyInfo, chain_pem: bytes) -> CertInfo:
    chain = keys.load_pem_chain(chain_pem, f"chain for key {key.id}")
    leaf = chain[0]
    if keys.cert_spki_sha256(leaf) != key.spki_sha256:
        raise CertmanError(f"certificate {leaf.serial_number:x} does not match key {key.id}")
    serial = f"{leaf.serial_number:x}"
    path = cdir.cert_file(key.id, serial)
    atomic_write(path, chain_pem, mode=0o644)
    return CertInfo(
        key.id,
        serial,
        leaf.not_valid_before_utc.timestamp(),
        leaf.not_valid_after_utc.timestamp(),
        _ari_id(leaf),
        str(path),
    )


def _ari_id(leaf: x509.Certificate) -> str | None:
    from certman.acme_issue import ari_cert_id

    try:
        return ari_cert_id(leaf)
    except CertmanError:
        return None


def prepare_keys(
    ctx: Context, cert: CertificateConfig, cdir: CertDir, state: State, operation: Operation
) -> State:
    """COMPROMISED: a fresh next key, since the staged one sat on the same disk as the old key."""
    if operation is Operation.COMPROMISED:
        now = ctx.clock()
        fresh = {k: new_key(cdir, KeyType(k), now) for k in state.current}
        retired = {k.spki_sha256 for k in state.next.values()}
        return state.evolve(next=fresh, next_ready_at=None, retired=(*state.retired, *retired))
    return ensure_next_keys(ctx, cert, cdir, state)


def ensure_next_keys(ctx: Context, cert: CertificateConfig, cdir: CertDir, state: State) -> State:
    missing = [k for k in state.current if k not in state.next]
    if not missing:
        return state
    now = ctx.clock()
    made = {k: new_key(cdir, KeyType(k), now) for k in missing}
    return state.evolve(next={**state.next, **made}, next_ready_at=None)


# -- TLSA ---------------------------------------------------------------------------------------


def key_records(cert: CertificateConfig, cdir: CertDir, key_infos: list[KeyInfo]) -> set[str]:
    """The TLSA rdatas (usage 3: the key itself) for ``key_infos``, RFC 6698 §2.1."""
    from certman import tlsa

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
    from certman import tlsa

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
    from certman.propagation import find_zone

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
    from certman.propagation import check_published, find_zone, validated_rrset

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


# -- certificates ---------------------------------------------------------------------------------


def issue(
    ctx: Context, cert: CertificateConfig, cdir: CertDir, state: State
) -> dict[str, CertInfo]:
    """A certificate for every target key; one already staged for the same key is reused."""
    from certman.acme_issue import issue_certificate

    now = ctx.clock()
    staged = dict(state.staged)
    for slot, key in rollover.target_keys(state).items():
        have = staged.get(slot)
        if have is not None and have.key_id == key.id and have.not_after > now:
            continue
        old = state.certs.get(slot)
        replaces = old.ari_id if old is not None and state.operation is Operation.RENEW else None
        issued = issue_certificate(
            ctx.config,
            cert,
            load_key(cdir, key),
            providers=ctx.providers(),
            sleep=ctx.sleep,
            clock=ctx.clock,
            replaces=replaces,
            progress=ctx.progress,
        )
        staged[slot] = _store_chain(cdir, key, issued.fullchain_pem)
        cdir.save(state.evolve(staged=staged))
    return staged


def renew_after(
    cert: CertificateConfig, state: State, windows: dict[str, RenewalWindow] | None = None
) -> float | None:
    """When the served certificates are due: inside the CA's ARI window where it gave one,
    else when ``renew_fraction`` of the lifetime is left (RFC 9773 §4.2; ``acme_ari``)."""
    from certman.acme_ari import renewal_time

    times = []
    for slot, info in (state.staged or state.certs).items():
        window = (windows or {}).get(slot)
        pick = _stable_pick(info, window) if window else None
        times.append(
            renewal_time(
                info.not_before, info.not_after, cert.renew_fraction, window, ari_pick=pick
            )
        )
    return min(times, default=None)


def _stable_pick(info: CertInfo, window: RenewalWindow) -> float:
    """A point in the window that stays put across checks (re-picking at every check would pull
    renewals towards the window's start), spread across certificates by their serial."""
    import hashlib

    spread = int(hashlib.sha256(info.serial.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return window.start + (window.end - window.start) * spread


def check_ari(ctx: Context, cert: CertificateConfig, state: State) -> tuple[float | None, float]:
    """Renewal time from the CA's renewalInfo; on any trouble fall back to the lifetime rule and
    ask again later (RFC 9773 §4.3.3: the client then decides by itself)."""
    from certman.acme_ari import ARI_DEFAULT_RECHECK, renewal_info

    now = ctx.clock()
    windows: dict[str, RenewalWindow] = {}
    recheck = now + ARI_DEFAULT_RECHECK
    for slot, info in state.certs.items():
        try:
            window = renewal_info(ctx.config, Path(info.path).read_bytes(), clock=ctx.clock)
        except (CertmanError, OSError) as exc:
            ctx.progress(f"{cert.name}: renewalInfo unavailable ({exc}); using the lifetime rule")
            return renew_after(cert, state), now + 3600
        if window is None:  # the CA offers no ARI: ask again in a day
            return renew_after(cert, state), now + 86400
        windows[slot] = window
        recheck = min(recheck, window.recheck_at)
    return renew_after(cert, state, windows), recheck
