"""When renewal is due: the CA's ARI window (RFC 9773) or a fraction of the lifetime."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from certman.config.schema import CertificateConfig
from certman.errors import CertmanError
from certman.lifecycle.state import State
from certman.model import CertInfo

if TYPE_CHECKING:
    from certman.acme.ari import RenewalWindow
    from certman.lifecycle.context import Context


def renew_after(
    cert: CertificateConfig, state: State, windows: dict[str, RenewalWindow] | None = None
) -> float | None:
    """When the served certificates are due: inside the CA's ARI window where it gave one,
    else when ``renew_fraction`` of the lifetime is left (RFC 9773 §4.2; ``acme_ari``)."""
    from certman.acme.ari import renewal_time

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
    from certman.acme.ari import ARI_DEFAULT_RECHECK, renewal_info

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
