"""The JWTs the proxy signs itself (a GitHub App's, a Google service account's assertion): RS256 with PyJWT, on the
`cryptography` package mitmproxy depends on. Key files are read at every mint, so a key replaced on disk is used from
the next one; no message here ever holds a key, a claim value or a signed JWT."""

import json
import time

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ..failures import Failed
from ..files import read_regular

MAX_KEY_BYTES = 64 * 1024  # a PEM key or a service-account JSON key is a few KiB


def read_key_file(path: str) -> bytes:
    """The bytes of a key file; raises Failed (class file or size), never quoting what it holds."""
    data, _ = read_regular(path, MAX_KEY_BYTES)
    return data


def rsa_key(pem: bytes | str) -> rsa.RSAPrivateKey:
    """An RSA private key from unencrypted PEM; raises Failed with a reason that holds nothing of the key."""
    try:
        key = load_pem_private_key(pem.encode() if isinstance(pem, str) else pem, password=None)
    except (ValueError, TypeError):
        # cryptography's messages say what it could not parse, never the bytes; ours say even less.
        raise Failed("not an unencrypted PEM private key", "file") from None
    except UnsupportedAlgorithm:
        raise Failed("not a usable private key (its algorithm is not supported)", "file") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise Failed("not an RSA private key (RS256 needs one)", "file")
    return key


def service_account_key(data: bytes) -> dict[str, str]:
    """The fields of a Google service-account JSON key that the JWT bearer grant needs, the key checked usable."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Failed("not a JSON key file", "file") from None
    if not isinstance(document, dict):
        raise Failed("not a JSON key file (not an object)", "file")
    if document.get("type", "service_account") != "service_account":
        raise Failed("not a service-account key (type is not service_account)", "file")
    fields = {}
    for name in ("client_email", "private_key", "private_key_id", "token_uri"):
        value = document.get(name)
        if not isinstance(value, str) or not value:
            raise Failed(f"the key has no {name}", "file")
        fields[name] = value
    if not fields["token_uri"].startswith(("https://", "http://")):
        raise Failed("the key's token_uri is not an http(s) URL", "file")
    rsa_key(fields["private_key"])
    return fields


def sign(claims: dict, key: rsa.RSAPrivateKey, kid: str | None = None) -> str:
    """A compact JWS (RS256) of `claims`, with `kid` in its header when given."""
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid} if kid else None)


def now() -> int:
    """The wall-clock second JWT claims are written in (iat, exp are seconds since the epoch)."""
    return int(time.time())
