"""scripts/run: the proxy with the addon against the demo provider; every way of stopping it leaves nothing behind."""

import json
import os
import signal
import socket

import httpx
import pytest
from conftest import client_for, values_of
from processes import Running, free_port, port_is_free, processes_in_group, wait_all_gone
from prometheus_client.parser import text_string_to_metric_families
from servers import DEADLINE, ROOT, clean_env, wait_until

RUN = ROOT / "scripts" / "run"


def start_run(tmp_path, *args: str) -> Running:
    env = clean_env() | {"HEADER_AUGMENT_PORT": "0"}
    return Running([str(RUN), "--set", f"confdir={tmp_path / 'confdir'}", *args], cwd=tmp_path, env=env)


class Started:
    """What a running scripts/run consists of, read from its output and /proc once the provider's headers are in use."""

    def __init__(self, run: Running, tool: str = "mitmdump") -> None:
        self.run = run
        self.provider_port = int(run.wait_for(r"demo provider listening on http://127\.0\.0\.1:(\d+)/").group(1))
        self.proxy_port = int(run.wait_for(r"proxy listening at 127\.0\.0\.1:(\d+)").group(1))
        run.wait_for("headers in use: Authorization, X-Tenant")
        group = processes_in_group(run.pgid)
        self.pids = {
            "script": run.proc.pid,
            "provider": only(pid for pid, cmd in group.items() if "demo_provider.py" in cmd),
            tool: only(pid for pid, cmd in group.items() if f"bin/{tool} " in cmd),
        }

    def assert_all_gone(self, *ports: int) -> None:
        wait_all_gone(self.pids.values())
        assert processes_in_group(self.run.pgid) == {}
        for port in (self.proxy_port, self.provider_port, *ports):
            wait_until(lambda port=port: port_is_free(port), DEADLINE, 0.05, f"port {port} to be free")


def only(pids) -> int:
    (pid,) = pids
    return pid


def test_scripts_run_uses_the_demo_provider(tmp_path, upstream):
    # The test's upstream has an ephemeral port; the admin endpoint shows the metrics.
    run = start_run(tmp_path, "--set", "header_hosts=127.0.0.1", "--set", "header_admin_listen=127.0.0.1:0")
    try:
        started = Started(run)
        with client_for(f"http://127.0.0.1:{started.proxy_port}") as client:
            response = client.get(upstream.url)
        assert values_of(response, "Authorization")[0].startswith("Bearer demo.")
        assert values_of(response, "X-Tenant") == ["demo"]
        # The demo provider is named: its metrics' label is `demo`, not its URL with this start's random port.
        admin = int(run.wait_for(r"admin endpoint listening at 127\.0\.0\.1:(\d+)").group(1))
        metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics", trust_env=False, timeout=10).text
        samples = [s for family in text_string_to_metric_families(metrics) for s in family.samples]
        assert {s.labels["provider"] for s in samples if "provider" in s.labels} == {"demo"}
        os.killpg(run.pgid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground process group
        assert run.wait_exit() == 0, run.output
        started.assert_all_gone()
    finally:
        run.kill_group()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP"])  # `kill <pid>`; the terminal closing
def test_a_signal_to_the_script_alone_stops_everything(tmp_path, how):
    run = start_run(tmp_path)
    try:
        started = Started(run)
        os.kill(run.proc.pid, getattr(signal, how))
        assert run.wait_exit() == 0, run.output
        started.assert_all_gone()
    finally:
        run.kill_group()


def test_by_default_the_demo_headers_go_to_the_readme_upstream_only(tmp_path, upstream):
    run = start_run(tmp_path)
    try:
        started = Started(run)
        assert "demo headers go to 127.0.0.1:8000 and localhost:8000" in run.output
        with client_for(f"http://127.0.0.1:{started.proxy_port}") as client:
            response = client.get(upstream.url)  # an ephemeral port, not 8000
        assert values_of(response, "X-Tenant") == []
    finally:
        run.kill_group()


def test_a_config_yaml_that_overrides_the_demo_settings_is_pointed_out(tmp_path, upstream):
    """mitmproxy applies config.yaml after the command line: scripts/run said it used the demo provider while the
    file's own provider was in use."""
    (tmp_path / "confdir").mkdir()
    (tmp_path / "confdir" / "config.yaml").write_text("header_refresh_interval: 30s\n")
    run = start_run(tmp_path, "--set", "header_hosts=127.0.0.1")
    try:
        Started(run)
        assert (
            f"{tmp_path / 'confdir'}/config.yaml exists: its options override those given to scripts/run" in run.output
        )
    finally:
        run.kill_group()


def test_the_exit_status_is_the_proxys(tmp_path):
    run = start_run(tmp_path, "--set", "header_refresh_interval=10x")
    try:
        provider_port = int(run.wait_for(r"demo provider listening on http://127\.0\.0\.1:(\d+)/").group(1))
        assert run.wait_exit() == 1, run.output
        assert "header_refresh_interval: '10x' is not a duration" in run.output
        wait_until(lambda: processes_in_group(run.pgid) == {}, DEADLINE, 0.05, "the demo provider to end")
        wait_until(lambda: port_is_free(provider_port), DEADLINE, 0.05, f"port {provider_port} to be free")
    finally:
        run.kill_group()


def test_web_runs_mitmweb_with_the_addon(tmp_path, upstream):
    web_port = free_port()  # mitmweb 12 binds web_port=0 but then reports port 0, not the one it got
    run = start_run(
        tmp_path,
        "--web",
        "--set",
        f"web_port={web_port}",
        "--set",
        "web_open_browser=false",
        "--set",
        "header_hosts=127.0.0.1",
    )
    try:
        started = Started(run, tool="mitmweb")
        assert int(run.wait_for(r"Web server listening at http://127\.0\.0\.1:(\d+)/").group(1)) == web_port
        socket.create_connection(("127.0.0.1", web_port), 5).close()
        with client_for(f"http://127.0.0.1:{started.proxy_port}") as client:
            response = client.get(upstream.url)
        assert values_of(response, "X-Tenant") == ["demo"]
        # The README: the UI and its API need the token of the start-up line; the flow's comment names the demo
        # provider and the headers added, never their values.
        ui = run.wait_for(r"Web server listening at (http://127\.0\.0\.1:\d+/)\?token=(\w+)")
        with httpx.Client(base_url=ui.group(1), trust_env=False, timeout=10) as web:
            assert web.get("/flows").status_code == 403
            flows = web.get("/flows", params={"token": ui.group(2)}).json()
        comments = [flow["comment"] for flow in flows]
        # The echo upstream sent the token back: scrubbed from the answer, as the comment says.
        assert comments == [
            "header-augment (demo): added Authorization, X-Tenant\n"
            "header-augment: scrubbed our values from the response body"
        ]
        token = values_of(response, "Authorization")[0]
        assert token not in comments[0]
        assert token not in json.dumps(flows)  # what mitmweb shows holds the marker, never the value
        os.kill(run.proc.pid, signal.SIGTERM)
        assert run.wait_exit() == 0, run.output
        started.assert_all_gone(web_port)
    finally:
        run.kill_group()
