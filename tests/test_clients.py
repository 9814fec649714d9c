"""The README's "Point your clients at it", run as written: every `sh` block of that section, against scripts/run.

How the blocks are run (the only liberties taken with their text):
- From a scratch directory whose entries are links to the repository's top level, so that `scripts/run`,
  `tests/clients/…` and `.venv/bin/…` resolve while files a command writes (upstream.pem) stay out of the work tree;
  HOME is a scratch home, so `~/.mitmproxy` is the proxy's confdir there.
- The README's ports become the test's: 8000 (the echo upstream of "The two commands") the `upstream` fixture's,
  8443 and 9000 (servers the section starts) free ports; 8080 becomes 0 (any free port) where a proxy is started
  (for scripts/run: HEADER_AUGMENT_PORT=0) and, in client commands, the port that proxy reports.
- `chromium` gets headless flags and `--dump-dom`.
- The environment is the test's own without its proxy variables, with that HOME, and JVM start-up flags.
The block that runs scripts/run starts the proxy; the block of `export`/`unset` lines is the client terminal's set-up
and runs before each client command; every other block of the section is a client, which must print one echo answer
per upstream URL it names, each carrying the demo provider's headers; the config.yaml block starts its own proxy.
"""

import concurrent.futures
import html
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import client_for, values_of
from echo_upstream import received
from processes import Running, free_port, processes_in_group
from servers import ROOT, Mitmdump, Upstream, clean_env, wait_until

SECTION = "Point your clients at it"
CLIENTS_PAGE = "docs/clients.md"  # each client's own settings, the section's details
CONFIG_PAGE, CONFIG_SUBSECTION = "docs/options.md", "The same settings in config.yaml"
HEADLESS = (
    "--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update "
    "--no-first-run --disable-sync --dump-dom"
)
TOOLS = ("curl", "node", "java", "keytool", "chromium", "openssl")
PLAIN_URL, TLS_URL = "http://127.0.0.1:8000/", "https://127.0.0.1:8443/"
UPSTREAM_URL = re.compile(r"https?://127\.0\.0\.1:(8000|8443)/")
# How each client is told to trust mitmproxy's CA, as the README writes it.
CA_SETTING = re.compile(
    r"--cacert \S+ |\b\w+=~/\.mitmproxy/mitmproxy-ca-cert\.pem |-Djavax\.net\.ssl\.trustStore\w*=\S+ "
    r"|--ignore-certificate-errors-spki-list=\S+ "
)
# What curl, Python, Node, Java and Chromium say when they do not trust a certificate.
CERT_ERROR = re.compile(
    r"SSL certificate problem|CERTIFICATE_VERIFY_FAILED|UNABLE_TO_VERIFY_LEAF_SIGNATURE|PKIX path building failed"
    r"|ERR_CERT_AUTHORITY_INVALID"
)
HANDSHAKE_FAILED = "Client TLS handshake failed"


@dataclass(frozen=True)
class Block:
    subsection: str
    text: str
    section: str = ""
    language: str = "sh"
    page: str = "README.md"  # or docs/NAME.md

    @property
    def lines(self) -> list[str]:
        """Its commands, continuation lines joined, without blank and comment lines."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]

    @property
    def name(self) -> str:
        """The program of its last command: curl, python, node, java, chromium, …"""
        words = [w for w in self.lines[-1].split() if not re.fullmatch(r"\w+=\S*", w)]
        return Path(words[0]).name.rstrip("0123456789.")

    @property
    def tools(self) -> list[str]:
        return [t for t in TOOLS if re.search(rf"(?:^|[\s(|]){t}\s", self.text, re.M)]


def readme_blocks(page: str = "README.md") -> list[Block]:
    """Every fenced block of the README (or of a page of docs/), in order, with the headings above it: its section
    (the last `#` or `##` heading, a docs page's title until its first `##`) and subsection (`###`; "" for none)."""
    blocks, section, subsection = [], "", ""
    pattern = r"^(#{1,3}) ([^\n]+)$|^```(\w*)\n(.*?)^```$"  # a fence is matched whole: a `#` line inside is no heading
    for match in re.finditer(pattern, (ROOT / page).read_text(), re.M | re.S):
        if match.group(1) in ("#", "##"):
            section, subsection = match.group(2), ""
        elif match.group(1):
            subsection = match.group(2)
        else:
            blocks.append(Block(subsection, match.group(4), section, match.group(3), page))
    return blocks


def section_blocks() -> tuple[list[Block], list[str]]:
    """The fenced blocks of the section, and the languages of any that are not `sh`."""
    found = [b for b in readme_blocks() if b.section == SECTION] + readme_blocks(CLIENTS_PAGE)
    found += [b for b in readme_blocks(CONFIG_PAGE) if b.section == CONFIG_SUBSECTION]
    return [b for b in found if b.language == "sh"], [b.language for b in found if b.language != "sh"]


BLOCKS, OTHER_BLOCKS = section_blocks()
STARTS = [b for b in BLOCKS if not b.subsection and re.search(r"^scripts/run ", b.text, re.M)]
ENVS = [b for b in BLOCKS if all(re.match(r"(export|unset) ", line) for line in b.lines)]
CONFIGS = [b for b in BLOCKS if b.page == CONFIG_PAGE]
CLIENTS = [b for b in BLOCKS if b not in STARTS + ENVS + CONFIGS]
ENV = ENVS[0] if ENVS else Block("", "")
HTTPS_COMMANDS = {f"{b.name}-{i}": line for b in CLIENTS for i, line in enumerate(b.lines) if TLS_URL in line}


def client_command(name: str, url: str) -> str:
    """The README's command of client `name` that fetches `url`."""
    return next(line for line in client_command_lines(name) if url in line)


def client_command_lines(name: str) -> list[str]:
    return [line for b in CLIENTS if b.name == name for line in b.lines]


def substitute(text: str, ports: dict[int, int]) -> str:
    """`text` with each port of `ports` written on its own (not part of a longer number or name) mapped."""
    numbers = "|".join(map(str, ports))
    return re.sub(rf"(?<![\w.])({numbers})(?![\w.])", lambda m: str(ports[int(m.group())]), text)


def scratch(base: Path, root: Path = ROOT) -> tuple[Path, Path]:
    """A working directory mirroring the repository's top level through links, and an empty home.

    Only directories and the files git tracks are linked: a file the user made there by following the README
    (upstream.pem) would be written through its link when a test runs the same command."""
    work, home = base / "work", base / "home"
    work.mkdir()
    home.mkdir()
    tracked = subprocess.run(
        ["git", "-C", str(root), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    top = {path.split("/", 1)[0] for path in tracked}
    for entry in root.iterdir():
        if entry.name != ".git" and (entry.name in top or (entry.is_dir() and not entry.is_symlink())):
            (work / entry.name).symlink_to(entry)
    return work, home


def shell_env(home: Path) -> dict[str, str]:
    # JIT settings that halve the JVM's start-up; they change nothing a command does.
    return clean_env() | {"HOME": str(home), "JDK_JAVA_OPTIONS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"}


def skip_unless_installed(commands: str) -> None:
    missing = [t for t in Block("", commands).tools if shutil.which(t) is None]
    if "chromium" in missing:
        pytest.skip("chromium is not on PATH (CI does not install it; `apt-get install chromium` runs this test)")
    if missing:
        pytest.skip(f"not on PATH: {', '.join(missing)}")


def answers(output: str) -> list[dict]:
    """The echo upstream's answers in a command's output (Chromium's DOM dump included)."""
    text, decoder = html.unescape(output), json.JSONDecoder()
    return [decoder.raw_decode(text, m.start())[0] for m in re.finditer(r'\{"method": ', text)]


def header(answer: dict, name: str) -> list[str]:
    return [v for n, v in received(answer) if n.lower() == name.lower()]


def has_demo_headers(answer: dict) -> bool:
    bearer = header(answer, "Authorization")
    return len(bearer) == 1 and bearer[0].startswith("Bearer demo.") and header(answer, "X-Tenant") == ["demo"]


@dataclass
class World:
    """The section's set-up, running: scripts/run, the upstreams, and where the client commands run."""

    work: Path
    home: Path
    ports: dict[int, int]
    proxy: Running

    def run(self, commands: str, *, setup: str = ENV.text) -> subprocess.CompletedProcess:
        """`commands` in a fresh bash after the client terminal's `setup`, as the README's text maps them."""
        script = f"set -euo pipefail\n{setup}\n{commands}"
        script = re.sub(r"^chromium ", f"chromium {HEADLESS} ", substitute(script, self.ports), flags=re.M)
        return subprocess.run(
            ["bash", "-c", script],
            cwd=self.work,
            env=shell_env(self.home),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def host(self, readme_port: int) -> str:
        return f"127.0.0.1:{self.ports[readme_port]}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    work, home = scratch(tmp_path_factory.mktemp("clients"))
    upstream = Upstream()
    ports = {8000: upstream.port, 8443: free_port()}
    env = shell_env(home) | {"HEADER_AUGMENT_PORT": "0"}
    proxy = Running(["bash", "-c", "set -euo pipefail\n" + substitute(STARTS[0].text, ports)], cwd=work, env=env)
    try:
        proxy.wait_for(rf"echo upstream listening on https://127\.0\.0\.1:{ports[8443]}/")
        ports[8080] = int(proxy.wait_for(r"proxy listening at 127\.0\.0\.1:(\d+)").group(1))
        proxy.wait_for("headers in use: Authorization, X-Tenant")
        yield World(work, home, ports, proxy)
        # "Stopping it": Ctrl-C (SIGINT to the terminal's foreground group) stops the proxy and the demo provider.
        os.killpg(proxy.pgid, signal.SIGINT)
        # Not wait_exit(): the echo upstream, still running, holds the output open.
        assert proxy.proc.wait(30) == 0, proxy.output
        left = processes_in_group(proxy.pgid).values()
        assert not [cmd for cmd in left if "mitmdump" in cmd or "demo_provider" in cmd], left
    finally:
        proxy.kill_group()
        upstream.close()


def test_the_section_shows_only_commands_that_are_run():
    assert OTHER_BLOCKS == []
    assert len(STARTS) == 1 and len(ENVS) == 1 and len(CONFIGS) == 1
    assert sorted(b.name for b in CLIENTS) == ["chromium", "curl", "java", "node", "python"]
    for block in CLIENTS:
        assert UPSTREAM_URL.search(block.text), block.text
    assert all(b.subsection != "Stopping it" for b in BLOCKS)


@pytest.mark.parametrize("block", CLIENTS, ids=lambda b: b.name)
def test_the_client_gets_the_demo_headers(world, block):
    skip_unless_installed(block.text)
    result = world.run(block.text)
    assert result.returncode == 0, result.stderr
    got = answers(result.stdout)
    wanted = [world.host(int(port)) for port in UPSTREAM_URL.findall(block.text)]
    assert [header(a, "Host") for a in got] == [[host] for host in wanted], result.stdout
    assert all(has_demo_headers(a) for a in got), got


@pytest.mark.parametrize("command", HTTPS_COMMANDS.values(), ids=HTTPS_COMMANDS.keys())
def test_https_fails_without_the_ca(world, command):
    skip_unless_installed(command)
    without = CA_SETTING.sub("", command)
    assert without != command, "each HTTPS command shows how its client trusts the CA"
    failed_before = world.proxy.output.count(HANDSHAKE_FAILED)
    result = world.run(without)
    assert world.host(8443) not in [h for a in answers(result.stdout) for h in header(a, "Host")]
    assert CERT_ERROR.search(result.stdout + result.stderr), result.stderr
    # It went through the proxy and failed there, on mitmproxy's certificate.
    wait_until(lambda: world.proxy.output.count(HANDSHAKE_FAILED) > failed_before, what="the proxy's handshake failure")


def test_requests_ignores_ssl_cert_file(world):
    command = client_command("python", "requests")
    assert "REQUESTS_CA_BUNDLE=" in command
    result = world.run(command.replace("REQUESTS_CA_BUNDLE=", "SSL_CERT_FILE="))
    assert result.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in result.stderr, result


def test_curl_ignores_an_upper_case_http_proxy(world):
    upper_case_only = "\n".join(line for line in ENV.lines if "http_proxy=" not in line)
    assert "HTTP_PROXY=" in upper_case_only
    result = world.run(client_command("curl", PLAIN_URL), setup=upper_case_only)
    (answer,) = answers(result.stdout)
    assert header(answer, "Host") == [world.host(8000)] and header(answer, "X-Tenant") == []


def test_no_proxy_sends_loopback_past_the_proxy(world):
    # The Python commands fetch the HTTPS upstream; over plain HTTP the answer shows whether the proxy was used.
    commands = [client_command("curl", PLAIN_URL)] + [
        CA_SETTING.sub("", line).replace(TLS_URL, PLAIN_URL) for line in client_command_lines("python")
    ]
    with_no_proxy = f"{ENV.text}\nexport no_proxy=localhost,127.0.0.1"
    runs = [(c, setup) for c in commands for setup in (ENV.text, with_no_proxy)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda run: world.run(run[0], setup=run[1]), runs))
    for (command, setup), result in zip(runs, results, strict=True):
        (answer,) = answers(result.stdout)
        assert has_demo_headers(answer) == (setup == ENV.text), (command, setup, answer)


def test_node_ignores_the_proxy_variables_by_itself(world):
    skip_unless_installed("node ")
    script = (
        f"const url = '{PLAIN_URL}';"
        "require('http').get(url, (r) => { r.pipe(process.stdout);"
        " r.on('end', () => fetch(url).then((f) => f.text()).then((t) => process.stdout.write(t))); });"
    )
    result = world.run(f"node -e {json.dumps(script)}")
    got = answers(result.stdout)
    assert len(got) == 2 and not any(has_demo_headers(a) for a in got), result


def test_java_skips_loopback_unless_non_proxy_hosts_is_emptied(world):
    command = client_command("java", PLAIN_URL)
    skip_unless_installed(command)
    # The README's command as it is gets the headers (test_the_client_gets_the_demo_headers); without the setting:
    default_bypass = CA_SETTING.sub("", command).replace(f" {TLS_URL}", "").replace("-Dhttp.nonProxyHosts= ", "")
    assert "nonProxyHosts" not in default_bypass and "-Dhttp.proxyHost=" in default_bypass
    result = world.run(default_bypass)
    (answer,) = answers(result.stdout)
    assert header(answer, "Host") == [world.host(8000)] and not has_demo_headers(answer), answer


def test_chromium_skips_loopback_without_the_bypass_override(world):
    command = client_command("chromium", TLS_URL)
    skip_unless_installed(command)
    plain = CA_SETTING.sub("", command).replace(TLS_URL, PLAIN_URL)
    default_bypass = plain.replace(" --proxy-bypass-list='<-loopback>'", "")
    assert default_bypass != plain
    result = world.run(default_bypass)
    (answer,) = answers(result.stdout)
    # No error either: the page simply comes straight from the upstream.
    assert header(answer, "Host") == [world.host(8000)] and not has_demo_headers(answer), answer


def test_a_self_signed_upstream_needs_ssl_insecure_or_its_certificate(world, provider, tmp_path):
    provider.answer({"Authorization": "Bearer demo.t", "X-Tenant": "demo"})
    upstream = world.host(8443)
    common = ("--set", f"header_provider_url={provider.url}", "--set", f"header_hosts={upstream}")
    cases = {  # without ssl_insecure (the scripts/run of the README has it), and the README's better way
        "default": ((), 502),
        "trusted": (("--set", "ssl_verify_upstream_trusted_ca=upstream.pem"), 200),
    }
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # separate confdirs: each makes its own CA
        starting = {
            name: pool.submit(Mitmdump, tmp_path / name, *common, *options, cwd=world.work)
            for name, (options, _) in cases.items()
        }
    try:
        for name, (_, status) in cases.items():
            proxy = starting[name].result()
            proxy.wait_for("headers in use")
            ca = ssl.create_default_context(cafile=tmp_path / name / "mitmproxy-ca-cert.pem")
            with client_for(proxy.proxy, verify=ca) as client:
                response = client.get(f"https://{upstream}/")
            assert response.status_code == status, response.text
            if status == 200:
                assert values_of(response, "X-Tenant") == ["demo"]
    finally:
        for future in starting.values():
            if future.exception() is None:
                future.result().stop()


def test_config_yaml_holds_the_same_settings(world, tmp_path):
    work, home = scratch(tmp_path)
    ports = world.ports | {9000: free_port(), 8080: 0}
    run = Running(
        ["bash", "-c", "set -euo pipefail\n" + substitute(CONFIGS[0].text, ports)], cwd=work, env=shell_env(home)
    )
    pool, other = concurrent.futures.ThreadPoolExecutor(1), None
    try:
        proxy_port = int(run.wait_for(r"proxy listening at 127\.0\.0\.1:(\d+)").group(1))
        # config.yaml wins over --set: with the file in its confdir, this header_hosts is ignored.
        other = pool.submit(Mitmdump, home / ".mitmproxy", "--set", "header_hosts=192.0.2.1", cwd=work)
        run.wait_for("headers in use: Authorization, X-Tenant")
        curl = client_command("curl", PLAIN_URL)
        assert f"`{curl}`" in (ROOT / CONFIG_PAGE).read_text()  # the command the section says works with it
        result = World(work, home, world.ports | {8080: proxy_port}, run).run(curl)
        (answer,) = answers(result.stdout)
        assert has_demo_headers(answer), answer
        other.result().wait_for("headers in use: Authorization, X-Tenant")
        with client_for(other.result().proxy) as client:
            assert values_of(client.get(f"http://{world.host(8000)}/"), "X-Tenant") == ["demo"]
    finally:
        pool.shutdown()
        if other is not None and other.exception() is None:
            other.result().stop()
        run.kill_group()


def test_a_file_the_user_made_beside_the_repository_is_not_written_by_the_tests(tmp_path):
    root = tmp_path / "clone"
    (root / "scripts").mkdir(parents=True)
    (root / "README.md").write_text("readme")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "README.md"], check=True)
    (root / "upstream.pem").write_text("the user's own")
    work, _ = scratch(tmp_path, root)
    assert sorted(p.name for p in work.iterdir()) == ["README.md", "scripts"]
    (work / "upstream.pem").write_text("what a test's openssl writes")
    assert (root / "upstream.pem").read_text() == "the user's own"
