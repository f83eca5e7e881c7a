"""certman's errors: each carries the exit code the CLI returns for it.

Errors are for the operator: the message is one line that names the file, key, record or server at
fault. The CLI prints ``certman: <message>`` and exits with ``exit_code``; no traceback for a
user's mistake.
"""

from __future__ import annotations


class CertmanError(Exception):
    """Base class. Exit code 1: an operation failed and was rolled back or left untouched."""

    exit_code = 1


class ConfigError(CertmanError):
    """The configuration (or a file it points at) is wrong. Exit code 2, nothing changed."""

    exit_code = 2


class LockedError(CertmanError):
    """Another certman run holds the certificate's lock. Exit code 75 (EX_TEMPFAIL)."""

    exit_code = 75


class DnsError(CertmanError):
    """A DNS provider or nameserver refused or failed an operation."""


class ResolverUnreachable(DnsError):
    """No resolver answered at all (time-outs, refused connections): nothing is known about the
    name, which ``certman check`` reports as UNKNOWN rather than as a DNS problem."""


class ConflictError(DnsError):
    """A compare-and-swap on an RRset lost a race with another writer; reread and retry."""


class PropagationTimeout(DnsError):
    """A record did not reach every authoritative nameserver within the allowed time."""


class AcmeError(CertmanError):
    """The ACME server refused or failed a request."""


class RetryLater(CertmanError):
    """A server asked us to come back later (rate limit, Retry-After); ``not_before`` is epoch."""

    exit_code = 75

    def __init__(self, message: str, not_before: float, *, server_asked: bool = False) -> None:
        super().__init__(message)
        self.not_before = not_before
        self.server_asked = server_asked  # the server's own Retry-After, not our back-off


class PostfixError(CertmanError):
    """A Postfix command failed or the live server did not present what was installed."""


class VerificationError(PostfixError):
    """The live endpoint's chain does not match the DNSSEC-validated TLSA RRset."""
