"""kind `aws-sigv4`: AWS Signature Version 4 over each request, computed by the proxy.

Credentials come from botocore's own credential chain (environment, shared files and profiles, credential_process,
web identity, container and instance metadata), read on the refresher's thread only: botocore renews temporary
credentials lazily when they are read, so the refresher reads a frozen copy ahead of their expiry and the request
path signs with the last copy, never calling the chain. botocore is an optional extra (`header-augment[aws]`),
imported only when the kind is configured.
"""

import datetime
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

from ..failures import Failed
from ..fetch import Client, FetchResult
from ..fields import ONE_SOURCE, Option, SettingsError, boolean, setting, text
from ..rules import Validated
from .base import Source

INSTALL_HINT = "pip install 'header-augment[aws]' (or pip install -r requirements/aws.txt)"
NO_HEADERS = Validated(headers=())
SIGNATURE_QUERY = frozenset(
    {
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "x-amz-expires",
        "x-amz-signedheaders",
        "x-amz-signature",
        "x-amz-security-token",
    }
)
# What botocore's signer adds, in the case it writes them (never Date: it is not given one, see sigv4.UNSIGNED).
ADDED = ("Authorization", "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256")
# The names a client's own signature is made of: replaced, never sent beside ours.
SIGNATURE_HEADERS = frozenset(name.lower().encode() for name in ADDED)


def botocore_missing(kind: str) -> str | None:
    """Why an AWS kind cannot run here, or None."""
    try:
        import botocore.auth
        import botocore.session  # noqa: F401
    except ImportError:
        return f"kind {kind} needs botocore, which is not installed: {INSTALL_HINT}"
    return None


def settle_region(source: Source, label) -> None:
    """An AWS kind's region: the one given, else the environment's, settled once so that equal settings stay equal."""
    if source.region:
        return
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise SettingsError(
            f"{label('region')}: required for kind {source.KIND} unless AWS_REGION or AWS_DEFAULT_REGION is set"
        )
    object.__setattr__(source, "region", region)


@dataclass(frozen=True)
class Frozen:
    """One read of the chain: what the request path signs with. The secret and the token never appear in a repr."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(repr=False)
    method: str
    expiry: datetime.datetime | None

    def status(self) -> dict[str, Any]:
        """What the status report may show: the method, the expiry and the access key id, nothing more."""
        return {
            "method": self.method,
            "access_key_id": self.access_key,
            "expires": None if self.expiry is None else self.expiry.isoformat(timespec="seconds"),
        }


@dataclass(frozen=True)
class AwsSigV4Source(Source):
    KIND: ClassVar[str] = "aws-sigv4"
    LOCATOR: ClassVar[str] = "service"

    service: str = setting(
        "",
        text,
        Option(
            "header_aws_service",
            str,
            "",
            "Sign each request to header_hosts with AWS Signature Version 4 for this service (s3, sts, execute-api, "
            "es, bedrock, ...), with credentials from botocore's chain (environment, shared files, web identity, "
            "container, instance metadata); needs header-augment[aws]. " + ONE_SOURCE,
        ),
    )
    region: str = setting(
        "",
        text,
        Option(
            "header_aws_region",
            str,
            "",
            "The signing region for header_aws_service; empty: AWS_REGION or AWS_DEFAULT_REGION.",
        ),
    )
    profile: str = setting(
        "",
        text,
        Option(
            "header_aws_profile", str, "", "A profile of the shared AWS files, for header_aws_service's credentials."
        ),
    )
    unsigned_payload: bool = setting(
        False,
        boolean,
        Option(
            "header_aws_unsigned_payload",
            bool,
            False,
            "S3 only: send a body mitmproxy streams (stream_large_bodies), which cannot be hashed first, as "
            "UNSIGNED-PAYLOAD: one larger than the limit, or any sent without a length (Transfer-Encoding: chunked) "
            "while it is set; without it such a request is killed before anything is sent.",
        ),
    )

    @property
    def display(self) -> str:
        profile = f" profile {self.profile}" if self.profile else ""
        return f"aws-sigv4 {self.service} {self.region}{profile}"

    def check(self, label, given):
        if not self.service:
            raise SettingsError(f"{label('service')}: required for kind aws-sigv4 (s3, sts, execute-api, es, ...)")
        settle_region(self, label)
        if self.unsigned_payload and self.service != "s3":
            raise SettingsError(f"{label('unsigned_payload')}: only S3 accepts UNSIGNED-PAYLOAD")
        # Named by the field that is always given (an option sets it).
        if (why := botocore_missing(self.KIND)) is not None:
            raise SettingsError(f"{label('service')}: {why}")

    def client(self, timeout: float) -> Client:
        return AwsSigV4Client(self, timeout)

    def signer(self) -> "Signer":
        return Signer(self)


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class AwsSigV4Client(Client):
    """Reads the chain. `credentials` (botocore's) and `wall` are given by tests; otherwise a session resolves them."""

    def __init__(
        self,
        source: AwsSigV4Source,
        timeout: float,
        credentials: Any = None,
        wall: Callable[[], datetime.datetime] = _utc_now,
    ) -> None:
        # botocore logs each canonical request (with the session token) at debug and a failed call's traceback:
        # its failures reach the log as our reasons instead.
        logging.getLogger("botocore").setLevel(logging.ERROR)
        self.source = source
        self.timeout = timeout
        self._credentials = credentials
        self._given = credentials is not None
        self._wall = wall

    def _resolve(self) -> Any:
        import botocore.config
        import botocore.session

        session = botocore.session.Session(profile=self.source.profile or None)
        # The STS and metadata calls the chain makes are bounded by the provider's timeout, tried once: the
        # refresher retries on its own schedule.
        session.set_default_client_config(
            botocore.config.Config(
                connect_timeout=self.timeout, read_timeout=self.timeout, retries={"total_max_attempts": 1}
            )
        )
        session.set_config_variable("region", self.source.region)
        return session.get_credentials()

    def _fetch(self) -> FetchResult:
        from botocore.credentials import RefreshableCredentials

        credentials = self._credentials
        if credentials is None or not (self._given or isinstance(credentials, RefreshableCredentials)):
            # Static credentials (environment, files) are looked up again each time: a file rewritten is seen.
            try:
                credentials = self._resolve()
            except Exception as e:  # botocore raises many kinds; the reason holds only the kind and a code
                raise Failed(f"credential chain: {_why(e)}", _reason_class(e)) from None
            if credentials is None:
                raise Failed(
                    "no credentials found in the AWS credential chain (environment, shared files, profile, "
                    "web identity, container, instance metadata)",
                    "other",
                )
            self._credentials = credentials
        method = getattr(credentials, "method", None) or "unknown"
        try:
            frozen = credentials.get_frozen_credentials()  # renews temporary credentials due for it: here only
        except Exception as e:
            raise Failed(f"{method}: {_why(e)}", _reason_class(e)) from None
        # RefreshableCredentials keep their expiry here; botocore has no public accessor for it (private name,
        # checked with botocore 1.44.8: tests/test_aws_sigv4.py fails if it moves).
        expiry = getattr(credentials, "_expiry_time", None)
        lifetime = None
        if expiry is not None:
            lifetime = (expiry - self._wall()).total_seconds()
            if lifetime <= 0:
                raise Failed(f"{method}: the credentials had expired when read", "expired")
        if not frozen.access_key or not frozen.secret_key:
            raise Failed(f"{method}: the credentials have no access key or secret", "format")
        copy = Frozen(frozen.access_key, frozen.secret_key, frozen.token or None, method, expiry)
        return FetchResult(answer=NO_HEADERS, lifetime=lifetime, signing=copy)


def _why(error: Exception) -> str:
    """The kind of error and, for an AWS answer, its code: botocore's messages may quote paths, ARNs or answers."""
    code = getattr(error, "response", None)
    code = code.get("Error", {}).get("Code") if isinstance(code, dict) else None
    return f"{type(error).__name__} ({code})" if code else type(error).__name__


def _reason_class(error: Exception) -> str:
    name = type(error).__name__
    if "Timeout" in name:
        return "timeout"
    if "Connect" in name or "Endpoint" in name:
        return "connect"
    if getattr(error, "response", None) is not None:
        return "status"
    return "other"


_IN_TRAILER = {"request_algorithm": {"in": "trailer"}}


class Signer:
    """Signs one request with botocore's signer: `SigV4Auth`, or `S3SigV4Auth` (which sends x-amz-content-sha256)."""

    def __init__(self, source: AwsSigV4Source) -> None:
        from botocore.auth import S3SigV4Auth, SigV4Auth

        self.service = source.service
        self.region = source.region
        self.unsigned_payload = source.unsigned_payload
        self._auth = S3SigV4Auth if source.service == "s3" else SigV4Auth
        self.comment = f"signed (sigv4 {source.service} {source.region})"
        # botocore's S3 signer decides between a payload hash and UNSIGNED-PAYLOAD from its client config.
        self._configs = {hashed: SimpleNamespace(s3={"payload_signing_enabled": hashed}) for hashed in (True, False)}
        self._last: tuple[Frozen, Any, tuple[str, ...]] | None = None

    def _for(self, credentials: Frozen) -> tuple[Any, tuple[str, ...]]:
        """botocore's signer for this frozen copy and the names it adds, made once per copy rather than per request
        (the refresher makes a new copy at each read; botocore's signer keeps no state between requests, as of
        botocore 1.44.8, so threads may share it)."""
        last = self._last
        if last is None or last[0] is not credentials:
            added = ("Authorization", "X-Amz-Date")
            if credentials.token:
                added += ("X-Amz-Security-Token",)
            if self.service == "s3":  # S3SigV4Auth sends it always: the hash, or UNSIGNED-PAYLOAD
                added += ("X-Amz-Content-SHA256",)
            last = self._last = (credentials, self._auth(credentials, self.service, self.region), added)
        return last[1], last[2]

    def sign(
        self,
        credentials: Frozen,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        payload_hash: bool = False,
        streaming: str | None = None,
    ) -> list[tuple[str, str]]:
        """The headers to add to the request (`headers` are those it is sent with, `host` among them). `body` None:
        it is streamed, and signed as UNSIGNED-PAYLOAD (S3 only). `payload_hash`: the client sent its own
        X-Amz-Content-SHA256, which some services other than S3 require (OpenSearch Serverless): it is replaced by
        the body's hash, signed (S3's signer always sends its own). `streaming`: signed as the payload in place of a
        hash (STREAMING-UNSIGNED-PAYLOAD-TRAILER: an aws-chunked body with its checksum in a trailer)."""
        from botocore.awsrequest import AWSRequest

        auth, added = self._for(credentials)
        request = AWSRequest(method=method, url=url, data=body or b"")
        signed = request.headers
        for name, value in headers:
            signed[name] = value  # botocore's headers keep repeats, joined with commas when signed
        if streaming is not None:
            # What botocore's checksum step tells its signer for a checksum sent in a trailer (checked with botocore
            # 1.44.8, tests/test_aws_chunked.py): the literal is signed as the payload, S3SigV4Auth writes it into
            # X-Amz-Content-SHA256, and the body is never read.
            request.context["checksum"] = _IN_TRAILER
            if self.service != "s3":  # SigV4Auth signs the header's value, sending none of its own
                signed["X-Amz-Content-SHA256"] = streaming
                added += ("X-Amz-Content-SHA256",)
        elif payload_hash and self.service != "s3" and body is not None:
            # botocore's SigV4Auth signs the payload hash this header holds, computing none of its own.
            signed["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
            added += ("X-Amz-Content-SHA256",)
        request.context["client_config"] = self._configs[body is not None]
        auth.add_auth(request)
        return [(name, signed[name]) for name in added]
