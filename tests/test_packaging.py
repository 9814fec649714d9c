"""`pip install .` gives a working install: a wheel built from the tree, installed into a fresh venv, runs the proxy.

The wheel is built once (with build isolation, as pip and pipx do) and installed once into a new venv whose
dependencies pip resolves from the configured index; the tests then use that venv's `header-augment` command.
"""

import email.parser
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import client_for, values_of
from processes import Running
from servers import ROOT, clean_env

# Arguments every run of the installed command gets besides the provider URL: where the headers may go.
EXTRA_ARGS = ["--set", "header_hosts=127.0.0.1"]


def pins(name: str) -> list[str]:
    return [line for line in (ROOT / "requirements" / name).read_text().splitlines() if line and line[0] != "#"]


RUNTIME_PINS = pins("runtime.txt")
EXTRA_PINS = {name: pins(f"{name}.txt") for name in ("aws", "vault")}  # the extras, each in its own file
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# Building and installing take 5-20 s (more with the other core busy); the first test using them pays for it.
pytestmark = pytest.mark.timeout(240)


def pip(*args: str) -> None:
    """This venv's pip, with the machine's pip configuration (index, constraints) and environment."""
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, f"pip {' '.join(args)}:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    # A copy of the tree, so that the build's build/ and *.egg-info never land in (or come from) the clone.
    source = tmp_path_factory.mktemp("source") / "header-augment"
    skip = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, source, ignore=skip)
    return source


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pip("wheel", "--no-deps", "--wheel-dir", str(out), str(source))
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed. Without a pip of its own: this pip installs into it (`--python`),
    which saves seeding one; --no-compile skips byte-compiling mitmproxy's dependencies up front."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip("--python", str(venv / "bin" / "python"), "install", "--no-compile", str(wheel))
    return venv


def older_python() -> str | None:
    """A Python below requires-python with a pip, if the machine has one (Debian 12's python3.11 has)."""
    for name in ("python3.11", "python3.10", "python3.9"):
        if (path := shutil.which(name)) and subprocess.run(
            [path, "-m", "pip", "--version"], capture_output=True
        ).returncode == 0:
            return path
    return None


def test_an_older_python_is_refused_naming_requires_python(source, tmp_path):
    """Before pip 24, pip resolved the pins first and said only "No matching distribution found for
    mitmproxy==12.3.1"; setup.py refuses first, with pyproject.toml's requirement."""
    python = older_python()
    if python is None:
        pytest.skip("no Python older than 3.12 with pip on this machine")
    result = subprocess.run(
        [python, "-m", "pip", "wheel", "--wheel-dir", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and not list(tmp_path.glob("*.whl"))
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f"requires Python {requires} (requires-python in pyproject.toml)" in output, output
    assert "No matching distribution" not in output


def canonical(pin: str) -> str:
    name, _, version = pin.partition("==")
    return re.sub(r"[-_.]+", "-", name).lower() + "==" + version


def test_wheel_holds_the_addon_and_requires_the_runtime_pins(wheel):
    with zipfile.ZipFile(wheel) as archive:
        modules = {name for name in archive.namelist() if name.endswith(".py")}
        (metadata_name,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
    addon = ROOT / "addon"
    in_tree = {p.relative_to(addon).as_posix() for p in addon.rglob("*.py") if "__pycache__" not in p.parts}
    assert modules == in_tree  # header_augment.py and all of header_augment_core, subpackages included
    assert metadata["Name"] == "header-augment" and metadata["Version"] == VERSION
    requires = metadata.get_all("Requires-Dist")
    runtime = [r for r in requires if "extra ==" not in r]  # a pin with a python_version marker is one of them
    assert sorted(canonical(r) for r in runtime) == sorted(map(canonical, RUNTIME_PINS))
    assert metadata.get_all("Provides-Extra") == list(EXTRA_PINS)
    for name, extra_pins in EXTRA_PINS.items():
        extra = [r.partition(";")[0].strip() for r in requires if r.partition(";")[2].strip() == f'extra == "{name}"']
        assert sorted(map(canonical, extra)) == sorted(map(canonical, extra_pins)), name
    assert len(requires) == len(RUNTIME_PINS) + sum(map(len, EXTRA_PINS.values()))


def test_installed_command_prints_its_version(venv):
    result = subprocess.run(
        [str(venv / "bin" / "header-augment"), "--version"], capture_output=True, text=True, env=clean_env()
    )
    assert result.returncode == 0, result.stderr
    mitmproxy_version = next(p for p in RUNTIME_PINS if p.startswith("mitmproxy==")).split("==")[1]
    assert result.stdout == f"header-augment {VERSION}\nmitmproxy {mitmproxy_version}\n"


def start_installed(venv: Path, tmp_path: Path, *args: str) -> tuple[Running, Running]:
    """The demo provider from the repository, and the installed `header-augment` using it, in tmp_path."""
    provider = Running(
        [sys.executable, "-u", str(ROOT / "scripts" / "demo_provider.py"), "--port", "0"], cwd=tmp_path, env=clean_env()
    )
    url = provider.wait_for(r"listening on (http://\S+)").group(1)
    command = [
        str(venv / "bin" / "header-augment"),
        *("--listen-host", "127.0.0.1", "--listen-port", "0"),
        *("--set", f"confdir={tmp_path / 'confdir'}", "--set", f"header_provider_url={url}"),
        *EXTRA_ARGS,
        *args,
    ]
    return provider, Running(command, cwd=tmp_path, env=clean_env())


def assert_loads_the_installed_script(proxy: Running, venv: Path) -> None:
    script = Path(proxy.wait_for(r"Loading script (\S+)").group(1))
    assert script.name == "header_augment.py" and script.is_relative_to(venv), proxy.output


def test_installed_command_proxies_with_the_addon(venv, tmp_path, upstream):
    provider, proxy = start_installed(venv, tmp_path)
    try:
        port = int(proxy.wait_for(r"proxy listening at 127\.0\.0\.1:(\d+)").group(1))
        proxy.wait_for("headers in use: Authorization, X-Tenant")
        assert_loads_the_installed_script(proxy, venv)
        with client_for(f"http://127.0.0.1:{port}") as client:
            response = client.get(upstream.url + "/installed")
        assert values_of(response, "Authorization")[0].startswith("Bearer demo.")
        assert values_of(response, "X-Tenant") == ["demo"]
        proxy.proc.send_signal(signal.SIGINT)
        assert proxy.wait_exit() == 0, proxy.output
    finally:
        proxy.kill_group()
        provider.kill_group()


def test_installed_command_runs_mitmweb_with_web(venv, tmp_path):
    import socket

    with socket.socket() as s:  # mitmweb 12 reports web_port=0 as port 0: give it a free one
        s.bind(("127.0.0.1", 0))
        web_port = s.getsockname()[1]
    provider, proxy = start_installed(
        venv, tmp_path, "--set", f"web_port={web_port}", "--web", "--set", "web_open_browser=false"
    )
    try:
        proxy.wait_for(rf"Web server listening at http://127\.0\.0\.1:{web_port}/")
        proxy.wait_for("headers in use: Authorization, X-Tenant")
        assert_loads_the_installed_script(proxy, venv)
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.wait_exit() == 0, proxy.output
    finally:
        proxy.kill_group()
        provider.kill_group()
