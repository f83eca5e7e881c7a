"""Fleet mode, the part every host runs: the shared lineage, key and chain transfer, and the
host's own install through the same atomic install and live verification as a single host.

The lineage (``state.json`` in the store) is the same ``State`` the single-host engine keeps,
written only by the lease holder (``fleetrun``). A host reads it, works out what the fleet
serves now (``fleet_target``), and when its own Postfix serves something else, installs the
target through ``steps.deploy`` (DNS gate: the validating resolver must return the target key's
record, RFC 7671 §8.1; atomic switch; reload; STARTTLS verification; rollback on failure). The
host's own progress is an ordinary state file under ``state_dir/certs/<name>/``, so a crash
mid-install resumes or rolls back as it does for one host. Then it writes its report.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from certman import keys
from certman.config.schema import CertificateConfig, FleetConfig
from certman.errors import CertmanError
from certman.fleet import crypto
from certman.fleet.reports import HostReport, Served, heartbeat_due
from certman.fleet.store import LostRace, Store
from certman.fsutil import atomic_write, private_dir
from certman.lifecycle import rollover
from certman.lifecycle.state import Phase, State, from_json, to_json
from certman.lifecycle.statefile import CertDir
from certman.model import CertInfo, KeyInfo

if TYPE_CHECKING:
    from certman.lifecycle.context import Context

LINEAGE = "state.json"
REPORT_CACHE = "fleet-report.json"
LINEAGE_CACHE = "fleet-lineage.json"


@dataclass
class Fleet:
    """One certificate's view of the fleet: the store, this host, its directories."""

    ctx: Context
    cert: CertificateConfig
    cfg: FleetConfig
    store: Store
    _key: bytes | None = None

    @property
    def me(self) -> str:
        return self.cfg.host

    @property
    def host_dir(self) -> CertDir:
        """This host's own install state (what its Postfix serves)."""
        return CertDir.of(self.ctx.config.state_dir, self.cert.name)

    @property
    def lead_dir(self) -> CertDir:
        """The leader's workspace: keys it made, chains it got (a cache of the store)."""
        return CertDir(self.ctx.config.state_dir / "fleet" / self.cert.name)

    def fleet_key(self) -> bytes:
        if self._key is None:
            self._key = crypto.load_fleet_key(self.cfg.key_file)
        return self._key


# -- the lineage object ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Lineage:
    state: State
    term: int  # the lease term of the leader that wrote it (fencing, see fleet.lease)
    holder: str | None
    etag: str | None


def load_lineage(store: Store, name: str) -> Lineage:
    blob = store.get(LINEAGE)
    if blob is None:
        return Lineage(State(name=name), 0, None, None)
    where = store.where(LINEAGE)
    try:
        doc = json.loads(blob.body)
        state = from_json(doc["state"], where)
        return Lineage(state, int(doc["term"]), doc.get("holder"), blob.etag)
    except (ValueError, KeyError, TypeError) as exc:
        raise CertmanError(f"{where}: corrupt lineage state ({exc!r})") from None


def cache_lineage(cdir: CertDir, lineage: Lineage, fetched_at: float) -> None:
    """Remember the lineage as read from the store (no secrets: the state holds none)."""
    doc = {
        "fetched_at": fetched_at,
        "etag": lineage.etag,
        "term": lineage.term,
        "holder": lineage.holder,
        "state": to_json(lineage.state),
    }
    private_dir(cdir.root)
    atomic_write(cdir.root / LINEAGE_CACHE, json.dumps(doc).encode(), mode=0o600)


def cached_lineage(cdir: CertDir) -> tuple[Lineage, float] | None:
    """The lineage as last read and when; None when there is no usable copy."""
    path = cdir.root / LINEAGE_CACHE
    try:
        doc = json.loads(path.read_bytes())
        state = from_json(doc["state"], str(path))
        lineage = Lineage(state, int(doc["term"]), doc.get("holder"), doc.get("etag"))
        return lineage, float(doc["fetched_at"])
    except (OSError, ValueError, KeyError, TypeError, CertmanError):
        return None


def save_lineage(store: Store, lineage: Lineage, state: State, term: int, holder: str) -> Lineage:
    """Compare-and-swap the lineage; LostRace when another leader wrote since we read it."""
    body = json.dumps(
        {"term": term, "holder": holder, "state": to_json(state)}, indent=1, sort_keys=True
    ).encode()
    if lineage.etag is None:
        etag = store.create(LINEAGE, body)
    else:
        etag = store.replace(LINEAGE, body, lineage.etag)
    return Lineage(state, term, holder, etag)


def fleet_target(lineage: State) -> tuple[dict[str, KeyInfo], dict[str, CertInfo]]:
    """What every host should serve now: the staged certificates while the lineage deploys
    them (phases INSTALL and VERIFY), else the current keys with their certificates."""
    keys_now = rollover.target_keys(lineage)
    staged = lineage.staged
    deploying = lineage.phase in (Phase.INSTALL, Phase.VERIFY)
    if (
        deploying
        and keys_now
        and all(slot in staged and staged[slot].key_id == k.id for slot, k in keys_now.items())
    ):
        return dict(keys_now), dict(staged)
    if lineage.certs and all(slot in lineage.certs for slot in lineage.current):
        return dict(lineage.current), dict(lineage.certs)
    return {}, {}


def target_served(target_keys: dict[str, KeyInfo], certs: dict[str, CertInfo]) -> dict[str, Served]:
    return {slot: Served(k.spki_sha256, certs[slot].serial) for slot, k in target_keys.items()}


# -- keys and chains between the store and a directory -------------------------------------------


def _key_object(info_id: str) -> str:
    return f"keys/{info_id}.key.enc"


def _all_keys(state: State) -> dict[str, KeyInfo]:
    found = (*state.current.values(), *state.next.values(), *state.previous.values())
    return {k.id: k for k in found}


def upload_new(fleet: Fleet, before: State, after: State, cdir: CertDir) -> None:
    """Push keys (encrypted) and chains that ``after`` has and ``before`` had not."""
    for key_id in _all_keys(after).keys() - _all_keys(before).keys():
        pem = keys.private_key_pem(keys.read_private_key(cdir.key_file(key_id)))
        name = fleet.store.key(_key_object(key_id))
        _create(fleet.store, _key_object(key_id), crypto.encrypt(fleet.fleet_key(), pem, name))
    known = {(c.key_id, c.serial) for c in (*before.certs.values(), *before.staged.values())}
    for info in (*after.certs.values(), *after.staged.values()):
        if (info.key_id, info.serial) not in known:
            _create(fleet.store, _cert_object(info), Path(info.path).read_bytes())


def _create(store: Store, name: str, body: bytes) -> None:
    # Content-addressed: a 412 means we or another leader uploaded it already.
    with contextlib.suppress(LostRace):
        store.create(name, body)


def _cert_object(info: CertInfo) -> str:
    return f"certs/{info.key_id}-{info.serial}.pem"


def fetch_keys(fleet: Fleet, infos: list[KeyInfo], cdir: CertDir) -> None:
    """Decrypt the keys ``cdir`` lacks from the store; a key whose digest differs is refused."""
    for info in infos:
        path = cdir.key_file(info.id)
        if path.exists():
            continue
        blob = fleet.store.get(_key_object(info.id))
        where = fleet.store.where(_key_object(info.id))
        if blob is None:
            raise CertmanError(f"{where}: key {info.id} is missing from the fleet store")
        pem = crypto.decrypt(fleet.fleet_key(), blob.body, fleet.store.key(_key_object(info.id)))
        key = keys.load_private_key(pem, where)
        if keys.spki_sha256(key.public_key()) != info.spki_sha256:
            raise CertmanError(f"{where}: holds another key than {info.id}")
        private_dir(cdir.root / "keys")
        keys.write_private_key(path, key)


def localize(fleet: Fleet, state: State, cdir: CertDir) -> State:
    """The state with every chain path in ``cdir``, fetching the chains it lacks."""

    def local(infos: dict[str, CertInfo]) -> dict[str, CertInfo]:
        out = {}
        for slot, info in infos.items():
            path = cdir.cert_file(info.key_id, info.serial)
            if not path.exists():
                blob = fleet.store.get(_cert_object(info))
                if blob is None:
                    where = fleet.store.where(_cert_object(info))
                    raise CertmanError(f"{where}: certificate {info.serial} missing from the store")
                atomic_write(path, blob.body, mode=0o644)
            out[slot] = CertInfo(**{**info.__dict__, "path": str(path)})
        return out

    return state.evolve(certs=local(state.certs), staged=local(state.staged))


# -- this host ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostResult:
    message: str
    report: HostReport
    changed: bool  # this run installed something (or rolled back)


def serving(local: State) -> dict[str, Served]:
    """What this host's Postfix serves according to its own state (only when at rest)."""
    if local.phase is not Phase.STEADY:
        return {}
    return {
        slot: Served(k.spki_sha256, local.certs[slot].serial)
        for slot, k in local.current.items()
        if slot in local.certs
    }


def sync_host(fleet: Fleet, lineage: State) -> HostResult:
    """Serve the fleet's target on this host, verified; then report (only what changed, or a
    heartbeat). The caller holds this host's lock for the certificate."""
    hdir = fleet.host_dir
    local = hdir.load(fleet.cert.name)
    want_keys, want_certs = fleet_target(lineage)
    message, changed = "serves the fleet's certificate", False
    if local.phase in (Phase.INSTALL, Phase.VERIFY, Phase.ROLLBACK):
        local, message, changed = _deploy(fleet, local), "resumed an interrupted install", True
    elif want_keys and serving(local) != target_served(want_keys, want_certs):
        fetch_keys(fleet, list(want_keys.values()), hdir)
        staged = localize(fleet, lineage.evolve(certs={}, staged=want_certs), hdir).staged
        start = local.evolve(
            phase=Phase.INSTALL,
            operation=None,
            previous=dict(local.current),
            current=want_keys,
            next={},
            staged=staged,
            install_record=None,
            last_error=None,
        )
        hdir.save(start)
        local, changed = _deploy(fleet, start), True
        message = local.last_error or "installed and verified the fleet's certificate"
    elif not want_keys:
        message = "the fleet has no certificate yet"
    return HostResult(message, _report(fleet, local), changed)


def _deploy(fleet: Fleet, local: State) -> State:
    """INSTALL -> VERIFY -> STEADY, or ROLLBACK -> STEADY on the previous files; saved each step."""
    from certman.lifecycle.steps import deploy

    ctx, cert, hdir = fleet.ctx, fleet.cert, fleet.host_dir
    while local.phase is not Phase.STEADY:
        now = ctx.clock()
        try:
            if local.phase is Phase.INSTALL:
                local, installed = deploy.install(ctx, cert, hdir, local)
                if not installed:
                    raise CertmanError("the issuer's 2 1 x record is not published yet")
                local = local.evolve(phase=Phase.VERIFY)
            elif local.phase is Phase.VERIFY:
                local = deploy.reload(ctx, cert, local)
                error = deploy.verify(ctx, cert, local)
                local = _verified(local, now) if error is None else _failed(local, error)
            else:
                deploy.rollback(ctx, cert, local)
                local = _rolled_back(local, now)
        except CertmanError as exc:
            if local.install_record is None:  # nothing switched yet: back to what is served
                local = _rolled_back(local.evolve(last_error=str(exc)), now)
            else:
                local = _failed(local, str(exc))
        hdir.save(local)
    return local


def _verified(local: State, now: float) -> State:
    state = local.evolve(
        certs=dict(local.staged),
        staged={},
        previous={},
        install_record=None,
        phase=Phase.STEADY,
        last_success=now,
        last_error=None,
        retry_after=None,
    )
    return state.note(now, "fleet certificate installed and verified live")


def _failed(local: State, error: str) -> State:
    return local.evolve(phase=Phase.ROLLBACK, last_error=error)


def _rolled_back(local: State, now: float) -> State:
    error = local.last_error or "install failed"
    state = local.evolve(
        current=dict(local.previous) or dict(local.current),
        previous={},
        staged={},
        install_record=None,
        reload_pending=False,  # the rollback reloaded
        phase=Phase.STEADY,
    )
    if not local.previous:
        state = state.evolve(current={}, certs={})
    return state.note(now, f"fleet install failed, previous files kept: {error}")


def _report(fleet: Fleet, local: State) -> HostReport:
    """Write this host's report when its facts changed or a heartbeat is due."""
    now = fleet.ctx.clock()
    cache = fleet.host_dir.root / REPORT_CACHE
    previous = _cached_report(cache)
    served = serving(local)
    verified = local.last_success if served and local.last_error is None else None
    report = HostReport(
        host=fleet.me,
        reported_at=now,
        served=served,
        verified_at=verified,
        last_error=local.last_error,
        error_at=now if local.last_error else None,
    )
    if previous is not None and report.same_facts(previous):
        if not heartbeat_due(previous, now, fleet.cfg.silent_after):
            return previous
        report = HostReport(**{**report.__dict__, "error_at": previous.error_at})
    fleet.store.put(f"hosts/{fleet.me}.json", report.to_bytes())
    private_dir(cache.parent)
    atomic_write(cache, report.to_bytes(), mode=0o600)
    return report


def settled(fleet: Fleet, lineage: State) -> bool:
    """This host serves the fleet's target at rest, and its report needs no heartbeat yet."""
    local = fleet.host_dir.load(fleet.cert.name)
    want = target_served(*fleet_target(lineage))
    if not want or serving(local) != want:
        return False
    report = _cached_report(fleet.host_dir.root / REPORT_CACHE)
    now = fleet.ctx.clock()
    return report is not None and not heartbeat_due(report, now, fleet.cfg.silent_after)


def _cached_report(path: Path) -> HostReport | None:
    try:
        return HostReport.from_bytes(path.read_bytes(), str(path))
    except (OSError, CertmanError):
        return None


def read_reports(store: Store) -> list[HostReport]:
    reports = []
    for name in store.list("hosts"):
        if not name.endswith(".json"):
            continue
        blob = store.get(f"hosts/{name}")
        if blob is not None:
            reports.append(HostReport.from_bytes(blob.body, store.where(f"hosts/{name}")))
    return reports
