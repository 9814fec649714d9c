"""Loopback servers that issue the tokens the proxy mints for itself, checking what the real ones check: the JWT's
RS256 signature with the public key (PyJWT), its claims and lifetime, the grant's parameters; anything else is
refused. And RFC 6749 token endpoints that are authlib's own `AuthorizationServer`: client credentials; and a
person's sign-in (device grant, refresh tokens rotated at every use, revocation)."""

import base64
import datetime
import http.server
import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass

import jwt
from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, ClientCredentialsGrant, RefreshTokenGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint, DeviceCodeGrant, DeviceCredentialDict
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from servers import serve_in_background

# How far a JWT's iat may be from when the test server reads it (the mint and the call take a moment).
CLOCK_TOLERANCE = 5
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class Refused(Exception):
    def __init__(self, status: int, error: str, why: str) -> None:
        super().__init__(why)
        self.status, self.error = status, error


def rsa_key() -> tuple[bytes, rsa.RSAPublicKey]:
    """A fresh RSA key: its private half as unencrypted PKCS#8 PEM (as GitHub and Google issue them), its public
    half."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem, key.public_key()


def signed(pem: bytes, **claims) -> str:
    """A JWT signed with `pem`, as a kubelet signs a projected service-account token (iat, exp added)."""
    now = int(time.time())
    return jwt.encode({"iat": now, "exp": now + 3600, **claims}, pem, algorithm="RS256")


class _Issuer:
    """An http.server on 127.0.0.1 handing each POST to `issue(path, headers, body)`; what it refused and why is
    kept in `refusals`, what it issued in `issued`."""

    path = "/token"

    def __init__(self) -> None:
        self.issued: list[str] = []
        self.refusals: list[str] = []
        self.requests: list[dict] = []
        self.fail_status = 0
        self._lock = threading.Lock()
        # Requests being answered, counted as they arrive (before the lock that makes `issue` one at a time).
        self.in_flight = self.most_in_flight = 0
        self.arrivals = threading.Condition()
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with issuer.arrivals:
                    issuer.in_flight += 1
                    issuer.most_in_flight = max(issuer.most_in_flight, issuer.in_flight)
                    issuer.arrivals.notify_all()
                try:
                    with issuer._lock:
                        if issuer.fail_status:
                            raise Refused(issuer.fail_status, "server_error", "told to fail")
                        status, payload = issuer.issue(self.path, self.headers, body)
                except Refused as refused:
                    with issuer._lock:
                        issuer.refusals.append(str(refused))
                    status, payload = refused.status, {"error": refused.error, "message": str(refused)}
                with issuer.arrivals:
                    issuer.in_flight -= 1
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = self.base + self.path
        serve_in_background(self.server)

    def issue(self, path: str, headers, body: bytes) -> tuple[int, dict]:
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _token(self, prefix: str) -> str:
        token = f"{prefix}{len(self.issued) + 1}-{base64.urlsafe_b64encode(time.time_ns().to_bytes(8)).decode()}"
        self.issued.append(token)
        return token


def _form(path: str, expected_path: str, headers, body: bytes) -> dict[str, str]:
    if path != expected_path:
        raise Refused(404, "not_found", f"POST {path}")
    if headers.get("Content-Type") != "application/x-www-form-urlencoded":
        raise Refused(400, "invalid_request", "not a form")
    pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True)
    form = dict(pairs)
    if len(form) != len(pairs):
        raise Refused(400, "invalid_request", "a parameter given twice")
    return form


def _verify(token: str, key, **checks) -> dict:
    """The claims of a JWT whose RS256 signature `key` verifies, with iat, exp and the given checks required."""
    try:
        return jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            options={"require": ["iat", "exp", *checks.pop("require", [])]},
            **checks,
        )
    except jwt.PyJWTError as e:
        raise Refused(400, "invalid_grant", f"JWT refused: {type(e).__name__}: {e}") from None


def _lifetime(claims: dict, at_most: int) -> None:
    if not 0 < claims["exp"] - claims["iat"] <= at_most:
        raise Refused(400, "invalid_grant", f"lifetime {claims['exp'] - claims['iat']} s, over {at_most} s")


class GitHubApi(_Issuer):
    """POST /app/installations/{id}/access_tokens as GitHub answers it: the app JWT (RS256, iss the app, iat 60 s in
    the past, at most 10 minutes) verified with one of `public_keys`, then a 201 with a token and its expires_at."""

    def __init__(self, app_id: str, installation_id: str, public_key, expires_in: int = 3600) -> None:
        self.app_id, self.installation_id, self.expires_in = app_id, installation_id, expires_in
        self.public_keys = [public_key]
        self.path = f"/app/installations/{installation_id}/access_tokens"
        super().__init__()

    def issue(self, path, headers, body):
        if path != self.path:
            raise Refused(404, "not_found", f"POST {path}")
        if headers.get("Accept") != "application/vnd.github+json":
            raise Refused(415, "unsupported", "Accept is not application/vnd.github+json")
        scheme, _, app_jwt = headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer":
            raise Refused(401, "unauthorized", "no Bearer JWT")
        errors = []
        for key in self.public_keys:
            try:
                claims = _verify(app_jwt, key, issuer=self.app_id, require=["iss"])
                break
            except Refused as refused:
                errors.append(str(refused))
        else:
            raise Refused(401, "unauthorized", "; ".join(errors))
        now = time.time()
        if abs(claims["iat"] - (now - 60)) > CLOCK_TOLERANCE:
            raise Refused(401, "unauthorized", f"iat {now - claims['iat']:.0f} s in the past, not 60")
        _lifetime(claims, 600)
        asked = json.loads(body) if body else {}
        if not isinstance(asked, dict) or set(asked) - {"repositories", "permissions"}:
            raise Refused(422, "unprocessable", "unknown body fields")
        self.requests.append({"jwt": app_jwt, "claims": claims, "body": asked})
        expires_at = datetime.datetime.fromtimestamp(int(now) + self.expires_in, datetime.UTC)
        return 201, {
            "token": self._token("ghs_"),
            "expires_at": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "permissions": asked.get("permissions", {"metadata": "read"}),
        }


class GoogleTokenEndpoint(_Issuer):
    """Google's token endpoint for the JWT bearer grant (RFC 7523 §2.1): the assertion verified with the public key
    its `kid` names (`keys`: private_key_id → public key), iss the service account, aud this URL, the scopes, at most
    an hour; an access token for `expires_in`."""

    def __init__(self, client_email: str, keys: dict, scopes: list[str], subject=None, expires_in: int = 3599):
        self.client_email, self.keys, self.scopes, self.subject = client_email, keys, scopes, subject
        self.expires_in = expires_in
        super().__init__()

    def key_file(self, pem: bytes, key_id: str) -> str:
        """A JSON key as Google issues it, for this endpoint."""
        return json.dumps(
            {
                "type": "service_account",
                "project_id": "my-project",
                "private_key_id": key_id,
                "private_key": pem.decode(),
                "client_email": self.client_email,
                "client_id": "1234567890",
                "token_uri": self.url,
            }
        )

    def issue(self, path, headers, body):
        form = _form(path, self.path, headers, body)
        if (
            set(form) != {"grant_type", "assertion"}
            or form["grant_type"] != "urn:ietf:params:oauth:grant-type:jwt-bearer"
        ):
            raise Refused(400, "invalid_request", f"parameters {sorted(form)}")
        try:
            header = jwt.get_unverified_header(form["assertion"])
        except jwt.PyJWTError:
            raise Refused(400, "invalid_grant", "not a JWT") from None
        if header.get("kid") not in self.keys or header.get("alg") != "RS256":
            raise Refused(400, "invalid_grant", "unknown kid")
        claims = _verify(
            form["assertion"],
            self.keys[header["kid"]],
            audience=self.url,
            issuer=self.client_email,
            require=["iss", "aud", "scope"],
        )
        if abs(claims["iat"] - time.time()) > CLOCK_TOLERANCE:
            raise Refused(400, "invalid_grant", "iat is not now")
        _lifetime(claims, 3600)
        if claims["scope"] != " ".join(self.scopes) or claims.get("sub") != self.subject:
            raise Refused(400, "invalid_scope", "scope or sub")
        self.requests.append({"assertion": form["assertion"], "header": header, "claims": claims})
        return 200, {"access_token": self._token("ya29.a0-"), "expires_in": self.expires_in, "token_type": "Bearer"}


class FederationEndpoint(_Issuer):
    """A token endpoint that takes a workload's own JWT, signed by the cluster's key (`issuer_key`) for
    `token_audience`: as the subject token of a token exchange (RFC 8693, as GCP's STS) or as a client assertion
    (RFC 7523 §2.2, as Entra ID). Every other parameter must be exactly `expected`; no Authorization header."""

    def __init__(self, issuer_key, token_audience: str, jwt_field: str, expected: dict, expires_in: int = 3600):
        self.issuer_key, self.token_audience, self.jwt_field = issuer_key, token_audience, jwt_field
        self.expected, self.expires_in = expected, expires_in
        super().__init__()

    def issue(self, path, headers, body):
        form = _form(path, self.path, headers, body)
        if "Authorization" in headers:
            raise Refused(400, "invalid_request", "an Authorization header")
        given = {k: v for k, v in form.items() if k != self.jwt_field}
        if self.jwt_field not in form or given != self.expected:
            raise Refused(400, "invalid_request", f"parameters {sorted(form)}")
        claims = _verify(form[self.jwt_field], self.issuer_key, audience=self.token_audience, require=["sub", "aud"])
        self.requests.append({"claims": claims, "form": given})
        answer = {"access_token": self._token("fed-"), "token_type": "Bearer", "expires_in": self.expires_in}
        if form["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange":
            answer["issued_token_type"] = ACCESS_TOKEN_TYPE
        return 200, answer


class _Client(ClientMixin):
    def __init__(self, client_id: str, secret: str, methods: tuple[str, ...]) -> None:
        self.client_id, self.secret, self.methods = client_id, secret, methods

    def get_client_id(self):
        return self.client_id

    def check_client_secret(self, client_secret):
        return client_secret == self.secret

    def check_endpoint_auth_method(self, method, endpoint):
        return method in self.methods

    def check_grant_type(self, grant_type):
        return grant_type == "client_credentials"

    def get_allowed_scope(self, scope):
        return scope or ""


class _Request(OAuth2Request):
    def __init__(self, uri: str, headers, form: dict) -> None:
        super().__init__("POST", uri, headers=headers)
        self.payload = BasicOAuth2Payload(form)
        self._form = form

    @property
    def form(self):
        return self._form

    @property
    def args(self):
        return {}


class AuthlibTokenEndpoint(_Issuer):
    """authlib's `AuthorizationServer` with its client-credentials grant, for one client (both Basic and post)."""

    def __init__(self, client_id: str, secret: str, expires_in: int = 3600) -> None:
        client = _Client(client_id, secret, ("client_secret_basic", "client_secret_post"))
        endpoint = self

        class Server(AuthorizationServer):
            def query_client(self, asked):
                return client if asked == client_id else None

            def save_token(self, token, request):
                endpoint.issued.append(token["access_token"])

            def create_oauth2_request(self, request):
                return request  # made by `issue`, as a framework integration makes it

            def handle_response(self, status, body, headers):
                return status, body

            def send_signal(self, name, *args, **kwargs):
                pass  # a framework's signals: nobody listens here

        class Grant(ClientCredentialsGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

        self.authlib = Server()
        self.authlib.register_grant(Grant)
        self.authlib.register_token_generator(
            "default",
            BearerTokenGenerator(lambda **_: f"authlib-{len(endpoint.issued) + 1}", expires_generator=expires_in),
        )
        super().__init__()

    def issue(self, path, headers, body):
        form = _form(path, self.path, headers, body)
        self.requests.append({"form": form, "basic": headers.get("Authorization", "").startswith("Basic ")})
        status, payload = self.authlib.create_token_response(_Request(self.url, headers, form))
        if status != 200:
            self.refusals.append(payload.get("error", ""))
        return status, payload


@dataclass
class RefreshRecord:
    """A refresh token as the server keeps it. Rotated (used once), it is accepted for `grace` seconds more, as Okta's
    and Auth0's rotation does (a client that died before saving its successor can still use it); after that, a
    second use is refused (invalid_grant)."""

    token: str
    client_id: str
    scope: str
    user: str
    rotated_at: float | None = None
    revoked: bool = False

    def check_client(self, client) -> bool:
        return client.get_client_id() == self.client_id

    def get_scope(self) -> str:
        return self.scope


class _SignInClient(ClientMixin):
    """A client that signs people in: device grant and refresh tokens; public (`secret` None) or confidential."""

    def __init__(self, client_id: str, secret: str | None) -> None:
        self.client_id, self.secret = client_id, secret

    def get_client_id(self):
        return self.client_id

    def check_client_secret(self, client_secret):
        return self.secret is not None and client_secret == self.secret

    def check_endpoint_auth_method(self, method, endpoint):
        return method == "none" if self.secret is None else method in ("client_secret_basic", "client_secret_post")

    def check_grant_type(self, grant_type):
        return grant_type in ("refresh_token", "authorization_code", DeviceCodeGrant.GRANT_TYPE)

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_redirect_uri(self, redirect_uri):
        # RFC 8252 §7.3: a native app's loopback redirect, on whatever port it listens on.
        return redirect_uri.startswith("http://127.0.0.1:")

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return scope or ""


@dataclass
class AuthorizationCode:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: str
    code_challenge: str
    code_challenge_method: str

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope


class _AuthorizationRequest(OAuth2Request):
    """A browser's GET of the authorization endpoint."""

    def __init__(self, url: str) -> None:
        super().__init__("GET", url)
        self._args = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        self.payload = BasicOAuth2Payload(self._args)

    @property
    def args(self):
        return self._args

    @property
    def form(self):
        return {}


class AuthlibSignIn(_Issuer):
    """authlib's `AuthorizationServer` for a person's sign-in, on 127.0.0.1: its device authorization endpoint and
    device-code grant (RFC 8628) at /device and /token, its authorization-code grant with PKCE required (RFC 7636;
    the browser's part is `authorize`), its refresh-token grant at /token with a new refresh token at
    every use (RFC 9700 §4.14.2), its revocation endpoint (RFC 7009) at /revoke. One client, `client_id`, public when
    `secret` is None.

    The test plays the person: `approve(user_code)` or `deny(user_code)`; `slow_down` answers that many polls with
    slow_down; `expire(user_code)` ends the device code's life. `signed_in(user)` is a refresh token as a finished
    sign-in leaves it. The next refresh waits up to `hold` seconds for another request to arrive (one that does is in
    `most_in_flight`)."""

    def __init__(self, client_id: str = "agent", secret: str | None = None, expires_in: int = 3600, grace=30.0):
        self.client_id, self.grace = client_id, grace
        self.refresh_tokens: dict[str, RefreshRecord] = {}
        self.presented: list[str] = []  # the refresh tokens presented, in order
        self.issued_by_device: list[str] = []  # the refresh tokens device sign-ins were given
        self.devices: dict[str, DeviceCredentialDict] = {}
        self.decisions: dict[str, tuple[str, bool]] = {}
        self.device_requests: list[dict] = []
        self.codes: dict[str, AuthorizationCode] = {}
        self.device_lifetime = DeviceAuthorizationEndpoint.EXPIRES_IN
        self.device_interval = DeviceAuthorizationEndpoint.INTERVAL
        self.person: str | None = None  # who approves every sign-in at once, when set (the README's recipe)
        self.slow_down = 0
        self.hold = 0.0
        # A hostile or broken server: `tamper(path, payload)` rewrites each answer of 200 after authlib made it (what
        # authlib did, a rotation, stands).
        self.tamper = None
        client = _SignInClient(client_id, secret)
        issuer = self

        class Server(AuthorizationServer):
            def query_client(self, asked):
                return client if asked == client_id else None

            def save_token(self, token, request):
                issuer.issued.append(token["access_token"])
                if "refresh_token" in token and getattr(request, "credential", None) is not None:
                    issuer.issued_by_device.append(token["refresh_token"])
                if "refresh_token" in token:
                    # A rotated token keeps what the person granted, whatever scope this refresh asked for.
                    granted = getattr(request, "refresh_token", None)
                    scope = granted.scope if granted is not None else token.get("scope", "")
                    issuer.refresh_tokens[token["refresh_token"]] = RefreshRecord(
                        token["refresh_token"], client_id, scope, request.user
                    )

            def create_oauth2_request(self, request):
                return request

            def handle_response(self, status, body, headers):
                return status, body

            def send_signal(self, name, *args, **kwargs):
                pass

        methods = ["none"] if secret is None else ["client_secret_basic", "client_secret_post"]

        class Refresh(RefreshTokenGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = methods
            INCLUDE_NEW_REFRESH_TOKEN = True

            def authenticate_refresh_token(self, refresh_token):
                issuer.presented.append(refresh_token)
                record = issuer.refresh_tokens.get(refresh_token)
                if record is None or record.revoked:
                    return None
                if record.rotated_at is not None and time.monotonic() - record.rotated_at > issuer.grace:
                    return None
                return record

            def authenticate_user(self, refresh_token):
                return refresh_token.user

            def revoke_old_credential(self, refresh_token):
                if refresh_token.rotated_at is None:
                    refresh_token.rotated_at = time.monotonic()

        class Device(DeviceCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = methods

            def query_device_credential(self, device_code):
                return issuer.devices.get(device_code)

            def query_user_grant(self, user_code):
                if issuer.person is not None:
                    return issuer.decisions.setdefault(user_code, (issuer.person, True))
                return issuer.decisions.get(user_code)

            def should_slow_down(self, credential):
                if issuer.slow_down:
                    issuer.slow_down -= 1
                    return True
                return False

        class Code(AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = methods

            def save_authorization_code(self, code, request):
                issuer.codes[code] = AuthorizationCode(
                    code,
                    client_id,
                    request.payload.redirect_uri,
                    request.scope,
                    request.user,
                    request.payload.data.get("code_challenge"),
                    request.payload.data.get("code_challenge_method"),
                )

            def query_authorization_code(self, code, client):
                return issuer.codes.get(code)

            def delete_authorization_code(self, authorization_code):
                issuer.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code):
                return authorization_code.user

        class DeviceEndpoint(DeviceAuthorizationEndpoint):
            CLIENT_AUTH_METHODS = methods

            @property
            def EXPIRES_IN(self):
                return issuer.device_lifetime

            @property
            def INTERVAL(self):
                return issuer.device_interval

            def get_verification_uri(self):
                return issuer.base + "/activate"

            def save_device_credential(self, client_id, scope, data):
                issuer.devices[data["device_code"]] = DeviceCredentialDict(
                    client_id=client_id, scope=scope, expires_at=time.time() + data["expires_in"], **data
                )

        class Revocation(RevocationEndpoint):
            CLIENT_AUTH_METHODS = methods

            def query_token(self, token_string, token_type_hint):
                return issuer.refresh_tokens.get(token_string)

            def revoke_token(self, token, request):
                token.revoked = True

        self.authlib = Server()
        self.authlib.register_grant(Refresh)
        self.authlib.register_grant(Device)
        self.authlib.register_grant(Code, [CodeChallenge(required=True)])
        self.authlib.register_endpoint(DeviceEndpoint)
        self.authlib.register_endpoint(Revocation)
        self.authlib.register_token_generator(
            "default",
            BearerTokenGenerator(
                lambda **_: f"person-at-{len(issuer.issued) + 1}",
                lambda **_: "rt-" + secrets.token_urlsafe(16),
                expires_generator=expires_in,
            ),
        )
        super().__init__()

    def signed_in(self, user: str = "alice", scope: str = "drive") -> str:
        """A refresh token for `user`, as a finished sign-in leaves one."""
        token = "rt-" + secrets.token_urlsafe(16)
        self.refresh_tokens[token] = RefreshRecord(token, self.client_id, scope, user)
        return token

    def accepts(self, refresh_token: str) -> bool:
        record = self.refresh_tokens.get(refresh_token)
        return (
            record is not None
            and not record.revoked
            and (record.rotated_at is None or time.monotonic() - record.rotated_at <= self.grace)
        )

    def revoke(self, refresh_token: str) -> None:
        self.refresh_tokens[refresh_token].revoked = True

    def revoke_all(self) -> None:
        """The person takes back what they granted: every refresh token, also one issued this moment."""
        with self._lock:
            for record in self.refresh_tokens.values():
                record.revoked = True

    def latest(self) -> str:
        """The refresh token issued last."""
        return next(reversed(self.refresh_tokens))

    def authorize(self, url: str, user: str | None = "alice") -> str:
        """The person's browser at the authorization endpoint: `user` signs in and approves (None: refuses). The
        redirect's Location, as authlib makes it."""
        request = _AuthorizationRequest(url)
        grant = self.authlib.get_authorization_grant(request)
        try:
            redirect_uri = grant.validate_authorization_request()
            _, _, headers = grant.create_authorization_response(redirect_uri, user)
        except OAuth2Error as error:
            error.state = request.payload.state
            _, _, headers = error()
        return dict(headers)["Location"]

    def user_codes(self) -> list[str]:
        return [d["user_code"] for d in self.devices.values()]

    def approve(self, user_code: str, user: str = "alice") -> None:
        self.decisions[user_code] = (user, True)

    def deny(self, user_code: str) -> None:
        self.decisions[user_code] = ("alice", False)

    def expire(self, user_code: str) -> None:
        for device in self.devices.values():
            if device["user_code"] == user_code:
                device["expires_at"] = time.time() - 1

    def issue(self, path, headers, body):
        status, payload = self._issue(path, headers, body)
        if status == 200 and self.tamper is not None:
            payload = self.tamper(path, dict(payload))
        return status, payload

    def _issue(self, path, headers, body):
        pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
        form = dict(pairs)
        request = _Request(self.base + path, headers, form)
        if path == "/device":
            self.device_requests.append(form)
            return self.authlib.create_endpoint_response("device_authorization", request)
        if path == "/revoke":
            return self.authlib.create_endpoint_response("revocation", request)
        if path != "/token":
            raise Refused(404, "not_found", f"POST {path}")
        if form.get("grant_type") == "refresh_token" and self.hold:
            with self.arrivals:
                self.arrivals.wait_for(lambda: self.in_flight > 1, self.hold)
            self.hold = 0.0  # the first refresh only
        self.requests.append({"form": form, "basic": headers.get("Authorization", "").startswith("Basic ")})
        status, payload = self.authlib.create_token_response(request)
        if status != 200:
            self.refusals.append(payload.get("error", ""))
        return status, payload
