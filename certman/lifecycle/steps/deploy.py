"""Deploying a staged certificate: the DNS gate, the atomic install, live verification, rollback.

The engine calls these with the state as last saved; each repeats safely after a crash (the
install plan is saved before anything Postfix reads changes, and applying it twice is harmless).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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
    from certman.lifecycle.context import Context


def install(
    ctx: Context, cert: CertificateConfig, cdir: CertDir, state: State
) -> tuple[State, bool]:
    """Gate on DNS, plan the install (archive saved first), switch, reload.

    The plan (``InstallRecord``) is saved in the state before anything Postfix reads changes,
    so a crash at any point can be rolled back; applying the same plan twice is harmless.
    """
    from certman.postfix import install as store

    targets = rollover.target_keys(state)
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
            cert, bundles, postfix=ctx.postfix, state_dir=ctx.config.state_dir, clock=ctx.clock
        )
        for note in record.notes:
            ctx.progress(f"{cert.name}: {note}")
        state = state.evolve(install_record=record.to_json())
        cdir.save(state)
    assert state.install_record is not None
    store.apply(store.InstallRecord.from_json(state.install_record), postfix=ctx.postfix)
    ctx.postfix.reload()
    return state, True


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
        rrset = validated_rrset(
            name, "TLSA", ctx.config.resolvers, ctx.config.propagation.query_timeout
        )
        served = rrset.rdatas if rrset else frozenset()
        missing_keys |= {f"{name}: {r}" for r in need_keys - served}
        missing_issuers |= need_issuers - served
    return missing_keys, missing_issuers


def verify(ctx: Context, cert: CertificateConfig, state: State, attempts: int = 5) -> str | None:
    """None when every endpoint serves the new certificates and matches DNS; else what did not.

    A renewal keeps the key, so matching the key alone would pass an smtpd still serving the old
    certificate: the leaf's serial must be the one just installed too.
    """
    from certman.dane.probe import verify_live

    if cert.dane is None:
        return None
    targets = rollover.target_keys(state)
    expected = {KeyType(slot): k.spki_sha256 for slot, k in targets.items()}
    problems: list[str] = []
    for attempt in range(attempts):
        problems = _stale_certificates(cert, state)
        if not problems:
            results = verify_live(cert, resolvers=ctx.config.resolvers, expected=expected)
            problems = [r.detail for r in results if not r.ok]
        if not problems:
            return None
        if attempt + 1 < attempts:
            ctx.sleep(1.0)  # smtpd processes started before the reload finish their session
    return "; ".join(problems)


def _stale_certificates(cert: CertificateConfig, state: State) -> list[str]:
    from certman.dane.probe import fetch_chain

    assert cert.dane is not None
    dual = len(state.staged) > 1
    problems = []
    for port in cert.dane.ports:
        for slot, info in state.staged.items():
            where = f"{cert.dane.probe_address}:{port}" + (f" ({slot})" if dual else "")
            try:
                leaf = fetch_chain(
                    cert.dane.probe_address,
                    port,
                    timeout=10.0,
                    key_type=KeyType(slot) if dual else None,
                    server_name=cert.dane.hosts[0],
                )[0]
            except CertmanError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if f"{leaf.serial_number:x}" != info.serial:
                served = f"{leaf.serial_number:x}"
                problems.append(f"{where} still serves certificate {served}, not {info.serial}")
    return problems


def rollback(ctx: Context, cert: CertificateConfig, state: State) -> None:
    from certman.postfix import install as store

    if state.install_record is not None:
        store.rollback(store.InstallRecord.from_json(state.install_record), postfix=ctx.postfix)
    ctx.postfix.reload()
