"""kind `vault`: a secret read from HashiCorp Vault or OpenBao through hvac, by a token the proxy keeps alive.

The token comes from a file (`token_file`, read again when it changes) or from a login (`approle`, `jwt`,
`kubernetes`), made on the refresher's thread. It is renewed (`renew-self`) at 2/3 of its TTL; a login is made again
when renewal is refused, when the token's max TTL leaves less than asked for, when it has expired, and when the JWT
it was made with has been replaced on disk (which Vault Agent does not do: hashicorp/vault#12233). A secret with a
lease (dynamic engines) is renewed at 2/3 of its lease while renewable and read again when not, or when the token
that read it is replaced (Vault revokes a token's leases with it); any other secret (KV) is read at every fetch.

Every call is one the refresher's schedule asked for (interval, backoff, the herd spread), under the provider's
timeout, made by the HTTP kinds' exchange (http_exchange: one deadline for a whole call, a body read within the size
limit, no proxy, no redirect, abortable) rather than by requests. hvac's errors carry the server's messages: a reason
names the step, the path and the HTTP status only.
hvac is an optional extra (`header-augment[vault]`), imported only when the kind is configured.
"""

import functools
import json
import math
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..failures import Failed
from ..fetch import Client, FetchResult
from ..fields import SettingsError, setting, shown, text
from ..files import SettledChange, Stamp, read_regular, stamp
from ..formats import Content, Parsed, read
from ..http_exchange import Endpoint, HttpExchange, _url, redact_url
from ..rules import parse_answer
from .base import Source

INSTALL_HINT = "pip install 'header-augment[vault]' (or pip install -r requirements/vault.txt)"
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# A method's fields, with their defaults ("" for required ones, None for those the method has not).
METHODS: dict[str, dict[str, str]] = {
    "approle": {"role_id": "", "secret_id_file": "", "mount": "approle"},
    "jwt": {"role": "", "jwt_file": "", "mount": "jwt"},
    "kubernetes": {"role": "", "jwt_file": SERVICE_ACCOUNT_TOKEN, "mount": "kubernetes"},
}
# Renew (a token, a lease) at this share of its TTL, as Vault Agent and consul-template do.
RENEW_AT = 2 / 3
# A token, a secret id or a service-account JWT is at most a few KiB.
MAX_CREDENTIAL_FILE_BYTES = 16 * 1024
# How often a watched file (token_file, jwt_file) is looked at; a change is acted on once it has settled.
WATCH_INTERVAL = 0.5
_VISIBLE = re.compile(r"[\x21-\x7e]+")
# A path after /v1/: segments of the characters Vault's paths use, no query, no dot segments.
_PATH = re.compile(r"[A-Za-z0-9_.@+=:,~-]+(?:/[A-Za-z0-9_.@+=:,~-]+)*")
# hvac's exception classes by the HTTP status each stands for (hvac.exceptions.VaultError.from_status).
_STATUSES = {
    "InvalidRequest": 400,
    "Unauthorized": 401,
    "Forbidden": 403,
    "InvalidPath": 404,
    "PreconditionFailed": 412,
    "RateLimitExceeded": 429,
    "InternalServerError": 500,
    "VaultNotInitialized": 501,
    "BadGateway": 502,
    "VaultDown": 503,
}


def hvac_missing() -> str | None:
    """Why the kind cannot run here, or None."""
    try:
        import hvac  # noqa: F401
    except ImportError:
        return f"kind vault needs hvac, which is not installed: {INSTALL_HINT}"
    return None


@dataclass(frozen=True)
class Auth:
    """How the proxy gets its Vault token. `file`: the token_file, secret_id_file or jwt_file; `role`: the AppRole's
    role_id, or the jwt/kubernetes role."""

    method: str
    file: str
    role: str = ""
    mount: str = ""

    @property
    def login(self) -> bool:
        return self.method != "token_file"

    @property
    def watched(self) -> str | None:
        """The file whose change means a new credential to use at once (a secret id is read at each login)."""
        return None if self.method == "approle" else self.file


def parse_auth(value: object) -> Auth:
    """`{token_file: PATH}`, `{approle: {role_id, secret_id_file, mount}}`, `{jwt: {role, jwt_file, mount}}` or
    `{kubernetes: {role, jwt_file, mount}}`."""
    accepted = ("token_file", *METHODS)
    if not isinstance(value, dict) or len(value) != 1:
        raise SettingsError(f"{shown(value)} is not a mapping with one key (one of {', '.join(accepted)})")
    ((method, given),) = value.items()
    if method not in accepted:
        raise SettingsError(f"{shown(method)} is not an auth method (accepted: {', '.join(accepted)})")
    if method == "token_file":
        path = text(given)
        if not path:
            raise SettingsError("token_file: empty")
        return Auth(method, path)
    if not isinstance(given, dict):
        raise SettingsError(f"{method}: {shown(given)} is not a mapping (of {', '.join(METHODS[method])})")
    fields = dict(METHODS[method])
    for name, raw in given.items():
        if name not in fields:
            raise SettingsError(f"{method}.{shown(name)}: not a field of {method} (accepted: {', '.join(fields)})")
        try:
            fields[name] = text(raw)
        except SettingsError as e:
            raise SettingsError(f"{method}.{name}: {e}") from None
    for name, got in fields.items():
        if not got:
            raise SettingsError(f"{method}.{name}: required")
    if not _is_path(fields["mount"]):
        raise SettingsError(f"{method}.mount: {shown(fields['mount'])} is not a mount path")
    if method == "approle":
        return Auth(method, fields["secret_id_file"], fields["role_id"], fields["mount"])
    return Auth(method, fields["jwt_file"], fields["role"], fields["mount"])


def _is_path(path: str) -> bool:
    return bool(_PATH.fullmatch(path)) and not any(part in (".", "..") for part in path.split("/"))


def _secret_path(value: object) -> str:
    path = text(value).strip("/")
    if path.startswith("v1/"):
        raise SettingsError(f"{shown(path)}: the path after /v1/ (secret/data/github), without /v1/")
    if not _is_path(path):
        raise SettingsError(f"{shown(path)} is not a Vault API path (secret/data/github, database/creds/ro, ...)")
    # sys/ is the server's own configuration and auth/ its login methods, not secret engines: a read there gives
    # what no upstream should see (auth/token/lookup-self's id is the proxy's Vault token itself).
    if path.partition("/")[0] in ("sys", "auth"):
        raise SettingsError(f"{shown(path)}: sys/ and auth/ are not secret engines; a secret's path is read")
    return path


def _vault_url(value: object) -> str:
    url = _url(value)
    parts = urllib.parse.urlsplit(url)
    # The API's paths are appended to the URL: after a query or a fragment they would not be paths at all.
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise SettingsError(f"{shown(redact_url(url))}: a Vault address has no query or fragment")
    # A password in the URL would go to Vault as Basic authentication, which it does not use.
    if parts.username is not None or parts.password is not None:
        raise SettingsError(f"{shown(redact_url(url))}: a Vault address has no user or password (auth is the token)")
    if parts.path.rstrip("/").endswith("/v1"):
        raise SettingsError(f"{shown(redact_url(url))}: the server's address, without /v1 (added to each call)")
    return url


def _namespace(value: object) -> str:
    namespace = text(value).strip("/")
    if namespace and not _is_path(namespace):
        raise SettingsError(f"{shown(namespace)} is not a namespace path (team, team/child)")
    return namespace


@dataclass(frozen=True)
class VaultSource(Content, Source):
    KIND: ClassVar[str] = "vault"

    url: str = setting("", _vault_url)
    namespace: str = setting("", _namespace)
    ca: str = setting("", text, transport=True)
    secret: str = setting("", _secret_path)
    field: str = setting("", text)
    auth: Auth | None = setting(None, parse_auth)

    @property
    def display(self) -> str:
        where = f" namespace {self.namespace}" if self.namespace else ""
        what = f" field {self.field}" if self.field else ""
        return f"vault {redact_url(self.url)}{where} {self.secret}{what}"

    def check(self, label, given):
        for name in ("url", "secret", "auth"):
            if not getattr(self, name):
                raise SettingsError(f"{label(name)}: required for kind vault")
        settle_format(self, label, given)
        if (why := hvac_missing()) is not None:
            raise SettingsError(f"{label('kind')}: {why}")

    def client(self, timeout: float) -> Client:
        if self.ca:
            Endpoint(url=self.url, ca=self.ca).ssl_context()  # a CA that cannot be loaded is refused here, by name
        return VaultClient(self, timeout)


def settle_format(source: Content, label, given: set[str]) -> None:
    """With `field`, the value of that field is read in `format` (token unless given); without, the secret itself is
    the answer, a JSON object of headers. Settled once, so that equal settings stay equal."""
    chosen = getattr(source, "field", "")
    if "format" not in given:
        object.__setattr__(source, "format", "token" if chosen else "headers")
    elif not chosen and source.format != "headers":
        raise SettingsError(f"{label('format')}: without field, the secret is read as a JSON object of headers")
    source.check_content(label, given)


def parse_value(source: Content, where: str, data: Any, now: float | None = None) -> Parsed:
    """The headers a secret's data asks for: its `field` read in `source.format`, or the data as headers. Raises
    Failed naming `where` and the field, never a value."""
    chosen = getattr(source, "field", "")
    if not isinstance(data, dict):
        raise Failed(f"{where}: the secret is not a JSON object", "format")
    if not chosen:
        # Checked as a provider's answer is, from its JSON (validate_entries names the type of a value that is not a
        # string only as parse_answer gives it: a dict raised KeyError there and stopped the refresher).
        return Parsed(parse_answer(json.dumps(data).encode()))
    if chosen not in data:
        raise Failed(f"{where}: no field {shown(chosen)} in the secret", "not_found")
    value = data[chosen]
    if not isinstance(value, str):
        raise Failed(f"{where}: field {shown(chosen)} is not a string", "format")
    try:
        return read(source, value.encode(), now)
    except Failed as e:
        raise Failed(f"{where}: field {shown(chosen)}: {e.reason}", e.reason_class) from None


@dataclass
class _Token:
    value: str = field(repr=False)
    renewable: bool
    ttl: float  # granted at login or lookup; 0: the token never expires
    obtained_at: float
    expires_at: float  # inf: never
    renew_at: float  # inf: never
    final: bool = False  # its max TTL is near: renewing gives less than asked, so a login is due instead
    stamp: Stamp | None = None  # of the file it came from (token_file, jwt_file)


def _timed(ttl: float, now: float) -> tuple[float, float]:
    if ttl <= 0:
        return math.inf, math.inf
    return now + ttl, now + ttl * RENEW_AT


@dataclass
class _Lease:
    id: str
    renewable: bool
    duration: float
    expires_at: float
    renew_at: float
    parsed: Parsed
    final: bool = False


class VaultClient(Client):
    """One provider's Vault session. `clock` (monotonic seconds) decides renewals; tests give their own."""

    def __init__(self, source: VaultSource, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        import hvac
        import requests

        assert source.auth is not None
        self.source = source
        self.auth = source.auth
        self.timeout = timeout
        self._clock = clock
        session = _session_type()(Endpoint(url=source.url, ca=source.ca), timeout)
        self._session = session
        # token "" keeps hvac from reading VAULT_TOKEN or ~/.vault-token; cert () from VAULT_CLIENT_CERT. No redirect
        # is followed (nor could the session follow one): X-Vault-Token would go along to whatever host a 307 names.
        self._vault = hvac.Client(
            url=source.url,
            token="",
            cert=(),
            verify=source.ca or True,
            timeout=timeout,
            allow_redirects=False,
            session=session,
            namespace=source.namespace or None,
        )
        # RecursionError: JSON nested too deeply for the json module (hvac parses every answer).
        self._errors = (hvac.exceptions.VaultError, requests.RequestException, RecursionError)
        self._token: _Token | None = None
        self._lease: _Lease | None = None
        watched = self.auth.watched
        self._watch = SettledChange(watched, None) if watched else None
        self.watch_interval = WATCH_INTERVAL if watched else None

    def changed(self) -> bool:
        return self._watch is not None and self._watch.check()

    def abort(self) -> None:
        self._session.abort()

    def close(self) -> None:
        self._session.close()

    # -- a fetch ----------------------------------------------------------------------------------------------------

    def _fetch(self) -> FetchResult:
        self._session.deadline = time.monotonic() + self.timeout
        token = self._authenticated()
        parsed, lease = self._secret(token)
        now = self._clock()
        due = [token.renew_at, token.expires_at]
        lifetime = parsed.lifetime
        if lease is not None:
            due.append(lease.renew_at)
            ends = min(lease.expires_at, token.expires_at) - now
            lifetime = ends if lifetime is None else min(lifetime, ends)
        soonest = min(due) - now
        return FetchResult(
            answer=parsed.answer,
            lifetime=lifetime,
            max_age=None if soonest == math.inf else max(soonest, 0.0),
        )

    def _authenticated(self) -> "_Token":
        """The token to read with: read from its file, logged in, renewed as due. Raises Failed."""
        token, now = self._token, self._clock()
        if not self.auth.login:
            value, got = self._credential_file("token_file")
            if self._watch is not None:
                self._watch.current = self._watch.seen = got
            if token is None or token.value != value:
                token = self._token = self._looked_up(value, got)
        elif token is None or now >= token.expires_at or (token.final and now >= token.renew_at):
            token = self._login()
        elif self.auth.watched and stamp(self.auth.file) != token.stamp:
            token = self._login()  # a new JWT (hashicorp/vault#12233): whoever wrote it wants it used
        if now >= token.renew_at and not token.final:
            if token.renewable:
                token = self._renewed(token)
            elif self.auth.login:
                token = self._login()
            else:
                token.renew_at = token.expires_at  # a file's token that does not renew: nothing to do until it ends
        return token

    def _credential_file(self, what: str) -> tuple[str, Stamp]:
        try:
            data, got = read_regular(self.auth.file, MAX_CREDENTIAL_FILE_BYTES)
        except Failed as e:
            raise Failed(f"{what}: {e.reason}", e.reason_class) from None
        try:
            value = data.decode("ascii").strip()
        except UnicodeDecodeError:
            value = None
        if not value or not _VISIBLE.fullmatch(value):
            raise Failed(f"{what}: empty, or has characters other than visible ASCII", "file")
        return value, got

    def _looked_up(self, value: str, got: Stamp) -> _Token:
        """A token from token_file, looked up for its TTL and whether it renews."""
        self._vault.token = value
        self._lease = None
        answer = self._call("lookup-self", "auth", self._vault.auth.token.lookup_self)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict):
            raise Failed("lookup-self: the answer has no data", "format")
        now = self._clock()
        ttl = _seconds(data.get("ttl"))  # what is left of it
        expires_at, renew_at = _timed(ttl, now)
        # Renewed by as much as it was created with (a token looked up halfway through its life is asked the same).
        asked = _seconds(data.get("creation_ttl")) or ttl
        return _Token(value, data.get("renewable") is True, asked if ttl else 0.0, now, expires_at, renew_at, stamp=got)

    def _login(self) -> _Token:
        auth, vault = self.auth, self._vault
        self._lease = None  # the old token's leases end with it
        self._token = None
        vault.token = ""
        step = f"login {auth.method}"
        # use_token=False: hvac would take the token out of the answer itself, and raise KeyError or TypeError on an
        # answer without one (no auth block, not JSON, a redirect), which stopped the refresher for good.
        if auth.method == "approle":
            secret_id, got = self._credential_file("secret_id_file")
            login, args = vault.auth.approle.login, {"secret_id": secret_id, "mount_point": auth.mount}
        else:
            jwt, got = self._credential_file("jwt_file")
            if self._watch is not None:
                self._watch.current = self._watch.seen = got
            if auth.method == "jwt":
                login, args = vault.auth.jwt.jwt_login, {"jwt": jwt, "path": auth.mount}
            else:
                login, args = vault.auth.kubernetes.login, {"jwt": jwt, "mount_point": auth.mount}
        answer = self._call(step, "auth", login, auth.role, use_token=False, **args)
        granted = answer.get("auth") if isinstance(answer, dict) else None
        value = granted.get("client_token") if isinstance(granted, dict) else None
        if not isinstance(value, str) or not _VISIBLE.fullmatch(value):
            raise Failed(f"{step}: the answer has no client_token (of visible ASCII)", "format")
        now = self._clock()
        ttl = _seconds(granted.get("lease_duration"))
        expires_at, renew_at = _timed(ttl, now)
        token = _Token(value, granted.get("renewable") is True, ttl, now, expires_at, renew_at)
        token.stamp = got if auth.watched else None
        vault.token = token.value
        self._token = token
        return token

    def _renewed(self, token: _Token) -> _Token:
        """renew-self, asking for the TTL the token was granted. Less than that: its max TTL is near, and a login is
        due at 2/3 of what is left. Refused: a login now (a token from a file fails as `auth`)."""
        try:
            answer = self._call("renew-self", "auth", self._vault.auth.token.renew_self, increment=int(token.ttl))
        except Failed as e:
            if not self.auth.login or e.reason_class != "auth":
                raise
            return self._login()
        granted = answer.get("auth") if isinstance(answer, dict) else None
        if not isinstance(granted, dict):
            raise Failed("renew-self: the answer has no auth", "format")
        now = self._clock()
        ttl = _seconds(granted.get("lease_duration"))
        if ttl <= 0 < token.ttl:  # nothing left to renew to: the max TTL is reached
            if self.auth.login:
                return self._login()
            raise Failed("renew-self: the token's max TTL is reached", "auth")
        token.expires_at, token.renew_at = _timed(ttl, now)
        token.final = 0 < ttl < token.ttl
        if token.final and not self.auth.login:
            token.final = False  # nothing else to do with a file's token: renewed to its end
        return token

    def _secret(self, token: _Token) -> tuple[Parsed, _Lease | None]:
        lease, now = self._lease, self._clock()
        if lease is not None and now < lease.expires_at:
            if now < lease.renew_at:
                return lease.parsed, lease
            if lease.renewable and not lease.final and self._renew_lease(lease):
                return lease.parsed, lease
        path = self.source.secret
        step = f"read {path}"
        try:
            answer = self._call(step, "", self._vault.adapter.get, f"/v1/{path}")
        except Failed as e:
            if e.reason_class == "permission" and not self._token_works():
                self._token = None  # log in again (or look the file's token up) at the next fetch
                raise Failed(f"{e.reason}; lookup-self refused too: the token is no longer valid", "auth") from None
            raise
        if not isinstance(answer, dict):
            raise Failed(f"{step}: the answer is not a JSON object", "format")
        data = answer.get("data")
        if _kv2(data):
            data = data["data"]  # KV version 2: the secret is under data.data, beside its metadata
        parsed = parse_value(self.source, path, data)
        duration = _seconds(answer.get("lease_duration"))
        lease_id = answer.get("lease_id")
        self._lease = None
        if isinstance(lease_id, str) and lease_id and duration > 0:
            expires_at, renew_at = _timed(duration, now := self._clock())
            self._lease = _Lease(lease_id, answer.get("renewable") is True, duration, expires_at, renew_at, parsed)
        return parsed, self._lease

    def _renew_lease(self, lease: _Lease) -> bool:
        """Whether the lease was renewed; refused, it is read again."""
        try:
            # A 400 is Vault's answer for a lease it revoked or expired ("lease not found"): taken as a refusal (the
            # class is never shown), not as a server error, which had the fetch fail until the old lease's end.
            answer = self._call(
                "renew lease",
                "not_found",
                self._vault.sys.renew_lease,
                lease_id=lease.id,
                increment=int(lease.duration),
            )
        except Failed as e:
            if e.reason_class in ("timeout", "connect", "tls", "status"):
                raise
            return False
        duration = _seconds(answer.get("lease_duration")) if isinstance(answer, dict) else 0.0
        if duration <= 0:
            return False
        lease.expires_at, lease.renew_at = _timed(duration, self._clock())
        lease.final = duration < lease.duration  # its max TTL is near: read afresh next time
        return True

    def _token_works(self) -> bool:
        try:
            self._call("lookup-self", "auth", self._vault.auth.token.lookup_self)
        except Failed:
            return False
        return True

    def _call(self, step: str, refused: str, call: Callable[..., Any], *args, **kwargs) -> Any:
        """`call` under the fetch's deadline; an error becomes Failed naming `step` and the status. `refused`: the
        class of a 400, 401 or 403 answer ("" to take them as not_found/permission/status)."""
        try:
            return call(*args, **kwargs)
        except Failed as e:  # from the session: the exchange itself failed (timeout, connect, tls, size, ...)
            raise Failed(f"{step}: {e.reason}", e.reason_class) from None
        except self._errors as e:
            raise _failure(step, e, refused) from None


def _failure(step: str, error: Exception, refused: str) -> Failed:
    import requests

    name = type(error).__name__
    if isinstance(error, RecursionError):
        return Failed(f"{step}: the answer is JSON nested too deeply", "format")
    if isinstance(error, requests.RequestException):
        return Failed(f"{step}: {name}", "other")
    status = _STATUSES.get(name)
    shown_status = f"HTTP {status}" if status else "an unexpected HTTP status"
    if refused and status in (400, 401, 403):
        return Failed(f"{step}: refused ({shown_status})", refused)
    if status == 404:
        return Failed(f"{step}: not found ({shown_status})", "not_found")
    if status in (401, 403):
        return Failed(f"{step}: permission denied ({shown_status})", "permission")
    if status == 503:
        return Failed(f"{step}: sealed or unavailable ({shown_status})", "status")
    return Failed(f"{step}: {shown_status}", "status")


def _kv2(data: object) -> bool:
    """Whether a read's data is KV version 2's: the secret under `data` beside a `metadata` with its version. A KV 1
    secret may have keys named data and metadata; one whose metadata has no version is taken as it is."""
    if not isinstance(data, dict) or data.keys() != {"data", "metadata"} or not isinstance(data["data"], dict):
        return False
    metadata = data["metadata"]
    return isinstance(metadata, dict) and isinstance(metadata.get("version"), int)


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
        return 0.0
    return float(value)


@functools.cache
def _session_type() -> type:
    """A requests Session for hvac whose calls are made by an HttpExchange (httpx), subclassed once hvac (and so
    requests) is known to be installed."""
    import requests
    import requests.structures

    class Session(requests.Session):
        """One client's session. requests bounds each socket read on its own, not a whole call, and reads a whole
        body into memory: a Vault trickling its answer held the fetch for ever, one answering 100 MB took 300 MB.
        The exchange has one deadline for everything a call does (its head and body read a byte at a time included),
        reads at most MAX_BODY_BYTES of a body, never goes through HTTP(S)_PROXY (the proxy must not call itself),
        follows no redirect and keeps no cookie; `abort()` fails the call in flight within a moment. The fetch's
        deadline is shared by all its calls."""

        def __init__(self, endpoint: Endpoint, timeout: float) -> None:
            super().__init__()
            self.trust_env = False
            self.deadline = math.inf
            self._exchange = HttpExchange(endpoint, timeout, "application/json")

        def request(self, method, url, *args, headers=None, json=None, **kwargs):
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise Failed("the fetch's timeout was spent", "timeout")
            self._exchange.timeout = left
            answer = self._exchange.send(method.upper(), headers=headers, json=json, url=url)
            response = requests.Response()
            response.status_code = answer.status
            response.headers = requests.structures.CaseInsensitiveDict(answer.headers.items())
            response._content = answer.body
            response.encoding = "utf-8"
            response.url = url
            return response

        def abort(self) -> None:
            self._exchange.abort()

        def close(self) -> None:
            self._exchange.close()
            super().close()

    return Session
