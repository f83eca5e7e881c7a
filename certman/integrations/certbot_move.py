"""``certman adopt --from-certbot LINEAGE``: move a target off certbot's ``live/`` files.

certbot replaces a lineage's key at every renewal unless told otherwise; a Postfix that reads
``live/`` then serves a key whose TLSA record nobody published (RFC 7671 §8.1). The move:

1. adopt what the target serves (the lineage's key) as the current key and publish its record
   with a next key (current + next), letting them age as every rollover does;
2. install that same key and certificate into certman's own files and switch the target to them
   (``Operation.RENEW`` with the current certificate staged: the served key never changes, so no
   DANE client sees a mismatch at any moment);
3. verify the live server (leaf serial and TLSA), else roll back to ``live/``;
4. tell the operator how to stop certbot renewing the lineage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from certman.config.schema import CertificateConfig
from certman.errors import CertmanError
from certman.integrations.certbot import find_certificate, lineage_from
from certman.lifecycle.context import Context
from certman.lifecycle.engine import advance
from certman.lifecycle.rollover import Step
from certman.lifecycle.state import Operation, Phase
from certman.lifecycle.statefile import CertDir

if TYPE_CHECKING:
    from certman.postfix.targets import ServedFiles

OnWait = Callable[[Step, float], None]


def target_lineages(
    ctx: Context, cert: CertificateConfig, served: ServedFiles | None = None
) -> set[Path]:
    """The certbot lineages ``cert``'s targets read; ``served``: a snapshot of the instance
    shared by many certificates (one ``postconf`` for all, not one per target)."""
    from certman.postfix.targets import ServedFiles, certbot_lineage

    if served is None:
        served = ServedFiles(ctx.postfix_for(cert))
    found = set()
    for target in cert.install.targets:
        for path in served.paths(target):
            lineage = certbot_lineage(path)
            if lineage is not None:
                found.add(lineage)
    return found


def take_over(
    ctx: Context, lineage_dir: str, name: str | None, *, max_wait: float, on_wait: OnWait
) -> list[str]:
    """Adopt, publish, switch to certman's files after a verified install; the lines to say."""
    lineage = lineage_from(lineage_dir, {})
    cert = ctx.config.certificate(name) if name else find_certificate(ctx.config, lineage.domains)
    served_from = target_lineages(ctx, cert)
    wanted = Path(lineage_dir).resolve()
    if served_from and all(p.resolve() != wanted for p in served_from):
        shown = ", ".join(str(p) for p in sorted(served_from))
        raise CertmanError(f"certificates.{cert.name}: Postfix serves {shown}, not {lineage_dir}")
    outcome = advance(ctx, cert, max_wait=max_wait, on_wait=on_wait, wait_lock=True)
    if outcome.waiting or outcome.state.phase is not Phase.STEADY:
        raise CertmanError(
            f"certificates.{cert.name}: not settled yet ({outcome.reason}); run again"
        )
    if target_lineages(ctx, cert):
        cdir = CertDir.of(ctx.config.state_dir, cert.name)
        with cdir.lock(wait=True):
            state = cdir.load(cert.name)
            # The certificate served now, installed into certman's own files (same key).
            state = state.evolve(
                operation=Operation.RENEW, phase=Phase.INSTALL, staged=dict(state.certs)
            )
            cdir.save(state)
        advance(ctx, cert, max_wait=max_wait, on_wait=on_wait, wait_lock=True)
    left = target_lineages(ctx, cert)
    if left:
        raise CertmanError(f"certificates.{cert.name}: Postfix still serves {sorted(left)[0]}")
    name_of = Path(lineage_dir).name
    return [
        f"{cert.name}: Postfix now reads certman's files in {cert.install.directory}; "
        f"the key from {lineage_dir} is current, its TLSA record published with a next key",
        f"certbot still renews {name_of}: stop it with `certbot delete --cert-name {name_of}` "
        "(certman renews from now on), or keep certbot and let it hand each certificate to "
        "certman: `certbot reconfigure --cert-name "
        f"{name_of} --deploy-hook /etc/letsencrypt/renewal-hooks/deploy/certman` "
        "(docs/certbot.md)",
    ]
