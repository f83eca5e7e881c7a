"""Key steps: adopt what Postfix serves, generate and stage next keys, store issued chains.

Each action is idempotent: ``engine.advance`` may repeat it after a crash before the save.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from certman import keys
from certman.config.schema import CertificateConfig, Target, TargetKind
from certman.errors import CertmanError
from certman.fsutil import atomic_write, private_dir
from certman.lifecycle.renewal import renew_after
from certman.lifecycle.state import Operation, State
from certman.lifecycle.statefile import CertDir
from certman.model import CertInfo, KeyInfo, KeyType

if TYPE_CHECKING:
    from cryptography import x509

    from certman.lifecycle.context import Context
    from certman.postfix.commands import Postfix, ServedKey


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
    from certman.postfix.targets import foreign_owner, pin_service, served_keys_for

    now = ctx.clock()
    postfix = ctx.postfix_for(cert)
    target = cert.install.targets[0]
    found_keys = served_keys_for(cert, postfix, target)
    served = {s.key_type.is_rsa: s for s in found_keys}
    # set_parameters = false: certman never edits Postfix's configuration.
    pin = cert.install.postfix_parameters
    if pin and any([pin_service(postfix, t) for t in cert.install.targets]):
        postfix.reload()
        ctx.progress(f"{cert.name}: master.cf service now keeps its TLS files if main.cf changes")
    # The key another certificate owns is adopted all the same: it is what this target serves,
    # so its record must stay in this certificate's TLSA RRsets until the target serves another
    # key. A key rollover to this certificate's own next key follows the bootstrap at once.
    claimed = _claimed_by_another(ctx, cert, postfix, found_keys)
    if claimed:
        ctx.progress(f"{cert.name}: {claimed}; adopting it until its own key is live")
    owner = foreign_owner([s.source_path for s in found_keys])
    if owner:
        ctx.progress(
            f"{cert.name}: warning: {owner}; certbot will replace that key behind certman's "
            "back (see docs/certbot.md)"
        )
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
    if claimed and certs and cert.dane is not None:  # without DANE no record ties it down
        state = state.evolve(own_key_due=True)
        return state.note(now, f"{claimed}: adopted until its own key is rolled in")
    return state.note(now, "adopted the served state; next key staged")


def _claimed_by_another(
    ctx: Context, cert: CertificateConfig, postfix: Postfix, found: list[ServedKey]
) -> str | None:
    """Why the files ``cert``'s first target serves belong to another certificate, or None.

    A master.cf service without its own ``-o`` settings serves main.cf's files (master(5)), and
    an override may name another target's files: adopting that key would make two certificates
    share one key, each staging its own next key for it and rolling it independently. The other
    certificate need not have run yet (the same first run), nor be on the same target still (a
    key another certificate already holds as current or next).
    """
    from certman.postfix.targets import served_file_paths

    if not found:
        return None
    mine = {os.path.realpath(s.source_path) for s in found}
    spkis = {
        keys.spki_sha256(keys.load_private_key(s.private_key_pem, s.source_path).public_key())
        for s in found
    }
    target = cert.install.targets[0]
    for other in ctx.config.certificates.values():
        if other.name == cert.name or other.install.config_dir != cert.install.config_dir:
            continue
        for theirs in other.install.targets:
            if _rank(other, theirs) >= _rank(cert, target):
                continue  # the files are ours: main.cf before a service, a service before SNI
            try:
                files = {os.path.realpath(p) for p in served_file_paths(postfix, theirs)}
            except CertmanError:
                continue  # that certificate's own run reports its unreadable target
            if mine & files:
                return f"{target} serves the files of {other.name}'s target {theirs}"
        if _rank(other, other.install.targets[0]) >= _rank(cert, target):
            continue  # this certificate owns the key; the other one rolls away from it
        try:
            held = CertDir.of(ctx.config.state_dir, other.name).load(other.name)
        except CertmanError:
            continue  # its own run reports an unreadable state
        if spkis & {k.spki_sha256 for k in (*held.current.values(), *held.next.values())}:
            return f"{target} serves a key certificate {other.name} holds"
    return None


def _rank(cert: CertificateConfig, target: Target) -> tuple[int, str]:
    """Who owns files two targets serve: main.cf's certificate (services inherit main.cf's
    settings, master(5)), then a master.cf service's, then an SNI name's; then the name."""
    order = {TargetKind.MAIN: 0, TargetKind.SERVICE: 1, TargetKind.SNI: 2}
    return order[target.kind], cert.name


def _adopt_served(cdir: CertDir, served: ServedKey, now: float) -> tuple[KeyInfo, CertInfo]:
    key = keys.load_private_key(served.private_key_pem, served.source_path)
    kind = keys.key_type_of(key)
    spki = keys.spki_sha256(key.public_key())
    info = KeyInfo(KeyInfo.make_id(kind, spki), kind, spki, now, served.source_path)
    private_dir(cdir.root / "keys")
    keys.write_private_key(cdir.key_file(info.id), key)
    return info, store_chain(cdir, info, served.chain_pem)


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


def store_chain(cdir: CertDir, key: KeyInfo, chain_pem: bytes) -> CertInfo:
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
    from certman.acme.issue import ari_cert_id

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
