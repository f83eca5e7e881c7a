"""``certman hook certbot-deploy``: certbot issues, certman gates the deployment on DNS.

certbot runs deploy hooks with ``RENEWED_LINEAGE`` (its ``live/<name>`` directory) and
``RENEWED_DOMAINS``. certman copies the new key and chain into its own state (Postfix never reads
certbot's ``live/``, or certbot would swap the key before the TLSA record is out), then:

* key already served (``certbot --reuse-key``): a renewal, installed after the usual checks;
* key already published as the next key: a rollover, installed at once if the record has aged;
* an unknown key: it becomes the next key, its TLSA record is published, and Postfix stays on
  the old certificate until later ``certman run`` calls have seen it propagate and age.

certbot never retries a failed hook, so anything left undone is finished by ``certman run``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from certman import actions, keys, rollover
from certman.config import CertificateConfig, Config
from certman.errors import CertmanError, ConfigError
from certman.state import CertDir, KeyInfo, Operation, Phase, State

if TYPE_CHECKING:
    from certman.engine import Context


def find_certificate(cfg: Config, domains: list[str]) -> CertificateConfig:
    wanted = {d.lower().removesuffix(".") for d in domains}
    for cert in cfg.certificates.values():
        if wanted == set(cert.domains):
            return cert
    for cert in cfg.certificates.values():
        if wanted & set(cert.domains):
            return cert
    raise ConfigError(
        f"{cfg.path}: no certificate configured for RENEWED_DOMAINS {' '.join(sorted(wanted))}"
    )


def _lineage() -> tuple[Path, list[str]]:
    lineage = os.environ.get("RENEWED_LINEAGE")
    domains = os.environ.get("RENEWED_DOMAINS", "").split()
    if not lineage or not domains:
        raise CertmanError(
            "RENEWED_LINEAGE and RENEWED_DOMAINS must be set (run me as certbot's --deploy-hook)"
        )
    return Path(lineage), domains


def stage(
    cert: CertificateConfig, cdir: CertDir, state: State, lineage: Path, now: float
) -> tuple[State, str]:
    """Stage certbot's key and chain; return the new state and a line saying what will happen."""
    try:
        key_pem = (lineage / "privkey.pem").read_bytes()
        chain_pem = (lineage / "fullchain.pem").read_bytes()
    except OSError as exc:
        raise CertmanError(f"{lineage}: cannot read certbot's files: {exc.strerror}") from None
    key = keys.load_private_key(key_pem, str(lineage / "privkey.pem"))
    kind = keys.key_type_of(key)
    spki = keys.spki_sha256(key.public_key())
    slot = next((k.value for k in cert.key_types if k.is_rsa == kind.is_rsa), None)
    if slot is None:
        raise CertmanError(f"{lineage}: a {kind.value} key, but {cert.name} has no such key type")
    if state.phase is not Phase.STEADY:
        raise CertmanError(
            f"{cert.name}: {state.operation} in progress (phase {state.phase.value}); "
            "run `certman run` to finish it, then renew again"
        )
    current, nxt = state.current.get(slot), state.next.get(slot)
    if current is not None and current.spki_sha256 == spki:
        info, what = current, "renewal with the served key: install now"
    elif nxt is not None and nxt.spki_sha256 == spki:
        info, what = nxt, "rollover to the published next key"
    else:
        info = KeyInfo(KeyInfo.make_id(kind, spki), kind, spki, now, str(lineage / "privkey.pem"))
        retired = (*state.retired, *([nxt.spki_sha256] if nxt else []))
        state = state.evolve(next={**state.next, slot: info}, next_ready_at=None, retired=retired)
        what = "new key: publish its TLSA record first, install after it aged"
    keys.write_private_key(cdir.key_file(info.id), key)
    staged = actions._store_chain(cdir, info, chain_pem)
    state = state.evolve(staged={**state.staged, slot: staged})
    return state, f"{cert.name}: certbot {kind.value} certificate {staged.serial}: {what}"


def deploy_hook(ctx: Context, *, dry_run: bool) -> list[str]:
    from certman.engine import advance, policy_for

    lineage, domains = _lineage()
    cert = find_certificate(ctx.config, domains)
    cdir = CertDir.of(ctx.config.state_dir, cert.name)
    policy = policy_for(cert)
    with cdir.lock():
        state = cdir.load(cert.name)
        if state.phase is Phase.NEW:
            return [f"{cert.name}: no state yet; run `certman run` once before using the hook"]
        now = ctx.clock()
        staged_state, line = stage(cert, cdir, state, lineage, now) if not dry_run else (state, "")
        if dry_run:
            return [f"dry run: would stage {lineage}/fullchain.pem for {cert.name} and advance it"]
        operation = Operation.RENEW if line.endswith("install now") else Operation.ROLLOVER
        staged = staged_state.staged
        begun = rollover.begin(staged_state, operation, now, policy).evolve(staged=staged)
        cdir.save(begun.note(now, line))
    outcome = advance(ctx, cert, max_wait=0.0)
    tail = f"; resume after {outcome.wait_until:.0f}" if outcome.waiting else ""
    return [line, f"{cert.name}: {outcome.state.phase.value}: {outcome.reason}{tail}"]
