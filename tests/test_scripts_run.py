"""scripts/run: the proxy with the addon against the demo provider; every way of stopping it leaves nothing behind."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess

import httpx
import pytest
from conftest import client_for, values_of
from helpers.procfs import cmdline
from processes import Running, free_port, port_is_free, processes_in_group, wait_all_gone
from prometheus_client.parser import text_string_to_metric_families
from servers import DEADLINE, ROOT, clean_env, wait_until

from header_augment_core import launch

RUN = ROOT / "scripts" / "run"


def start_run(tmp_path, *args: str, env: dict[str, str] | None = None) -> Running:
    env = clean_env() | {"HEADER_AUGMENT_PORT": "0"} | (env or {})
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
            tool: only(
                pid for pid, cmd in group.items() if proxy_command(cmd) and ("--web " in cmd) == (tool == "mitmweb")
            ),
        }

    def assert_all_gone(self, *ports: int) -> None:
        wait_all_gone(self.pids.values())
        assert processes_in_group(self.run.pgid) == {}
        for port in (self.proxy_port, self.provider_port, *ports):
            wait_until(lambda port=port: port_is_free(port), DEADLINE, 0.05, f"port {port} to be free")


def proxy_command(cmd: str) -> bool:
    """Whether a process is the proxy scripts/run starts: the header-augment command from the clone."""
    return "-m header_augment_core.cli " in cmd


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
        assert "Traceback" not in run.output  # one line says what is wrong
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


# -- a provider of the user's: no demo ---------------------------------------------------------------------------

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDSCRIPTSRUN",
    "AWS_SECRET_ACCESS_KEY": "not-a-real-secret",
    "AWS_REGION": "eu-west-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.mark.parametrize("form", ["--set header_aws_service", "--set=header_provider_file", "config.yaml"])
def test_a_provider_given_anywhere_starts_no_demo(tmp_path, upstream, form):
    """The demo started unless header_provider_url was among the arguments: header_aws_service then stopped mitmdump
    (two sources), and a providers file in config.yaml got the demo headers beside its own."""
    headers = tmp_path / "headers.json"
    headers.write_text(json.dumps({"X-Tenant": "mine"}))
    if form == "--set header_aws_service":
        args = ["--set", "header_aws_service=s3", "--set", "header_hosts=127.0.0.1"]
    elif form == "--set=header_provider_file":
        args = [f"--set=header_provider_file={headers}", "--set=header_hosts=127.0.0.1"]
    else:
        (tmp_path / "providers.yaml").write_text(f"providers:\n  - {{path: '{headers}', hosts: 127.0.0.1}}\n")
        (tmp_path / "confdir").mkdir()
        (tmp_path / "confdir" / "config.yaml").write_text(f"header_providers_file: '{tmp_path / 'providers.yaml'}'\n")
        args = []
    run = start_run(tmp_path, *args, env=AWS_ENV)
    try:
        proxy_port = int(run.wait_for(r"proxy listening at 127\.0\.0\.1:(\d+)").group(1))
        if form != "--set header_aws_service":
            run.wait_for("headers in use: X-Tenant")
        with client_for(f"http://127.0.0.1:{proxy_port}") as client:
            response = client.get(upstream.url)
        if form == "--set header_aws_service":
            assert values_of(response, "Authorization")[0].startswith("AWS4-HMAC-SHA256 Credential=AKIDSCRIPTSRUN/")
            assert values_of(response, "X-Tenant") == []
        else:
            assert values_of(response, "X-Tenant") == ["mine"]
            assert values_of(response, "Authorization") == []
        assert "demo" not in run.output
        assert not any("demo_provider.py" in cmd for cmd in processes_in_group(run.pgid).values())
        os.kill(run.proc.pid, signal.SIGTERM)
        assert run.wait_exit() == 0, run.output
    finally:
        run.kill_group()


def test_help_lists_the_scripts_options_and_the_addons_before_mitmdumps(tmp_path):
    """--help printed mitmdump's help alone (after starting the demo provider)."""
    run = start_run(tmp_path, "--help")
    try:
        assert run.wait_exit() == 0  # mitmdump's own --help exits 1: help asked for is no failure
    finally:
        run.kill_group()
    text = run.output
    assert text.index("--web") < text.index("HEADER_AUGMENT_PORT=N") < text.index("header_provider_url=''")
    assert text.index("placeholder SHAPE|--list, login, logout") < text.index("header_provider_url=''")
    assert text.index("header_keep_values=false") < text.index("--listen-host HOST")  # mitmdump's own, last
    assert launch.options_help() in text
    assert "demo provider listening" not in text


# -- a signal in the middle of a start ----------------------------------------------------------------------------

STRACE = shutil.which("strace")


def can_trace() -> bool:
    return STRACE is not None and subprocess.run([STRACE, "-o", "/dev/null", "true"], timeout=30).returncode == 0


def traced_run(tmp_path, *strace_args: str) -> Running:
    """scripts/run under strace, which sees only the script's own forks (clone) and prints nothing else."""
    env = clean_env() | {"HEADER_AUGMENT_PORT": "0"}
    cmd = [STRACE, "-qq", "-e", "signal=none", *strace_args, str(RUN), "--set", f"confdir={tmp_path / 'confdir'}"]
    return Running(cmd, cwd=tmp_path, env=env)


@pytest.mark.skipif(not can_trace(), reason="needs strace, allowed to trace its child")
def test_a_signal_while_the_proxy_is_forked_stops_it_too(tmp_path):
    """bash runs a trap between two commands. A signal that came while it forked mitmdump ran the trap before
    `proxy=$!`: finding no proxy, the script exited, and mitmdump ran on with nobody to stop it. strace delivers the
    signal in that window, at the entry of the fork that starts mitmdump (found by a first, traced start)."""
    log = tmp_path / "forks.log"
    first = traced_run(tmp_path, "-e", "trace=clone,clone3", "-o", str(log))
    try:

        def fork_of_mitmdump() -> tuple[str, int] | None:
            text = log.read_text() if log.exists() else ""  # strace creates it
            forks = re.findall(r"^(clone3?)\(.*\) = (\d+)$", text, re.MULTILINE)
            for number, (call, pid) in enumerate(forks, 1):
                if proxy_command(cmdline(int(pid)) or ""):
                    assert {c for c, _ in forks} == {call}, forks  # one call counted below
                    return call, number
            return None

        call, number = wait_until(fork_of_mitmdump, DEADLINE, 0.02, "scripts/run to start mitmdump")
        (script,) = [pid for pid, cmd in processes_in_group(first.pgid).items() if cmd.startswith("bash ")]
        os.kill(script, signal.SIGTERM)
        first.wait_exit()
    finally:
        first.kill_group()
    inject = f"inject={call}:signal=SIGHUP:when={number}"
    second = traced_run(tmp_path, "-e", f"trace={call}", "-o", "/dev/null", "-e", inject)
    try:
        assert second.wait_exit() == 128 + signal.SIGHUP, second.output  # before the proxy ran: the script exits
        wait_until(lambda: processes_in_group(second.pgid) == {}, DEADLINE, 0.05, "mitmdump and the provider to end")
    finally:
        second.kill_group()
