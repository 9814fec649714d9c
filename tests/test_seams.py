"""The private or undocumented names of mitmproxy that the addon reads, each exercised as the addon uses it, so that a
mitmproxy release that renames or reshapes one fails here by name instead of somewhere downstream (all checked
against mitmproxy 12.3.1). httpx and httpcore are used through their public API only (http_exchange._PoolTransport).
"""

import pytest
from mitmproxy import exceptions, flowfilter, optmanager

from header_augment_core import options as addon_options
from header_augment_core.entries import searches_hosts


def manager() -> optmanager.OptManager:
    opts = optmanager.OptManager()
    opts.add_option("header_flag", bool, False, "a bool")
    opts.add_option("header_text", str, "", "a string")
    return opts


def test_deferred_set_values_are_unconverted_strings():
    opts = optmanager.OptManager()
    opts.set("header_later=1", "header_later=2", "header_flag", defer=True)
    assert isinstance(opts.deferred["header_later"], optmanager._UnconvertedStrings)
    assert opts.deferred["header_later"].val == ["1", "2"]
    assert opts.deferred["header_flag"].val == []


def test_declared_options_and_their_conversion():
    opts = manager()
    flag, text = opts._options["header_flag"], opts._options["header_text"]
    assert isinstance(flag, optmanager._Option) and (flag.typespec, text.typespec) == (bool, str)
    assert opts._parse_setval(flag, []) is True
    assert opts._parse_setval(flag, ["false"]) is False
    assert opts._parse_setval(text, ["x"]) == "x"
    with pytest.raises(exceptions.OptionsError):
        opts._parse_setval(flag, ["maybe"])
    with pytest.raises(exceptions.OptionsError):
        opts._parse_setval(text, ["x", "y"])


def test_check_deferred_takes_out_what_mitmproxy_would_refuse():
    """The seams together, as `load()` uses them: --set values deferred before the script declared its options; a
    bad and an unknown one are taken out, a good one and another addon's stay."""
    opts = optmanager.OptManager()
    opts.set("header_flag=maybe", "header_text=fine", "header_unknown=1", "other_option=1", defer=True)
    opts.add_option("header_flag", bool, False, "a bool")
    opts.add_option("header_text", str, "", "a string")
    addon_options.check_deferred(opts)
    assert set(opts.deferred) == {"header_text", "other_option"}


@pytest.mark.parametrize(
    ("expression", "codes"),
    [
        ("~d example.com", {"d"}),
        ("example.com", {"u"}),  # a bare word
        ("~q & !~hq x", {"q", "hq"}),
        ("~s | (~u a & ~h b)", {"s", "u", "h"}),
    ],
)
def test_compiled_filters_show_their_codes_and_children(expression, codes):
    def walk(node):
        found = {node.code} if hasattr(node, "code") else set()
        for child in getattr(node, "lst", None) or ([node.itm] if hasattr(node, "itm") else []):
            found |= walk(child)
        return found

    compiled = flowfilter.parse(expression)
    assert walk(compiled) == codes
    assert searches_hosts(compiled) == bool(codes & {"d", "h", "hq", "u"})


# -- the header-augment command's addon chain (chain.py; issue 30) -------------------------------------------------
# chain.py uses public names only (Master, AddonManager's chain/register/invoke_addon, addonmanager.safecall, the
# options' changed signal, tools.main.run); what it assumes of their behaviour in 12.3.1 is pinned here.


def _in_a_loop(test):
    import asyncio

    async def main():
        return test()

    return asyncio.run(main())


def test_the_commands_stock_order_is_mitmdumps():
    """A late addon's place is its index in `stock_addons()`: that list must be DumpMaster's chain."""
    from mitmproxy import options
    from mitmproxy.tools.dump import DumpMaster

    from header_augment_core import chain

    def kinds():
        dump = DumpMaster(options.Options())
        made = chain.stock_addons()
        try:
            return [type(a) for a in dump.addons.chain], [type(a) for a in made]
        finally:
            for addon in [*dump.addons.chain, *made]:
                if hasattr(addon, "logger"):
                    addon.logger.uninstall()

    dumps, ours = _in_a_loop(kinds)
    assert dumps == ours


def test_every_addon_with_a_traffic_hook_is_in_the_chain_or_joins_it():
    """An addon that gained a flow or connection hook in a mitmproxy release would otherwise stay idle for good."""
    from mitmproxy.addons import script

    from header_augment_core import chain

    def classes():
        made = chain.stock_addons()
        for addon in made:
            if hasattr(addon, "logger"):
                addon.logger.uninstall()
        return {type(a): chain.traffic_hooks(a) for a in made}

    hooked = {kind for kind, names in _in_a_loop(classes).items() if names}
    # The script loader has no hook of its own: the scripts it holds (ours) are its sub-addons.
    assert hooked | {script.ScriptLoader} == set(chain.CORE) | set(chain.WORK)


def test_an_event_in_flight_goes_on_over_the_chain_it_started_with():
    """chain.py replaces `AddonManager.chain` rather than inserting into it: trigger_event iterates the list it found,
    so an addon joining while an event is dispatched (a hook that sets an option) gets the next event, not this one,
    and no addon gets this one twice."""
    from mitmproxy import hooks, master, options

    calls = []

    class First:
        def running(self):
            calls.append("first")
            m[0].addons.chain = [Late(), *m[0].addons.chain]

    class Late:
        def running(self):
            calls.append("late")

    class Second:
        def running(self):
            calls.append("second")

    async def main():
        m.append(master.Master(options.Options()))
        m[0].addons.add(First(), Second())
        await m[0].addons.trigger_event(hooks.RunningHook())
        await m[0].addons.trigger_event(hooks.RunningHook())

    import asyncio

    m = []
    asyncio.run(main())
    assert calls == ["first", "second", "late", "first", "second"]


def test_mitmdumps_start_up_takes_the_master_class_and_the_filter_arguments():
    import inspect

    from mitmproxy import options
    from mitmproxy.tools import cmdline
    from mitmproxy.tools import main as tools_main

    assert list(inspect.signature(tools_main.run).parameters) == ["master_cls", "make_parser", "arguments", "extra"]
    parser = cmdline.mitmdump(options.Options())
    assert parser.parse_args(["~d example.com"]).filter_args == ["~d example.com"]


def test_server_playback_takes_every_flow_through_its_add_flows(tmp_path):
    """chain.py wraps a ServerPlayback instance's add_flows to make it join the chain once it holds flows: the
    server_replay option, load_flows (replay.server) and load_file (replay.server.file) must all reach the
    instance's add_flows (the commands themselves: test_command_chain_hostile)."""
    from mitmproxy import io
    from mitmproxy.addons import serverplayback
    from mitmproxy.test import taddons, tflow

    recorded = tflow.tflow(resp=True)
    path = tmp_path / "flows"
    with path.open("wb") as f:
        io.FlowWriter(f).add(recorded)
    playback = serverplayback.ServerPlayback()
    reached = []
    add_flows = playback.add_flows

    def wrapper(flows):
        reached.append(len(flows))
        add_flows(flows)

    playback.add_flows = wrapper
    with taddons.context(playback) as tctx:
        tctx.configure(playback, server_replay=[str(path)])
        playback.load_flows([recorded])
        playback.load_file(str(path))
        assert reached == [1, 1, 1] and playback.count() == 1
