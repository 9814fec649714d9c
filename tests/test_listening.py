"""Where the proxy listens: the installed command's loopback default, and the warning when the proxy hands out
credentials on a non-loopback address without proxyauth (from the addon, so `mitmdump -s` users get it too)."""

import subprocess
import sys

import header_augment
import pytest
from mitmproxy.addons import proxyauth
from mitmproxy.test import taddons
from processes import Running
from servers import ROOT, clean_env

from header_augment_core import cli, launch

WARNING = "not only loopback, and proxyauth is not set"


@pytest.mark.parametrize(
    ("settings", "open_hosts"),
    [
        ({}, ["every interface"]),  # mitmdump's default listen_host
        ({"listen_host": "127.0.0.1"}, []),
        ({"listen_host": "::1"}, []),
        ({"listen_host": "localhost"}, []),
        ({"listen_host": "0.0.0.0"}, ["0.0.0.0"]),
        ({"listen_host": "proxy.example"}, ["proxy.example"]),
        ({"listen_host": "127.0.0.1", "mode": ["regular", "socks5@0.0.0.0:1080"]}, ["0.0.0.0"]),
        ({"listen_host": "0.0.0.0", "proxyauth": "user:pass"}, []),
        ({"mode": ["wireguard"]}, []),  # its keys authenticate the clients
        ({"mode": ["local"]}, []),  # listens nowhere
    ],
)
def test_non_loopback_listen_addresses_without_proxyauth(settings, open_hosts):
    with taddons.context(proxyauth.ProxyAuth()) as tctx:
        tctx.options.update(**settings)
        assert header_augment._open_listen_hosts(tctx.options) == open_hosts


@pytest.mark.parametrize(
    ("args", "given"),
    [
        ([], False),
        (["--listen-host", "0.0.0.0"], False),  # overrides the --set default by itself
        (["--set", "listen_host=0.0.0.0"], True),
        (["--set=listen_host=::1"], True),
        (["--set", "listen_host"], True),
        (["--set", "listen_hosts=x", "--set", "header_hosts=listen_host"], False),
    ],
)
def test_a_listen_host_given_with_set_is_recognised(args, given):
    assert cli.sets_listen_host(args) is given


def command(*args: str) -> list[str]:
    """The `header-augment` command as installed, run from the tree."""
    return [sys.executable, "-c", "from header_augment_core.cli import main; main()", *args]


def tree_env() -> dict[str, str]:
    return clean_env() | {"PYTHONPATH": str(ROOT / "addon")}


def test_help_says_where_it_listens():
    result = subprocess.run(command("--help"), capture_output=True, text=True, env=tree_env(), timeout=60)
    assert result.stdout.startswith(cli.HELP)
    assert f"listens on {cli.LISTEN_HOST} unless you pass --listen-host" in result.stdout
    assert "--listen-host HOST" in result.stdout  # mitmdump's own help follows
    # the addon's options, one line each, before mitmdump's
    assert result.stdout.index(launch.options_help()) < result.stdout.index("--listen-host HOST")


@pytest.mark.parametrize(
    ("args", "listening"),
    [
        ([], r"127\.0\.0\.1"),
        (["--listen-host", "::1"], r"\[::1\]"),
        (["--set", "listen_host=::1"], r"\[::1\]"),
    ],
)
def test_the_command_listens_on_loopback_unless_told(tmp_path, provider, args, listening):
    proxy = Running(
        command(
            "--listen-port",
            "0",
            *("--set", f"confdir={tmp_path}", "--set", f"header_provider_url={provider.url}"),
            *("--set", "header_hosts=127.0.0.1", *args),
        ),
        cwd=tmp_path,
        env=tree_env(),
    )
    try:
        proxy.wait_for(rf"proxy listening at {listening}:\d+")
        proxy.wait_for("headers in use")  # logged after running(), where the warning would be
        assert WARNING not in proxy.output
    finally:
        proxy.proc.terminate()
        proxy.wait_exit()
        proxy.kill_group()


@pytest.mark.parametrize("auth", [False, True])
def test_mitmdump_on_every_interface_warns_without_proxyauth(mitmdump, provider, auth):
    provider.answer({"Authorization": "Bearer t"})
    extra = ("--set", "proxyauth=user:pass") if auth else ()
    m = mitmdump(
        *("--listen-host", "0.0.0.0", "--set", f"header_provider_url={provider.url}"),
        *("--set", "header_hosts=127.0.0.1", *extra),
        wait_listening=False,
    )
    m.wait_for(r"proxy listening at \*:\d+")  # as mitmproxy shows 0.0.0.0
    m.wait_for("headers in use: Authorization")  # logged after running(), where the warning is
    assert (WARNING in m.output) is not auth
    assert "Bearer t" not in m.output
