"""The Postfix TLS audit: the settings DANE and TLS depend on, read per service.

What Postfix does comes from main.cf *and* master.cf: a service's ``-o name=value`` overrides
main.cf for that service only (master(5)), so every smtpd listener is audited with its own
effective values (``postconf -P``), and the SMTP client with main.cf plus its ``smtp``/``relay``
services' overrides. Each finding says what is wrong, why it matters (with the document it comes
from: Postfix TLS_README, RFC 7672, RFC 8996) and the command that fixes it.

Nothing here changes anything; the DNSSEC check of the resolver is injected (``validates``), so
this module needs no DNS code of its own.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from certman.errors import PostfixError
from certman.postfix.commands import Postfix, parse_postconf, split_list
from certman.postfix.tlsfiles import Finding, service_files

# Ports by master.cf service name (services(5)); a numeric or host:port name gives its own.
_PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "smtps": 465}
_DANE_LEVELS = ("dane", "dane-only")
_OLD_PROTOCOLS = ("TLSv1", "TLSv1.1")  # RFC 8996 deprecates both
_ALL_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")

SMTPD_SETTINGS = (
    "smtpd_tls_security_level",
    "smtpd_tls_protocols",
    "smtpd_tls_mandatory_protocols",
    "smtpd_tls_ciphers",
    "smtpd_tls_exclude_ciphers",
    "smtpd_tls_loglevel",
    "smtpd_tls_chain_files",
    "smtpd_tls_cert_file",
    "smtpd_tls_key_file",
    "smtpd_tls_eccert_file",
    "smtpd_tls_eckey_file",
    "smtpd_tls_dh1024_param_file",
    "tls_preempt_cipherlist",
)
SMTP_SETTINGS = ("smtp_tls_security_level", "smtp_dns_support_level", "smtp_host_lookup")

Validates = Callable[[], "str | None"]  # None: the resolver validates; else why it does not


@dataclass(frozen=True)
class Service:
    """A master.cf service with the values it runs with: main.cf, then its ``-o`` overrides."""

    name: str  # service/type, as postconf -P names it
    port: int | None
    values: Mapping[str, str]
    overridden: frozenset[str]

    def where(self, setting: str) -> str:
        return f"master.cf {self.name}" if setting in self.overridden else "main.cf"

    def fix(self, setting: str, value: str, cdir: str) -> str:
        if setting in self.overridden:
            return f"postconf -c {cdir} -P '{self.name}/{setting}={value}'"
        return f"postconf -c {cdir} -e '{setting} = {value}'"


def port_of(service_name: str) -> int | None:
    """``smtp`` -> 25, ``127.0.0.1:2525`` -> 2525, ``submission`` -> 587; None if unknown."""
    tail = service_name.rsplit(":", 1)[-1]
    if tail.isdigit():
        return int(tail)
    return _PORTS.get(tail)


def services(postfix: Postfix, main: Mapping[str, str], program: str) -> list[Service]:
    """Every ``program`` (smtpd or smtp) service of master.cf with its effective settings."""
    overrides: dict[str, dict[str, str]] = {}
    for line in postfix._postconf("-P").splitlines():
        key, sep, value = line.partition("=")
        parts = key.strip().split("/")
        if sep and len(parts) == 3:
            overrides.setdefault("/".join(parts[:2]), {})[parts[2]] = value.strip()
    found = []
    for line in postfix._postconf("-M").splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[7] != program:
            continue
        if program == "smtpd" and fields[1] not in ("inet", "pass"):
            continue
        name = f"{fields[0]}/{fields[1]}"
        own = overrides.get(name, {})
        values = {**main, **{k: v for k, v in own.items() if k in main}}
        # smtpd behind postscreen (master.cf "smtpd pass ... smtpd") serves port 25.
        port = 25 if fields[1] == "pass" else port_of(fields[0])
        found.append(Service(name, port, values, frozenset(own)))
    return found


def audit(
    postfix: Postfix,
    *,
    validates: Validates | None = None,
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
) -> list[Finding]:
    """All findings for this instance; an empty list means the TLS settings are sound."""
    main = parse_postconf(postfix._postconf("-x", *SMTPD_SETTINGS, *SMTP_SETTINGS))
    main.update(
        parse_postconf(
            postfix._postconf(
                "-x",
                "queue_directory",
                "tls_medium_cipherlist",
                "tls_high_cipherlist",
                "tls_low_cipherlist",
            )
        )
    )
    cdir = postfix.config_dir
    findings: list[Finding] = []
    clients = [Service("main.cf", None, main, frozenset())]
    clients += services(postfix, main, "smtp")
    for client in clients:
        findings += _dane_client(client, cdir, validates)
    seen_files: set[str] = set()
    for service in services(postfix, main, "smtpd"):
        findings += _server(service, cdir, run)
        findings += service_files(service.values, seen_files)
    return _unique(findings)


def _unique(findings: list[Finding]) -> list[Finding]:
    """A main.cf problem shows once, not once per service that inherits it."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for f in findings:
        if (f.code, f.where, f.fix) not in seen:
            seen.add((f.code, f.where, f.fix))
            out.append(f)
    return out


# -- the SMTP client: DANE needs DNSSEC all the way ------------------------------------------------


def _dane_client(client: Service, cdir: str, validates: Validates | None) -> list[Finding]:
    """TLS_README "Mandatory server certificate verification" / RFC 7672 §2.2: DANE works only
    with DNSSEC-validated lookups, through DNS (not /etc/hosts or NIS)."""
    values = client.values
    level = values.get("smtp_tls_security_level", "")
    if level not in _DANE_LEVELS:
        return []
    what = f"smtp_tls_security_level = {level}"
    where = client.where("smtp_tls_security_level")
    findings = []
    if values.get("smtp_dns_support_level") != "dnssec":
        findings.append(
            Finding(
                "dane-without-dnssec",
                client.where("smtp_dns_support_level"),
                f"{what} but smtp_dns_support_level = "
                f"{values.get('smtp_dns_support_level') or '(empty)'}",
                "without DNSSEC lookups Postfix finds no usable TLSA records and DANE quietly "
                "becomes opportunistic TLS (postconf(5) smtp_dns_support_level)",
                client.fix("smtp_dns_support_level", "dnssec", cdir),
            )
        )
    if "dns" not in split_list(values.get("smtp_host_lookup", "dns")):
        findings.append(
            Finding(
                "dane-without-dns-lookup",
                client.where("smtp_host_lookup"),
                f"{what} but smtp_host_lookup = {values.get('smtp_host_lookup')}",
                "host addresses not looked up in DNS are never DNSSEC-validated, so DANE is off "
                "for them (postconf(5) smtp_host_lookup)",
                client.fix("smtp_host_lookup", "dns", cdir),
            )
        )
    if validates is not None and client.name == "main.cf":
        reason = validates()
        if reason is not None:
            findings.append(
                Finding(
                    "resolver-not-validating",
                    where,
                    f"{what} but the system resolver does not validate DNSSEC: {reason}",
                    "Postfix trusts the AD bit of the resolver in /etc/resolv.conf; without it "
                    "no TLSA record is usable (RFC 7672 §2.2, TLS_README)",
                    "point /etc/resolv.conf at a local validating resolver (e.g. unbound) "
                    "with `options trust-ad`",
                )
            )
    return findings


# -- the server: protocols, ciphers, levels ------------------------------------------------------


def _server(
    service: Service, cdir: str, run: Callable[..., subprocess.CompletedProcess[str]]
) -> list[Finding]:
    values = service.values
    findings = []
    level = values.get("smtpd_tls_security_level", "")
    if level == "encrypt" and service.port == 25:
        findings.append(
            Finding(
                "encrypt-on-port-25",
                service.where("smtpd_tls_security_level"),
                f"smtpd_tls_security_level = encrypt on {service.name} (port 25)",
                "a public MX must accept mail from senders without TLS (RFC 3207 §4, "
                "TLS_README: never 'encrypt' on an Internet-facing MX)",
                service.fix("smtpd_tls_security_level", "may", cdir),
            )
        )
    if level in ("", "none"):
        return findings  # no TLS: nothing more to audit (check's live probe says so)
    findings += _protocols(service, cdir)
    findings += _ciphers(service, cdir, run)
    if values.get("tls_preempt_cipherlist", "no") != "yes":
        findings.append(
            Finding(
                "no-server-cipher-preference",
                service.where("tls_preempt_cipherlist"),
                "tls_preempt_cipherlist = no",
                "the client's cipher order wins, so a client can pick a weaker cipher than the "
                "server prefers (TLS_README, 'Server-side cipher controls')",
                service.fix("tls_preempt_cipherlist", "yes", cdir),
            )
        )
    loglevel = values.get("smtpd_tls_loglevel", "0")
    if loglevel.isdigit() and int(loglevel) > 1:
        findings.append(
            Finding(
                "tls-loglevel-high",
                service.where("smtpd_tls_loglevel"),
                f"smtpd_tls_loglevel = {loglevel}",
                "levels above 1 log every handshake in detail: for debugging only "
                "(postconf(5) smtpd_tls_loglevel)",
                service.fix("smtpd_tls_loglevel", "1", cdir),
            )
        )
    return findings


def allowed_protocols(value: str) -> set[str]:
    """Postfix protocol syntax (postconf(5) smtpd_tls_protocols): ``>=TLSv1.2``, ``<=...``,
    ``!TLSv1`` exclusions, or a plain list; empty allows everything OpenSSL allows."""
    allowed = set(_ALL_PROTOCOLS)
    items = split_list(value.replace(":", " "))
    plain = [i for i in items if not i.startswith(("!", ">=", "<="))]
    if plain:
        allowed = {p for p in _ALL_PROTOCOLS if p in plain}
    for item in items:
        if item.startswith("!"):
            allowed.discard(item[1:])
        elif item.startswith((">=", "<=")) and item[2:] in _ALL_PROTOCOLS:
            bound = _ALL_PROTOCOLS.index(item[2:])
            keep = _ALL_PROTOCOLS[bound:] if item[0] == ">" else _ALL_PROTOCOLS[: bound + 1]
            allowed &= set(keep)
    return allowed


def _protocols(service: Service, cdir: str) -> list[Finding]:
    findings = []
    for setting in ("smtpd_tls_protocols", "smtpd_tls_mandatory_protocols"):
        value = service.values.get(setting, "")
        allowed = allowed_protocols(value)
        old = [p for p in _OLD_PROTOCOLS if p in allowed]
        if not allowed & {"TLSv1.2", "TLSv1.3"}:
            findings.append(
                Finding(
                    "no-modern-tls",
                    service.where(setting),
                    f"{setting} = {value} allows neither TLS 1.2 nor TLS 1.3",
                    "no current client can complete a handshake (RFC 8996, RFC 8446)",
                    service.fix(setting, ">=TLSv1.2", cdir),
                )
            )
        elif old:
            findings.append(
                Finding(
                    "old-tls-allowed",
                    service.where(setting),
                    f"{setting} = {value or '(empty)'} allows {', '.join(old)}",
                    "TLS 1.0 and 1.1 are deprecated (RFC 8996)",
                    service.fix(setting, ">=TLSv1.2", cdir),
                )
            )
    return findings


def _ciphers(
    service: Service, cdir: str, run: Callable[..., subprocess.CompletedProcess[str]]
) -> list[Finding]:
    """Key exchange without forward secrecy: TLS 1.2 suites with plain RSA key transport
    (``Kx=RSA`` in ``openssl ciphers -v``), as Postfix would build the list: the grade's
    cipherlist minus ``smtpd_tls_exclude_ciphers`` (postconf(5) smtpd_tls_ciphers)."""
    values = service.values
    if "TLSv1.2" not in allowed_protocols(values.get("smtpd_tls_protocols", "")):
        return []
    grade = values.get("smtpd_tls_ciphers", "medium")
    base = values.get(f"tls_{grade}_cipherlist", "")
    excludes = split_list(values.get("smtpd_tls_exclude_ciphers", ""))
    cipherlist = ":".join([base or "DEFAULT", *(f"!{x}" for x in excludes)])
    done = run(
        ["openssl", "ciphers", "-v", cipherlist],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if done.returncode != 0:
        raise PostfixError(f"openssl ciphers {cipherlist!r} failed: {done.stderr.strip()[:80]}")
    static = [f[0] for f in (line.split() for line in done.stdout.splitlines()) if "Kx=RSA" in f]
    if not static:
        return []
    fix_value = ", ".join([*excludes, "kRSA"])
    return [
        Finding(
            "no-forward-secrecy",
            service.where("smtpd_tls_exclude_ciphers"),
            f"{len(static)} cipher suites with RSA key transport allowed (e.g. {static[0]})",
            "a stolen server key decrypts every recorded session: no forward secrecy "
            "(TLS_README 'Forward Secrecy in Postfix')",
            service.fix("smtpd_tls_exclude_ciphers", fix_value, cdir),
        )
    ]
