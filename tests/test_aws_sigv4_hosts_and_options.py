"""The signing entries' host index and the single-provider aws-sigv4 options, as a hostile client or a careless
operator would try them (a review of both, 2026-12-02): the index against asking every entry, host forms, reroutes,
file order, and the options' odd combinations and runtime changes."""

import contextlib

import header_augment
import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons
from test_aws_sigv4 import KEY, SECRET, TOKEN, _flow

from header_augment_core.hosts import HostIndex, parse_hosts


@pytest.fixture
def aws_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return tmp_path


@contextlib.contextmanager
def _addon():
    """An addon in mitmproxy's test context, its refreshers and scheduler stopped at the end."""
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        try:
            yield addon, tctx
        finally:
            addon.done()


def _file_addon(tctx, addon, path, text):
    path.write_text(text)
    tctx.configure(addon, header_providers_file=str(path))
    for binding in addon.bindings:
        if binding.signer is not None:
            binding.refresher.refresh()
            assert binding.refresher.snapshot.signing is not None


def _entry(name, hosts, region="eu-west-1", service="s3"):
    return f"- name: {name}\n  kind: aws-sigv4\n  service: {service}\n  region: {region}\n  hosts: '{hosts}'\n"


def _signed_by(f):
    auth = f.request.headers.get("authorization")
    return None if auth is None else auth.split("Credential=")[1].split("/")[2]  # the region names the entry


def _sign(addon, host, port=443, reroute=None):
    f = _flow(host=host)
    f.request.port = port
    addon.requestheaders(f)
    if reroute is not None:
        new_host, new_port = reroute
        if new_host is not None:
            f.request.host = new_host
        if new_port is not None:
            f.request.port = new_port
    pending = addon.check_reroute(f)
    assert pending is None
    return f


# -- 1. the signing host index against the old "ask every signer `hosts.matches`" ---------------------------------

PATTERNS = [
    "api.example.com",
    "api.example.com:8443",
    "API.Example.com.",
    "*.example.com",
    "*.example.com:443",
    "example.com",
    "10.0.0.7",
    "10.0.0.7:80",
    "[2001:db8::1]",
    "[2001:db8::1]:443",
    "[2001:DB8:0::1]:8443",
    "*",
    "bücher.example",
    "xn--bcher-kva.example:443",
    "*.bücher.example",
    "a.b.example.com",
    "*.b.example.com:80",
]
HOSTS = [
    "api.example.com",
    "API.EXAMPLE.COM",
    "api.example.com.",
    "x.example.com",
    "example.com",
    "a.b.example.com",
    "10.0.0.7",
    "010.0.0.7",
    "2001:db8::1",
    "[2001:db8::1]",
    "2001:DB8::1",
    "2001:0db8:0:0::1",
    "bücher.example",
    "BÜCHER.example",
    "xn--bcher-kva.example",
    "x.bücher.example",
    "x.xn--bcher-kva.example",
    "",
    ".",
    "x..example.com",
    "other.org",
    "::ffff:10.0.0.7",
    "x.xn--bank-cwr.example",
    "faß.example",
]


def test_the_index_picks_the_same_first_signer_as_asking_every_one():
    """Differential: for many lists of entries, the first entry the index and `Binding.sign`'s check accept is the
    first whose `hosts.matches(host, port)` holds (the old path), for every host form and port."""
    import random

    rng = random.Random(1)
    for _ in range(1000):
        entries = []
        for position in range(rng.randint(1, 4)):
            chosen = rng.sample(PATTERNS, rng.randint(1, 3))
            if "*" in chosen and len(chosen) > 1:
                chosen.remove("*")
            entries.append((parse_hosts(chosen), position))
        index = HostIndex(entries)
        for host in HOSTS:
            for port in (443, 80, 8443):
                old = next((i for h, i in entries if h.matches(host, port)), None)
                key, candidates = index.lookup(host)
                new = next(
                    (i for i in candidates if key in entries[i][0].any_port or entries[i][0].matches_key(key, port)),
                    None,
                )
                assert new == old, ([h.patterns for h, _ in entries], host, port)


def test_host_forms_reroutes_and_file_order_on_the_real_addon(aws_env):
    entries = (
        _entry("ported", "api.example.com:8443", region="r-ported")
        + _entry("first", "*.s3.example, [2001:db8::1]:443", region="r-first")
        + _entry("second", "b.s3.example, [2001:db8::1]", region="r-second")
        + _entry("idn", "bücher.example", region="r-idn")
    )
    with _addon() as (addon, tctx):
        _file_addon(tctx, addon, aws_env / "providers.yaml", entries)
        assert _signed_by(_sign(addon, "api.example.com", 8443)) == "r-ported"
        assert _signed_by(_sign(addon, "API.EXAMPLE.COM.", 8443)) == "r-ported"
        assert _signed_by(_sign(addon, "api.example.com", 443)) is None  # the pattern's port only
        assert _signed_by(_sign(addon, "api.example.com", 8443, reroute=(None, 443))) is None
        assert _signed_by(_sign(addon, "api.example.com", 443, reroute=(None, 8443))) == "r-ported"
        # two entries name b.s3.example (one by *.s3.example): the first in the file signs
        f = _sign(addon, "b.s3.example")
        assert _signed_by(f) == "r-first"
        _verify_region(f, "r-first")
        assert _signed_by(_sign(addon, "2001:db8::1", 443)) == "r-first"
        assert _signed_by(_sign(addon, "2001:0DB8::0:1", 8443)) == "r-second"
        assert _signed_by(_sign(addon, "s3.example")) is None  # *.name is not the name itself
        assert _signed_by(_sign(addon, "xn--bcher-kva.example")) == "r-idn"
        assert _signed_by(_sign(addon, "BÜCHER.example")) == "r-idn"
        assert _signed_by(_sign(addon, "other.org", reroute=("x.s3.example", None))) == "r-first"
        assert _signed_by(_sign(addon, "b.s3.example", reroute=("b.s3.example.evil", None))) is None
        assert _signed_by(_sign(addon, "b.s3.example", reroute=("2001:db8::2", 443))) is None


def _verify_region(f, region):
    assert f"/{region}/s3/aws4_request" in f.request.headers["authorization"]


def test_a_signer_and_a_header_entry_for_the_same_host(aws_env, provider):
    """A header entry and a signer both naming the host: the headers are added, then the request is signed with
    them, so the signature covers what is sent."""
    provider.answer({"X-Amz-Meta-Team": "blue"})
    entries = f"- url: {provider.url}\n  hosts: b.s3.example\n" + _entry("signer", "b.s3.example", region="r-one")
    with _addon() as (addon, tctx):
        _file_addon(tctx, addon, aws_env / "providers.yaml", entries)
        addon.bindings[0].refresher.refresh()
        f = _sign(addon, "b.s3.example")
        assert f.request.headers["x-amz-meta-team"] == "blue"
        assert _signed_by(f) == "r-one"
        assert "x-amz-meta-team" in f.request.headers["authorization"].split("SignedHeaders=")[1]


# -- 2. the single-provider aws-sigv4 options ------------------------------------------------------------------


def test_aws_options_refuse_the_odd_combinations(aws_env, provider):
    with _addon() as (addon, tctx):
        with pytest.raises(exceptions.OptionsError, match="header_provider_url and header_aws_service"):
            tctx.configure(
                addon,
                header_aws_service="s3",
                header_aws_region="eu-west-1",
                header_provider_url=provider.url,
                header_hosts=["b.s3.example"],
            )
        assert addon.bindings == ()
        with pytest.raises(exceptions.OptionsError, match="header_hosts: required"):
            tctx.configure(addon, header_aws_service="s3", header_aws_region="eu-west-1")
        with pytest.raises(exceptions.OptionsError, match="header_aws_region: required"):
            tctx.configure(addon, header_aws_service="s3", header_hosts=["b.s3.example"])
        with pytest.raises(exceptions.OptionsError, match="header_aws_unsigned_payload: only S3"):
            tctx.configure(
                addon,
                header_aws_service="sts",
                header_aws_region="eu-west-1",
                header_hosts=["sts.example"],
                header_aws_unsigned_payload=True,
            )
        with pytest.raises(exceptions.OptionsError, match="header_aws_region: not used with header_provider_url"):
            tctx.configure(
                addon, header_provider_url=provider.url, header_aws_region="eu-west-1", header_hosts=["a.example"]
            )
        assert addon.bindings == ()


def test_region_from_the_environment_and_service_set_then_unset_at_runtime(aws_env, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    with _addon() as (addon, tctx):
        tctx.configure(addon, header_aws_service="s3", header_hosts=["b.s3.example"])
        (binding,) = addon.bindings
        assert binding.settings.source.region == "ap-south-1"
        refresher = binding.refresher
        refresher.refresh()
        assert _signed_by(_sign(addon, "b.s3.example")) == "ap-south-1"
        tctx.configure(addon, header_aws_service="")
        assert addon.bindings == () and addon._path.entries.signing.lookup("b.s3.example")[1] == ()
        assert refresher.stopping and refresher._ended.is_set()  # its client closed
        assert _signed_by(_sign(addon, "b.s3.example")) is None


def test_a_providers_file_entry_with_service_and_url_and_no_kind_is_refused(aws_env, provider):
    path = aws_env / "providers.yaml"
    path.write_text(f"- service: s3\n  region: eu-west-1\n  url: {provider.url}\n  hosts: b.s3.example\n")
    with _addon() as (addon, tctx):
        with pytest.raises(exceptions.OptionsError, match="url and service are both given"):
            tctx.configure(addon, header_providers_file=str(path))
        assert addon.bindings == ()


def test_a_refused_runtime_change_keeps_the_running_signer_and_options_reach_the_signer(aws_env):
    with _addon() as (addon, tctx):
        tctx.configure(
            addon,
            header_aws_service="s3",
            header_aws_region="eu-west-1",
            header_hosts=["b.s3.example"],
            header_aws_unsigned_payload=True,
        )
        (binding,) = addon.bindings
        binding.refresher.refresh()
        with pytest.raises(exceptions.OptionsError, match="only S3"):
            tctx.configure(addon, header_aws_service="sts")
        (kept,) = addon.bindings  # rebuilt by the rollback, its refresher kept
        assert kept.refresher is binding.refresher and not binding.refresher.stopping
        streamed = _flow(host="b.s3.example")
        streamed.request.stream = True
        assert addon.sign_streamed(streamed) is None
        assert streamed.request.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        assert _signed_by(streamed) == "eu-west-1"


def test_without_botocore_the_error_names_the_option_that_was_set(aws_env, monkeypatch):
    """The message named the field `kind`, which the single provider has no option for: the operator who set
    header_aws_service was told `kind: kind aws-sigv4 needs botocore`."""
    import sys

    monkeypatch.setitem(sys.modules, "botocore.auth", None)  # what an install without the [aws] extra has
    with _addon() as (addon, tctx):
        with pytest.raises(exceptions.OptionsError) as raised:
            tctx.configure(addon, header_aws_service="s3", header_aws_region="eu-west-1", header_hosts=["b.s3.example"])
        assert str(raised.value).split(":")[0] == "header_aws_service"


def test_the_idle_warning_names_every_single_provider_source(caplog):
    """header_aws_service picks a source, as the other locators do: the warning an idle addon logs listed only the
    others."""
    from header_augment_core.options import LOCATORS

    with _addon() as (addon, tctx):
        tctx.configure(addon, header_keep_values=True, header_hosts=["a.example"])
        (warning,) = [r.getMessage() for r in caplog.records if "no header provider configured" in r.getMessage()]
        assert all(name in warning for name in LOCATORS)


def test_unsetting_the_service_stops_a_scheduled_refresher(aws_env):
    import threading

    with _addon() as (addon, tctx):
        tctx.configure(addon, header_aws_service="sts", header_aws_region="eu-west-1", header_hosts=["sts.example"])
        (binding,) = addon.bindings
        refresher = binding.refresher
        fetched = threading.Event()
        assert refresher.when_first_attempt_done(fetched.set)
        addon._start()  # what `running` does: the refresher polls on the addon's scheduler
        assert fetched.wait(10) and refresher.snapshot.signing is not None
        tctx.configure(addon, header_aws_service="")
        assert addon.bindings == ()
        assert refresher.wait_ended(10)  # its client closed, no more turns
