"""`header-augment placeholder SHAPE`: a fresh random placeholder shaped like a real token, so that a tool that checks
the shape of what it is given (gh, the AWS SDKs, the OpenAI and Anthropic SDKs, Slack's) starts with it. Printed to
standard output; `--list` names the shapes. No proxy is started."""

import base64
import json
import secrets
import string
import sys
import time
import zlib
from collections.abc import Callable

from .placeholders import parse_placeholder

_BASE62 = string.ascii_letters + string.digits
_URL_SAFE = _BASE62 + "-_"
_BASE32 = string.ascii_uppercase + "234567"
_GITHUB_DIGITS = string.digits + string.ascii_uppercase + string.ascii_lowercase
TEN_YEARS = 10 * 365 * 24 * 3600


def _random(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _base62(number: int, width: int) -> str:
    digits = ""
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits = _GITHUB_DIGITS[digit] + digits
    return digits


def _github(prefix: str) -> str:
    """`prefix`, 30 random base62 and 6 more that are not the CRC32 of those 30: GitHub's tokens end in that checksum
    (base62, 0-9 A-Z a-z), and secret scanners that check it (GitHub's own, credsweeper) report a leaked token only
    if it is right. gh and git check the prefix and the length at most: the placeholder passes there and is never
    reported as a leak wherever it is written."""
    body = _random(_BASE62, 30)
    checksum = _base62(zlib.crc32(body.encode()), 6)
    while (tail := _random(_BASE62, 6)) == checksum:
        pass  # one time in 62**6
    return prefix + body + tail


def _jwt() -> str:
    """A well-formed JWT (HS256 header, claims with a far `exp`, a random signature): it verifies nowhere."""
    now = int(time.time())
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"sub": "placeholder", "iat": now, "exp": now + TEN_YEARS, "jti": _random(_BASE62, 16)}
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{header}.{payload}.{_b64url(secrets.token_bytes(32))}"


SHAPES: dict[str, tuple[str, Callable[[], str]]] = {
    "github": (
        "a GitHub personal access token: ghp_ and 36 of A-Z a-z 0-9 (its checksum wrong: never reported as a leak)",
        lambda: _github("ghp_"),
    ),
    "github-app": ("a GitHub App installation token: ghs_ and 36 (its checksum wrong)", lambda: _github("ghs_")),
    "openai": (
        "an OpenAI project key: sk-proj-, 64 of A-Z a-z 0-9 - _, T3BlbkFJ, 64",
        lambda: "sk-proj-" + _random(_URL_SAFE, 64) + "T3BlbkFJ" + _random(_URL_SAFE, 64),
    ),
    "anthropic": (
        "an Anthropic API key: sk-ant-api03-, 93 of A-Z a-z 0-9 - _, AA",
        lambda: "sk-ant-api03-" + _random(_URL_SAFE, 93) + "AA",
    ),
    "slack-bot": (
        "a Slack bot token: xoxb-, two runs of digits, 24 of A-Z a-z 0-9",
        lambda: f"xoxb-{_random(string.digits, 13)}-{_random(string.digits, 13)}-{_random(_BASE62, 24)}",
    ),
    "aws-access-key": ("an AWS access key id: AKIA and 16 of A-Z 2-7", lambda: "AKIA" + _random(_BASE32, 16)),
    "jwt": ("a well-formed JWT whose exp is ten years away", _jwt),
    "hex32": ("32 hexadecimal digits", lambda: secrets.token_hex(16)),
}
USAGE = "usage: header-augment placeholder SHAPE | --list"


def make(shape: str) -> str:
    """A new placeholder of `shape`; every one is a valid `placeholder` setting."""
    return parse_placeholder(SHAPES[shape][1]())


def main(args: list[str]) -> int:
    if args in (["-h"], ["--help"]):
        print(f"{USAGE}\n\n{__doc__}")
        return 0
    if args == ["--list"]:
        width = max(map(len, SHAPES))
        for name, (what, _) in SHAPES.items():
            print(f"{name:<{width}}  {what}")
        return 0
    if len(args) != 1 or args[0] not in SHAPES:
        given = f"unknown shape {args[0]!r}; " if len(args) == 1 else ""
        print(f"header-augment placeholder: {given}shapes: {', '.join(SHAPES)}\n{USAGE}", file=sys.stderr)
        return 2
    print(make(args[0]))
    return 0
