"""The ``exec`` provider: an operator's own command does the DNS work.

The command is an argv list (never a shell string) run once per operation with:

- environment: ``CERTMAN_ACTION`` (``read``, ``replace`` or ``delete``), ``CERTMAN_NAME``,
  ``CERTMAN_TYPE``, ``CERTMAN_TTL`` (empty for read/delete), ``CERTMAN_ZONE``, plus a minimal
  environment (``PATH``, ``HOME``, ``LANG``, ``LC_ALL``, ``TZ``, ``TMPDIR``) and the variables
  named in ``pass_variables``; never certman's whole environment (it may hold ``*_env`` secrets);
- stdin: ``{"action", "name", "type", "ttl", "rdatas": [...], "zone"}`` as JSON; for a
  compare-and-swap also ``"expected"``: ``{"ttl", "rdatas"}`` or ``null`` (must be absent).

``read`` prints ``{"ttl": N, "rdatas": [...]}`` or ``null`` on stdout. ``replace``/``delete`` may
print ``{"serial": N}`` (the zone's SOA serial after the change) or nothing. Exit status 0 is
success, 3 a compare-and-swap conflict (-> ConflictError), anything else a failure whose last
stderr line becomes the error message.

certman itself reads before it writes, so writes of what is already there never reach the
command, and it compares ``expected`` itself; a command that also checks ``expected`` under its
own lock closes the remaining race window.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from certman.dns.provider import (
    ANY,
    AnyValue,
    ChangeResult,
    Expected,
    ProviderContext,
    RRset,
    canonical_name,
)
from certman.dns.zone import check_expected, find_zone_name, in_zone
from certman.errors import ConflictError, DnsError

if TYPE_CHECKING:
    from certman.config.toml import Section

EXIT_CONFLICT = 3
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


@dataclass(frozen=True)
class ExecOptions:
    """``[dns.NAME]`` with ``type = "exec"``; see docs/providers/exec.md."""

    command: tuple[str, ...]
    zone: str | None = None
    timeout: float = 30.0
    pass_variables: tuple[str, ...] = ()


class ExecProvider:
    type_name: ClassVar[str] = "exec"

    @classmethod
    def parse_options(cls, section: Section) -> ExecOptions:
        command = section.str_list("command")
        if not os.path.isabs(command[0]):
            raise section.error("command", f"expected an absolute program path, got {command[0]!r}")
        return ExecOptions(
            command=tuple(command),
            zone=section.domain("zone") if section.has("zone") else None,
            timeout=section.number("timeout", 30.0, low=0.1),
            pass_variables=tuple(section.str_list("pass_variables", [], nonempty=False)),
        )

    def __init__(self, name: str, options: ExecOptions, context: ProviderContext) -> None:
        self.name = name
        self.options = options
        self.context = context

    def __repr__(self) -> str:
        return f"ExecProvider({self.name!r}, {self.options.command[0]!r})"

    # -- the provider contract --------------------------------------------------------------------

    def read(self, name: str, rdtype: str) -> RRset | None:
        name, rdtype = canonical_name(name), rdtype.upper()
        zone = self._zone(name, "read", rdtype)
        return self._read(zone, name, rdtype)

    def replace(self, rrset: RRset, expected: Expected = ANY) -> ChangeResult:
        zone = self._zone(rrset.name, "replace", rrset.rdtype)
        current = self._read(zone, rrset.name, rrset.rdtype)
        if current == rrset:  # already in place: a repeat of a finished write is a no-op
            return ChangeResult(zone)
        check_expected(current, expected, self._where("replace", rrset.name, rrset.rdtype))
        request = _request(
            "replace", rrset.name, rrset.rdtype, zone, rrset=rrset, expected=expected
        )
        return self._write(zone, request)

    def delete(self, name: str, rdtype: str, expected: Expected = ANY) -> ChangeResult:
        name, rdtype = canonical_name(name), rdtype.upper()
        zone = self._zone(name, "delete", rdtype)
        current = self._read(zone, name, rdtype)
        if current is None:  # deleting what is absent is a no-op, whatever was expected
            return ChangeResult(zone)
        check_expected(current, expected, self._where("delete", name, rdtype))
        return self._write(
            zone, _request("delete", name, rdtype, zone, rrset=None, expected=expected)
        )

    def wait_in_sync(self, change: ChangeResult, timeout: float) -> None:
        """The command is done when it exits; ``certman.dns.propagation`` checks the servers."""

    # -- helpers ----------------------------------------------------------------------------------

    def _where(self, action: str, name: str, rdtype: str) -> str:
        return f"exec provider {self.name!r} ({self.options.command[0]}): {action} {name} {rdtype}"

    def _zone(self, name: str, action: str, rdtype: str) -> str:
        zone = self.options.zone
        if zone is None:
            try:
                zone = find_zone_name(name, self.context.resolvers, self.context.timeout)
            except DnsError as exc:
                raise DnsError(f"{self._where(action, name, rdtype)}: {exc}") from None
        if not in_zone(name, zone):
            raise DnsError(f"{self._where(action, name, rdtype)}: name is not in zone {zone}")
        return zone

    def _read(self, zone: str, name: str, rdtype: str) -> RRset | None:
        import dns.exception

        where = self._where("read", name, rdtype)
        output = self._run(_request("read", name, rdtype, zone, rrset=None, expected=ANY), where)
        try:
            data = json.loads(output)
            if data is None:
                return None
            rdatas = data["rdatas"]
            if not isinstance(rdatas, list) or isinstance(data["ttl"], bool):
                raise TypeError
            if not rdatas:
                return None
            return RRset.of(name, rdtype, int(data["ttl"]), [str(r) for r in rdatas])
        except (ValueError, TypeError, KeyError):
            raise DnsError(
                f'{where}: expected {{"ttl": N, "rdatas": [...]}} or null on stdout,'
                f" got {output.strip()[:80]!r}"
            ) from None
        except dns.exception.DNSException as exc:
            raise DnsError(f"{where}: the command printed an invalid record: {exc}") from None

    def _write(self, zone: str, request: dict[str, Any]) -> ChangeResult:
        where = self._where(request["action"], request["name"], request["type"])
        output = self._run(request, where).strip()
        serial = None
        if output:
            try:
                serial = int(json.loads(output)["serial"])
            except (ValueError, TypeError, KeyError):
                raise DnsError(
                    f'{where}: expected nothing or {{"serial": N}} on stdout, got {output[:80]!r}'
                ) from None
        return ChangeResult(zone, serial)

    def _run(self, request: dict[str, Any], where: str) -> str:
        import subprocess

        env = dict(
            {k: v for k, v in os.environ.items() if k in (*BASE_ENV, *self.options.pass_variables)},
            CERTMAN_ACTION=request["action"],
            CERTMAN_NAME=request["name"],
            CERTMAN_TYPE=request["type"],
            CERTMAN_TTL="" if request["ttl"] is None else str(request["ttl"]),
            CERTMAN_ZONE=request["zone"],
        )
        try:
            done = subprocess.run(
                self.options.command,
                input=json.dumps(request),
                capture_output=True,
                text=True,
                env=env,
                timeout=self.options.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DnsError(f"{where}: no exit within {self.options.timeout:g}s (killed)") from None
        except OSError as exc:
            raise DnsError(f"{where}: cannot run the command: {exc.strerror}") from None
        if done.returncode == 0:
            return done.stdout
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else "no message on stderr"
        if done.returncode == EXIT_CONFLICT:
            raise ConflictError(f"{where}: conflict reported by the command: {last}")
        raise DnsError(f"{where}: exit status {done.returncode}: {last}")


def _request(
    action: str, name: str, rdtype: str, zone: str, *, rrset: RRset | None, expected: Expected
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "action": action,
        "name": name,
        "type": rdtype,
        "ttl": rrset.ttl if rrset else None,
        "rdatas": sorted(rrset.rdatas) if rrset else [],
        "zone": zone,
    }
    if not isinstance(expected, AnyValue):
        request["expected"] = (
            None if expected is None else {"ttl": expected.ttl, "rdatas": sorted(expected.rdatas)}
        )
    return request
