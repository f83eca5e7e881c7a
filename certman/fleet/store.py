"""The fleet's shared store: objects in one S3 bucket, written with conditional requests only.

Coordination uses nothing but S3's conditional writes (AWS S3 user guide, "Conditional writes"):
``If-None-Match: *`` creates an object only if it does not exist, ``If-Match: <ETag>`` replaces
it only if nobody changed it since we read it; a lost race answers 412 Precondition Failed.

Layout under ``<prefix>/<certificate>/``::

    lease.json            who leads, until when, and the term (a fencing token)
    state.json            the lineage's rollover state + the term of its writer (no secrets)
    keys/<id>.key.enc     private keys, AES-GCM encrypted with the fleet key (never plaintext)
    certs/<id>-<serial>.pem   issued chains (public)
    hosts/<host>.json     one report per host: the key it serves, when it verified it, its error

The boto3 client is built lazily by ``client_factory`` on the first request, never at import or
in a constructor, so a run with nothing to do that never touches S3 never imports boto3.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from certman.config.schema import FleetConfig
from certman.errors import CertmanError

PRECONDITION_FAILED = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
MISSING = {"NoSuchKey", "404", "NotFound"}


class LostRace(CertmanError):
    """A conditional write found the object changed (412) or created (If-None-Match)."""

    exit_code = 75


@dataclass(frozen=True)
class Blob:
    body: bytes
    etag: str


def default_client_factory(cfg: FleetConfig) -> Callable[[], Any]:
    """A factory for boto3's S3 client; credentials come from boto3's usual chain."""

    def build() -> Any:
        import boto3

        return boto3.client("s3", region_name=cfg.region, endpoint_url=cfg.endpoint_url)

    return build


@dataclass
class Store:
    """One certificate's objects in the fleet bucket; ``requests`` counts what was asked of S3."""

    cfg: FleetConfig
    cert_name: str
    client_factory: Callable[[], Any]
    requests: int = 0
    _client: Any = field(default=None, repr=False)

    def key(self, name: str) -> str:
        return "/".join(p for p in (self.cfg.prefix, self.cert_name, name) if p)

    def where(self, name: str) -> str:
        return f"s3://{self.cfg.bucket}/{self.key(name)}"

    def _call(self, op: str, name: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._client is None:
            self._client = self.client_factory()
        self.requests += 1
        try:
            return getattr(self._client, op)(Bucket=self.cfg.bucket, Key=self.key(name), **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in PRECONDITION_FAILED or status in ("412", "409"):
                raise LostRace(f"{self.where(name)}: changed by another host ({code})") from None
            if code in MISSING or status == "404":
                raise FileNotFoundError(self.where(name)) from None
            message = error.get("Message", "") or code
            raise CertmanError(f"{self.where(name)}: {op} failed: {message}") from None
        except BotoCoreError as exc:
            raise CertmanError(f"{self.where(name)}: {op} failed: {exc}") from None

    def get(self, name: str) -> Blob | None:
        try:
            answer = self._call("get_object", name)
        except FileNotFoundError:
            return None
        return Blob(answer["Body"].read(), answer["ETag"])

    def create(self, name: str, body: bytes) -> str:
        """Write ``name`` only if it does not exist (``If-None-Match: *``); LostRace if it does."""
        return str(self._call("put_object", name, Body=body, IfNoneMatch="*")["ETag"])

    def replace(self, name: str, body: bytes, etag: str) -> str:
        """Replace ``name`` only if it is still the version ``etag`` (``If-Match``)."""
        return str(self._call("put_object", name, Body=body, IfMatch=etag)["ETag"])

    def put(self, name: str, body: bytes) -> str:
        """An unconditional write: only for objects one host alone writes (its own report)."""
        return str(self._call("put_object", name, Body=body)["ETag"])

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call("delete_object", name)

    def list(self, folder: str) -> list[str]:
        """Names under ``folder/`` (relative to this certificate), one page of up to 1000."""
        from botocore.exceptions import BotoCoreError, ClientError

        if self._client is None:
            self._client = self.client_factory()
        self.requests += 1
        base = self.key(folder) + "/"
        try:
            answer = self._client.list_objects_v2(Bucket=self.cfg.bucket, Prefix=base)
        except (ClientError, BotoCoreError) as exc:
            raise CertmanError(f"s3://{self.cfg.bucket}/{base}: list failed: {exc}") from None
        return [item["Key"][len(base) :] for item in answer.get("Contents", [])]
