"""Postfix commands for one instance: postconf, postfix check / reload / status.

Every command names the instance's configuration directory (``postconf -c DIR``, ``postfix -c
DIR``), so a ``postmulti`` instance is never confused with the default one. Commands run through
an injected runner with ``subprocess.run``'s signature, so tests can record them.

``postconf -e`` rewrites main.cf through a temporary file and rename(2) (checked: the inode
changes), so a Postfix daemon starting during a ``set()`` reads either all the old values or all
the new ones: one ``set()`` call is one atomic main.cf change.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from certman.config.schema import CertificateConfig, PostfixConfig
from certman.errors import CertmanError, PostfixError
from certman.fsutil import write_point
from certman.model import KeyType

Runner = Callable[..., subprocess.CompletedProcess[str]]


def _first_error_line(stderr: str, stdout: str) -> str:
    for text in (stderr, stdout):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        fatal = [line for line in lines if "fatal" in line or "error" in line]
        if fatal or lines:
            return (fatal or lines)[-1]
    # postfix(1) writes to stderr only when it is a terminal; otherwise only to the log.
    return "no output; the reason is in syslog or the instance's maillog_file"


def parse_postconf(output: str) -> dict[str, str]:
    """``name = value`` lines (``postconf`` without ``-h``) -> dict; an empty value is ``""``."""
    values: dict[str, str] = {}
    for line in output.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() and " " not in name.strip():
            values[name.strip()] = value.strip()
    return values


class Postfix:
    """One Postfix instance, addressed by its configuration directory."""

    def __init__(
        self, config: PostfixConfig, run: Runner = subprocess.run, timeout: float = 60.0
    ) -> None:
        self.config = config
        self._run = run
        self.timeout = timeout  # a hung command must not hold the certificate's lock forever

    @property
    def config_dir(self) -> str:
        return str(self.config.config_dir)

    def __repr__(self) -> str:
        return f"Postfix({self.config_dir})"

    def _call(self, argv: list[str], what: str) -> str:
        try:
            done = self._run(
                argv, capture_output=True, text=True, check=False, timeout=self.timeout
            )
        except OSError as exc:
            raise PostfixError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None
        except subprocess.TimeoutExpired:
            raise PostfixError(f"{what}: no answer within {self.timeout:g} s") from None
        if done.returncode != 0:
            reason = _first_error_line(done.stderr or "", done.stdout or "")
            raise PostfixError(f"{what} failed (exit {done.returncode}): {reason}")
        return str(done.stdout or "")

    def _postconf(self, *args: str) -> str:
        argv = [self.config.postconf, "-c", self.config_dir, *args]
        return self._call(argv, f"postconf -c {self.config_dir} {args[0]}")

    def get(self, *names: str) -> dict[str, str]:
        """Effective values with ``$name`` expansions done (``postconf -c DIR -x NAME...``).

        Parsed from ``name = value`` lines rather than ``-h``, so the result does not depend on
        output order; an unknown name is absent from the result.
        """
        if not names:
            return {}
        return parse_postconf(self._postconf("-x", *names))

    def get_raw(self, *names: str) -> dict[str, str]:
        """Only the names main.cf sets explicitly, unexpanded (``postconf -c DIR -n NAME...``).

        This is what a rollback writes back, so ``$config_directory/x.pem`` stays as written.
        """
        if not names:
            return {}
        return parse_postconf(self._postconf("-n", *names))

    def get_default(self, *names: str) -> dict[str, str]:
        """Built-in defaults, unexpanded (``postconf -c DIR -d NAME...``)."""
        if not names:
            return {}
        return parse_postconf(self._postconf("-d", *names))

    def set(self, values: Mapping[str, str]) -> None:
        """ONE ``postconf -c DIR -e name=value ...``: all values change in one main.cf rename."""
        if values:
            write_point(f"before postconf -e {self.config_dir}")
            self._postconf("-e", *(f"{name}={value}" for name, value in values.items()))
            write_point(f"after postconf -e {self.config_dir}")

    def unset(self, *names: str) -> None:
        """``postconf -c DIR -X NAME...``: back to the built-in defaults."""
        if names:
            write_point(f"before postconf -X {self.config_dir}")
            self._postconf("-X", *names)
            write_point(f"after postconf -X {self.config_dir}")

    def get_service(self, service: str, *names: str, expand: bool = True) -> dict[str, str]:
        """One master.cf service's ``-o`` overrides among ``names`` (``postconf -P [-x]``).

        Only names the service overrides are in the result: the others come from main.cf.
        """
        if not names:
            return {}
        flags = ("-P", "-x") if expand else ("-P",)
        found = parse_postconf(self._postconf(*flags, *(f"{service}/{n}" for n in names)))
        prefix = f"{service}/"
        return {k[len(prefix) :]: v for k, v in found.items() if k.startswith(prefix)}

    def set_service(self, service: str, values: Mapping[str, str]) -> None:
        """ONE ``postconf -P service/type/name=value ...`` (master.cf is replaced by rename)."""
        if values:
            self._postconf("-P", *(f"{service}/{n}={v}" for n, v in values.items()))

    def unset_service(self, service: str, *names: str) -> None:
        """``postconf -PX``: the service reads these from main.cf again."""
        if names:
            self._postconf("-P", "-X", *(f"{service}/{n}" for n in names))

    def master_entries(self) -> list[list[str]]:
        """Every master.cf service line (``postconf -M``), split into fields."""
        return [line.split() for line in self._postconf("-M").splitlines() if line.strip()]

    def service_entry(self, service: str) -> list[str]:
        """The master.cf line of ``service`` (``postconf -M name/type``), split; [] if none."""
        return self._postconf("-M", service).split()

    def postmap(self, table: str) -> None:
        """``postmap -c DIR -F TYPE:FILE``: the files named in the table are read into it
        (base64), as tls_server_sni_maps requires (postmap(1) -F, Postfix 3.4+)."""
        postconf = self.config.postconf
        postmap = str(Path(postconf).with_name("postmap")) if "/" in postconf else "postmap"
        self._call([postmap, "-c", self.config_dir, "-F", table], f"postmap -F {table}")

    def reload(self) -> None:
        """``postfix -c DIR reload`` (or the configured reload command): new smtpd processes."""
        argv = self.config.reload_argv()
        write_point(f"before reload {self.config_dir}")
        self._call(argv, " ".join(argv))
        write_point(f"after reload {self.config_dir}")

    def check(self) -> None:
        """``postfix -c DIR check``: Postfix's own sanity check of the configuration."""
        self._call([self.config.postfix, "-c", self.config_dir, "check"], self._what("check"))

    def running(self) -> bool:
        """``postfix -c DIR status`` exits 0 only when the master process runs."""
        argv = [self.config.postfix, "-c", self.config_dir, "status"]
        try:
            done = self._run(
                argv, capture_output=True, text=True, check=False, timeout=self.timeout
            )
        except OSError as exc:
            raise PostfixError(f"{self._what('status')}: cannot run: {exc.strerror}") from None
        except subprocess.TimeoutExpired:
            return False
        return bool(done.returncode == 0)

    def version(self) -> str:
        """``mail_version``, e.g. ``3.7.11``."""
        return self.get("mail_version").get("mail_version", "")

    def _what(self, command: str) -> str:
        return f"{self.config.postfix} -c {self.config_dir} {command}"


def version_tuple(version: str) -> tuple[int, ...]:
    """``"3.7.11"`` -> ``(3, 7, 11)``; a suffix such as ``-RC1`` is ignored."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def supports_chain_files(postfix: Postfix) -> bool:
    """``smtpd_tls_chain_files`` exists since Postfix 3.4 (postconf(5))."""
    return version_tuple(postfix.version()) >= (3, 4)


# --- what the instance serves now (adoption) --------------------------------------------------

CHAIN_FILES = "smtpd_tls_chain_files"
# (certificate, key) parameter pairs of the legacy layout: RSA (or the only key), then ECDSA.
LEGACY_PAIRS = (
    ("smtpd_tls_cert_file", "smtpd_tls_key_file"),
    ("smtpd_tls_eccert_file", "smtpd_tls_eckey_file"),
)
TLS_FILE_PARAMETERS = (CHAIN_FILES, *(name for pair in LEGACY_PAIRS for name in pair))
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)


@dataclass(frozen=True)
class ServedKey:
    """One (private key, chain) pair the instance serves; ``source_path`` holds the key."""

    key_type: KeyType
    private_key_pem: bytes = field(repr=False)
    chain_pem: bytes
    source_path: str


def split_list(value: str) -> list[str]:
    """Postfix lists are separated by commas and/or whitespace (postconf(5))."""
    return [item for item in re.split(r"[\s,]+", value) if item]


def _absolute(path: str, queue_directory: str) -> str:
    # Postfix daemons run with the queue directory as working directory (master(8)).
    return path if path.startswith("/") else os.path.join(queue_directory, path)


def served_paths(effective: Mapping[str, str]) -> list[str]:
    """The files the instance reads, from ``Postfix.get(*TLS_FILE_PARAMETERS, "queue_directory")``.

    A non-empty ``smtpd_tls_chain_files`` wins: Postfix then ignores the legacy parameters.
    """
    queue = effective.get("queue_directory", "/var/spool/postfix")
    chain = split_list(effective.get(CHAIN_FILES, ""))
    if chain:
        return [_absolute(p, queue) for p in chain]
    paths: list[str] = []
    for cert_name, key_name in LEGACY_PAIRS:
        if effective.get(cert_name):
            for name in (key_name, cert_name):
                path = _absolute(effective.get(name) or effective[cert_name], queue)
                if path not in paths:
                    paths.append(path)
    return paths


def served_keys(cert: CertificateConfig, postfix: Postfix) -> list[ServedKey]:
    """What the instance serves now, per its main.cf (``postconf -x``), each key checked.

    Raises PostfixError naming the file that cannot be read, holds no key, or whose key does
    not match its certificate.
    """
    effective = postfix.get(*TLS_FILE_PARAMETERS, "queue_directory")
    queue = effective.get("queue_directory", "/var/spool/postfix")
    if split_list(effective.get(CHAIN_FILES, "")):
        files = [_absolute(p, queue) for p in split_list(effective[CHAIN_FILES])]
        groups = _chain_file_groups(files)
    else:
        groups = []
        for cert_name, key_name in LEGACY_PAIRS:
            if effective.get(cert_name):
                crt = _absolute(effective[cert_name], queue)
                key = _absolute(effective.get(key_name) or crt, queue)
                groups.append(_legacy_group(key, crt))
    return [_served(cert.name, *group) for group in groups]


def _pem_objects(path: str) -> list[tuple[str, bytes]]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PostfixError(
            f"{path}: cannot read TLS file served by Postfix: {exc.strerror}"
        ) from None
    return [(m.group(1).decode(), m.group(0)) for m in _PEM.finditer(data)]


def _is_key(label: str) -> bool:
    return label.endswith("PRIVATE KEY")


def _chain_file_groups(files: list[str]) -> list[tuple[str, bytes, list[bytes]]]:
    """key1, cert1, [chain1], key2, ... over the files concatenated in order (postconf(5))."""
    groups: list[tuple[str, bytes, list[bytes]]] = []
    for path in files:
        for label, pem in _pem_objects(path):
            if _is_key(label):
                groups.append((path, pem, []))
            elif label == "CERTIFICATE":
                if not groups:
                    raise PostfixError(f"{path}: certificate before any private key")
                groups[-1][2].append(pem)
    if not groups:
        raise PostfixError(f"{', '.join(files)}: no private key in smtpd_tls_chain_files")
    return groups


def _legacy_group(key_path: str, cert_path: str) -> tuple[str, bytes, list[bytes]]:
    keys = [pem for label, pem in _pem_objects(key_path) if _is_key(label)]
    if not keys:
        raise PostfixError(f"{key_path}: no private key")
    certs = [pem for label, pem in _pem_objects(cert_path) if label == "CERTIFICATE"]
    return key_path, keys[0], certs


def _served(name: str, path: str, key_pem: bytes, certs: list[bytes]) -> ServedKey:
    from certman.keys import key_type_of, load_pem_chain, load_private_key, spki_sha256

    if b"ENCRYPTED" in key_pem.split(b"\n", 1)[0]:
        raise PostfixError(f"{path}: the private key is encrypted, Postfix cannot use it")
    if not certs:
        raise PostfixError(f"{path}: no certificate follows the private key")
    try:
        key = load_private_key(key_pem, path)
        chain = load_pem_chain(b"".join(certs), path)
        kind = key_type_of(key)
    except CertmanError as exc:
        raise PostfixError(str(exc)) from None
    if spki_sha256(key.public_key()) != spki_sha256(chain[0].public_key()):
        raise PostfixError(f"{path}: the private key does not match its certificate ({name})")
    return ServedKey(kind, key_pem, b"".join(certs), path)
