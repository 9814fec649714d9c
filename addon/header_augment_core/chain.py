"""The `header-augment` command's mitmproxy: mitmdump's addons, with only those that have work for a flow in the chain.

mitmproxy's addon manager hands every event (8 for a request on a kept-alive connection: requestheaders, request,
responseheaders, response and four updates; a connection's own besides) to every addon in its chain, in turn, whether
the addon has a hook for it or not; mitmdump's chain holds 36 addons, most of them idle under most configurations
(playback, map_local, modify_body, sticky cookies, export, cut, ...). `ChainMaster` makes and registers the very same
addons in mitmdump's order, so every option is declared up front (with its help and its value: `OptManager.add_option`
would reset a value set before the declaration) and every command exists, and keeps two lists:

- the chain, which gets every event: the proxy's core (`CORE`), and each optional addon whose traffic hooks have
  work under the current options (`WORK`: `--set map_remote=...`, `-w`, `--modify-headers`, ...) or, for server
  playback, once it holds flows (its replay.server commands need no option);
- the idle addons, which get every lifecycle event (load, configure, running, done; configure and running after the
  chain, done before it) but no flow or connection event. An addon whose option is set joins the chain at its place
  in mitmdump's order (an addon appended would run after our reroute guard), once and for good: a flow in flight
  never sees an addon leave.

Addons without any traffic hook (`core`, `termlog`, `errorcheck`, `keepserving`, `readfile`, `clientplayback`,
`browser`, `cut`, `export`, `comment`, `command_history`) are idle for good: they need only the lifecycle events.
"""

import functools
import logging
from collections.abc import Callable

from mitmproxy import addonmanager, addons, exceptions, hooks, master, options
from mitmproxy.addons import (
    block,
    disable_h2c,
    dns_resolver,
    dumper,
    errorcheck,
    keepserving,
    maplocal,
    mapremote,
    modifybody,
    modifyheaders,
    next_layer,
    onboarding,
    proxyauth,
    proxyserver,
    readfile,
    save,
    savehar,
    script,
    serverplayback,
    stickyauth,
    stickycookie,
    strip_dns_https_records,
    termlog,
    tlsconfig,
    update_alt_svc,
    upstream_auth,
)
from mitmproxy.addons import blocklist as blocklist_
from mitmproxy.addons.anticache import AntiCache
from mitmproxy.addons.anticomp import AntiComp
from mitmproxy.proxy import mode_specs

logger = logging.getLogger("header_augment")

# Always in the chain: what forwards a flow at all (proxyserver, next_layer, tlsconfig, disable_h2c), the scripts
# (ours), and what the defaults switch on for every flow: block (block_global) and strip_dns_https_records (strip_ech,
# for a DNS flow, which any mode may carry: a connection to port 53 is one).
CORE: tuple[type, ...] = (
    block.Block,
    strip_dns_https_records.StripDnsHttpsRecords,
    disable_h2c.DisableH2C,
    proxyserver.Proxyserver,
    script.ScriptLoader,
    next_layer.NextLayer,
    tlsconfig.TlsConfig,
)


def _modes(opts: options.Options) -> list[mode_specs.ProxyMode]:
    return [mode_specs.ProxyMode.parse(spec) for spec in opts.mode]


# When an optional addon's traffic hooks do anything, read from each one's source (mitmproxy 12.3.1), given the addon
# and the options: with this false, its hooks return without touching the flow. test_seams checks that every addon
# with a traffic hook is in CORE or here.
WORK: dict[type, Callable[[object, options.Options], bool]] = {
    blocklist_.BlockList: lambda _, o: bool(o.block_list),
    AntiCache: lambda _, o: o.anticache,
    AntiComp: lambda _, o: o.anticomp,
    onboarding.Onboarding: lambda _, o: o.onboarding,
    proxyauth.ProxyAuth: lambda _, o: bool(o.proxyauth),
    dns_resolver.DnsResolver: lambda _, o: any(
        isinstance(mode, mode_specs.DnsMode | mode_specs.WireGuardMode) for mode in _modes(o)
    ),
    # Its request hook serves whatever flows it holds, whichever way they came: the server_replay option (read at
    # configure) or the replay.server commands, which a script or mitmweb may call without any option set.
    serverplayback.ServerPlayback: lambda playback, _: bool(playback.flowmap),
    mapremote.MapRemote: lambda _, o: bool(o.map_remote),
    maplocal.MapLocal: lambda _, o: bool(o.map_local),
    modifybody.ModifyBody: lambda _, o: bool(o.modify_body),
    modifyheaders.ModifyHeaders: lambda _, o: bool(o.modify_headers),
    stickyauth.StickyAuth: lambda _, o: bool(o.stickyauth),
    stickycookie.StickyCookie: lambda _, o: bool(o.stickycookie),
    save.Save: lambda _, o: bool(o.save_stream_file),
    savehar.SaveHar: lambda _, o: bool(o.hardump),
    upstream_auth.UpstreamAuth: lambda _, o: bool(o.upstream_auth),
    update_alt_svc.UpdateAltSvc: lambda _, o: (
        not o.keep_alt_svc_header and any(isinstance(mode, mode_specs.ReverseMode) for mode in _modes(o))
    ),
    dumper.Dumper: lambda _, o: o.flow_detail > 0,
}

# The hooks an idle addon still gets; every other hook is a flow's or a connection's.
LIFECYCLE = frozenset({"load", "configure", "running", "done"})


def _name(addon) -> str:
    """The name the addon manager knows an addon by (as its `get` takes it)."""
    return getattr(addon, "name", type(addon).__name__.lower())


def stock_addons() -> list:
    """mitmdump's addons in mitmdump's order (`Master(with_termlog=True)`, then `DumpMaster`'s)."""
    return [
        termlog.TermLog(),
        *addons.default_addons(),
        dumper.Dumper(),
        keepserving.KeepServing(),
        readfile.ReadFileStdin(),
        errorcheck.ErrorCheck(),
    ]


def traffic_hooks(addon) -> set[str]:
    """The hooks other than lifecycle ones that the addon defines."""
    return {name for name in hooks.all_hooks if name not in LIFECYCLE and callable(getattr(addon, name, None))}


class ChainMaster(master.Master):
    """mitmdump's addons, options and commands, with a chain of only the addons that have work for a flow."""

    def __init__(self, opts: options.Options | None, loop=None) -> None:
        # with_termlog=False: our TermLog is made with the others and kept idle (it logs through its handler).
        super().__init__(opts, event_loop=loop)
        stock = stock_addons()
        self.termlog: termlog.TermLog = stock[0]
        self._rank = {id(addon): rank for rank, addon in enumerate(stock)}
        self._idle: list = []
        self._started = False
        # After the addon manager's own receiver (connected in its constructor): the chain is configured first.
        self.options.changed.connect(self._configure_idle)
        for addon in stock:
            if isinstance(addon, CORE):
                self.addons.add(addon)
            else:
                if isinstance(addon, serverplayback.ServerPlayback):
                    self._join_on_new_flows(addon)
                self.addons.register(addon)  # collects its commands: the wrapper above is what they call
                self._idle.append(addon)

    @property
    def idle(self) -> list:
        """The addons outside the chain, in mitmdump's order."""
        return list(self._idle)

    def _join_on_new_flows(self, playback: serverplayback.ServerPlayback) -> None:
        """Server playback gets flows with no option set through its commands (replay.server, .add, .file), from a
        script or mitmweb; all of them, and the server_replay option, fill it through add_flows, which ends with a
        sync `update` to the chain only. This instance's add_flows is wrapped (functools.wraps carries its
        command_name, so the commands are this wrapper) to join the chain once the flows are in."""
        add_flows = playback.add_flows

        @functools.wraps(add_flows)
        def add_then_join(flows) -> None:
            add_flows(flows)
            if self._started:
                self.join()

        playback.add_flows = add_then_join

    def _prune(self) -> None:
        """Forgets the idle addons that were removed (`addons.remove(addons.get("dumper"))` in a script that brings a
        dumper of its own): mitmdump would no longer call them, and none may join the chain again."""
        self._idle = [addon for addon in self._idle if self.addons.get(_name(addon)) is addon]

    def _configure_idle(self, updated: set[str]) -> None:
        event = hooks.ConfigureHook(updated)
        self._prune()
        for addon in list(self._idle):
            try:
                # As AddonManager.trigger: an OptionsError goes to the option manager, which rolls the change back.
                with addonmanager.safecall():
                    self.addons.invoke_addon_sync(addon, event)
            except exceptions.AddonHalt:
                break
        if self._started:
            self.join()

    def join(self) -> None:
        """Puts each idle addon that has work under the current options into the chain, at its place in mitmdump's
        order: after the last addon of the chain that comes before it there (what is not mitmdump's, such as our
        reroute guard, stays after). Called first once the options are all set (`run`); from then on every change
        of an option calls it."""
        self._started = True
        self._prune()
        joining = [addon for addon in self._idle if (work := WORK.get(type(addon))) and work(addon, self.options)]
        if not joining:
            return
        chain = list(self.addons.chain)
        for addon in joining:
            rank = self._rank[id(addon)]
            before = [i for i, member in enumerate(chain) if self._rank.get(id(member), len(self._rank)) < rank]
            chain.insert(before[-1] + 1 if before else 0, addon)
            self._idle.remove(addon)
            logger.debug("mitmproxy's %s addon joins the chain", type(addon).__name__)
        # A new list, not an insert into the one a hook may be dispatched over right now (trigger_event iterates
        # `chain`): that event ends on the old chain, the next starts on this one.
        self.addons.chain = chain

    async def _idle_event(self, event: hooks.Hook) -> None:
        self._prune()
        for addon in list(self._idle):
            try:
                with addonmanager.safecall():
                    await self.addons.invoke_addon(addon, event)
            except exceptions.AddonHalt:
                return

    async def run(self) -> None:
        # The options are all set (command line, config.yaml) before run(): the chain is chosen from them, and from
        # now on an option set (`set`, a script) can only add an addon to it.
        self.join()
        await super().run()

    async def running(self) -> None:
        await super().running()
        await self._idle_event(hooks.RunningHook())

    async def done(self) -> None:
        await self._idle_event(hooks.DoneHook())  # first: the chain's done() removes the log handlers
        await super().done()
        self.termlog.uninstall()


def _filters(args) -> dict:
    """mitmdump's positional filter expression, applied as `mitmproxy.tools.main.mitmdump` applies it."""
    if args.filter_args:
        expression = " ".join(args.filter_args)
        return {"save_stream_filter": expression, "readfile_filter": expression, "dumper_filter": expression}
    return {}


def mitmdump(arguments: list[str]) -> None:
    """mitmdump's command line, parser and start-up (mitmproxy.tools.main.run), with a `ChainMaster`."""
    from mitmproxy.tools import cmdline
    from mitmproxy.tools import main as tools_main

    tools_main.run(ChainMaster, cmdline.mitmdump, arguments, _filters)
