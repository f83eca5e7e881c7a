"""Issuance step: a certificate for every key about to be served, staged before install."""

from __future__ import annotations

from typing import TYPE_CHECKING

from certman.config.schema import CertificateConfig
from certman.lifecycle import rollover
from certman.lifecycle.state import Operation, State
from certman.lifecycle.statefile import CertDir
from certman.lifecycle.steps.keys import load_key, store_chain
from certman.model import CertInfo

if TYPE_CHECKING:
    from certman.lifecycle.context import Context


def issue(
    ctx: Context, cert: CertificateConfig, cdir: CertDir, state: State
) -> dict[str, CertInfo]:
    """A certificate for every target key; one already staged for the same key is reused."""
    from certman.acme.issue import issue_certificate

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
        staged[slot] = store_chain(cdir, key, issued.fullchain_pem)
        cdir.save(state.evolve(staged=staged))
    return staged
