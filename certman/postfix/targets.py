"""Targets: the places one certificate is served, read and written without touching any other.

A target is ``main.cf`` (every smtpd without its own settings), one master.cf service's ``-o``
overrides (``postconf -P``, master(5)), or one name's entry in ``tls_server_sni_maps``
(Postfix 3.4+; the table is built with ``postmap -F``, which reads the named files into it).

The effective setting of a service is its master.cf override if there is one, else main.cf's
(postconf(5), master(5) ``-o``). A service target is always written as explicit overrides, so a
later change to main.cf (another certificate's target) never changes what the service serves.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from certman.config.schema import CertificateConfig, Target, TargetKind
from certman.errors import PostfixError
from certman.fsutil import atomic_write
from certman.postfix.commands import (
    TLS_FILE_PARAMETERS,
    Postfix,
    ServedKey,
    _chain_file_groups,
    _served,
    served_keys,
    served_paths,
    split_list,
)

SNI_MAPS = "tls_server_sni_maps"
WRAPPERMODE = "smtpd_tls_wrappermode"
# Table types postmap(1) builds from a source file; only these can hold `postmap -F` entries.
POSTMAP_TYPES = frozenset({"hash", "btree", "lmdb", "cdb", "dbm", "sdbm"})
# /etc/services may lack "submissions" (RFC 8314 §7.3 registered it in 2018).
WELL_KNOWN_PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "smtps": 465}


@dataclass(frozen=True)
class Endpoint:
    """Where a target is probed: port, protocol (implicit TLS or STARTTLS) and SNI name."""

    target: str
    port: int
    implicit_tls: bool
    server_name: str


@dataclass(frozen=True)
class SniTable:
    """A ``TYPE:FILE`` table of tls_server_sni_maps that postmap builds from ``source``."""

    spec: str
    source: Path


def effective(postfix: Postfix, target: Target, *names: str) -> dict[str, str]:
    """The values ``target`` runs with: main.cf's, overridden by the service's ``-o``."""
    values = postfix.get(*names)
    if target.kind is TargetKind.SERVICE:
        values.update(postfix.get_service(target.service, *names))
    return values


def served_file_paths(postfix: Postfix, target: Target) -> list[str]:
    """The files Postfix reads for ``target`` now (absolute)."""
    if target.kind is TargetKind.SNI:
        table = sni_table(postfix)
        entry = read_sni_entry(table.source, target.name) if table else None
        return split_list(entry or "")
    return served_paths(effective(postfix, target, *TLS_FILE_PARAMETERS, "queue_directory"))


def served_keys_for(cert: CertificateConfig, postfix: Postfix, target: Target) -> list[ServedKey]:
    """What ``target`` serves now, each key checked against its certificate (see served_keys)."""
    if target.kind is TargetKind.MAIN:
        return served_keys(cert, postfix)
    files = served_file_paths(postfix, target)
    if not files:
        return []
    if target.kind is TargetKind.SERVICE:
        values = effective(postfix, target, *TLS_FILE_PARAMETERS, "queue_directory")
        if not split_list(values.get("smtpd_tls_chain_files", "")):
            return served_keys(cert, _ServiceView(postfix, target))  # type: ignore[arg-type]
    return [_served(cert.name, *group) for group in _chain_file_groups(files)]


class _ServiceView:
    """A Postfix whose ``get`` answers with a service's effective values (for served_keys)."""

    def __init__(self, postfix: Postfix, target: Target) -> None:
        self._postfix, self._target = postfix, target

    def get(self, *names: str) -> dict[str, str]:
        return effective(self._postfix, self._target, *names)


def certbot_lineage(path: str) -> Path | None:
    """The certbot lineage (``live/NAME``) a served file belongs to, or None.

    certbot keeps ``live/NAME/*.pem`` as symlinks into ``archive/NAME/`` next to a ``renewal/``
    directory of renewal configurations (certbot's documentation, "Where are my certificates").
    """
    for candidate in (Path(path), Path(os.path.realpath(path))):
        lineage = candidate.parent
        top = lineage.parent
        if top.name in ("live", "archive") and (top.parent / "renewal").is_dir():
            return top.parent / "live" / lineage.name
    return None


def foreign_owner(paths: list[str]) -> str | None:
    """A note when served files belong to certbot: it replaces the key behind certman's back."""
    for path in paths:
        lineage = certbot_lineage(path)
        if lineage is not None:
            return f"{path} belongs to certbot's lineage {lineage}"
    return None


# --- tls_server_sni_maps ----------------------------------------------------------------------


def sni_table(postfix: Postfix) -> SniTable | None:
    """The first postmap-built table of main.cf's tls_server_sni_maps (None: not set)."""
    return _sni_table_of(postfix, postfix.get(SNI_MAPS).get(SNI_MAPS, ""))


def _sni_table_of(postfix: Postfix, value: str) -> SniTable | None:
    for spec in split_list(value):
        kind, sep, path = spec.partition(":")
        if sep and kind in POSTMAP_TYPES:
            return SniTable(spec, Path(path))
    if value:
        raise PostfixError(
            f"{postfix.config_dir}/main.cf: {SNI_MAPS} = {value} has no table postmap builds "
            f"({', '.join(sorted(POSTMAP_TYPES))}); certman can only edit such a table"
        )
    return None


def read_sni_entry(source: Path, name: str) -> str | None:
    """The value (file list) for ``name`` in the table's source file, or None."""
    try:
        text = source.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PostfixError(f"{source}: cannot read SNI table source: {exc.strerror}") from None
    for line in text.splitlines():
        fields = line.split(None, 1)
        if fields and not line.startswith(("#", " ", "\t")) and fields[0].lower() == name:
            return fields[1].strip() if len(fields) > 1 else ""
    return None


def write_sni_entry(source: Path, name: str, value: str | None) -> None:
    """Set (or with None remove) ``name``'s line; every other line is kept as it is."""
    try:
        lines = source.read_text().splitlines()
        mode = source.stat().st_mode & 0o7777
    except FileNotFoundError:
        lines, mode = [], 0o600  # the built table holds private keys (postmap -F)
    out: list[str] = []
    done = False
    for line in lines:
        fields = line.split(None, 1)
        mine = fields and not line.startswith(("#", " ", "\t")) and fields[0].lower() == name
        if not mine:
            out.append(line)
        elif value is not None and not done:
            out.append(f"{name} {value}")
            done = True
    if value is not None and not done:
        out.append(f"{name} {value}")
    atomic_write(source, ("\n".join(out) + "\n").encode(), mode=mode)


# --- probing ----------------------------------------------------------------------------------


def service_port(postfix: Postfix, service: str) -> int:
    """The TCP port of a master.cf inet service: ``[host:]port`` or a services(5) name."""
    entry = postfix.service_entry(service)
    if not entry:
        raise PostfixError(f"{postfix.config_dir}/master.cf: no service {service}")
    listen = entry[0].rsplit(":", 1)[-1]
    if listen.isdigit():
        return int(listen)
    try:
        return socket.getservbyname(listen, "tcp")
    except OSError:
        if listen in WELL_KNOWN_PORTS:
            return WELL_KNOWN_PORTS[listen]
        raise PostfixError(f"{postfix.config_dir}/master.cf: unknown port {listen!r}") from None


def endpoints(cert: CertificateConfig, postfix: Postfix) -> list[Endpoint]:
    """Every (port, protocol, SNI name) a client reaches ``cert``'s targets on.

    main.cf and SNI targets: the DANE ports (25 without DANE), STARTTLS except on 465.
    A service: its own port, implicit TLS when it runs with smtpd_tls_wrappermode (RFC 8314).
    """
    default_name = cert.dane.hosts[0] if cert.dane else cert.domains[0].removeprefix("*.")
    ports = cert.dane.ports if cert.dane else (25,)
    out: list[Endpoint] = []
    for target in cert.install.targets:
        if target.kind is TargetKind.SERVICE:
            wrapper = effective(postfix, target, WRAPPERMODE).get(WRAPPERMODE, "no")
            port = service_port(postfix, target.service)
            out.append(Endpoint(str(target), port, wrapper.lower() == "yes", default_name))
            continue
        name = target.name if target.kind is TargetKind.SNI else default_name
        out.extend(Endpoint(str(target), port, port == 465, name) for port in ports)
    return out


def explicit_values(postfix: Postfix, target: Target, names: Mapping[str, str]) -> dict[str, str]:
    """What ``target`` sets explicitly among ``names`` now, unexpanded (a rollback's values)."""
    if target.kind is TargetKind.SERVICE:
        return postfix.get_service(target.service, *names, expand=False)
    return postfix.get_raw(*names)


def pin_service(postfix: Postfix, target: Target) -> bool:
    """Give a service that inherits main.cf's TLS files explicit overrides of the same values.

    What it serves does not change, but from now on a change to main.cf (another certificate's
    target) no longer reaches it (master(5): ``-o`` overrides main.cf). True if master.cf
    changed; the caller reloads (master reads master.cf only then).
    """
    if target.kind is not TargetKind.SERVICE:
        return False
    overrides = postfix.get_service(target.service, *TLS_FILE_PARAMETERS, expand=False)
    if overrides:
        return False
    inherited = postfix.get_raw(*TLS_FILE_PARAMETERS)
    if not inherited:
        return False
    postfix.set_service(target.service, inherited)
    return True


class ServedFiles:
    """What an instance's targets read, for many certificates at once: main.cf's file
    parameters from one ``postconf``, each service's overrides from one ``postconf -P``, and the
    SNI table's source read once (a call per target cost ~10 ms each: 10 s for 1,000
    certificates). A snapshot: only for reading after the run's changes are done. A failed
    read fails every later one alike without running postconf again (postconf's fatal exit
    takes a second: Postfix's msg_fatal sleeps before exiting)."""

    def __init__(self, postfix: Postfix) -> None:
        self.postfix = postfix
        self._failed: PostfixError | None = None
        self._main: dict[str, str] | None = None
        self._services: dict[str, dict[str, str]] = {}
        self._sni: dict[str, str] | None = None

    def paths(self, target: Target) -> list[str]:
        """Like ``served_file_paths(postfix, target)``."""
        if self._failed is not None:
            raise self._failed
        try:
            return self._paths(target)
        except PostfixError as exc:
            self._failed = exc
            raise

    def _paths(self, target: Target) -> list[str]:
        if target.kind is TargetKind.SNI:
            return split_list(self._sni_entries().get(target.name) or "")
        values = dict(self._main_values())
        if target.kind is TargetKind.SERVICE:
            if target.service not in self._services:
                names = (*TLS_FILE_PARAMETERS, "queue_directory")
                self._services[target.service] = self.postfix.get_service(target.service, *names)
            values.update(self._services[target.service])
        return served_paths(values)

    def _main_values(self) -> dict[str, str]:
        if self._main is None:
            self._main = self.postfix.get(*TLS_FILE_PARAMETERS, "queue_directory", SNI_MAPS)
        return self._main

    def _sni_entries(self) -> dict[str, str]:
        if self._sni is None:
            table = _sni_table_of(self.postfix, self._main_values().get(SNI_MAPS, ""))
            self._sni = _sni_entries(table.source) if table else {}
        return self._sni


def _sni_entries(source: Path) -> dict[str, str]:
    """Every name's value in the table's source file (the first line for a name wins, as in
    ``read_sni_entry``)."""
    try:
        text = source.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise PostfixError(f"{source}: cannot read SNI table source: {exc.strerror}") from None
    entries: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split(None, 1)
        if fields and not line.startswith(("#", " ", "\t")):
            entries.setdefault(fields[0].lower(), fields[1].strip() if len(fields) > 1 else "")
    return entries
