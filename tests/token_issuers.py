"""Loopback servers that issue the tokens the proxy mints for itself, checking what the real ones check: the JWT's
RS256 signature with the public key (PyJWT), its claims and lifetime, the grant's parameters; anything else is
refused. And an RFC 6749 token endpoint that is authlib's own `AuthorizationServer` (client credentials)."""

import base64
import datetime
import http.server
import json
import threading
import time
import urllib.parse

import jwt
from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
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
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    with issuer._lock:
                        if issuer.fail_status:
                            raise Refused(issuer.fail_status, "server_error", "told to fail")
                        status, payload = issuer.issue(self.path, self.headers, body)
                except Refused as refused:
                    with issuer._lock:
                        issuer.refusals.append(str(refused))
                    status, payload = refused.status, {"error": refused.error, "message": str(refused)}
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
