"""Amazon Route 53 through boto3 (the optional extra ``certman[route53]``).

Writes are ``ChangeResourceRecordSets`` batches, which Route 53 applies atomically: all changes or
none. A compare-and-swap is one batch of DELETE (with the expected values) + CREATE: Route 53
rejects the whole batch when the RRset no longer holds exactly those values, so a concurrent
change is never overwritten. Route 53's own "in sync" signal is ``GetChange`` = ``INSYNC``
(``wait_in_sync``); its SOA serial never moves, so ``ChangeResult.serial`` is None.

The boto3 client is built on first use, never in the constructor: a cron run with nothing to do
does not import boto3. Credentials come from boto3's normal chain (environment, shared files,
``profile``, instance role).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
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
from certman.dns.zone import check_expected, in_zone, show_rrset
from certman.errors import ConflictError, DnsError, PropagationTimeout

if TYPE_CHECKING:
    from certman.config.toml import Section

# boto3 is the optional extra "route53": fail at provider loading (which names the extra to
# install), not at the first write. find_spec only looks; the import itself waits for first use.
if importlib.util.find_spec("boto3") is None:
    raise ModuleNotFoundError("No module named 'boto3'", name="boto3")

# Route 53 rejects a batch whose DELETE values or CREATE absence no longer hold with
# InvalidChangeBatch (moto says InvalidInput); both also mean "bad data", so a rejection counts as
# a conflict only when a re-read shows the RRset changed since certman read it.
_BATCH_REJECTED = ("InvalidChangeBatch", "InvalidInput")


@dataclass(frozen=True)
class Route53Options:
    """``[dns.NAME]`` with ``type = "route53"``; see docs/providers/route53.md."""

    hosted_zone_id: str | None = None
    zone: str | None = None
    profile: str | None = None
    region: str = "us-east-1"
    endpoint_url: str | None = None
    ca_bundle: Path | None = None
    poll_interval: int = 10
    timeout: float | None = None


class Route53Provider:
    type_name: ClassVar[str] = "route53"

    @classmethod
    def parse_options(cls, section: Section) -> Route53Options:
        endpoint = section.opt_string("endpoint_url")
        if endpoint is not None and not endpoint.startswith(("https://", "http://")):
            raise section.error("endpoint_url", f"expected an http(s):// URL, got {endpoint!r}")
        ca_bundle = section.opt_path("ca_bundle")
        if ca_bundle is not None and not ca_bundle.is_file():
            raise section.error("ca_bundle", f"file {ca_bundle} does not exist")
        zone_id = section.opt_string("hosted_zone_id")
        return Route53Options(
            hosted_zone_id=None if zone_id is None else zone_id.removeprefix("/hostedzone/"),
            zone=section.domain("zone") if section.has("zone") else None,
            profile=section.opt_string("profile"),
            region=section.string("region", "us-east-1"),
            endpoint_url=endpoint,
            ca_bundle=ca_bundle,
            poll_interval=section.integer("poll_interval", 10, low=1, high=300),
            timeout=section.number("timeout", low=0.1) if section.has("timeout") else None,
        )

    def __init__(self, name: str, options: Route53Options, context: ProviderContext) -> None:
        self.name = name
        self.options = options
        self.timeout = options.timeout or context.timeout
        self._client: Any = None
        self._zones: dict[str, str] = {}  # zone name -> hosted zone id

    def __repr__(self) -> str:
        return f"Route53Provider({self.name!r})"

    # -- the provider contract --------------------------------------------------------------------

    def read(self, name: str, rdtype: str) -> RRset | None:
        name, rdtype = canonical_name(name), rdtype.upper()
        zone = self._zone(name, self._where("read", name, rdtype))
        return self._read(zone, name, rdtype)

    def replace(self, rrset: RRset, expected: Expected = ANY) -> ChangeResult:
        where = self._where("replace", rrset.name, rrset.rdtype)
        zone = self._zone(rrset.name, where)
        current = self._read(zone, rrset.name, rrset.rdtype)
        if current == rrset:  # already in place: a repeat of a finished write is a no-op
            return ChangeResult(zone)
        check_expected(current, expected, where)
        if isinstance(expected, AnyValue):
            changes = [_change("UPSERT", rrset)]
        elif current is None:
            changes = [_change("CREATE", rrset)]  # rejected if someone created it meanwhile
        else:
            # DELETE must name the exact current values and TTL; the rdatas are the expected
            # ones (checked above), so a change of values in the meantime fails the batch.
            changes = [_change("DELETE", current), _change("CREATE", rrset)]
        return self._change_batch(
            zone, changes, name=rrset.name, rdtype=rrset.rdtype, before=current, wanted=rrset
        )

    def delete(self, name: str, rdtype: str, expected: Expected = ANY) -> ChangeResult:
        name, rdtype = canonical_name(name), rdtype.upper()
        where = self._where("delete", name, rdtype)
        zone = self._zone(name, where)
        # An unconditional delete retries when the values changed under it (the DELETE must
        # name them exactly); a compare-and-swap delete reports the conflict instead.
        attempts = 3 if isinstance(expected, AnyValue) else 1
        for attempt in range(attempts):
            current = self._read(zone, name, rdtype)
            if current is None:  # deleting what is absent is a no-op, whatever was expected
                return ChangeResult(zone)
            check_expected(current, expected, where)
            try:
                changes = [_change("DELETE", current)]
                return self._change_batch(
                    zone, changes, name=name, rdtype=rdtype, before=current, wanted=None
                )
            except ConflictError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def wait_in_sync(self, change: ChangeResult, timeout: float) -> None:
        """Poll ``GetChange`` until ``INSYNC`` (botocore's waiter does the polling)."""
        if change.change_id is None:
            return
        import botocore.exceptions

        delay = self.options.poll_interval
        attempts = max(1, math.ceil(timeout / delay) + 1)
        waiter = self._api().get_waiter("resource_record_sets_changed")
        try:
            waiter.wait(Id=change.change_id, WaiterConfig={"Delay": delay, "MaxAttempts": attempts})
        except botocore.exceptions.WaiterError as exc:
            if "Max attempts exceeded" in str(exc):
                raise PropagationTimeout(
                    f"route53 provider {self.name!r}: change {change.change_id} in zone"
                    f" {change.zone} not INSYNC after {timeout:g}s"
                ) from None
            raise DnsError(
                f"route53 provider {self.name!r}: GetChange {change.change_id}: {_reason(exc)}"
            ) from None

    # -- helpers ----------------------------------------------------------------------------------

    def _where(self, action: str, name: str, rdtype: str) -> str:
        return f"route53 provider {self.name!r}: {action} {name} {rdtype}"

    def _api(self) -> Any:
        """The boto3 client, built on first use with the configured profile/region/endpoint."""
        if self._client is None:
            import boto3
            import botocore.config

            session = boto3.session.Session(profile_name=self.options.profile)
            config = botocore.config.Config(
                connect_timeout=self.timeout,
                read_timeout=self.timeout,
                retries={"max_attempts": 3, "mode": "standard"},
            )
            self._client = session.client(
                "route53",
                region_name=self.options.region,
                endpoint_url=self.options.endpoint_url,
                verify=str(self.options.ca_bundle) if self.options.ca_bundle else None,
                config=config,
            )
        return self._client

    def _call(self, where: str, operation: str, **kwargs: Any) -> Any:
        """One API call; credentials, network and API errors become one-line DnsErrors."""
        import botocore.exceptions

        try:
            return getattr(self._api(), operation)(**kwargs)
        except botocore.exceptions.ClientError as exc:
            raise _ApiError(f"{where}: {_reason(exc)}", _code(exc)) from None
        except botocore.exceptions.NoCredentialsError:
            profile = f" (profile {self.options.profile})" if self.options.profile else ""
            raise DnsError(f"{where}: no AWS credentials found{profile}") from None
        except botocore.exceptions.ProfileNotFound:
            raise DnsError(f"{where}: AWS profile {self.options.profile!r} not found") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise DnsError(f"{where}: {exc}") from None

    def _zone(self, name: str, where: str) -> str:
        """The hosted zone: by id, by name, or the longest hosted zone name that holds ``name``."""
        if not self._zones:
            if self.options.hosted_zone_id is not None:
                found = self._call(where, "get_hosted_zone", Id=self.options.hosted_zone_id)
                zone = canonical_name(found["HostedZone"]["Name"])
                self._zones[zone] = self.options.hosted_zone_id
            else:
                self._find_zones(name, where)
        matches = [z for z in self._zones if in_zone(name, z)]
        if not matches:
            known = ", ".join(self._zones) or "none"
            raise DnsError(f"{where}: name is not in the hosted zone ({known})")
        return max(matches, key=len)

    def _find_zones(self, name: str, where: str) -> None:
        labels = canonical_name(self.options.zone or name).split(".")
        candidates = [self.options.zone] if self.options.zone else None
        candidates = candidates or [".".join(labels[i:]) for i in range(len(labels) - 1)]
        for candidate in candidates:
            listed = self._call(where, "list_hosted_zones_by_name", DNSName=candidate, MaxItems="5")
            ids = [
                str(z["Id"]).removeprefix("/hostedzone/")
                for z in listed["HostedZones"]
                if canonical_name(z["Name"]) == candidate
            ]
            if len(ids) > 1:
                raise DnsError(
                    f"{where}: several hosted zones named {candidate}; set hosted_zone_id"
                )
            if ids:
                self._zones[candidate] = ids[0]
                return
        raise DnsError(f"{where}: no hosted zone found for {self.options.zone or name}")

    def _read(self, zone: str, name: str, rdtype: str) -> RRset | None:
        where = self._where("read", name, rdtype)
        listed = self._call(
            where,
            "list_resource_record_sets",
            HostedZoneId=self._zones[zone],
            StartRecordName=name + ".",
            StartRecordType=rdtype,
            MaxItems="1",
        )
        for item in listed["ResourceRecordSets"]:
            if _owner(item["Name"]) != name or item["Type"] != rdtype:
                continue
            if "SetIdentifier" in item or "AliasTarget" in item:
                raise DnsError(f"{where}: routing-policy or alias RRsets are not supported")
            values = [r["Value"] for r in item.get("ResourceRecords", [])]
            return RRset.of(name, rdtype, int(item["TTL"]), values)
        return None

    def _change_batch(
        self,
        zone: str,
        changes: list[dict[str, Any]],
        *,
        name: str,
        rdtype: str,
        before: RRset | None,
        wanted: RRset | None,
    ) -> ChangeResult:
        where = self._where("replace" if wanted else "delete", name, rdtype)
        try:
            answer = self._call(
                where,
                "change_resource_record_sets",
                HostedZoneId=self._zones[zone],
                ChangeBatch={"Comment": "certman", "Changes": changes},
            )
        except _ApiError as exc:
            if exc.code not in _BATCH_REJECTED:
                raise DnsError(str(exc)) from None
            now = self._read(zone, name, rdtype)
            if now == wanted:  # a concurrent writer made the same change: nothing to do
                return ChangeResult(zone)
            if now != before:
                raise ConflictError(
                    f"{where}: changed concurrently, now {show_rrset(now)}; batch rejected"
                ) from None
            raise DnsError(str(exc)) from None
        return ChangeResult(zone, change_id=str(answer["ChangeInfo"]["Id"]))


class _ApiError(DnsError):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _change(action: str, rrset: RRset) -> dict[str, Any]:
    return {
        "Action": action,
        "ResourceRecordSet": {
            "Name": rrset.name + ".",
            "Type": rrset.rdtype,
            "TTL": rrset.ttl,
            "ResourceRecords": [{"Value": r} for r in sorted(rrset.rdatas)],
        },
    }


def _owner(name: str) -> str:
    """Route 53 escapes some characters as ``\\DDD`` (``*`` as ``\\052``); undo it."""
    import dns.name

    return canonical_name(dns.name.from_text(name).to_text())


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _reason(exc: Any) -> str:
    """``AccessDenied: <message>`` on one line; never the request (it may carry credentials)."""
    error = getattr(exc, "response", {}).get("Error", {}) if hasattr(exc, "response") else {}
    if error:
        message = " ".join(str(error.get("Message", "")).split())
        return f"{error.get('Code', 'error')}: {message}"
    return " ".join(str(exc).split())
