"""kinds `aws-secrets-manager` and `aws-ssm-parameter`: a secret read from AWS Secrets Manager (GetSecretValue) or
Systems Manager Parameter Store (GetParameter, decrypted) at every fetch, through botocore.

Credentials come from botocore's chain (environment, shared files and profiles, web identity, container and instance
metadata), with an optional role assumed through STS (`role_arn`); the endpoint from botocore's resolution, so
AWS_ENDPOINT_URL and its per-service variants (AWS_ENDPOINT_URL_SECRETS_MANAGER, AWS_ENDPOINT_URL_SSM) are honoured.
The value is the entry's token (`header`, `prefix`), or with `field` that key of a JSON value, read in `format`.
botocore is the optional extra `header-augment[aws]`, imported only when a kind is configured. A reason names the
operation, the secret and AWS's error code, never botocore's message (which may quote an ARN or an answer).
"""

import functools
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from ..failures import Failed
from ..fetch import Client, FetchResult
from ..fields import SettingsError, setting, shown, text
from ..formats import Content, read
from ..http_exchange import Endpoint, HttpExchange
from .aws_sigv4 import botocore_missing, settle_region
from .base import Source
from .vault import parse_value

# A secret's value is at most 64 KiB (Secrets Manager), a parameter's 8 KiB (advanced tier).
ROLE_SESSION_NAME = "header-augment"
# AWS error codes by failure class; any other code of an answer is `status`.
CODES = {
    "not_found": {"ResourceNotFoundException", "ParameterNotFound", "ParameterVersionNotFound"},
    "permission": {"AccessDeniedException", "AccessDenied", "KMSAccessDeniedException", "DecryptionFailure"},
    "auth": {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "ExpiredTokenException",
        "ExpiredToken",
        "IncompleteSignature",
        "MissingAuthenticationToken",
    },
}


BY_STATUS = {401: "auth", 403: "permission", 404: "not_found"}
UNKNOWN = " (a code of no known meaning)"


@dataclass(frozen=True)
class AwsSecretSource(Content, Source):
    """What both kinds share: where the account is (region, profile, role) and how the value is read."""

    SERVICE: ClassVar[str]
    LOCATOR_FIELD: ClassVar[str]
    DEFAULTS: ClassVar[dict] = {"format": "token"}

    region: str = setting("", text)
    profile: str = setting("", text)
    role_arn: str = setting("", text)
    field: str = setting("", text)

    @property
    def locator(self) -> str:
        """The secret id or the parameter's name."""
        return getattr(self, self.LOCATOR_FIELD)

    @property
    def display(self) -> str:
        profile = f" profile {self.profile}" if self.profile else ""
        role = f" role {self.role_arn}" if self.role_arn else ""
        what = f" field {self.field}" if self.field else ""
        return f"{self.KIND} {self.region}{profile}{role} {self.locator}{what}"

    def check(self, label, given):
        if not self.locator:
            raise SettingsError(f"{label(self.LOCATOR_FIELD)}: required for kind {self.KIND}")
        if self.role_arn and not self.role_arn.startswith("arn:"):
            raise SettingsError(f"{label('role_arn')}: {shown(self.role_arn)} is not an ARN (arn:aws:iam::…:role/…)")
        settle_region(self, label)
        self.check_content(label, given)
        if (why := botocore_missing(self.KIND)) is not None:
            raise SettingsError(f"{label(self.LOCATOR_FIELD)}: {why}")

    def client(self, timeout: float) -> Client:
        return AwsSecretClient(self, timeout)

    def call(self, service: Any) -> str:
        """The secret's value as a string, from one call to `service`; raises botocore's errors, or Failed."""
        raise NotImplementedError


@dataclass(frozen=True)
class SecretsManagerSource(AwsSecretSource):
    KIND: ClassVar[str] = "aws-secrets-manager"
    SERVICE: ClassVar[str] = "secretsmanager"
    LOCATOR_FIELD: ClassVar[str] = "secret_id"

    secret_id: str = setting("", text)
    version_stage: str = setting("AWSCURRENT", text)

    def call(self, service: Any) -> str:
        answer = service.get_secret_value(SecretId=self.secret_id, VersionStage=self.version_stage)
        value = answer.get("SecretString")
        if isinstance(value, str):
            return value
        if "SecretBinary" in answer:
            raise Failed("a binary secret (SecretBinary), not a string", "format")
        raise Failed("the answer has no SecretString", "format")


@dataclass(frozen=True)
class SsmParameterSource(AwsSecretSource):
    KIND: ClassVar[str] = "aws-ssm-parameter"
    SERVICE: ClassVar[str] = "ssm"
    LOCATOR_FIELD: ClassVar[str] = "parameter"

    parameter: str = setting("", text)

    def call(self, service: Any) -> str:
        answer = service.get_parameter(Name=self.parameter, WithDecryption=True)
        parameter = answer.get("Parameter")
        value = parameter.get("Value") if isinstance(parameter, dict) else None
        if not isinstance(value, str):
            raise Failed("the answer has no value", "format")
        return value


class AwsSecretClient(Client):
    """Reads the secret with one botocore client, made on the first fetch (on the refresher's thread) and made again
    after a failure that says the credentials it holds are no good."""

    def __init__(self, source: AwsSecretSource, timeout: float) -> None:
        # botocore logs each request (with its signed headers) at debug: its failures reach the log as our reasons.
        logging.getLogger("botocore").setLevel(logging.ERROR)
        self.source = source
        self.timeout = timeout
        self._service: Any = None
        self._session: Any = None
        self._transport: _Transport | None = None

    def _client(self) -> Any:
        import botocore.config
        import botocore.credentials
        import botocore.session

        source = self.source
        session = botocore.session.Session(profile=source.profile or None)
        session.register_component("data_loader", _loader())
        # Bounded by the provider's timeout and tried once (the refresher retries on its own schedule), and never
        # through HTTP(S)_PROXY: the proxy must not call itself.
        config = botocore.config.Config(
            region_name=source.region,
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            retries={"total_max_attempts": 1},
            proxies={},
        )
        session.set_default_client_config(config)
        if self._transport is None:
            self._transport = _Transport(self.timeout, session.get_config_variable("ca_bundle") or "")
        session.register("before-send", self._transport)  # every client of the session: STS's too
        if source.role_arn:
            resolver = session.get_component("credential_provider")
            fetcher = botocore.credentials.AssumeRoleCredentialFetcher(
                client_creator=session.create_client,
                source_credentials=resolver.load_credentials(),  # the chain's, not cached by the session
                role_arn=source.role_arn,
                extra_args={"RoleSessionName": ROLE_SESSION_NAME},
            )
            assumed = botocore.credentials.DeferredRefreshableCredentials(fetcher.fetch_credentials, "assume-role")
            resolver.insert_before("env", _Given(assumed))
        self._session = session
        return session.create_client(source.SERVICE)

    def _fetch(self) -> FetchResult:
        source = self.source
        try:
            if self._service is None:
                self._service = self._client()
            value = source.call(self._service)
        except Failed as e:  # the call's own (the answer's shape), or the exchange's (timeout, size, ...)
            raise Failed(f"{source.locator}: {e.reason}", e.reason_class) from None
        except Exception as e:  # botocore raises many kinds; a reason holds only the kind and a code
            failure = _failure(source.locator, e)
            if failure.reason_class == "permission" and failure.reason.endswith(UNKNOWN) and not self._known():
                failure = Failed(f"{failure.reason}; sts:GetCallerIdentity refused too", "auth")
            if failure.reason_class in ("auth", "other"):
                self._service = None  # made again: the chain may have new credentials by then
            raise failure from None
        if not source.field:
            try:
                return _result(read(source, value.encode()))
            except Failed as e:
                raise Failed(f"{source.locator}: {e.reason}", e.reason_class) from None
        try:
            data = json.loads(value)
        except (ValueError, RecursionError):
            raise Failed(f"{source.locator}: not JSON, so it has no field {shown(source.field)}", "format") from None
        return _result(parse_value(source, source.locator, data))

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.exchange.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.exchange.close()

    def _known(self) -> bool:
        """Whether AWS knows the credentials: a 403 without a code that says which is `permission` only then.
        sts:GetCallerIdentity needs no permission."""
        try:
            self._session.create_client("sts").get_caller_identity()
        except Exception:
            return False
        return True


@functools.cache
def _loader() -> Any:
    """One botocore loader for every session: each session's own parsed the service's model and endpoint rules
    again, 8.7 MB and 70 ms of CPU a provider (100 providers: 870 MB); shared, 0.4 MB and 11 ms."""
    import botocore.loaders

    return botocore.loaders.create_loader()


def _result(parsed) -> FetchResult:
    return FetchResult(answer=parsed.answer, lifetime=parsed.lifetime)


class _Transport:
    """botocore's requests, sent by the HTTP kinds' exchange (registered for `before-send`, botocore's seam for
    answering a request instead of its own HTTP client). botocore's urllib3 bounds each socket read, not a call, and
    reads a whole body into memory: an endpoint (AWS_ENDPOINT_URL) trickling its answer held a fetch for 20 s under
    a 2 s timeout, one answering 50 MB took 100 MB. The exchange has one deadline for a call, reads at most
    MAX_BODY_BYTES (a secret is at most 64 KiB), never goes through a proxy, and `abort()` ends a call in flight."""

    def __init__(self, timeout: float, ca: str) -> None:
        # Any https URL is called with this one TLS context: botocore's CA bundle (AWS_CA_BUNDLE, a profile's
        # ca_bundle) or the default store.
        self.exchange = HttpExchange(Endpoint(url="https://aws.invalid", ca=ca), timeout, "*/*")

    def __call__(self, request: Any, **_: Any) -> Any:
        import botocore.awsrequest

        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        if isinstance(body, str):
            body = body.encode()
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        answer = self.exchange.send(request.method, headers=headers, content=body or None, url=request.url)
        return botocore.awsrequest.AWSResponse(request.url, answer.status, dict(answer.headers), _Read(answer.body))


class _Read:
    """An answer's body already read, as AWSResponse reads its `raw`."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any):
        yield self._body


class _Given:
    """A provider for botocore's credential chain that gives the assumed role's credentials (which renew
    themselves from the chain's own before they expire)."""

    METHOD = "assume-role"
    CANONICAL_NAME = "header-augment-role"

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials

    def load(self) -> Any:
        return self._credentials


def _failure(what: str, error: Exception) -> Failed:
    name = type(error).__name__
    response = getattr(error, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    if isinstance(code, str) and code:
        code = code[:64]
        for reason_class, codes in CODES.items():
            if code in codes:
                return Failed(f"{what}: {code}", reason_class)
        # A code of no known meaning (some endpoints answer a bare status): the status decides.
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return Failed(f"{what}: {code}{UNKNOWN}", BY_STATUS.get(status, "status"))
    if isinstance(error, RecursionError):
        return Failed(f"{what}: the answer is JSON nested too deeply", "format")
    if name == "NoCredentialsError":
        return Failed(f"{what}: no credentials found in the AWS credential chain", "auth")
    if "Timeout" in name:
        return Failed(f"{what}: timed out ({name})", "timeout")
    if "SSL" in name:
        return Failed(f"{what}: TLS ({name})", "tls")
    if "Connect" in name or "Endpoint" in name:
        return Failed(f"{what}: cannot connect ({name})", "connect")
    return Failed(f"{what}: {name}", "other")
