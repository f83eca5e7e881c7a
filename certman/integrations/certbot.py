"""``certman hook certbot-deploy``: certbot issues, certman gates the deployment on DNS.

certbot runs deploy hooks after every successful issuance, ``certonly`` included, with
``RENEWED_LINEAGE`` (its ``live/<name>`` directory) and ``RENEWED_DOMAINS``. certman copies the
new key and chain into its own state (Postfix never reads certbot's ``live/``, or certbot would
swap the key before the TLSA record is out, RFC 7671 §8.1), then, by the certificate's key:

* the key Postfix serves now (``certbot --reuse-key``): a renewal, installed at once; the TLSA
  RRset is not touched, since the served key's record is already there;
* the key published as the next key: a rollover, installed once its record has aged;
* a key certman does not know (what certbot makes by default): it becomes the next key, its TLSA
  record is published (replacing the unused next key's), and Postfix stays on the old
  certificate until later ``certman run`` calls have seen the record on every nameserver and
  waited 2 x TTL.

The hook never waits for DNS: certbot runs hooks one after another. certbot never runs a failed
hook again, so every refusal is an error (exit status != 0, logged by certbot) that says how to
hand the lineage over again (``certman hook certbot-deploy --lineage DIR``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from certman import keys
from certman.config.schema import CertificateConfig, Config
from certman.errors import CertmanError, ConfigError
from certman.lifecycle import rollover
from certman.lifecycle.state import Operation, Phase, State
from certman.lifecycle.statefile import CertDir
from certman.lifecycle.steps import keys as key_steps
from certman.model import KeyInfo, KeyType

if TYPE_CHECKING:
    from cryptography import x509

    from certman.keys import PrivateKey
    from certman.lifecycle.context import Context
    from certman.lifecycle.engine import Outcome


class Verdict(StrEnum):
    """What certbot's certificate means for the rollover state."""

    SERVED = "served"  # this very certificate is live already: nothing to do
    RENEW = "renew"  # the served key (certbot --reuse-key): install now, DNS untouched
    PROMOTE = "promote"  # the published next key: install once its record has aged
    NEW_KEY = "new-key"  # unknown key: publish its record first, install after it aged


WHAT = {
    Verdict.SERVED: "already served; nothing to do",
    Verdict.RENEW: "same key as served (renewal): install now, TLSA records unchanged",
    Verdict.PROMOTE: "the published next key: install once its TLSA record has aged",
    Verdict.NEW_KEY: (
        "new key: publish its TLSA record as the next key, keep Postfix on the current "
        "certificate until the record has propagated and aged (certman run finishes it)"
    ),
}


@dataclass(frozen=True)
class Lineage:
    """A certbot lineage: its ``live/<name>`` directory and the names on the certificate."""

    path: Path
    domains: tuple[str, ...]


@dataclass(frozen=True)
class CertbotFiles:
    """certbot's key and full chain, parsed."""

    lineage: Path
    key: PrivateKey
    chain_pem: bytes
    key_type: KeyType
    spki_sha256: str
    serial: str
    not_before: float = 0.0
    not_after: float = float("inf")


def lineage_from(directory: str | None, environ: Mapping[str, str]) -> Lineage:
    """The lineage named on the command line (names from its certificate), else certbot's
    ``RENEWED_LINEAGE`` / ``RENEWED_DOMAINS``."""
    if directory is not None:
        path = Path(directory)
        chain = _read(path / "fullchain.pem")
        leaf = keys.load_pem_chain(chain, str(path / "fullchain.pem"))[0]
        return Lineage(path, _dns_names(leaf, path / "fullchain.pem"))
    lineage = environ.get("RENEWED_LINEAGE")
    domains = tuple(environ.get("RENEWED_DOMAINS", "").split())
    if not lineage or not domains:
        raise CertmanError(
            "RENEWED_LINEAGE and RENEWED_DOMAINS must be set (run me as certbot's "
            "--deploy-hook), or name the lineage: certman hook certbot-deploy --lineage DIR"
        )
    return Lineage(Path(lineage), domains)


def _dns_names(leaf: x509.Certificate, where: Path) -> tuple[str, ...]:
    from cryptography import x509

    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertmanError(f"{where}: the certificate names no DNS names") from None
    return tuple(san.get_values_for_type(x509.DNSName))


def find_certificate(cfg: Config, domains: tuple[str, ...] | list[str]) -> CertificateConfig:
    """The ``[certificates.NAME]`` with exactly these names, else the one whose names certbot's
    certificate all covers; two candidates are an error, never a guess."""
    wanted = {d.lower().removesuffix(".") for d in domains}
    for cert in cfg.certificates.values():
        if wanted == set(cert.domains):
            return cert
    covered = [c for c in cfg.certificates.values() if set(c.domains) <= wanted]
    if len(covered) == 1:
        return covered[0]
    names = " ".join(sorted(wanted))
    if covered:
        which = ", ".join(c.name for c in covered)
        raise ConfigError(f"{cfg.path}: certificates {which} all match certbot's {names}")
    raise ConfigError(f"{cfg.path}: no [certificates.*] has the names of certbot's {names}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertmanError(f"{path}: cannot read certbot's file: {exc.strerror}") from None


def read_files(lineage: Path) -> CertbotFiles:
    key_path, chain_path = lineage / "privkey.pem", lineage / "fullchain.pem"
    key = keys.load_private_key(_read(key_path), str(key_path))
    chain_pem = _read(chain_path)
    leaf = keys.load_pem_chain(chain_pem, str(chain_path))[0]
    spki = keys.spki_sha256(key.public_key())
    if keys.cert_spki_sha256(leaf) != spki:
        raise CertmanError(f"{chain_path}: the certificate does not match {key_path}")
    kind = keys.key_type_of(key)
    serial = f"{leaf.serial_number:x}"
    valid = (leaf.not_valid_before_utc.timestamp(), leaf.not_valid_after_utc.timestamp())
    return CertbotFiles(lineage, key, chain_pem, kind, spki, serial, *valid)


def check_valid(files: CertbotFiles, now: float) -> None:
    """Never stage a certificate that is expired or not yet valid (RFC 5280 §4.1.2.5)."""
    where = files.lineage / "fullchain.pem"
    if now >= files.not_after:
        raise CertmanError(f"{where}: the certificate expired at {_iso(files.not_after)}")
    if now < files.not_before:
        raise CertmanError(f"{where}: the certificate is valid only from {_iso(files.not_before)}")


def classify(state: State, files: CertbotFiles) -> Verdict:
    """Pure: which of the four cases certbot's certificate is (module docstring)."""
    slot = files.key_type.value
    current, nxt = state.current.get(slot), state.next.get(slot)
    if current is not None and current.spki_sha256 == files.spki_sha256:
        served = state.certs.get(slot)
        if served is not None and served.serial == files.serial:
            return Verdict.SERVED
        return Verdict.RENEW
    if nxt is not None and nxt.spki_sha256 == files.spki_sha256:
        return Verdict.PROMOTE
    return Verdict.NEW_KEY


def settle(state: State) -> State:
    """A certman renewal stuck before anything changed (phase ISSUE: the CA or certman's own ACME
    setup failed, e.g. on a host where only certbot talks to the CA) gives way to certbot's
    certificate, which is what it was waiting for; otherwise the hook and cron would block each
    other for good."""
    if state.phase is Phase.ISSUE and state.operation is Operation.RENEW:
        return state.evolve(phase=Phase.STEADY, operation=None, staged={}, retry_after=None)
    return state


def check_ready(cert: CertificateConfig, state: State, files: CertbotFiles) -> None:
    """Refuse what the hook cannot take over safely; each message says what to do."""
    again = f"then run `certman hook certbot-deploy --lineage {files.lineage}`"
    if files.key_type not in cert.key_types:
        configured = ", ".join(k.value for k in cert.key_types)
        raise CertmanError(
            f"{files.lineage}: certbot made a {files.key_type.value} key, but certificate "
            f"{cert.name} has key_type {configured}; match certbot's --key-type/--elliptic-curve "
            "or rsa-key-size to it"
        )
    if state.phase is Phase.NEW:
        raise CertmanError(
            f"{cert.name}: certman has no state yet; run `certman run` first (it adopts the "
            f"served key and publishes its TLSA record), {again}"
        )
    if state.phase is not Phase.STEADY:
        raise CertmanError(
            f"{cert.name}: a {state.operation} is in progress (phase {state.phase.value}); "
            f"run `certman run` until it is finished, {again}"
        )


def stage(
    cert: CertificateConfig, cdir: CertDir, state: State, files: CertbotFiles, now: float
) -> State:
    """Copy certbot's key and chain into certman's state and start the operation they need."""
    from certman.lifecycle.engine import policy_for

    verdict = classify(state, files)
    slot = files.key_type.value
    if verdict is Verdict.RENEW:
        info, operation = state.current[slot], Operation.RENEW
    elif verdict is Verdict.PROMOTE:
        info, operation = state.next[slot], Operation.ROLLOVER
    else:
        info = KeyInfo(
            KeyInfo.make_id(files.key_type, files.spki_sha256),
            files.key_type,
            files.spki_sha256,
            now,
            str(files.lineage / "privkey.pem"),
        )
        # The unused next key gives way: its record goes in the same compare-and-swap that
        # publishes certbot's key (it was never served, so no sender depends on it).
        old = state.next.get(slot)
        retired = (*state.retired, *([old.spki_sha256] if old else []))
        state = state.evolve(next={**state.next, slot: info}, next_ready_at=None, retired=retired)
        operation = Operation.ROLLOVER
    keys.write_private_key(cdir.key_file(info.id), files.key)
    staged = key_steps.store_chain(cdir, info, files.chain_pem)
    begun = rollover.begin(state, operation, now, policy_for(cert))
    line = f"certbot {files.key_type.value} certificate {files.serial}: {WHAT[verdict]}"
    return begun.evolve(staged={slot: staged}).note(now, line)


def deploy_hook(
    ctx: Context, lineage: Lineage, *, dry_run: bool
) -> tuple[list[str], Outcome | None]:
    """Take over certbot's certificate; ``dry_run`` says what would happen and changes nothing.

    Returns the lines to print and the engine's outcome (None when nothing was advanced), so
    the CLI can exit 1 while the certificate backs off after a failure, as ``run`` does.
    """
    from certman.lifecycle.engine import advance

    cert = find_certificate(ctx.config, lineage.domains)
    cdir = CertDir.of(ctx.config.state_dir, cert.name)
    files = read_files(lineage.path)
    check_valid(files, ctx.clock())
    if dry_run:
        state = settle(cdir.load(cert.name))
        check_ready(cert, state, files)
        verdict = classify(state, files)
        return [f"dry run: {cert.name}: certbot certificate {files.serial}: {WHAT[verdict]}"], None
    # Wait for a running `certman run` rather than fail: certbot would never call us again.
    with cdir.lock(wait=True):
        state = settle(cdir.load(cert.name))
        check_ready(cert, state, files)
        verdict = classify(state, files)
        line = f"{cert.name}: certbot certificate {files.serial}: {WHAT[verdict]}"
        if verdict is Verdict.SERVED:
            return [line], None
        cdir.save(stage(cert, cdir, state, files, ctx.clock()))
    outcome = advance(ctx, cert, max_wait=0.0, wait_lock=True)
    tail = f"; resume after {_iso(outcome.wait_until)}" if outcome.wait_until else ""
    return [line, f"{cert.name}: {outcome.state.phase.value}: {outcome.reason}{tail}"], outcome


def _iso(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
