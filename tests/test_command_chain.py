"""The `header-augment` command's mitmproxy (header_augment_core/chain.py), in-process: every option and command of
mitmdump, a chain of only the addons with work, late addons at their stock place, idle addons still configured and
still told of running and done."""

import asyncio
from pathlib import Path

import pytest
from mitmproxy import exceptions, options
from mitmproxy.addons import (
    clientplayback,
    disable_h2c,
    dumper,
    mapremote,
    onboarding,
    proxyauth,
    save,
    script,
    tlsconfig,
)
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.test import tflow
from mitmproxy.tools.dump import DumpMaster

from header_augment_core import chain, cli

# The command's defaults (cli.py): no onboarding app; the bench and a production proxy run -q (flow_detail 0).
COMMAND = {"onboarding": False, "flow_detail": 0}


def run(confdir: Path, test) -> None:
    """`await test(master)` with a ChainMaster whose confdir is the test's, on a loop of its own; its log handlers are
    taken out afterwards (this process goes on)."""

    async def main() -> None:
        master = chain.ChainMaster(options.Options(confdir=str(confdir)))
        try:
            await test(master)
        finally:
            master.addons.get("errorcheck").finish()
            await master.done()

    asyncio.run(main())


def kinds(master) -> list[type]:
    return [type(addon) for addon in master.addons.chain]


class Guard:
    """Stands for our reroute guard: appended to the chain once it runs, and records where a request goes then."""

    name = "guard"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def request(self, flow) -> None:
        self.seen.append(flow.request.host)


def test_with_the_commands_defaults_only_the_core_is_in_the_chain(tmp_path):
    async def test(master):
        master.options.update(**COMMAND)
        master.join()
        assert kinds(master) == list(chain.CORE)
        assert len(master.idle) == len(chain.stock_addons()) - len(chain.CORE)

    run(tmp_path, test)


def test_mitmdumps_defaults_bring_the_onboarding_app_and_the_flow_lines(tmp_path):
    async def test(master):
        master.join()
        expected = [
            a for a in map(type, chain.stock_addons()) if a in chain.CORE or a in (onboarding.Onboarding, dumper.Dumper)
        ]
        assert kinds(master) == expected

    run(tmp_path, test)


def test_every_option_and_command_of_mitmdump_is_there(tmp_path):
    async def stock() -> tuple[dict, set]:
        dump = DumpMaster(options.Options(confdir=str(tmp_path)))
        try:
            return {name: (o.default, o.help) for name, o in dump.options.items()}, set(dump.commands.commands)
        finally:
            dump.addons.get("errorcheck").finish()
            await dump.done()

    expected_options, expected_commands = asyncio.run(stock())

    async def test(master):
        assert {name: (o.default, o.help) for name, o in master.options.items()} == expected_options
        assert set(master.commands.commands) == expected_commands
        assert master.addons.get("errorcheck") is not None  # Master.run's start-up check finds it by name

    run(tmp_path, test)


def test_an_option_set_before_the_start_keeps_its_value_and_its_addon_runs_in_its_place(tmp_path):
    """OptManager.add_option resets a value: the options are declared up front and only the dispatch joins."""
    spec = "|//127.0.0.1|//elsewhere.test"

    async def test(master):
        master.options.update(**COMMAND, map_remote=[spec])
        master.join()
        assert master.options.map_remote == [spec]
        order = kinds(master)
        assert order.index(script.ScriptLoader) < order.index(mapremote.MapRemote) < order.index(tlsconfig.TlsConfig)
        flow = tflow.tflow()
        flow.request.url = "http://127.0.0.1:8080/path"
        await master.addons.trigger_event(HttpRequestHook(flow))
        assert flow.request.host == "elsewhere.test"

    run(tmp_path, test)


def test_an_addon_set_at_runtime_joins_before_what_was_appended(tmp_path):
    """An addon appended would run after the reroute guard: map_remote would move a credential to another host
    unseen. proxyauth, set at runtime, must run before the scripts (it names the client they match)."""

    async def test(master):
        master.options.update(**COMMAND)
        master.join()
        guard = Guard()
        master.addons.add(guard)
        master.options.update(map_remote=["|//127.0.0.1|//elsewhere.test"], proxyauth="any")
        order = master.addons.chain
        assert order[-1] is guard
        assert kinds(master).index(proxyauth.ProxyAuth) < kinds(master).index(script.ScriptLoader)
        assert kinds(master).index(disable_h2c.DisableH2C) < kinds(master).index(proxyauth.ProxyAuth)
        flow = tflow.tflow()
        flow.request.url = "http://127.0.0.1:8080/path"
        await master.addons.trigger_event(HttpRequestHook(flow))
        assert guard.seen == ["elsewhere.test"]

    run(tmp_path, test)


def test_a_bad_value_for_an_idle_addon_is_refused_and_it_stays_idle(tmp_path):
    async def test(master):
        master.options.update(**COMMAND)
        master.join()
        with pytest.raises(exceptions.OptionsError):
            master.options.update(map_remote=["no separator"])
        assert master.options.map_remote == []
        assert mapremote.MapRemote not in kinds(master)

    run(tmp_path, test)


def test_saving_joins_after_the_scripts(tmp_path):
    """Save writes what our hooks have masked: it must come after the script loader."""

    async def test(master):
        master.options.update(**COMMAND, save_stream_file=str(tmp_path / "flows"))
        master.join()
        assert kinds(master).index(script.ScriptLoader) < kinds(master).index(save.Save)

    run(tmp_path, test)


def test_idle_addons_are_told_of_running_and_done(tmp_path):
    """Client playback (no traffic hook: idle for good) starts its task at running and ends it at done."""

    async def test(master):
        master.options.update(**COMMAND)
        master.join()
        playback = master.addons.get("clientplayback")
        assert isinstance(playback, clientplayback.ClientPlayback) and playback in master.idle
        await master.running()
        task = playback.playback_task
        assert task is not None and not task.done()
        await master.done()
        assert task.cancelled()

    run(tmp_path, test)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-q"], ["--set", "onboarding=false", "-q"]),
        (["--set", "onboarding=true"], ["--set", "onboarding=true"]),
        (["--set=onboarding"], ["--set=onboarding"]),  # a bare bool is true
        (["--set", "onboarding_host=setup.test"], ["--set", "onboarding=false", "--set", "onboarding_host=setup.test"]),
    ],
)
def test_the_command_turns_the_onboarding_app_off_unless_it_is_set(args, expected):
    assert cli.without_onboarding(args) == expected
