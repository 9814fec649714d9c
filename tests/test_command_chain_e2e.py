"""The flows' behaviour through the `header-augment` command (chain.py: only the addons with work in mitmproxy's
chain) is the script's: each test runs against `mitmdump -s addon/header_augment.py` and against the command, one
proxy of each for the file. Credentials per proxyauth user, a map_remote set at runtime (it joins the command's chain
then, and must run before the reroute guard), flows saved with -w (after our hooks have masked them), SIGINT."""

import base64
import http.client
import json
import signal
import urllib.parse

import bcrypt
import pytest
from echo_upstream import received
from helpers.running import Running
from helpers.zygote import COMMAND, Zygote
from mitmproxy import io
from servers import ROOT, Mitmdump, Upstream, clean_env

USERS = {"alice": "alice-pass", "bob": "bob-pass"}
TOKEN = "token-for-a-only"


class Command(Mitmdump):
    """`header-augment` (header_augment_core.cli:main, forked by the zygote) on 127.0.0.1 with an ephemeral port; the
    command loads the addon itself and listens on 127.0.0.1 by default."""

    def __init__(self, confdir, *args: str) -> None:
        self.confdir = confdir
        cmd = [COMMAND, "--listen-port", "0", "--set", f"confdir={confdir}", *args]
        # Mitmdump's own constructor starts mitmdump: its process runner's, with the command line of the command.
        Running.__init__(self, cmd, cwd=ROOT, env=clean_env(), new_session=False, spawn=Zygote.get().spawn)
        self.port = int(self.wait_for(r"proxy listening at 127\.0\.0\.1:(\d+)").group(1))


class World:
    def __init__(self, directory, how: str) -> None:
        self.a, self.b = Upstream(), Upstream()
        htpasswd = directory / "htpasswd"
        htpasswd.write_text(
            "".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n" for u, p in USERS.items())
        )
        entries = []
        for name, headers, clients in [
            ("alice", {"X-Alice": "value-of-alice"}, ["alice"]),
            ("bob", {"X-Bob": "value-of-bob"}, ["bob"]),
            ("token", {"Authorization": f"Bearer {TOKEN}"}, None),
        ]:
            answer = directory / f"{name}.json"
            answer.write_text(json.dumps(headers))
            entry = {"name": name, "path": str(answer), "hosts": [f"127.0.0.1:{self.a.port}"]}
            entries.append(entry | ({"clients": clients} if clients else {}))
        providers = directory / "providers.json"
        providers.write_text(json.dumps(entries))
        self.flows = directory / "flows"
        args = [
            "--set",
            f"proxyauth=@{htpasswd}",
            "--set",
            f"header_providers_file={providers}",
            "-w",
            str(self.flows),
            "-s",
            str(ROOT / "tests" / "console_set.py"),
        ]
        confdir = directory / "confdir"
        self.proxy = Mitmdump(confdir, *args) if how == "mitmdump" else Command(confdir, *args)
        for name in ("alice", "bob", "token"):
            self.proxy.wait_for(rf"provider {name} .*headers in use")

    def get(self, user: str, url: str) -> dict:
        """The echo upstream's view of a GET through the proxy as `user`."""
        conn = http.client.HTTPConnection("127.0.0.1", self.proxy.port, timeout=10)
        auth = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
        try:
            conn.request("GET", url, headers={"Proxy-Authorization": f"Basic {auth}"})
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200, body
            return json.loads(body)
        finally:
            conn.close()

    def added(self, user: str, url: str) -> dict[str, str]:
        """The headers among ours that the upstream received."""
        ours = {"x-alice", "x-bob", "authorization"}
        return {n.lower(): v for n, v in received(self.get(user, url)) if n.lower() in ours}

    def close(self) -> None:
        if self.proxy.proc.poll() is None:
            self.proxy.stop()
        self.a.close()
        self.b.close()


@pytest.fixture(scope="module", params=["mitmdump", COMMAND])
def world(request, tmp_path_factory):
    made = World(tmp_path_factory.mktemp(request.param), request.param)
    yield made
    made.close()


def test_each_client_gets_its_own_credentials(world):
    a = world.a.port
    assert world.added("alice", f"http://127.0.0.1:{a}/") == {
        "x-alice": "value-of-alice",
        "authorization": f"Bearer {TOKEN}",
    }
    assert world.added("bob", f"http://127.0.0.1:{a}/") == {"x-bob": "value-of-bob", "authorization": f"Bearer {TOKEN}"}
    assert world.added("alice", f"http://127.0.0.1:{world.b.port}/") == {}


def test_a_map_remote_set_at_runtime_reroutes_without_the_credentials(world):
    a, b = world.a.port, world.b.port
    spec = f"|//127.0.0.1:{a}/rerouted|//127.0.0.1:{b}/rerouted"
    conn = http.client.HTTPConnection("127.0.0.1", world.proxy.port, timeout=10)
    auth = base64.b64encode(b"alice:alice-pass").decode()
    conn.request(
        "GET",
        "http://console.test/" + urllib.parse.quote(f"set map_remote {spec}"),
        headers={"Proxy-Authorization": f"Basic {auth}"},
    )
    assert conn.getresponse().status == 200
    conn.close()
    rerouted = world.get("alice", f"http://127.0.0.1:{a}/rerouted")
    assert dict(received(rerouted))["Host"] == f"127.0.0.1:{b}"  # map_remote ran: the request went to B
    assert {n.lower() for n, _ in received(rerouted)} & {"x-alice", "authorization"} == set()
    assert world.added("alice", f"http://127.0.0.1:{a}/kept") == {
        "x-alice": "value-of-alice",
        "authorization": f"Bearer {TOKEN}",
    }


def test_saved_flows_carry_markers_not_credentials(world):
    """Save runs after our hooks have masked the values; a credential is also scrubbed from the echo it got back."""
    world.get("bob", f"http://127.0.0.1:{world.a.port}/saved")
    with world.flows.open("rb") as f:
        flows = [flow for flow in io.FlowReader(f).stream() if flow.request.path == "/saved"]
    assert len(flows) == 1
    saved = flows[0].request.headers
    assert saved.get("X-Bob") not in (None, "value-of-bob")
    assert saved.get("Authorization") not in (None, f"Bearer {TOKEN}")
    assert TOKEN.encode() not in world.flows.read_bytes()


def test_sigint_stops_it_cleanly(world):
    """Last in the file: the proxy of this parameter ends here."""
    world.proxy.proc.send_signal(signal.SIGINT)
    assert world.proxy.proc.wait(10) == 0
