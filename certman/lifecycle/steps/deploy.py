"""Deploying a staged certificate: the DNS gate, the atomic install, live verification, rollback.

The engine calls these with the state as last saved; each repeats safely after a crash (the
install plan is saved before anything Postfix reads changes, and applying it twice is harmless).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certman import keys
from certman.config.schema import CertificateConfig
from certman.errors import CertmanError
from certman.lifecycle import rollover
from certman.lifecycle.state import Phase, State
from certman.lifecycle.statefile import CertDir
from certman.lifecycle.steps.dane import issuer_records, key_records
from certman.lifecycle.steps.keys import load_key
from certman.model import KeyType

if TYPE_CHECKING:
    from cryptography import x509

    from certman.lifecycle.context import Context
    from certman.postfix.targets import Endpoint


def install(
    ctx: Context, cert: CertificateConfig, cdir: CertDir, state: State
) -> tuple[State, bool]:
    """Gate on DNS, plan the install (archive saved first), switch, reload.

    The plan (``InstallRecord``) is saved in the state before anything Postfix reads changes,
    so a crash at any point can be rolled back; applying the same plan twice is harmless.
    """
    from certman.postfix import install as store

    targets = rollover.target_keys(state)
    postfix = ctx.postfix_for(cert)
    if cert.dane is not None and state.install_record is None:
        # Never serve what validating resolvers cannot see yet (RFC 7671 §8.1).
        missing_keys, missing_issuers = _unpublished(ctx, cert, cdir, state)
        if missing_keys:
            raise CertmanError(
                f"the validating resolver does not return {sorted(missing_keys)[0]}; "
                "refusing to install a certificate DANE clients would reject"
            )
        if missing_issuers:
            # The CA signed with an intermediate we have no 2 1 1 record for: publish it,
            # let it age, then install the certificate already staged.
            ctx.progress(f"{cert.name}: new issuer key; publishing its 2 1 x record first")
            return state.evolve(phase=Phase.PUBLISH), False
    if state.install_record is None:
        bundles = []
        for slot, key in targets.items():
            chain = Path(state.staged[slot].path).read_bytes()
            key_pem = keys.private_key_pem(load_key(cdir, key))
            bundles.append(store.KeyBundle(key.key_type, key_pem, chain))
        record = store.prepare(
            cert, bundles, postfix=postfix, state_dir=ctx.config.state_dir, clock=ctx.clock
        )
        for note in record.notes:
            ctx.progress(f"{cert.name}: {note}")
        state = state.evolve(install_record=record.to_json())
        cdir.save(state)
    assert state.install_record is not None
    store.apply(store.InstallRecord.from_json(state.install_record), postfix=postfix)
    # The reload comes with VERIFY (``reload``): one per run of `certman run` for every
    # certificate it switched on an instance, one per certificate otherwise.
    return state.evolve(reload_pending=True), True


def reload(ctx: Context, cert: CertificateConfig, state: State) -> State:
    """Before verifying: reload Postfix unless this run's one reload already covered ``cert``
    (whose failure is raised here, so the certificate rolls back).

    New smtpd processes read the switched files; a reload repeated after a crash is harmless.
    """
    if not state.reload_pending:
        return state
    if ctx.reloads is None or not ctx.reloads.covers(cert.name):
        ctx.postfix_for(cert).reload()
    return state.evolve(reload_pending=False)


def _unpublished(
    ctx: Context, cert: CertificateConfig, cdir: CertDir, state: State
) -> tuple[set[str], set[str]]:
    """(key records, issuer records) the install needs that validating resolvers do not return."""
    from certman.dns.propagation import validated_rrset

    assert cert.dane is not None
    need_keys = key_records(cert, cdir, list(rollover.target_keys(state).values()))
    need_issuers = issuer_records(cert, state, staged_only=True)
    missing_keys: set[str] = set()
    missing_issuers: set[str] = set()
    for name in cert.dane.tlsa_names():
        timeout = ctx.config.propagation.query_timeout
        rrset = ctx.retrying(partial(validated_rrset, name, "TLSA", ctx.config.resolvers, timeout))
        served = rrset.rdatas if rrset else frozenset()
        missing_keys |= {f"{name}: {r}" for r in need_keys - served}
        missing_issuers |= need_issuers - served
    return missing_keys, missing_issuers


def verify(ctx: Context, cert: CertificateConfig, state: State, attempts: int = 5) -> str | None:
    """None when every target serves the new certificates (and matches DNS); else what did not.

    Every endpoint of every target is probed with its protocol and SNI name. A renewal keeps the
    key, so matching the key alone would pass an smtpd still serving the old certificate: the
    leaf's serial must be the one just installed too. A certificate without DANE is checked
    the same way, without the TLSA comparison.
    """
    from certman.postfix.targets import endpoints

    points = endpoints(cert, ctx.postfix_for(cert))
    problems: list[str] = []
    for attempt in range(attempts):
        # The DANE check reads the chains the leaf check fetched: one handshake per endpoint.
        fetched = _Fetched()
        problems = _stale_certificates(cert, state, points, fetched)
        if not problems and cert.dane is not None:
            problems = _dane_problems(ctx, cert, state, points, fetched)
        if not problems:
            return None
        if attempt + 1 < attempts:
            ctx.sleep(1.0)  # smtpd processes started before the reload finish their session
    return "; ".join(problems)


class _Fetched:
    """Chains fetched in one verification attempt, by (address, port, key type, SNI name,
    implicit TLS): a second check of the same endpoint reuses the chain, never a stale one
    (each attempt starts empty)."""

    def __init__(self) -> None:
        self.chains: dict[tuple[object, ...], list[x509.Certificate]] = {}

    def fetch(self, address: str, port: int, **options: Any) -> list[x509.Certificate]:
        """``fetch_chain(address, port, **options)``, once per distinct endpoint."""
        from certman.dane.probe import fetch_chain

        key = (address, port, *sorted(options.items()))
        if key not in self.chains:
            self.chains[key] = fetch_chain(address, port, **options)
        return self.chains[key]


def probe_address(cert: CertificateConfig) -> str:
    if cert.install.probe_address:
        return cert.install.probe_address
    return cert.dane.probe_address if cert.dane else "127.0.0.1"


def _dane_problems(
    ctx: Context, cert: CertificateConfig, state: State, points: list[Endpoint], fetched: _Fetched
) -> list[str]:
    """Each endpoint on a DANE port against its validated TLSA RRset (RFC 7672 §3)."""
    from certman.dane.probe import verify_endpoint
    from certman.dns.propagation import validated_rrset
    from certman.errors import DnsError

    assert cert.dane is not None
    targets = rollover.target_keys(state)
    dual = len(targets) > 1
    problems = []
    for point in points:
        if point.port not in cert.dane.ports:
            continue
        hosts = [point.server_name] if point.server_name in cert.dane.hosts else cert.dane.hosts
        for host in hosts:
            name = f"_{point.port}._tcp.{host}"
            try:
                rrset = validated_rrset(
                    name, "TLSA", ctx.config.resolvers, ctx.config.propagation.query_timeout
                )
            except DnsError as exc:
                problems.append(f"{point.target}: {name}: {exc}")
                continue
            for slot, key in targets.items():
                result = verify_endpoint(
                    point.server_name,
                    point.port,
                    address=probe_address(cert),
                    expected_spki_sha256=key.spki_sha256,
                    tlsa=rrset,
                    timeout=10.0,
                    key_type=KeyType(slot) if dual else None,
                    fetch=partial(fetched.fetch, implicit_tls=point.implicit_tls),
                )
                if not result.ok:
                    problems.append(f"{point.target}: {result.detail}")
    return problems


def _stale_certificates(
    cert: CertificateConfig, state: State, points: list[Endpoint], fetched: _Fetched
) -> list[str]:
    dual = len(state.staged) > 1
    address = probe_address(cert)
    problems = []
    for point in points:
        for slot, info in state.staged.items():
            where = f"{point.target} {address}:{point.port}" + (f" ({slot})" if dual else "")
            try:
                leaf = fetched.fetch(
                    address,
                    point.port,
                    timeout=10.0,
                    key_type=KeyType(slot) if dual else None,
                    server_name=point.server_name,
                    implicit_tls=point.implicit_tls,
                )[0]
            except CertmanError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if f"{leaf.serial_number:x}" != info.serial:
                served = f"{leaf.serial_number:x}"
                problems.append(f"{where} serves certificate {served}, not {info.serial}")
    return problems


def rollback(ctx: Context, cert: CertificateConfig, state: State) -> None:
    from certman.postfix import install as store

    postfix = ctx.postfix_for(cert)
    if state.install_record is not None:
        # The record names only this certificate's targets: no other target is touched.
        store.rollback(store.InstallRecord.from_json(state.install_record), postfix=postfix)
    postfix.reload()  # also what a switch still waiting for its reload needed
