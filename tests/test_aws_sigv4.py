"""kind aws-sigv4 in-process: the credentials the refresher freezes (botocore's refreshable credentials on injected
clocks), the request as it is signed, and what the flow and the answer hold of the signature afterwards."""

import contextlib
import datetime
import random

import header_augment
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import RefreshableCredentials
from mitmproxy.http import Headers, Response
from mitmproxy.test import taddons, tflow

from header_augment_core.counters import RequestCounters
from header_augment_core.kinds.aws_sigv4 import AwsSigV4Client, AwsSigV4Source
from header_augment_core.refresher import Refresher
from header_augment_core.schedule import Schedule
from header_augment_core.settings import parse_settings
from header_augment_core.sigv4 import HASH_ON_LOOP
from header_augment_core.status import provider_status, report

KEY, SECRET, TOKEN = "AKIAEXAMPLEKEY000001", "secret/Access+Key/000000000000000000001", "FwoGZXIvYXdzEXAMPLETOKEN0001"
EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _settings(**fields):
    values = {"kind": "aws-sigv4", "service": "s3", "region": "eu-west-1", "hosts": ["*.s3.eu-west-1.amazonaws.com"]}
    return parse_settings({**values, **fields}, lambda name: name)


class Clocks:
    """The wall clock botocore reads expiries with and the monotonic clock of the refresher, moved together."""

    def __init__(self) -> None:
        self.elapsed = 0.0

    def wall(self) -> datetime.datetime:
        return EPOCH + datetime.timedelta(seconds=self.elapsed)

    def monotonic(self) -> float:
        return 1000.0 + self.elapsed


def test_temporary_credentials_are_renewed_on_the_refreshers_thread_before_they_expire():
    clocks = Clocks()
    issued = []

    def renew():  # what botocore calls to renew them (STS, the metadata service): counted
        issued.append(clocks.elapsed)
        n = len(issued)
        expiry = clocks.wall() + datetime.timedelta(seconds=1000)
        return {
            "access_key": f"ASIA{n:016d}",
            "secret_key": f"secret-{n}",
            "token": f"token-{n}",
            "expiry_time": expiry.isoformat(),
        }

    metadata = renew()
    credentials = RefreshableCredentials(
        metadata["access_key"],
        metadata["secret_key"],
        metadata["token"],
        datetime.datetime.fromisoformat(metadata["expiry_time"]),
        renew,
        "assume-role-with-web-identity",
        time_fetcher=clocks.wall,
    )
    settings = _settings(interval="168h")
    client = AwsSigV4Client(settings.source, settings.timeout, credentials=credentials, wall=clocks.wall)
    refresher = Refresher(client, settings, schedule=Schedule(settings.interval, _Latest()), clock=clocks.monotonic)

    refresher.step()
    first = refresher.snapshot
    assert (first.signing.access_key, first.signing.token) == ("ASIA0000000000000001", "token-1")
    assert first.usable_until == clocks.monotonic() + 1000  # never used past the expiry
    assert refresher.next_fetch_at == clocks.monotonic() + 800  # 80 % of the remaining lifetime

    clocks.elapsed = 799.0
    refresher.step()  # not due yet
    assert refresher.snapshot is first and len(issued) == 1
    clocks.elapsed = 800.0
    refresher.step()  # due: botocore renews (200 s left is inside its mandatory window)
    second = refresher.snapshot
    assert len(issued) == 2
    assert (second.signing.access_key, second.signing.token) == ("ASIA0000000000000002", "token-2")
    assert second.usable_until == clocks.monotonic() + 1000

    status = provider_status(_Entry(settings, refresher), clocks.monotonic())
    assert status["credentials"] == {
        "method": "assume-role-with-web-identity",
        "access_key_id": "ASIA0000000000000002",
        "expires": "2026-01-01T00:30:00+00:00",
    }
    text = report([_Entry(settings, refresher)], clocks.monotonic())
    assert "ASIA0000000000000002" in text
    for secret in ("secret-2", "token-2", "secret-1", "token-1"):
        assert secret not in text and secret not in repr(second)


def test_credentials_that_cannot_be_renewed_are_not_used_past_their_expiry():
    clocks = Clocks()

    def refused():
        raise RuntimeError("STS said no")  # any error the chain raises: its kind is the reason, never its text

    credentials = RefreshableCredentials(
        KEY, SECRET, TOKEN, EPOCH + datetime.timedelta(seconds=100), refused, "sso", time_fetcher=clocks.wall
    )
    settings = _settings()
    refresher = Refresher(
        AwsSigV4Client(settings.source, 5, credentials=credentials, wall=clocks.wall), settings, clock=clocks.monotonic
    )
    refresher.step()  # 100 s left: inside botocore's mandatory window, so its renewal fails at once
    assert refresher.last_error == "sso: RuntimeError"
    assert refresher.snapshot.signing is None


class _Latest(random.Random):
    """The schedule's draws at their latest: no jitter, no spread, so the refresh is due at exactly 80 %."""

    def random(self) -> float:
        return 0.0

    def uniform(self, a: float, b: float) -> float:
        return b


class _Entry:
    def __init__(self, settings, refresher) -> None:
        self.settings, self.refresher = settings, refresher
        self.counters = RequestCounters()


def _flow(host="bucket.s3.eu-west-1.amazonaws.com", path="/key", headers=(), content=b"", http2=False):
    f = tflow.tflow()
    f.request.scheme, f.request.host, f.request.port = "https", host, 443
    f.request.method = "PUT"
    f.request.path = path
    if http2:
        f.request.http_version = "HTTP/2.0"
        f.request.authority = host
        f.request.headers = Headers([(k.encode(), v.encode()) for k, v in headers])
    else:
        f.request.headers = Headers([(b"Host", host.encode())] + [(k.encode(), v.encode()) for k, v in headers])
    f.request.content = content
    return f


@contextlib.contextmanager
def signing_addon(tmp_path, monkeypatch, **fields):
    """An addon with one aws-sigv4 entry for *.s3.eu-west-1.amazonaws.com, its credentials read from the environment
    once, here rather than on its thread; stopped at the end."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    extra = "".join(f"\n  {name}: {value}" for name, value in fields.items())
    (tmp_path / "providers.yaml").write_text(
        "- kind: aws-sigv4\n  service: s3\n  region: eu-west-1\n  hosts: '*.s3.eu-west-1.amazonaws.com'" + extra
    )
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_providers_file=str(tmp_path / "providers.yaml"))
        try:
            addon.bindings[0].refresher.refresh()
            assert addon.bindings[0].refresher.snapshot.signing is not None
            yield addon
        finally:
            addon.done()


def _verify(f, secret=SECRET, token=TOKEN) -> None:
    """Sign the request as sent again with botocore, at the same time: the same Authorization."""
    request = f.request
    sent = dict((k.lower(), v) for k, v in request.headers.items(multi=True))
    names = sent["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    host = request.host_header
    again = AWSRequest(method=request.method, url=f"https://{host}{request.path}", data=request.raw_content)
    for name in names:
        again.headers[name] = host if name == "host" else sent[name]
    again.context["timestamp"] = sent["x-amz-date"]
    auth = S3SigV4Auth(header_augment_core_frozen(secret, token), "s3", "eu-west-1")
    canonical = auth.canonical_request(again)
    assert sent["authorization"].endswith("Signature=" + auth.signature(auth.string_to_sign(again, canonical), again))


def header_augment_core_frozen(secret, token):
    from header_augment_core.kinds.aws_sigv4 import Frozen

    return Frozen(KEY, secret, token, "env", None)


def test_a_request_is_signed_as_sent_without_hop_by_hop_headers_and_masked_and_scrubbed_after(tmp_path, monkeypatch):
    with signing_addon(tmp_path, monkeypatch) as addon:
        f = _flow(
            path="/key?prefix=a+b/c&delimiter=/&X-Amz-Signature=00&acl",
            headers=[
                ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAFORGED/x, Signature=00"),
                ("X-Amz-Security-Token", "forged"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "1"),
                ("Proxy-Authorization", "Basic eDp5"),
                ("X-Amz-Meta-Colour", "blue"),
                ("Date", "Wed, 01 Jan 2020 00:00:00 GMT"),
                ("User-Agent", "curl/8.5"),
                ("Expect", "100-continue"),
            ],
            content=b"hello",
        )
        assert addon.requestheaders(f) is None
        assert addon.check_reroute(f) is None  # small: signed on the loop
        request = f.request
        assert request.path == "/key?prefix=a%20b%2Fc&delimiter=%2F&acl"
        assert request.headers.get_all("authorization")[0].startswith(f"AWS4-HMAC-SHA256 Credential={KEY}/")
        assert len(request.headers.get_all("authorization")) == 1
        assert request.headers.get_all("x-amz-security-token") == [TOKEN]
        assert request.headers.get_all("date") == ["Wed, 01 Jan 2020 00:00:00 GMT"]  # sent as it was, not signed
        signed = request.headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
        assert signed == [
            "content-length",
            "host",
            "x-amz-content-sha256",
            "x-amz-date",
            "x-amz-meta-colour",
            "x-amz-security-token",
        ]
        assert request.headers["x-amz-content-sha256"] == (
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"  # sha256("hello")
        )
        _verify(f)
        assert "signed (sigv4 s3 eu-west-1)" in f.comment
        assert TOKEN not in f.comment and SECRET not in f.comment

        auth = request.headers["authorization"]
        f.response = Response.make(200, f"echo: {auth} {TOKEN}".encode(), {"X-Echo": TOKEN})
        addon.responseheaders(f)
        addon.response(f)
        assert TOKEN not in f.response.headers["x-echo"]
        assert TOKEN.encode() not in f.response.content and auth.encode() not in f.response.content
        assert request.headers["x-amz-security-token"] != TOKEN  # masked in the flow once sent
        assert request.headers["authorization"] != auth


def test_http2_signs_the_authority_and_a_large_body_off_the_event_loop(tmp_path, monkeypatch):
    import asyncio

    with signing_addon(tmp_path, monkeypatch) as addon:
        f = _flow(http2=True, content=b"x" * (HASH_ON_LOOP + 1), headers=[("host", "elsewhere")])
        addon.requestheaders(f)
        pending = addon.check_reroute(f)
        assert asyncio.iscoroutine(pending)
        assert "authorization" not in f.request.headers  # not until the hash is done
        asyncio.run(pending)
        names = [name for name, _ in f.request.headers.fields]
        assert all(name == name.lower() for name in names)
        assert b"authorization" in names
        assert f.request.authority == f.request.headers["host"] == "bucket.s3.eu-west-1.amazonaws.com"
        assert "SignedHeaders=content-length;host;" in f.request.headers["authorization"]  # host once
        _verify(f)


def test_out_of_scope_hosts_are_not_signed_and_a_streamed_body_needs_unsigned_payload(tmp_path, monkeypatch):
    with signing_addon(tmp_path, monkeypatch) as addon:
        elsewhere = _flow(host="example.org")
        before = elsewhere.request.headers.fields
        addon.check_reroute(elsewhere)
        assert elsewhere.request.headers.fields == before

        streamed = _flow()
        streamed.request.stream = True
        addon.sign_streamed(streamed)
        assert streamed.killable is False and streamed.error is not None  # killed: nothing is sent
        assert "unsigned_payload not set" in streamed.comment
        assert "authorization" not in streamed.request.headers


def test_a_streamed_s3_body_is_sent_as_unsigned_payload_when_allowed(tmp_path, monkeypatch):
    with signing_addon(tmp_path, monkeypatch, unsigned_payload="true") as addon:
        f = _flow()
        f.request.stream = True
        assert addon.sign_streamed(f) is None
        assert f.response is None
        assert f.request.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        assert "x-amz-content-sha256" in f.request.headers["authorization"]
        before = f.request.headers.fields
        addon.check_reroute(f)  # its `request` hook, once the body has been streamed: not signed again
        assert f.request.headers.fields == before


def test_settings_are_checked_at_configuration(monkeypatch):
    import pytest

    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(ValueError, match="region: required for kind aws-sigv4 unless AWS_REGION"):
        _settings(region="")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert _settings(region="").source.region == "ap-south-1"

    # SettingsError is a ValueError; its class is not named here, as other test files reload our modules.
    with pytest.raises(ValueError, match="service: required"):
        _settings(service="")
    with pytest.raises(ValueError, match="unsigned_payload: only S3"):
        _settings(service="sts", unsigned_payload=True)
    assert _settings().source.display == "aws-sigv4 s3 eu-west-1"
    assert type(_settings().source).__name__ == AwsSigV4Source.__name__


def test_static_credentials_sign_without_a_session_token():
    from header_augment_core.kinds.aws_sigv4 import Frozen, Signer

    signer = Signer(_settings().source)
    url = "https://b.s3.eu-west-1.amazonaws.com/"
    added = dict(
        signer.sign(Frozen(KEY, SECRET, None, "env", None), "GET", url, [("host", "b.s3.eu-west-1.amazonaws.com")], b"")
    )
    assert "X-Amz-Security-Token" not in added
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date," in added["Authorization"]


def test_the_headers_botocore_never_signs_are_not_handed_to_it():
    """Left out before botocore sees them (they cost its header lookups); a name it adds to its list is one more
    header it would be handed and not sign: still correct, but named here (checked with botocore 1.44.8)."""
    from botocore.auth import SIGNED_HEADERS_BLACKLIST

    from header_augment_core.sigv4 import UNSIGNED

    assert {name for name in SIGNED_HEADERS_BLACKLIST if not name.startswith("proxy-")} <= {
        name.decode() for name in UNSIGNED
    }


def test_a_new_frozen_copy_is_signed_with_its_own_keys():
    """botocore's signer is kept per frozen copy: the copy a refresh brings signs the next request, not the last."""
    from header_augment_core.kinds.aws_sigv4 import Frozen, Signer

    signer = Signer(_settings().source)
    url = "https://b.s3.eu-west-1.amazonaws.com/"
    host = [("host", "b.s3.eu-west-1.amazonaws.com")]
    for n in (1, 2):
        copy = Frozen(f"ASIA{n:016d}", f"secret-{n}", f"token-{n}", "sso", None)
        added = dict(signer.sign(copy, "GET", url, host, b""))
        assert added["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential=ASIA{n:016d}/")
        assert added["X-Amz-Security-Token"] == f"token-{n}"
        again = AWSRequest(method="GET", url=url, data=b"")
        for name, value in [*host, *added.items()]:
            if name != "Authorization":
                again.headers[name] = value
        again.context["timestamp"] = added["X-Amz-Date"]
        auth = S3SigV4Auth(copy, "s3", "eu-west-1")
        signature = auth.signature(auth.string_to_sign(again, auth.canonical_request(again)), again)
        assert added["Authorization"].endswith("Signature=" + signature)


def test_a_payload_hash_the_client_sent_to_another_service_than_s3_is_replaced_by_the_bodys():
    """OpenSearch Serverless wants X-Amz-Content-SHA256, which its clients send: it used to be taken off, unsigned."""
    import hashlib

    from header_augment_core.kinds.aws_sigv4 import Frozen, Signer
    from header_augment_core.sigv4 import prepare, sign

    signer = Signer(_settings(service="aoss", hosts=["search.example.com"]).source)
    copy = Frozen(KEY, SECRET, None, "env", None)
    for client_sent in (True, False):
        own = [("X-Amz-Content-SHA256", hashlib.sha256(b"another body").hexdigest())] if client_sent else []
        f = _flow(host="search.example.com", headers=own, content=b'{"query": {}}')
        fields, _ = sign(signer, copy, prepare(f.request, False))
        f.request.headers.fields = fields
        sent = f.request.headers.get_all("x-amz-content-sha256")
        signed = f.request.headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
        if client_sent:
            assert sent == [hashlib.sha256(b'{"query": {}}').hexdigest()]
            assert "x-amz-content-sha256" in signed
        else:
            assert sent == [] and "x-amz-content-sha256" not in signed


def test_the_private_botocore_name_read_for_the_expiry():
    """RefreshableCredentials._expiry_time (botocore 1.44.8): the expiry the refresher schedules by and never signs
    past; botocore has no public accessor for it."""
    expiry = EPOCH + datetime.timedelta(seconds=100)
    credentials = RefreshableCredentials(KEY, SECRET, TOKEN, expiry, dict, "sso", time_fetcher=lambda: EPOCH)
    assert credentials._expiry_time == expiry


def test_a_request_is_signed_by_the_entry_naming_its_host_found_by_index_not_by_asking_every_signer(
    tmp_path, monkeypatch
):
    """Each request walked every aws-sigv4 entry, asking each whether the flow was its (a cost per request that
    grew with the entries it had nothing to do with). The signers are now found by their hosts, as the adders are,
    and looked up where the flow goes once every addon has changed it: a flow rerouted after `requestheaders` is
    signed by the entry of its new host."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    entries = "".join(
        f"- name: r{n}\n  kind: aws-sigv4\n  service: s3\n  region: region-{n}\n  hosts: 'b.s3.region-{n}.example'\n"
        for n in range(300)
    )
    (tmp_path / "providers.yaml").write_text(
        entries + "- name: every\n  kind: aws-sigv4\n  service: sts\n  region: eu-west-1\n  hosts: '*.sts.example'\n"
    )
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_providers_file=str(tmp_path / "providers.yaml"))
        try:
            by_name = {b.settings.name: b for b in addon.bindings}
            for name in ("r17", "r250"):
                by_name[name].refresher.refresh()
            signing = addon._path.entries.signing
            assert signing.lookup("b.s3.region-250.example") == ("b.s3.region-250.example", (by_name["r250"],))
            assert signing.lookup("x.sts.example")[1] == (by_name["every"],)
            assert signing.lookup("example.org")[1] == ()

            f = _flow(host="b.s3.region-17.example")
            addon.requestheaders(f)
            f.request.host = "b.s3.region-250.example"  # as map_remote would, in `request`
            assert addon.check_reroute(f) is None
            assert "/region-250/s3/aws4_request" in f.request.headers["authorization"]
            assert f.request.host_header == "b.s3.region-250.example"
            assert by_name["r250"].counters.given == 1 and by_name["r17"].counters.given == 0

            away = _flow(host="b.s3.region-17.example")
            addon.requestheaders(away)
            away.request.host = "b.s3.region-17.example.attacker.example"  # rerouted to a host no entry names
            before = away.request.headers.fields
            assert addon.check_reroute(away) is None
            assert away.request.headers.fields == before and by_name["r17"].counters.given == 0
        finally:
            addon.done()


def test_service_names_the_kind_as_url_path_and_command_do():
    settings = parse_settings({"service": "sts", "region": "eu-west-1", "hosts": "sts.amazonaws.com"}, str)
    assert isinstance(settings.source, AwsSigV4Source) and settings.source.service == "sts"
