"""route53: the change batches it sends and how it reads Route 53's answers (botocore's Stubber
checks each request; no network). moto, used by the integration tests, does not check a
DELETE's values against the current ones, so the compare-and-swap batch is checked here."""

from __future__ import annotations

import datetime
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from certman.config.toml import Section
from certman.dns.provider import ProviderContext, RRset
from certman.dns.providers.route53 import Route53Options, Route53Provider
from certman.errors import ConfigError, ConflictError, DnsError

NAME = "_25._tcp.mx1.example.com"
OLD = RRset.of(NAME, "TLSA", 300, ["3 1 1 " + "aa" * 32])
NEW = RRset.of(NAME, "TLSA", 300, ["3 1 1 " + "bb" * 32])
OTHER = RRset.of(NAME, "TLSA", 300, ["3 1 1 " + "cc" * 32])


@pytest.fixture
def stubbed() -> Iterator[tuple[Route53Provider, Any]]:
    import boto3
    from botocore.stub import Stubber

    client = boto3.client(
        "route53", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    provider = Route53Provider("r53", Route53Options(hosted_zone_id="Z1"), ProviderContext())
    provider._client = client
    with Stubber(client) as stubber:
        stubber.add_response(
            "get_hosted_zone",
            {
                "HostedZone": {
                    "Id": "/hostedzone/Z1",
                    "Name": "example.com.",
                    "CallerReference": "c",
                },
                "DelegationSet": {"NameServers": ["ns-1.awsdns.example"]},
            },
            {"Id": "Z1"},
        )
        yield provider, stubber
        stubber.assert_no_pending_responses()


def listing(stubber: Any, rrset: RRset | None) -> None:
    sets = []
    if rrset is not None:
        records = [{"Value": r} for r in sorted(rrset.rdatas)]
        sets = [
            {"Name": rrset.name + ".", "Type": "TLSA", "TTL": rrset.ttl, "ResourceRecords": records}
        ]
    params = {
        "HostedZoneId": "Z1",
        "StartRecordName": NAME + ".",
        "StartRecordType": "TLSA",
        "MaxItems": "1",
    }
    answer = {"ResourceRecordSets": sets, "IsTruncated": False, "MaxItems": "1"}
    stubber.add_response("list_resource_record_sets", answer, params)


def change(action: str, rrset: RRset) -> dict[str, Any]:
    records = [{"Value": r} for r in sorted(rrset.rdatas)]
    return {
        "Action": action,
        "ResourceRecordSet": {
            "Name": rrset.name + ".",
            "Type": rrset.rdtype,
            "TTL": rrset.ttl,
            "ResourceRecords": records,
        },
    }


def batch(stubber: Any, *changes: dict[str, Any], error: str | None = None) -> None:
    params = {"HostedZoneId": "Z1", "ChangeBatch": {"Comment": "certman", "Changes": list(changes)}}
    if error is not None:
        stubber.add_client_error(
            "change_resource_record_sets",
            service_error_code=error,
            service_message="Tried to delete resource record set but the values do not match",
            http_status_code=400,
            expected_params=params,
        )
        return
    info = {"Id": "/change/C1", "Status": "PENDING", "SubmittedAt": datetime.datetime.now()}
    stubber.add_response("change_resource_record_sets", {"ChangeInfo": info}, params)


def test_compare_and_swap_is_one_batch_deleting_the_current_values(stubbed: Any) -> None:
    provider, stubber = stubbed
    listing(stubber, OLD)
    batch(stubber, change("DELETE", OLD), change("CREATE", NEW))
    result = provider.replace(NEW, expected=OLD)
    assert (result.zone, result.change_id, result.serial) == ("example.com", "/change/C1", None)


def test_unconditional_replace_is_an_upsert_and_create_requires_absence(stubbed: Any) -> None:
    provider, stubber = stubbed
    listing(stubber, OLD)
    batch(stubber, change("UPSERT", NEW))
    provider.replace(NEW)
    listing(stubber, None)
    batch(stubber, change("CREATE", NEW))
    provider.replace(NEW, expected=None)


def test_rejected_batch_after_a_concurrent_change_is_a_conflict(stubbed: Any) -> None:
    provider, stubber = stubbed
    listing(stubber, OLD)
    batch(stubber, change("DELETE", OLD), change("CREATE", NEW), error="InvalidChangeBatch")
    listing(stubber, OTHER)
    with pytest.raises(ConflictError, match=r"changed concurrently, now TTL 300 \[3 1 1 cc"):
        provider.replace(NEW, expected=OLD)


def test_rejected_batch_with_nothing_changed_reports_route53s_reason(stubbed: Any) -> None:
    provider, stubber = stubbed
    listing(stubber, OLD)
    batch(stubber, change("UPSERT", NEW), error="InvalidChangeBatch")
    listing(stubber, OLD)
    with pytest.raises(DnsError) as caught:
        provider.replace(NEW)
    assert not isinstance(caught.value, ConflictError)
    assert str(caught.value).startswith(
        f"route53 provider 'r53': replace {NAME} TLSA: InvalidChangeBatch: Tried to delete"
    )


def test_rejected_batch_when_the_other_writer_did_the_same_is_fine(stubbed: Any) -> None:
    provider, stubber = stubbed
    listing(stubber, OLD)
    batch(stubber, change("DELETE", OLD), change("CREATE", NEW), error="InvalidChangeBatch")
    listing(stubber, NEW)
    assert provider.replace(NEW, expected=OLD).change_id is None


def test_unconditional_delete_retries_when_the_values_moved(stubbed: Any) -> None:
    provider, stubber = stubbed
    listing(stubber, OLD)
    batch(stubber, change("DELETE", OLD), error="InvalidChangeBatch")
    listing(stubber, OTHER)
    listing(stubber, OTHER)
    batch(stubber, change("DELETE", OTHER))
    assert provider.delete(NAME, "TLSA").change_id == "/change/C1"


def test_options_are_parsed_and_checked() -> None:
    section = Section(
        Path("/etc/certman/certman.toml"),
        "dns.r53",
        {"hosted_zone_id": "/hostedzone/Z123", "profile": "dns", "endpoint_url": "http://x:5000"},
    )
    options = Route53Provider.parse_options(section)
    section.finish()
    assert (options.hosted_zone_id, options.profile, options.region) == ("Z123", "dns", "us-east-1")
    bad = Section(Path("/etc/certman/certman.toml"), "dns.r53", {"endpoint_url": "x:5000"})
    with pytest.raises(ConfigError, match=r"dns\.r53\.endpoint_url: expected an http"):
        Route53Provider.parse_options(bad)


def test_missing_boto3_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from certman.plugins import load_provider_class

    monkeypatch.setitem(sys.modules, "boto3", None)  # what an absent package looks like
    monkeypatch.delitem(sys.modules, "certman.dns.providers.route53")
    with pytest.raises(ConfigError) as caught:
        load_provider_class("route53", "certman.toml: dns.aws.type")
    assert "missing module boto3" in str(caught.value)
    assert "pip install 'certman[route53]'" in str(caught.value)
