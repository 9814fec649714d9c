"""Placeholders in-process (taddons, tflow): found in one pass, replaced by the token in the places the entry allows
and only toward its hosts and clients, refused (403, 503) elsewhere, and put back in the flow and in answers."""

import asyncio
import base64
import json
import re
import time
from types import SimpleNamespace

import header_augment
import jwt
import pytest
from mitmproxy import http
from mitmproxy.test import taddons
from test_addon import make_flow

from header_augment_core import cli, placeholder_command
from header_augment_core.placeholders import Matcher, parse_placeholder
from header_augment_core.snapshot import Snapshot

PH = "ghp_PLACEHOLDERplaceholder0123456789abcd"
OTHER = "sk-proj-OTHERplaceholder0123456789"
REAL = "real+tok/en=="  # `+`, `/` and `=`: written differently in a URL
REAL_URL = "real%2Btok%2Fen%3D%3D"


def providers(tmp_path, *entries) -> str:
    path = tmp_path / "providers.json"
    path.write_text(json.dumps({"providers": list(entries)}))
    return str(path)


def entry(name="gh", placeholder=PH, hosts="api.example.com", **more):
    return {"name": name, "command": ["true"], "placeholder": placeholder, "hosts": hosts, **more}


class Proxy:
    def __init__(self, tctx, addon):
        self.tctx, self.addon = tctx, addon

    def configure(self, tmp_path, *entries, **options):
        self.tctx.configure(self.addon, header_providers_file=providers(tmp_path, *entries), **options)

    def token(self, name, token=REAL, at=None, max_stale=0.0):
        binding = next(b for b in self.addon.bindings if b.settings.name == name)
        binding.refresher.snapshot = Snapshot.build(
            [("Authorization", f"Bearer {token}")], time.monotonic() if at is None else at, max_stale
        )
        return binding

    def send(self, f):
        pending = self.addon.requestheaders(f)
        if pending is not None:
            asyncio.run(pending)
        if not f.response:
            pending = self.addon.check_reroute(f)
            if pending is not None:
                asyncio.run(pending)
        return f

    def answer(self, f, body=b"", headers=()):
        f.response = http.Response.make(200, body, [(n.encode(), v.encode()) for n, v in headers])
        self.addon.responseheaders(f)
        pending = self.addon.response(f)
        if pending is not None:
            asyncio.run(pending)
        return f


@pytest.fixture
def proxy():
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        yield Proxy(tctx, addon)
        addon.done()


def value(f, name):
    return f.request.headers[name]


def test_a_bearer_placeholder_is_replaced_toward_its_host_and_stands_again_in_the_flow_and_the_answer(proxy, tmp_path):
    proxy.configure(tmp_path, entry())
    binding = proxy.token("gh")
    f = proxy.send(make_flow([("Authorization", f"Bearer {PH}"), ("X-Other", "kept")]))
    assert f.response is None
    assert value(f, "Authorization") == f"Bearer {REAL}"
    assert value(f, "X-Other") == "kept"
    assert binding.counters.given == 1
    proxy.answer(f, f"echo {REAL} and {REAL_URL}".encode(), [("X-Echo", f"Bearer {REAL}")])
    assert value(f, "Authorization") == f"Bearer {PH}"  # what a saved flow holds
    assert f.response.headers["X-Echo"] == f"Bearer {PH}"
    assert f.response.content == f"echo {PH} and {PH}".encode()


def test_an_entry_with_a_placeholder_adds_no_header(proxy, tmp_path):
    proxy.configure(tmp_path, entry())
    proxy.token("gh")
    f = proxy.send(make_flow())
    assert "Authorization" not in f.request.headers and f.response is None


def test_basic_user_and_password_are_decoded_replaced_and_encoded_again(proxy, tmp_path):
    proxy.configure(tmp_path, entry())
    proxy.token("gh")
    sent = base64.b64encode(f"x-access-token:{PH}".encode()).decode()
    f = proxy.send(make_flow([("Authorization", f"Basic {sent}")]))
    scheme, _, credentials = value(f, "Authorization").partition(" ")
    assert scheme == "Basic" and base64.b64decode(credentials) == f"x-access-token:{REAL}".encode()
    echoed = value(f, "Authorization")
    proxy.answer(f, echoed.encode())
    assert value(f, "Authorization") == f"Basic {sent}"
    assert f.response.content == f"Basic {sent}".encode()


def test_query_and_path_get_the_value_percent_encoded(proxy, tmp_path):
    proxy.configure(tmp_path, entry(substitute=["query", "path"]))
    proxy.token("gh")
    f = make_flow()
    f.request.path = f"/v1/{PH}/x?key={PH}&a=%22{PH}%22"
    proxy.send(f)
    assert f.response is None
    assert f.request.path == f"/v1/{REAL_URL}/x?key={REAL_URL}&a=%22{REAL_URL}%22"
    proxy.answer(f)
    assert f.request.path == f"/v1/{PH}/x?key={PH}&a=%22{PH}%22"


@pytest.mark.parametrize(
    "kind, body, sent",
    [
        ("application/json", json.dumps({"key": PH}), json.dumps({"key": REAL})),
        ("application/x-www-form-urlencoded", f"a=1&key={PH}", f"a=1&key={REAL_URL}"),
        ("text/plain", f"key {PH}", f"key {REAL}"),
    ],
)
def test_a_body_gets_the_value_in_its_encoding_and_a_right_content_length(proxy, tmp_path, kind, body, sent):
    proxy.configure(tmp_path, entry(substitute="header,body"))
    proxy.token("gh", token='re"al\\+tok/en==' if kind == "application/json" else REAL)
    if kind == "application/json":
        sent = json.dumps({"key": 're"al\\+tok/en=='})
    f = make_flow([("Content-Type", kind)])
    f.request.method = "POST"
    f.request.content = body.encode()
    proxy.send(f)
    assert f.request.raw_content == sent.encode()
    assert f.request.headers["content-length"] == str(len(sent.encode()))
    proxy.answer(f)
    assert f.request.raw_content == body.encode()


def test_a_body_over_the_limit_is_not_searched_and_the_comment_says_so(proxy, tmp_path):
    proxy.configure(tmp_path, entry(substitute="body"), header_substitute_body_limit="10")
    proxy.token("gh")
    f = make_flow([("Content-Type", "text/plain")])
    f.request.content = f"key {PH}".encode()
    proxy.send(f)
    assert f.request.raw_content == f"key {PH}".encode()
    assert "larger than header_substitute_body_limit" in f.comment


def refused(f):
    assert f.response is not None
    first = f.response.content.split(b"\n")[0].decode()
    assert first.startswith("header-augment:")
    return f.response.status_code, first


def test_a_placeholder_toward_a_host_its_entry_does_not_cover_is_refused_403(proxy, tmp_path):
    proxy.configure(tmp_path, entry())
    binding = proxy.token("gh")
    f = proxy.send(make_flow([("Authorization", f"Bearer {PH}")], host="evil.example"))
    status, first = refused(f)
    assert status == 403 and "gh" in first and PH not in first and REAL not in first
    assert value(f, "Authorization") == f"Bearer {PH}"
    assert binding.counters.placeholder_refused == 1 and binding.counters.given == 0
    assert "placeholder of gh refused" in f.comment


def test_a_placeholder_in_a_place_its_entry_does_not_allow_is_refused_403(proxy, tmp_path):
    proxy.configure(tmp_path, entry())
    proxy.token("gh")
    f = make_flow()
    f.request.path = f"/x?key={PH}"
    status, first = refused(proxy.send(f))
    assert status == 403 and "query" in first
    assert f.request.path == f"/x?key={PH}"


def test_a_placeholder_without_a_valid_credential_is_answered_503(proxy, tmp_path):
    proxy.configure(tmp_path, entry())
    binding = next(b for b in proxy.addon.bindings if b.settings.name == "gh")
    binding.refresher._finish_first_attempt()  # the first fetch failed: nothing to wait for
    status, first = refused(proxy.send(make_flow([("Authorization", f"Bearer {PH}")])))
    assert status == 503 and "no valid credential" in first
    proxy.token("gh", at=time.monotonic() - 100, max_stale=10)
    status, first = refused(proxy.send(make_flow([("Authorization", f"Bearer {PH}")])))
    assert status == 503 and "expired" in first
    assert binding.counters.placeholder_refused == 2


def test_per_client_placeholders(proxy, tmp_path):
    proxy.configure(
        tmp_path,
        entry("alice", PH, clients="192.0.2.1"),
        entry("bob", OTHER, clients="192.0.2.2"),
    )
    proxy.token("alice", "alice-real-token")
    proxy.token("bob", "bob-real-token")
    f = make_flow([("Authorization", f"Bearer {OTHER}")])
    f.client_conn.peername = ("192.0.2.2", 5000)
    assert value(proxy.send(f), "Authorization") == "Bearer bob-real-token"
    f = make_flow([("Authorization", f"Bearer {OTHER}")])
    f.client_conn.peername = ("192.0.2.1", 5000)
    assert refused(proxy.send(f))[0] == 403  # alice holds bob's placeholder: not hers


def test_with_egress_deny_the_verdict_comes_first(proxy, tmp_path):
    proxy.configure(tmp_path, entry(), header_egress="deny")
    proxy.token("gh")
    status, first = refused(proxy.send(make_flow([("Authorization", f"Bearer {PH}")], host="evil.example")))
    assert status == 403 and first.startswith("header-augment: denied evil.example")
    f = proxy.send(make_flow([("Authorization", f"Bearer {PH}")]))
    assert f.response is None and value(f, "Authorization") == f"Bearer {REAL}"


def test_a_reroute_takes_back_what_was_replaced(proxy, tmp_path):
    proxy.configure(tmp_path, entry(substitute="header,query"))
    proxy.token("gh")
    f = make_flow([("Authorization", f"Bearer {PH}")])
    f.request.path = f"/x?key={PH}"
    assert proxy.addon.requestheaders(f) is None
    assert f.request.path == f"/x?key={REAL_URL}"
    f.request.host = "elsewhere.example"  # map_remote, after our requestheaders
    assert proxy.addon.check_reroute(f) is None
    status, _ = refused(f)
    assert status == 403
    assert f.request.path == f"/x?key={PH}" and value(f, "Authorization") == f"Bearer {PH}"


@pytest.mark.parametrize(
    "entries, words",
    [
        ([entry(placeholder="short")], "16 to 256"),
        ([entry("a"), entry("b")], "provider 2 (b): placeholder: the same as"),
        ([entry("a"), entry("b", placeholder=PH + "x")], "contains the other"),
        ([{"name": "h", "url": "http://127.0.0.1:9/h", "hosts": "x.example", "placeholder": PH}], "header map"),
        ([entry(header="X-Key")], "header: not with placeholder"),
        ([{"name": "s", "command": ["true"], "hosts": "x.example", "substitute": "body"}], "only with placeholder"),
        ([entry(substitute="cookie")], "not a place"),
    ],
)
def test_configurations_refused(proxy, tmp_path, entries, words):
    with pytest.raises(Exception) as raised:
        proxy.configure(tmp_path, *entries)
    assert words in str(raised.value)


def test_the_matcher_finds_words_after_escapes():
    entry = SimpleNamespace(settings=SimpleNamespace(substitute=frozenset({"header"})))
    matcher = Matcher({f"placeholder-{n:06d}-abcdefgh".encode(): entry for n in range(1000)})
    one = b"placeholder-000042-abcdefgh"
    assert matcher.find(b"a=%22" + one + b"%22") == {one}
    assert matcher.find(b'{"k":"\\n' + one + b'"}') == {one}
    assert matcher.find(b"Bearer " + one) == {one}
    assert matcher.find(b"x" + one) == set()  # a word of its own, not a part of another


def test_augment_placeholders_prints_name_value_lines(proxy, tmp_path):
    proxy.configure(tmp_path, entry(env="GH_TOKEN"), entry("plain", OTHER))
    assert proxy.addon.placeholders() == f"GH_TOKEN={PH}\n"


@pytest.mark.parametrize("shape", list(placeholder_command.SHAPES))
def test_every_shape_makes_a_fresh_valid_placeholder(shape):
    made = placeholder_command.make(shape)
    assert made != placeholder_command.make(shape)
    assert parse_placeholder(made) == made
    start = {"github": "ghp_", "github-app": "ghs_", "openai": "sk-proj-", "anthropic": "sk-ant-api03-"}
    assert made.startswith(start.get(shape, ""))
    if shape == "aws-access-key":
        assert re.fullmatch(r"AKIA[A-Z2-7]{16}", made)
    if shape == "jwt":
        claims = jwt.decode(made, options={"verify_signature": False})
        assert claims["exp"] > time.time() + 5 * 365 * 24 * 3600
    if shape == "hex32":
        assert re.fullmatch(r"[0-9a-f]{32}", made)
    if shape == "slack-bot":
        assert re.fullmatch(r"xoxb-\d+-\d+-[A-Za-z0-9]+", made)


def test_the_placeholder_subcommand_runs_before_any_proxy(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["placeholder", "github"])
    assert done.value.code == 0
    assert re.fullmatch(r"ghp_[A-Za-z0-9]{36}\n", capsys.readouterr().out)
    with pytest.raises(SystemExit) as done:
        cli.main(["placeholder", "--list"])
    assert done.value.code == 0 and "aws-access-key" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        cli.main(["placeholder", "nope"])
    assert done.value.code == 2 and "unknown shape" in capsys.readouterr().err


def test_the_audit_log_says_substituted_and_refused_and_holds_no_value(proxy, tmp_path):
    log = tmp_path / "audit.log"
    proxy.configure(tmp_path, entry(), header_audit_log=str(log))
    proxy.token("gh")
    proxy.answer(proxy.send(make_flow([("Authorization", f"Bearer {PH}")])))
    refused = proxy.send(make_flow([("Authorization", f"Bearer {PH}")], host="evil.example"))
    proxy.addon.response(refused)  # mitmproxy runs the answer hooks for the proxy's own answer too
    proxy.addon.done()  # the writer's queue is written before it closes
    written = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(line["action"], line["provider"], line["status"]) for line in written] == [
        ("substituted", "gh", 200),
        ("refused", "gh", 403),
    ]
    assert written[1]["reason"].startswith("placeholder of gh refused")
    assert REAL not in log.read_text() and written[0]["credential"]


def test_a_streamed_request_with_a_placeholder_refused_is_killed(proxy, tmp_path):
    proxy.configure(tmp_path, entry())
    proxy.token("gh")
    f = make_flow([("Authorization", f"Bearer {PH}")], host="evil.example")
    f.request.stream = True
    proxy.addon.requestheaders(f)
    assert f.response is None and f.error is not None  # killed: nothing was sent


def test_the_single_provider_options(proxy):
    proxy.tctx.configure(
        proxy.addon,
        header_provider_command="printf tok",
        header_hosts=["api.example.com"],
        header_placeholder=PH,
        header_substitute=["query"],
        header_placeholder_env="GH_TOKEN",
        header_substitute_body_limit="2KiB",
    )
    (binding,) = proxy.addon.bindings
    assert binding.placeholder == PH.encode() and binding.settings.substitute == {"query"}
    assert proxy.addon._path.body_limit == 2048 and proxy.addon.placeholders() == f"GH_TOKEN={PH}\n"
    with pytest.raises(Exception, match="header_substitute_body_limit: 'lots' is not a size"):
        proxy.tctx.configure(proxy.addon, header_substitute_body_limit="lots")


def test_an_aws_placeholder_without_credentials_is_answered_503_whatever_require_says(proxy, tmp_path):
    key = "AKIA" + "PLACEHOLDER2345" + "7"
    aws = {"name": "sts", "kind": "aws-sigv4", "service": "sts", "region": "us-east-1", "placeholder": key}
    proxy.configure(tmp_path, {**aws, "hosts": "api.example.com"})
    binding = proxy.addon.bindings[0]
    binding.refresher._finish_first_attempt()  # the chain had nothing: no credentials yet
    signed = f"AWS4-HMAC-SHA256 Credential={key}/20260101/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=0"
    status, first = refused(proxy.send(make_flow([("Authorization", signed)])))
    assert status == 503 and "sts" in first
    status, _ = refused(proxy.send(make_flow([("Authorization", signed)], host="evil.example")))
    assert status == 403


def test_the_status_shows_where_a_placeholder_entry_puts_its_token_not_a_header_it_adds(proxy, tmp_path):
    """Its log and status said `headers: Authorization`, as if every request to its hosts got that header."""
    from header_augment_core.status import provider_status

    proxy.configure(tmp_path, entry(), {"name": "plain", "command": ["true"], "hosts": "other.example"})
    placeholder, plain = proxy.token("gh"), proxy.token("plain")
    now = time.monotonic()
    shown = provider_status(placeholder, now)
    assert (shown["headers"], shown["replaces_placeholder_in"]) == ([], ["header"])
    assert (provider_status(plain, now)["headers"], provider_status(plain, now)["replaces_placeholder_in"]) == (
        ["Authorization"],
        None,
    )
    assert "its token replaces its placeholder in: header" in proxy.addon.status()
