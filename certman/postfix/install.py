"""The files Postfix reads: write them, swap them in atomically, roll them back.

Two layouts (Postfix TLS_README, postconf(5)):

* ``chain-files``: one file per key type, ``<directory>/<cert>-<keytype>.pem``, holding the private
  key, then the leaf, then the chain (``smtpd_tls_chain_files``, Postfix 3.4+). One rename(2)
  swaps key and chain together.
* ``key-cert``: ``smtpd_tls_key_file`` + ``smtpd_tls_cert_file`` (leaf then chain), and for the
  ECDSA key of a dual setup ``smtpd_tls_eckey_file`` + ``smtpd_tls_eccert_file``. Two renames are
  never atomic (an smtpd starting between them loads a mismatched pair), so every install writes
  new *versioned* files that never change and switches all the parameters in ONE ``postconf -e``
  (main.cf is replaced by rename, so a starting smtpd sees the old pair or the new one).

An install is planned (``prepare``: archive what is there, stage the new files, decide the main.cf
changes, persist the plan as ``record.json``) and then applied (``apply``: write, switch). Both
halves and ``rollback`` are idempotent, so a crash anywhere is repaired by running ``apply`` or
``rollback`` again from the saved ``InstallRecord``. Nothing here reloads Postfix.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from certman.config.schema import CertificateConfig, Layout, Target, TargetKind
from certman.errors import CertmanError, ConfigError
from certman.fsutil import atomic_write
from certman.model import KeyType
from certman.postfix.archive import (
    NewFile,
    OldFile,
    archive_old,
    mkdir,
    new_archive,
    prunable,
    prune_archives,
    read,
    stage,
)
from certman.postfix.commands import (
    CHAIN_FILES,
    LEGACY_PAIRS,
    TLS_FILE_PARAMETERS,
    Postfix,
    ServedKey,
    served_keys,
    split_list,
    supports_chain_files,
)
from certman.postfix.targets import (
    SNI_MAPS,
    SniTable,
    read_sni_entry,
    served_file_paths,
    sni_table,
    write_sni_entry,
)

__all__ = [
    "InstallRecord",
    "KeyBundle",
    "ServedKey",
    "apply",
    "install",
    "prepare",
    "rollback",
    "served_keys",
]


MANAGED = TLS_FILE_PARAMETERS


RECORD_FILE = "record.json"


KEEP_ARCHIVES = 5


@dataclass(frozen=True)
class KeyBundle:
    """A private key and its certificate chain (leaf first), PEM."""

    key_type: KeyType
    key_pem: bytes = field(repr=False)
    fullchain_pem: bytes

    def chain_file_pem(self) -> bytes:
        """Key, leaf, chain: the order smtpd_tls_chain_files requires (postconf(5))."""
        return _nl(self.key_pem) + _nl(self.fullchain_pem)


@dataclass(frozen=True)
class TargetChange:
    """A master.cf service's overrides or an SNI table entry: before (absent: unset) and after.

    ``table``: for an SNI target, the ``TYPE:FILE`` that ``postmap -F`` rebuilds.
    """

    target: str
    before: Mapping[str, str]
    after: Mapping[str, str]
    table: str = ""


@dataclass(frozen=True)
class InstallRecord:
    """Everything ``apply`` and ``rollback`` need; JSON-safe, holds no key material."""

    certificate: str
    layout: Layout
    config_dir: str
    created: float
    archive_dir: str
    version: str
    new_files: tuple[NewFile, ...]
    old_files: tuple[OldFile, ...]
    params_before: Mapping[str, str]  # explicit main.cf settings before, unexpanded
    params_default: Mapping[str, str]  # built-in defaults of the names in params_after
    params_after: Mapping[str, str]  # what apply sets in one postconf -e ({}: no change)
    prune: tuple[str, ...] = ()  # key-cert: versions older than the previous one
    notes: tuple[str, ...] = ()  # warnings for the operator (log them)
    target_changes: tuple[TargetChange, ...] = ()  # master.cf services and SNI entries

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> InstallRecord:
        data = json.loads(text)
        data["layout"] = Layout(data["layout"])
        data["new_files"] = tuple(NewFile(**f) for f in data["new_files"])
        data["old_files"] = tuple(OldFile(**f) for f in data["old_files"])
        data["prune"] = tuple(data.get("prune", ()))
        data["notes"] = tuple(data.get("notes", ()))
        data["target_changes"] = tuple(TargetChange(**c) for c in data.get("target_changes", ()))
        return cls(**data)


Clock = Callable[[], float]


def install(
    cert: CertificateConfig,
    bundles: Sequence[KeyBundle],
    *,
    postfix: Postfix,
    state_dir: Path,
    clock: Clock,
) -> InstallRecord:
    """``prepare`` then ``apply``: archive, write, switch main.cf. Does NOT reload Postfix."""
    record = prepare(cert, bundles, postfix=postfix, state_dir=state_dir, clock=clock)
    apply(record, postfix=postfix)
    return record


def prepare(
    cert: CertificateConfig,
    bundles: Sequence[KeyBundle],
    *,
    postfix: Postfix,
    state_dir: Path,
    clock: Clock,
) -> InstallRecord:
    """Plan an install; changes nothing Postfix reads. Saves ``record.json`` in the archive."""
    _check_bundles(cert, bundles)
    _check_layout(cert, postfix)
    main_target = Target(TargetKind.MAIN)
    effective = postfix.get(*MANAGED, "queue_directory")
    explicit = postfix.get_raw(*MANAGED)
    now = clock()
    archive = new_archive(state_dir / "archive" / cert.name, now)
    version = archive.name
    targets = _targets(cert, bundles, version)
    new_files = tuple(stage(archive, path, data, mode) for path, data, mode in targets)
    served = list(
        dict.fromkeys(p for t in cert.install.targets for p in served_file_paths(postfix, t))
    )
    old_files = archive_old(archive, [f.path for f in new_files], served)
    after: dict[str, str] = {}
    changes: list[TargetChange] = []
    notes: list[str] = []
    if cert.install.postfix_parameters:
        kinds = [b.key_type for b in bundles]
        paths = [f.path for f in new_files]
        if main_target in cert.install.targets:
            after = _param_changes(cert, kinds, paths, effective)
        changes = _target_changes(cert, kinds, paths, postfix)
        after.update(_sni_switch_on(cert, postfix, effective))
    else:
        notes.extend(_unmanaged_notes(cert, new_files, served))
    record = InstallRecord(
        certificate=cert.name,
        layout=cert.install.layout,
        config_dir=postfix.config_dir,
        created=now,
        archive_dir=str(archive),
        version=version,
        new_files=new_files,
        old_files=old_files,
        params_before={k: v for k, v in explicit.items() if k in after},
        params_default=postfix.get_default(*after) if after else {},
        params_after=after,
        prune=prunable(cert, {f.path for f in new_files} | set(served)),
        notes=tuple(notes),
        target_changes=tuple(changes),
    )
    atomic_write(archive / RECORD_FILE, record.to_json().encode(), mode=0o600)
    prune_archives(archive.parent, keep=KEEP_ARCHIVES)
    return record


def apply(record: InstallRecord, *, postfix: Postfix) -> None:
    """Write the new files, then switch main.cf in ONE ``postconf -e``; prune old versions.

    chain-files: the rename of each file is the swap. key-cert: the versioned files are new
    names no smtpd reads until the single main.cf change. Repeating ``apply`` is harmless.
    """
    for new in record.new_files:
        data = read(Path(new.staged), "staged copy")
        mkdir(Path(new.path).parent)
        atomic_write(Path(new.path), data, mode=new.mode)
    _apply_targets(record.target_changes, postfix, "after")
    if record.params_after:
        postfix.set(record.params_after)
    for path in record.prune:
        Path(path).unlink(missing_ok=True)


def rollback(record: InstallRecord, *, postfix: Postfix) -> None:
    """Put back what was served before ``record``'s install: files, then main.cf. No reload.

    Order matters: the old files are in place before main.cf points at them again, and the
    files that did not exist before are removed only once nothing points at them.
    """
    for old in record.old_files:
        path = Path(old.path)
        if old.archived is None or not (old.overwritten or not path.exists()):
            continue
        data = read(Path(old.archived), "archived copy")
        if not path.exists() or path.read_bytes() != data:
            mkdir(path.parent)
            atomic_write(path, data, mode=old.mode)
    _apply_targets(record.target_changes, postfix, "before")
    if record.params_after:
        restore = {
            name: record.params_before.get(name, record.params_default.get(name, ""))
            for name in record.params_after
        }
        postfix.set(restore)  # one rename: main.cf means exactly what it meant before
        # Cosmetic: names that were at their defaults go back to being absent from main.cf.
        postfix.unset(*(name for name in record.params_after if name not in record.params_before))
        # tls_server_sni_maps, once switched on, stays: other certificates' entries may use it.
    for old in record.old_files:
        if old.archived is None and old.overwritten:
            Path(old.path).unlink(missing_ok=True)


def _apply_targets(changes: Sequence[TargetChange], postfix: Postfix, side: str) -> None:
    """Services: one ``postconf -P`` for all (one master.cf rename), then the unsets. SNI:
    each entry, then ``postmap -F`` once per table (the table holds the files' contents)."""
    tables: dict[str, Path] = {}
    for change in changes:
        values = change.after if side == "after" else change.before
        if change.table:
            name = change.target.removeprefix("sni:")
            source = Path(change.table.partition(":")[2])
            write_sni_entry(source, name, values.get(name))
            tables[change.table] = source
            continue
        postfix.set_service(change.target, values)
        postfix.unset_service(change.target, *(n for n in change.after if n not in values))
    for table in tables:
        postfix.postmap(table)


def _target_changes(
    cert: CertificateConfig, kinds: list[KeyType], paths: list[str], postfix: Postfix
) -> list[TargetChange]:
    """master.cf overrides and SNI entries that differ from what certman's files need.

    A service gets every TLS file setting as an explicit override (an unset one compares as
    different): what it serves then never follows main.cf, which may be another certificate's.
    """
    changes = []
    for target in cert.install.targets:
        if target.kind is TargetKind.SERVICE:
            current = postfix.get_service(target.service, *MANAGED)
            pinned = {n: current.get(n, "\0unset") for n in MANAGED}
            wanted = _param_changes(cert, kinds, paths, pinned)
            if wanted:
                before = postfix.get_service(target.service, *wanted, expand=False)
                changes.append(TargetChange(str(target), before, wanted))
        elif target.kind is TargetKind.SNI:
            table = sni_table(postfix) or _default_sni_table(cert)
            value = ", ".join(paths)
            old = read_sni_entry(table.source, target.name)
            before = {} if old is None else {target.name: old}
            # Always: even with the same file names, the table holds the files' old contents
            # until postmap -F reads them again (postmap(1) -F).
            changes.append(TargetChange(str(target), before, {target.name: value}, table.spec))
    return changes


def _default_sni_table(cert: CertificateConfig) -> SniTable:
    source = cert.install.directory / "sni-map"
    return SniTable(f"hash:{source}", source)


def _sni_switch_on(
    cert: CertificateConfig, postfix: Postfix, effective: Mapping[str, str]
) -> dict[str, str]:
    """main.cf without tls_server_sni_maps gets certman's own table (Postfix 3.4+)."""
    if not any(t.kind is TargetKind.SNI for t in cert.install.targets):
        return {}
    if sni_table(postfix) is not None:
        return {}
    return {SNI_MAPS: _default_sni_table(cert).spec}


def _nl(pem: bytes) -> bytes:
    return pem if pem.endswith(b"\n") else pem + b"\n"


def _check_bundles(cert: CertificateConfig, bundles: Sequence[KeyBundle]) -> None:
    """Refuse, before anything changes, a bundle whose key is not the key of its leaf."""
    from certman.keys import key_type_of, load_pem_chain, load_private_key, spki_sha256

    kinds = [b.key_type for b in bundles]
    if not bundles or len(set(kinds)) != len(kinds):
        raise CertmanError(
            f"certificate {cert.name}: expected one bundle per key type, got {kinds}"
        )
    for bundle in bundles:
        where = f"certificate {cert.name} ({bundle.key_type})"
        key = load_private_key(bundle.key_pem, where)
        chain = load_pem_chain(bundle.fullchain_pem, where)
        if not chain:
            raise CertmanError(f"{where}: the chain holds no certificate")
        if spki_sha256(key.public_key()) != spki_sha256(chain[0].public_key()):
            raise CertmanError(f"{where}: the private key does not match the leaf certificate")
        if key_type_of(key) is not bundle.key_type:
            raise CertmanError(f"{where}: the private key is {key_type_of(key)}")


def _check_layout(cert: CertificateConfig, postfix: Postfix) -> None:
    if any(t.kind is TargetKind.SNI for t in cert.install.targets) and not supports_chain_files(
        postfix
    ):
        raise ConfigError(
            f"certificates.{cert.name}.postfix.targets: an SNI target needs Postfix 3.4 or "
            f"later ({postfix.config_dir} runs {postfix.version()})"
        )
    if cert.install.layout is Layout.CHAIN_FILES and not supports_chain_files(postfix):
        raise ConfigError(
            f"certificates.{cert.name}.postfix.layout: chain-files needs Postfix 3.4 or later "
            f'({postfix.config_dir} runs {postfix.version()}); use layout = "key-cert"'
        )


def _targets(
    cert: CertificateConfig, bundles: Sequence[KeyBundle], version: str
) -> list[tuple[Path, bytes, int]]:
    directory = cert.install.directory
    out: list[tuple[Path, bytes, int]] = []
    for bundle in bundles:
        stem = f"{cert.name}-{bundle.key_type}"
        if cert.install.layout is Layout.CHAIN_FILES:
            out.append((directory / f"{stem}.pem", bundle.chain_file_pem(), 0o600))
            continue
        # Versioned names only when certman switches main.cf; otherwise fixed names (racy).
        if cert.install.postfix_parameters:
            stem = f"{stem}-{version}"
        out.append((directory / f"{stem}.key", _nl(bundle.key_pem), 0o600))
        out.append((directory / f"{stem}.crt", _nl(bundle.fullchain_pem), 0o644))
    return out


def _param_changes(
    cert: CertificateConfig, kinds: list[KeyType], paths: list[str], effective: Mapping[str, str]
) -> dict[str, str]:
    """The main.cf settings that differ from what certman's files need (one postconf -e).

    chain-files: ``smtpd_tls_chain_files`` lists the files. When main.cf used the legacy
    parameters until now (switching layouts), those are emptied in the same call: Postfix
    ignores them once chain files are set but logs a warning if any is non-empty (postconf(5)),
    and leaving stale paths there invites a later hand edit to serve an old key. When chain
    files were already in use the legacy settings are left as the operator has them.
    key-cert: the key/cert pairs, the ECDSA pair emptied in a single-key setup (a stale
    certificate would still be served to ECDSA clients), and ``smtpd_tls_chain_files`` emptied,
    because while it is non-empty Postfix ignores the legacy parameters.
    """
    wanted: dict[str, str] = {}
    current_chain = split_list(effective.get(CHAIN_FILES, ""))
    if cert.install.layout is Layout.CHAIN_FILES:
        if set(current_chain) != set(paths):
            wanted[CHAIN_FILES] = ", ".join(paths)
        if not current_chain:
            wanted.update({n: "" for pair in LEGACY_PAIRS for n in pair if effective.get(n)})
        return wanted
    pairs = [(paths[i + 1], paths[i]) for i in range(0, len(paths), 2)]  # (crt, key)
    rsa_first = sorted(zip(kinds, pairs, strict=True), key=lambda kp: not kp[0].is_rsa)
    slots = [pair for _, pair in rsa_first] + [("", "")] * (len(LEGACY_PAIRS) - len(rsa_first))
    for (cert_name, key_name), (crt, key) in zip(LEGACY_PAIRS, slots, strict=True):
        key_value = key if crt else ""
        if effective.get(cert_name, "") != crt:
            wanted[cert_name] = crt
        if effective.get(key_name, "") != key_value:
            wanted[key_name] = key_value
    if current_chain:
        wanted[CHAIN_FILES] = ""
    return wanted


def _unmanaged_notes(
    cert: CertificateConfig, new_files: Sequence[NewFile], served: list[str]
) -> list[str]:
    """What the operator should know when certman may not touch main.cf (set_parameters off)."""
    notes = []
    if cert.install.layout is Layout.KEY_CERT:
        notes.append(
            f"certificate {cert.name}: layout key-cert without set_parameters swaps key and "
            "certificate with two renames; an smtpd starting between them loads a mismatched "
            "pair (use layout chain-files)"
        )
    missing = [f.path for f in new_files if f.path not in served]
    if missing:
        notes.append(
            f"certificate {cert.name}: set_parameters is false and main.cf does not reference "
            f"{', '.join(missing)}; Postfix will not serve the new files until it does"
        )
    return notes
