"""A hostile client against placeholders, in-process (taddons, tflow): the real token is never sent to a host its
entry does not name, never half-substituted, and never handed back however the upstream spells its echo."""

import asyncio
import base64
import gzip
import json
import re
import string
import zlib
from urllib.parse import quote

import header_augment
import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow
from mitmproxy.websocket import WebSocketMessage
from test_addon import make_flow
from test_placeholder_unit import OTHER, PH, Proxy, entry, refused, value

from header_augment_core import placeholder_command

REAL = "real+tok/en=="  # `+`, `/` and `=`: spelled otherwise by each encoding


@pytest.fixture
def proxy():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        yield Proxy(tctx, addon)
        addon.done()


def echo(proxy, f, body: bytes, headers=(), trailers=None):
    """The upstream's answer to `f`, through the answer hooks: what the client gets."""
    f.response = http.Response.make(200, body, [(n.encode(), v.encode()) for n, v in headers])
    if trailers is not None:
        f.response.trailers = http.Headers([(n.encode(), v.encode()) for n, v in trailers])
    proxy.addon.responseheaders(f)
    pending = proxy.addon.response(f)
    if pending is not None:
        asyncio.run(pending)
    return f.response


@pytest.mark.parametrize(
    "spell",
    [
        pytest.param(lambda token, basic: json.dumps({"t": token}).replace("/", "\\/"), id="JSON with / escaped"),
        pytest.param(
            lambda token, basic: re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(token, safe="")),
            id="percent-encoded, lower-case hex",
        ),
        pytest.param(lambda token, basic: basic.removeprefix("Basic "), id="Basic credentials without the scheme"),
        pytest.param(lambda token, basic: basic.removeprefix("Basic ").rstrip("="), id="Basic without padding"),
    ],
)
def test_an_echo_spelled_another_way_comes_back_with_the_placeholder(proxy, tmp_path, spell):
    """`spell(token, Basic value)`: how the upstream writes what it saw; the client gets it as it would have been
    written of what the client sent."""
    proxy.configure(tmp_path, entry())
    proxy.token("gh", REAL)
    given = "Basic " + base64.b64encode(f"x-access-token:{PH}".encode()).decode()
    f = proxy.send(make_flow([("Authorization", given)]))
    sent = value(f, "Authorization")
    assert base64.b64decode(sent.removeprefix("Basic ")) == f"x-access-token:{REAL}".encode()
    echoed = spell(REAL, sent)
    answer = echo(proxy, f, f"seen: {echoed}".encode(), [("X-Seen", echoed)])
    assert answer.content.decode() == f"seen: {spell(PH, given)}"
    assert answer.headers["X-Seen"] == spell(PH, given)


def test_an_echo_in_the_trailers_comes_back_with_the_placeholder(proxy, tmp_path):
    proxy.configure(tmp_path, entry())
    proxy.token("gh", REAL)
    f = proxy.send(make_flow([("Authorization", f"Bearer {PH}")]))
    answer = echo(proxy, f, b"ok", trailers=[("X-Echo", f"Bearer {REAL}")])
    assert answer.trailers["X-Echo"] == f"Bearer {PH}"


def test_a_placeholder_in_proxy_authorization_is_refused_even_toward_its_host(proxy, tmp_path):
    """In upstream mode, a plain-HTTP request's Proxy-Authorization goes to the next proxy, which no entry names."""
    proxy.configure(tmp_path, entry())
    binding = proxy.token("gh", REAL)
    for sent in (f"Bearer {PH}", "Basic " + base64.b64encode(f"u:{PH}".encode()).decode()):
        f = proxy.send(make_flow([("Proxy-Authorization", sent)]))
        status, first = refused(f)
        assert status == 403 and "Proxy-Authorization" in first
        assert value(f, "Proxy-Authorization") == sent
    assert binding.counters.given == 0


def test_placeholders_of_two_entries_one_not_for_this_host_refuse_the_request_whole(proxy, tmp_path):
    proxy.configure(tmp_path, entry(), entry("other", OTHER, hosts="other.example"))
    proxy.token("gh", REAL)
    proxy.token("other", "other-real-token")
    f = make_flow([("Authorization", f"Bearer {PH}"), ("X-Other", OTHER)])
    status, first = refused(proxy.send(f))
    assert status == 403 and "other" in first
    assert value(f, "Authorization") == f"Bearer {PH}" and value(f, "X-Other") == OTHER


def test_a_placeholder_in_a_body_its_entry_refuses_takes_back_the_header_already_replaced(proxy, tmp_path):
    proxy.configure(tmp_path, entry(substitute="header,body"), entry("ai", OTHER, substitute="header"))
    proxy.token("gh", REAL)
    proxy.token("ai", "ai-real-token")
    f = make_flow([("Authorization", f"Bearer {PH}"), ("Content-Type", "application/json")])
    f.request.method = "POST"
    f.request.content = json.dumps({"key": OTHER}).encode()
    status, first = refused(proxy.send(f))
    assert status == 403 and "ai" in first and "body" in first
    assert value(f, "Authorization") == f"Bearer {PH}"


@pytest.mark.parametrize(
    "host, port",
    [
        ("api.example.com.evil.example", 443),
        ("evil.example", 443),
        ("xn--pi-example-8bb.com", 443),  # a look-alike, as IDNA sends it
        ("api.example.co", 443),
        ("::1", 443),
        ("93.184.216.34", 443),
        ("api.example.com", 8443),  # its hosts name port 443 only
    ],
)
def test_a_placeholder_toward_a_host_spelled_like_its_own_is_refused(proxy, tmp_path, host, port):
    proxy.configure(tmp_path, entry(hosts="api.example.com:443"))
    binding = proxy.token("gh", REAL)
    f = make_flow([("Authorization", f"Bearer {PH}")], host=host)
    f.request.port = port
    status, _ = refused(proxy.send(f))
    assert status == 403 and value(f, "Authorization") == f"Bearer {PH}"
    assert binding.counters.given == 0


@pytest.mark.parametrize("host", ["API.EXAMPLE.COM", "api.example.com."])
def test_its_own_host_spelled_otherwise_is_its_own(proxy, tmp_path, host):
    proxy.configure(tmp_path, entry(hosts="api.example.com:443"))
    proxy.token("gh", REAL)
    f = make_flow([("Authorization", f"Bearer {PH}")], host=host)
    f.request.port = 443
    assert proxy.send(f).response is None and value(f, "Authorization") == f"Bearer {REAL}"


@pytest.mark.parametrize(
    "host_header, refused_",
    [
        ("evil.example", True),  # a shared front routes by it
        ("evil.example:443", True),
        ("[::1]", True),
        ("not a host", True),
        ("API.Example.COM:443", False),
        ("api.example.com.", False),
        ("other.example.com", False),  # another of its entry's hosts
    ],
)
def test_a_placeholder_with_a_host_header_naming_another_site_is_refused(proxy, tmp_path, host_header, refused_):
    proxy.configure(tmp_path, entry(hosts="api.example.com, other.example.com", substitute="header,body"))
    binding = proxy.token("gh", REAL)
    f = make_flow([("Authorization", f"Bearer {PH}")])
    f.request.headers["Host"] = host_header
    proxy.send(f)
    if refused_:
        status, first = refused(f)
        assert status == 403 and "Host header" in first and value(f, "Authorization") == f"Bearer {PH}"
    else:
        assert f.response is None and value(f, "Authorization") == f"Bearer {REAL}"
    f = make_flow([("Content-Type", "text/plain")])  # a body: its placeholder stays what it is
    f.request.headers["Host"] = host_header
    f.request.method, f.request.content = "POST", f"key {PH}".encode()
    proxy.send(f)
    assert f.request.content == f"key {PH if refused_ else REAL}".encode()
    assert binding.counters.given == (0 if refused_ else 2)


def test_a_gzip_encoded_body_goes_as_it_came(proxy, tmp_path):
    proxy.configure(tmp_path, entry(substitute="body"))
    proxy.token("gh", REAL)
    packed = gzip.compress(f"key={PH}".encode())
    f = make_flow([("Content-Encoding", "gzip"), ("Content-Type", "text/plain")])
    f.request.method = "POST"
    f.request.raw_content = packed
    proxy.send(f)
    assert f.request.raw_content == packed and "Content-Encoding" in f.comment


def test_a_binary_websocket_message_goes_as_it_came(proxy, tmp_path):
    proxy.configure(tmp_path, entry(substitute="header,websocket"))
    proxy.token("gh", REAL)
    f = tflow.twebsocketflow()
    f.request.host, f.request.port = "api.example.com", 443
    proxy.send(f)
    sent = WebSocketMessage(2, True, PH.encode())  # Opcode.BINARY
    f.websocket.messages.append(sent)
    proxy.addon.websocket_message(f)
    assert sent.content == PH.encode()


def test_the_github_shapes_never_carry_a_valid_checksum():
    """GitHub's tokens end in the base62 CRC32 of the 30 characters after the prefix; a scanner that checks it
    (GitHub's, credsweeper) reports a token only when it is right."""
    digits = string.digits + string.ascii_uppercase + string.ascii_lowercase
    for shape, prefix in (("github", "ghp_"), ("github-app", "ghs_")):
        for _ in range(200):
            made = placeholder_command.make(shape)
            assert made.startswith(prefix) and len(made) == 40
            tail = 0
            for c in made[-6:]:
                tail = tail * 62 + digits.index(c)
            assert tail != zlib.crc32(made[4:-6].encode())


def test_a_flow_killed_while_its_large_body_is_searched_off_the_loop_gets_nothing(proxy, tmp_path):
    proxy.configure(tmp_path, entry(substitute="body"))
    binding = proxy.token("gh", REAL)
    body = (f"{PH} " * 4096).encode()  # over 64 KiB: searched on a worker thread
    f = make_flow([("Content-Type", "text/plain")])
    f.request.method, f.request.content = "POST", body
    assert proxy.addon.requestheaders(f) is None
    pending = proxy.addon.check_reroute(f)
    assert pending is not None

    async def killed_meanwhile():
        task = asyncio.ensure_future(pending)
        await asyncio.sleep(0)  # the search has started on its thread
        f.kill()
        await task

    asyncio.run(killed_meanwhile())
    assert f.request.content == body and binding.counters.given == 0
