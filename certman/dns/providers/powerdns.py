"""The PowerDNS Authoritative HTTP API (``/api/v1``): PATCH rrsets with REPLACE / DELETE.

PowerDNS has no prerequisites, so a compare-and-swap is read, compare, write: another writer
that changes the same RRset between our GET and our PATCH (a few milliseconds) is not detected.
certman is normally the only writer of its TLSA and ``_acme-challenge`` RRsets, so that window is
accepted and documented. The write is verified by reading it back.

The zone's serial after a change is the ``edited_serial`` the API reports (the serial as served,
after SOA-EDIT), else ``serial``; for it to move on API changes the zone needs the metadata
``SOA-EDIT-API`` (``pdnsutil set-meta ZONE SOA-EDIT-API DEFAULT``).

urllib from the standard library: no dependency for a handful of JSON requests.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from certman.dns.provider import ANY, ChangeResult, Expected, ProviderContext, RRset, canonical_name
from certman.dns.zone import check_expected, in_zone, show_rrset
from certman.errors import DnsError

if TYPE_CHECKING:
    import ssl

    from certman.config.toml import Section


@dataclass(frozen=True)
class PowerDnsOptions:
    """``[dns.NAME]`` with ``type = "powerdns"``; see docs/providers/powerdns.md."""

    api_url: str
    api_key: str = field(repr=False)
    api_key_source: str = ""
    server_id: str = "localhost"
    zone: str | None = None
    ca_bundle: Path | None = None
    timeout: float | None = None


class PowerDnsProvider:
    type_name: ClassVar[str] = "powerdns"

    @classmethod
    def parse_options(cls, section: Section) -> PowerDnsOptions:
        api_url = section.string("api_url").rstrip("/")
        if not api_url.startswith(("http://", "https://")):
            raise section.error("api_url", f"expected an http:// or https:// URL, got {api_url!r}")
        api_url = api_url.removesuffix("/api/v1")
        secret = section.secret("api_key")
        assert secret is not None
        ca_bundle = section.opt_path("ca_bundle")
        if ca_bundle is not None and not ca_bundle.is_file():
            raise section.error("ca_bundle", f"file {ca_bundle} does not exist")
        return PowerDnsOptions(
            api_url=api_url,
            api_key=secret.value,
            api_key_source=secret.source,
            server_id=section.string("server_id", "localhost"),
            zone=section.domain("zone") if section.has("zone") else None,
            ca_bundle=ca_bundle,
            timeout=section.number("timeout", low=0.1) if section.has("timeout") else None,
        )

    def __init__(self, name: str, options: PowerDnsOptions, context: ProviderContext) -> None:
        self.name = name
        self.options = options
        self.timeout = options.timeout or context.timeout
        self._zone_ids: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"PowerDnsProvider({self.name!r}, {self.options.api_url!r})"

    # -- the provider contract --------------------------------------------------------------------

    def read(self, name: str, rdtype: str) -> RRset | None:
        name, rdtype = canonical_name(name), rdtype.upper()
        zone = self._zone(name, "read", rdtype)
        return self._fetch(zone, name, rdtype, "read")[0]

    def replace(self, rrset: RRset, expected: Expected = ANY) -> ChangeResult:
        zone = self._zone(rrset.name, "replace", rrset.rdtype)
        current, serial = self._fetch(zone, rrset.name, rrset.rdtype, "replace")
        if current == rrset:  # already in place: a repeat of a finished write is a no-op
            return ChangeResult(zone, serial)
        check_expected(current, expected, self._where("replace", rrset.name, rrset.rdtype))
        records = [{"content": r, "disabled": False} for r in sorted(rrset.rdatas)]
        change = {"changetype": "REPLACE", "ttl": rrset.ttl, "records": records}
        return self._patch(
            zone, rrset.name, rrset.rdtype, change=change, wanted=rrset, action="replace"
        )

    def delete(self, name: str, rdtype: str, expected: Expected = ANY) -> ChangeResult:
        name, rdtype = canonical_name(name), rdtype.upper()
        zone = self._zone(name, "delete", rdtype)
        current, serial = self._fetch(zone, name, rdtype, "delete")
        if current is None:  # deleting what is absent is a no-op, whatever was expected
            return ChangeResult(zone, serial)
        check_expected(current, expected, self._where("delete", name, rdtype))
        delete = {"changetype": "DELETE"}
        return self._patch(zone, name, rdtype, change=delete, wanted=None, action="delete")

    def wait_in_sync(self, change: ChangeResult, timeout: float) -> None:
        """PowerDNS serves an API change at once; ``certman.dns.propagation`` checks secondaries."""

    # -- helpers ----------------------------------------------------------------------------------

    def _where(self, action: str, name: str, rdtype: str) -> str:
        return f"powerdns provider {self.name!r} ({self.options.api_url}): {action} {name} {rdtype}"

    def _zone(self, name: str, action: str, rdtype: str) -> str:
        """The configured zone, else the longest zone on the server that contains ``name``."""
        where = self._where(action, name, rdtype)
        if self.options.zone is not None:
            zone = self.options.zone
            if not in_zone(name, zone):
                raise DnsError(f"{where}: name is not in zone {zone}")
            if zone not in self._zone_ids:
                found = self._request("GET", f"zones?zone={_quote(zone + '.')}", where=where)
                if not isinstance(found, list) or not found:
                    raise DnsError(f"{where}: zone {zone} not found on server {self._sid()}")
                self._zone_ids[zone] = str(found[0]["id"])
            return zone
        if not self._zone_ids:
            listed = self._request("GET", "zones", where=where)
            for item in listed if isinstance(listed, list) else []:
                self._zone_ids[canonical_name(str(item["name"]))] = str(item["id"])
        matches = [z for z in self._zone_ids if in_zone(name, z)]
        if not matches:
            raise DnsError(f"{where}: no zone on server {self._sid()} contains this name")
        return max(matches, key=len)

    def _sid(self) -> str:
        return self.options.server_id

    def _fetch(self, zone: str, name: str, rdtype: str, action: str) -> tuple[RRset | None, int]:
        """The RRset (enabled records only: disabled ones are not served) and the zone serial."""
        query = urllib.parse.urlencode({"rrset_name": name + ".", "rrset_type": rdtype})
        where = self._where(action, name, rdtype)
        data = self._request("GET", f"zones/{_quote(self._zone_ids[zone])}?{query}", where=where)
        if not isinstance(data, dict):
            raise DnsError(f"{where}: unexpected API answer (not a zone object)")
        serial = int(data.get("edited_serial") or data.get("serial") or 0)
        for item in data.get("rrsets", []):
            if canonical_name(str(item["name"])) == name and str(item["type"]).upper() == rdtype:
                rdatas = [str(r["content"]) for r in item["records"] if not r.get("disabled")]
                if rdatas:
                    return RRset.of(name, rdtype, int(item["ttl"]), rdatas), serial
        return None, serial

    def _patch(
        self,
        zone: str,
        name: str,
        rdtype: str,
        *,
        change: dict[str, Any],
        wanted: RRset | None,
        action: str,
    ) -> ChangeResult:
        where = self._where(action, name, rdtype)
        body = {"rrsets": [{"name": name + ".", "type": rdtype, **change}]}
        path = f"zones/{_quote(self._zone_ids[zone])}"
        self._request("PATCH", path, body=body, where=where)
        now, serial = self._fetch(zone, name, rdtype, action)
        if now != wanted:
            raise DnsError(f"{where}: the API accepted the change but serves {show_rrset(now)}")
        return ChangeResult(zone, serial)

    def _ssl_context(self) -> ssl.SSLContext | None:
        import ssl

        if not self.options.api_url.startswith("https://"):
            return None
        cafile = str(self.options.ca_bundle) if self.options.ca_bundle else None
        return ssl.create_default_context(cafile=cafile)

    def _request(
        self, method: str, path: str, *, where: str, body: dict[str, Any] | None = None
    ) -> Any:
        """One API call; every failure becomes a one-line DnsError naming server and record."""
        import urllib.error
        import urllib.request

        url = f"{self.options.api_url}/api/v1/servers/{_quote(self._sid())}/{path}"
        request = urllib.request.Request(
            url,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "X-API-Key": self.options.api_key,
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self._ssl_context()
            ) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise DnsError(f"{where}: {_http_error(exc)}") from None
        except urllib.error.URLError as exc:
            raise DnsError(f"{where}: cannot reach the API: {exc.reason}") from None
        except (TimeoutError, OSError) as exc:
            raise DnsError(f"{where}: cannot reach the API: {exc}") from None
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError:
            raise DnsError(f"{where}: the API answered something that is not JSON") from None


def _http_error(exc: Any) -> str:
    """``HTTP 422: <PowerDNS's error text>``; 401/403 say the key was rejected."""
    code = int(exc.code)
    if code in (401, 403):
        return f"API key rejected (HTTP {code})"
    try:
        detail = str(json.loads(exc.read()).get("error", ""))
    except (ValueError, AttributeError, OSError):
        detail = ""
    if code == 404:
        detail = detail or "server_id or zone not found"
    return f"HTTP {code}: {' '.join(detail.split()) or exc.reason}"


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")
