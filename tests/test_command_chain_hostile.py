"""The `header-augment` command's chain (chain.py) against stock mitmdump, option by option, as a user whose
configuration must not silently stop working and an attacker who would like a security default lost.

One stock `DumpMaster` and one `ChainMaster` (started with the command's defaults, its chain chosen as at `run`) live
for the module on one loop; each case sets the same options on both at runtime (as `set` or a script does), and on
a new pair from the start (as the command line or config.yaml does). The same flows go through each master
(requestheaders, request, an upstream answer, responseheaders, response); what the upstream would have got, what the
client got, what an addon appended after the chain saw (our reroute guard is one), what the dumper printed, what
was logged and what was saved must be the stock master's. The shared pair's options are then put back to their
defaults: an addon that joined stays in the chain, and the next cases check that it then does nothing."""

import asyncio
import io
import logging
import re
import sys
from pathlib import Path

import bcrypt
import pytest
from mitmproxy import ctx, exceptions, http, options
from mitmproxy import io as flow_io
from mitmproxy.addons import dns_resolver, dumper, mapremote, serverplayback
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy.layers.http import (
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpResponseHook,
)
from mitmproxy.test import tflow
from mitmproxy.tools.dump import DumpMaster

from header_augment_core import chain, cli

BASE = {"onboarding": False, "flow_detail": 0}  # the command's defaults (cli.py; the bench and production run -q)


class Seen:
    """Appended after the chain (as our reroute guard is, in its running hook): what a late request hook sees."""

    name = "seen"

    def __init__(self) -> None:
        self.requests: list[tuple] = []

    def request(self, flow) -> None:
        self.requests.append((flow.request.url, sorted(flow.request.headers.items(multi=True))))


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record) -> None:
        self.lines.append(record.getMessage())


class Side:
    """One master: its Seen addon, its dumper's output, its files."""

    def __init__(self, master, directory: Path) -> None:
        self.master = master
        self.directory = directory
        self.seen = Seen()
        master.addons.add(self.seen)
        self.printed = io.StringIO()
        master.addons.get("dumper").outfp = self.printed
        for name in ("termlog", "errorcheck"):  # global log handlers; this process goes on
            addon = master.addons.get(name)
            (addon.logger.uninstall if name == "termlog" else addon.finish)()

    def activate(self) -> None:
        """mitmproxy's addons read the options and the master from the global ctx: each dispatch names its master."""
        ctx.master = self.master
        ctx.options = self.master.options


def request(method: str, url: str, headers: dict, body: bytes = b"") -> http.Request:
    made = http.Request.make(method, url, body, headers)
    made.timestamp_start = made.timestamp_end = 1_700_000_000.0
    return made


def flows(mode: str) -> list:
    """The same sequence for every case: conditional and compressed asks, credentials, a form, the onboarding hosts;
    a second request to example.com (a sticky cookie or auth goes there)."""
    proxy_auth = {"Proxy-Authorization": "Basic dXNlcjpwYXNz"}  # user:pass
    specs = [
        request(
            "GET",
            "http://example.com/a",
            {"If-None-Match": "x", "If-Modified-Since": "y", "Accept-Encoding": "gzip", "Authorization": "Basic eDp5"},
        ),
        request("GET", "http://example.com/b?q=1&r=2", {"Accept-Encoding": "br", **proxy_auth}),
        request("POST", "http://other.test:8080/c", {"Content-Type": "application/x-www-form-urlencoded"}, b"k=v&w=x"),
        request("GET", "http://mitm.it/", {}),
        request("GET", "http://setup.test/", {}),
    ]
    made = []
    for spec in specs:
        flow = tflow.tflow(req=spec)
        flow.client_conn.proxy_mode = mode_specs.ProxyMode.parse(mode)
        made.append(flow)
    return made


def upstream_answer(flow) -> http.Response:
    answer = http.Response.make(
        200,
        b"upstream body for " + flow.request.path.encode(),
        {"Content-Type": "text/plain", "Set-Cookie": "s=1; Path=/", "Alt-Svc": 'h3="example.com:443"', "Server": "up"},
    )
    answer.timestamp_start = answer.timestamp_end = 1_700_000_001.0
    return answer


def message(m) -> tuple | None:
    if m is None:
        return None
    return (sorted(m.headers.items(multi=True)), m.raw_content)


async def exchange(side: Side, flow) -> tuple:
    """A flow as the HTTP layer passes it through the chain, and what each end got."""
    side.activate()
    trigger = side.master.addons.trigger_event
    await trigger(HttpRequestHeadersHook(flow))
    if flow.response is None and flow.live:
        await trigger(HttpRequestHook(flow))
    upstream = None
    if flow.response is None and flow.live:
        upstream = (flow.request.method, flow.request.url, message(flow.request))
        flow.response = upstream_answer(flow)
        await trigger(HttpResponseHeadersHook(flow))
    if flow.live or flow.response is not None:
        await trigger(HttpResponseHook(flow))
    client = None if flow.response is None else (flow.response.status_code, message(flow.response))
    return upstream, client, flow.live, flow.is_replay, dict(flow.metadata)


class Pair:
    def __init__(self, directory: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.directory = directory
        self.records = Records()
        logging.getLogger().addHandler(self.records)

        async def make():
            stock = DumpMaster(options.Options(confdir=str(directory / "confdir")), loop=self.loop)
            ours = chain.ChainMaster(options.Options(confdir=str(directory / "confdir")), self.loop)
            for master in (stock, ours):
                master.options.update(**BASE)
            ours.join()  # as ChainMaster.run does before its start: from here on, options set join at once
            return Side(stock, directory / "stock"), Side(ours, directory / "ours")

        self.stock, self.ours = self.loop.run_until_complete(make())
        self.sides = (self.stock, self.ours)

    def fresh(self, values: dict, paths: dict) -> tuple[Side, Side]:
        """A stock DumpMaster and a ChainMaster with the options set before the chain is chosen (as at start)."""

        async def make(kind, name):
            directory = self.directory / name
            directory.mkdir(exist_ok=True)
            made = kind(options.Options(confdir=str(self.directory / "confdir")), self.loop)
            made.options.update(**BASE | filled(values, directory, paths))
            if isinstance(made, chain.ChainMaster):
                made.join()
            return Side(made, directory)

        return self.run(make(DumpMaster, "fresh-stock")), self.run(make(chain.ChainMaster, "fresh-ours"))

    def end(self, side: Side) -> None:
        side.activate()
        self.run(side.master.done())

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def set(self, **values) -> None:
        for side in self.sides:
            side.activate()
            side.master.options.update(**values)

    def reset(self, names) -> None:
        for side in self.sides:
            side.activate()
            side.master.options.update(**{name: side.master.options.default(name) for name in names} | BASE)

    def observe(self, side: Side, mode: str) -> dict:
        side.seen.requests.clear()
        self.records.lines.clear()
        results = [self.run(exchange(side, flow)) for flow in flows(mode)]
        side.activate()
        printed = re.sub(r"\d+(\.\d+)?m?s\b", "<t>", side.printed.getvalue())  # durations
        side.printed.seek(0)
        side.printed.truncate()
        return {
            "flows": results,
            "seen": list(side.seen.requests),
            "printed": printed,
            "logged": list(self.records.lines),
        }

    def close(self) -> None:
        async def done():
            for side in self.sides:
                side.activate()
                await side.master.done()

        self.run(done())
        self.loop.close()
        logging.getLogger().removeHandler(self.records)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    made = Pair(tmp_path_factory.mktemp("pair"))
    yield made
    made.close()


def files(tmp: Path) -> dict:
    """Files the cases point options at (made once for the module)."""
    tmp.mkdir(exist_ok=True)
    (tmp / "local.txt").write_text("from map_local")
    if not (tmp / "htpasswd").exists():
        (tmp / "htpasswd").write_text(f"user:{bcrypt.hashpw(b'pass', bcrypt.gensalt(rounds=4)).decode()}\n")
    recorded = tflow.tflow(req=request("GET", "http://example.com/a", {}), resp=True)
    recorded.response.content = b"replayed"
    with (tmp / "replay.flows").open("wb") as f:
        flow_io.FlowWriter(f).add(recorded)
    return {"local": str(tmp / "local.txt"), "htpasswd": str(tmp / "htpasswd"), "replay": str(tmp / "replay.flows")}


# (id, options set at runtime on both; `{dir}` and `{<file>}` are filled in). Every option of every addon the chain
# leaves out is here or in NO_TRAFFIC_HOOKS / ONLY_FOR_DNS_FLOWS (test_every_left_out_option_is_in_the_matrix).
CASES = [
    ("mitmdump-defaults", {"onboarding": True, "flow_detail": 1}),
    ("defaults-set-to-their-defaults", {"block_global": True, "anticache": False, "map_remote": [], "flow_detail": 0}),
    *[(f"flow_detail={n}", {"flow_detail": n}) for n in (1, 2, 3, 4)],
    ("showhost", {"flow_detail": 1, "showhost": True}),
    ("dumper_filter", {"flow_detail": 2, "dumper_filter": "~d other.test"}),
    ("dumper_default_contentview", {"flow_detail": 4, "dumper_default_contentview": "raw"}),
    ("anticache", {"anticache": True}),
    ("anticomp", {"anticomp": True}),
    ("block_list", {"block_list": ["/~d other.test/444"]}),
    ("block_list-kill", {"block_list": [":~d example.com:-1"]}),
    ("onboarding", {"onboarding": True}),
    ("onboarding_host", {"onboarding": True, "onboarding_host": "setup.test"}),
    ("onboarding_host-without-onboarding", {"onboarding_host": "setup.test"}),
    ("proxyauth-any", {"proxyauth": "any"}),
    ("proxyauth-user", {"proxyauth": "user:pass"}),
    ("proxyauth-htpasswd", {"proxyauth": "@{htpasswd}"}),
    ("map_remote", {"map_remote": ["|//example.com|//rerouted.test"]}),
    ("map_local", {"map_local": ["|example.com/a|{local}"]}),
    ("modify_body", {"modify_body": ["/~q/v/changed", "/~s/upstream/downstream"]}),
    ("modify_headers", {"modify_headers": ["/~q/X-Added/1", "/~s/Server/", "/Authorization/"]}),
    ("stickyauth", {"stickyauth": "~d example.com"}),
    ("stickycookie", {"stickycookie": "~d example.com"}),
    ("upstream_auth-regular-mode", {"upstream_auth": "u:p"}),
    ("upstream_auth-upstream-mode", {"mode": ["upstream:http://up.test:3128"], "upstream_auth": "u:p"}),
    ("upstream_auth-reverse-mode", {"mode": ["reverse:http://example.com"], "upstream_auth": "u:p"}),
    ("alt-svc-reverse-mode", {"mode": ["reverse:http://example.com"]}),
    ("keep_alt_svc_header", {"mode": ["reverse:http://example.com"], "keep_alt_svc_header": True}),
    ("save_stream_file", {"save_stream_file": "{dir}/saved.flows"}),
    ("save_stream_filter", {"save_stream_file": "{dir}/filtered.flows", "save_stream_filter": "~d other.test"}),
    ("hardump", {"hardump": "{dir}/flows.har"}),
    ("server_replay_kill_extra-alone", {"server_replay_kill_extra": True}),
    ("server_replay", {"server_replay": ["{replay}"]}),
    ("server_replay_extra-kill", {"server_replay": ["{replay}"], "server_replay_extra": "kill"}),
    ("server_replay_extra-404", {"server_replay": ["{replay}"], "server_replay_extra": "404"}),
    ("server_replay_kill_extra", {"server_replay": ["{replay}"], "server_replay_kill_extra": True}),
    ("server_replay_reuse", {"server_replay": ["{replay}"], "server_replay_reuse": True}),
    ("server_replay_nopop", {"server_replay": ["{replay}"], "server_replay_nopop": True}),
    ("server_replay_refresh", {"server_replay": ["{replay}"], "server_replay_refresh": False}),
    ("server_replay_ignore_host", {"server_replay": ["{replay}"], "server_replay_ignore_host": True}),
    ("server_replay_ignore_port", {"server_replay": ["{replay}"], "server_replay_ignore_port": True}),
    ("server_replay_ignore_content", {"server_replay": ["{replay}"], "server_replay_ignore_content": True}),
    ("server_replay_ignore_params", {"server_replay": ["{replay}"], "server_replay_ignore_params": ["q"]}),
    (
        "server_replay_ignore_payload_params",
        {"server_replay": ["{replay}"], "server_replay_ignore_payload_params": ["k"]},
    ),
    ("server_replay_use_headers", {"server_replay": ["{replay}"], "server_replay_use_headers": ["Accept-Encoding"]}),
]

# Options of addons without a traffic hook (idle for good: configure, running and done are all they get).
NO_TRAFFIC_HOOKS = {
    "termlog_verbosity",
    "client_replay",
    "client_replay_concurrency",
    "command_history",
    "export_preserve_original_ip",
    "keepserving",
    "rfile",
    "readfile_filter",
}
# The DNS resolver answers DNS flows of a dns or wireguard mode only: its joining with the mode is tested below.
ONLY_FOR_DNS_FLOWS = {"dns_use_hosts_file", "dns_name_servers"}


def filled(values: dict, directory: Path, paths: dict) -> dict:
    def fill(value):
        if isinstance(value, str):
            return value.format(dir=directory, **paths)
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    return {name: fill(value) for name, value in values.items()}


@pytest.mark.parametrize(("values"), [values for _, values in CASES], ids=[name for name, _ in CASES])
def test_each_option_behaves_as_in_mitmdump(pair, values):
    """Set at runtime on the shared pair (an addon an earlier case made join is in the chain already), and from the
    start on a new pair (the command line, config.yaml: each case's own options make its addons join)."""
    paths = files(pair.directory / "files")
    for side in pair.sides:
        side.directory.mkdir(exist_ok=True)
        side.activate()
        side.master.options.update(**filled(values, side.directory, paths))
    fresh = pair.fresh(values, paths)
    mode = pair.stock.master.options.mode[0]
    observed = []
    try:
        for side in (*pair.sides, *fresh):
            seen = pair.observe(side, mode)
            side.activate()
            har = side.master.addons.get("savehar")
            seen["har"] = [f.request.url for f in har.flows]
            har.flows.clear()
            observed.append(seen)
    finally:
        pair.reset(values)
        for side in fresh:
            pair.end(side)
    for (stock, ours), (stock_side, our_side) in zip((observed[0:2], observed[2:4]), (pair.sides, fresh), strict=True):
        assert ours == stock
        for name in ("saved.flows", "filtered.flows"):
            if (stock_side.directory / name).exists():
                read = [
                    [f.request.url for f in flow_io.FlowReader(open(side.directory / name, "rb")).stream()]
                    for side in (stock_side, our_side)
                ]
                assert read[0] and read[1] == read[0]


def test_every_left_out_option_is_in_the_matrix(pair):
    """An option a mitmproxy release adds to an addon the chain leaves out fails here until a case shows it works."""
    owned = set()

    class Loader:
        def add_option(self, name, *args, **kwargs):
            owned.add(name)

        def add_command(self, *args, **kwargs):
            pass

    for addon in pair.ours.master.idle + [a for a in pair.ours.master.addons.chain if type(a) in chain.WORK]:
        if hasattr(addon, "load"):
            addon.load(Loader())
    in_cases = {name for _, values in CASES for name in values}
    assert owned - in_cases - NO_TRAFFIC_HOOKS - ONLY_FOR_DNS_FLOWS == set()
    assert {type(a) for a in chain.stock_addons()} >= {type(a) for a in pair.ours.master.idle}


def test_the_chain_after_the_matrix_is_in_mitmdumps_order_before_what_was_appended(pair):
    order = [type(a) for a in pair.ours.master.addons.chain]
    assert order[-1] is Seen
    stock = [type(a) for a in chain.stock_addons()]
    assert order[:-1] == [kind for kind in stock if kind in order]


def run(confdir: Path, test) -> None:
    async def main() -> None:
        master = chain.ChainMaster(options.Options(confdir=str(confdir)))
        try:
            master.options.update(**BASE)
            master.join()
            await test(master)
        finally:
            master.addons.get("errorcheck").finish()
            master.termlog.uninstall()
            await master.done()

    asyncio.run(main())


def kinds(master) -> list[type]:
    return [type(addon) for addon in master.addons.chain]


@pytest.mark.parametrize("command", ["replay.server", "replay.server.add", "replay.server.file"])
def test_server_playback_loaded_by_a_command_joins_and_replays(tmp_path, command):
    """A script (ctx.master.commands.call) or mitmweb's command bar loads server playback with no option set: through
    the command, its flows were never served."""
    recorded = tflow.tflow(req=request("GET", "http://example.com/a", {}), resp=True)
    recorded.response.content = b"replayed"
    path = tmp_path / "replay.flows"
    with path.open("wb") as f:
        flow_io.FlowWriter(f).add(recorded)

    async def test(master):
        if command == "replay.server.file":
            master.commands.execute(f"{command} {path}")
        else:
            master.commands.call(command, [recorded])
        assert serverplayback.ServerPlayback in kinds(master)
        flow = tflow.tflow(req=request("GET", "http://example.com/a", {}))
        await master.addons.trigger_event(HttpRequestHook(flow))
        assert flow.response is not None and flow.response.content == b"replayed"

    run(tmp_path, test)


def test_server_playback_loaded_by_a_scripts_direct_call_joins(tmp_path):
    async def test(master):
        recorded = tflow.tflow(req=request("GET", "http://example.com/a", {}), resp=True)
        master.addons.get("serverplayback").load_flows([recorded])
        assert serverplayback.ServerPlayback in kinds(master)

    run(tmp_path, test)


def test_an_idle_addon_a_script_removed_stays_out(tmp_path):
    """A script that brings its own dumper removes mitmdump's: it must not come back when flow_detail is set."""

    async def test(master):
        master.addons.remove(master.addons.get("dumper"))
        master.options.update(flow_detail=2)
        assert dumper.Dumper not in kinds(master)
        assert not any(isinstance(a, dumper.Dumper) for a in master.idle)

    run(tmp_path, test)


def test_an_option_a_script_sets_in_its_running_hook_joins_before_what_is_appended_later(tmp_path):
    class Script:
        def running(self):
            ctx.options.update(map_remote=["|//example.com|//rerouted.test"])

    async def test(master):
        master.addons.add(Script())
        await master.running()
        seen = Seen()
        master.addons.add(seen)
        flow = tflow.tflow(req=request("GET", "http://example.com/a", {}))
        await master.addons.trigger_event(HttpRequestHook(flow))
        assert mapremote.MapRemote in kinds(master)
        assert seen.requests[0][0] == "http://rerouted.test/a"

    run(tmp_path, test)


@pytest.mark.parametrize(
    ("mode", "joins"),
    [
        (["regular"], False),
        (["dns@0"], True),
        (["regular", "dns@0"], True),
        (["wireguard@0"], True),
        (["reverse:dns://9.9.9.9@0"], False),
    ],
)
def test_the_dns_resolver_joins_with_a_dns_or_wireguard_mode(tmp_path, mode, joins):
    async def test(master):
        master.options.update(mode=mode)
        assert (dns_resolver.DnsResolver in kinds(master)) is joins

    run(tmp_path, test)


def test_a_refused_value_leaves_the_chain_and_the_option_as_they_were(tmp_path):
    async def test(master):
        before = kinds(master)
        with pytest.raises(exceptions.OptionsError):
            master.options.update(proxyauth="@/nonexistent/htpasswd")
        with pytest.raises(exceptions.OptionsError):
            master.options.update(server_replay=["/nonexistent/flows"])
        assert master.options.proxyauth is None and master.options.server_replay == []
        assert kinds(master) == before

    run(tmp_path, test)


def test_version_from_a_source_tree_without_an_install(capsys, monkeypatch):
    """scripts/run runs the command from the clone, where no distribution may be installed: it raised
    PackageNotFoundError."""
    import tomllib

    expected = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
    monkeypatch.setattr(sys, "argv", ["header-augment"])
    cli.main(["--version"])
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(rf"header-augment {re.escape(expected)} \(from the source tree .+\)", out[0])
    assert out[1].startswith("mitmproxy 12.")


def test_an_addon_joining_while_a_flow_is_in_flight_runs_from_the_next_event_before_the_guard(tmp_path):
    """A hook that sets map_remote while a request is dispatched: mitmdump's `add` would append map_remote to the
    list being walked, so that this very request is rerouted after the guard has seen it (the credential goes to the
    new host). Here the request in flight finishes on the chain it started with; the next is rerouted before it."""

    class Setter:
        name = "setter"
        calls = 0

        def request(self, flow):
            Setter.calls += 1
            if flow.request.path == "/set":
                ctx.options.update(map_remote=["|//example.com/after|//rerouted.test/after"])

    async def test(master):
        master.addons.add(Setter())
        seen = Seen()
        master.addons.add(seen)
        for path in ("/set", "/after"):
            flow = tflow.tflow(req=request("GET", f"http://example.com{path}", {}))
            await master.addons.trigger_event(HttpRequestHook(flow))
        assert [url for url, _ in seen.requests] == ["http://example.com/set", "http://rerouted.test/after"]
        assert Setter.calls == 2  # an insert into the list being walked would give the hook in flight again
        order = kinds(master)
        assert order.index(mapremote.MapRemote) < order.index(Seen)

    run(tmp_path, test)
