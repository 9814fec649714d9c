"""Keeps docker-compose.yaml and the Kubernetes sample honest where no container runtime runs."""

import ast
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from helpers.ports import free_port
from servers import ROOT, clean_env, wait_until

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
K8S = ROOT / "scripts" / "kubernetes"
IMAGE_ROOT = "/srv/header-augment"  # WORKDIR of the compose image
RUNTIME = ROOT / "requirements" / "runtime.txt"
RUNTIME_PINS = [line for line in RUNTIME.read_text().splitlines() if line and not line.startswith("#")]
MITMPROXY_PIN = next(pin for pin in RUNTIME_PINS if pin.startswith("mitmproxy=="))


def test_runtime_pins_are_exact_and_in_requirements_txt():
    exact = r"([\w.-]+)==[\w.]+(?:; python_version < \"[\d.]+\")?"  # a pin only older Pythons need has a marker
    assert {re.fullmatch(exact, pin).group(1) for pin in RUNTIME_PINS} == {
        "mitmproxy",
        "httpx",
        "prometheus_client",
        "httpcore",
        "certifi",
        "idna",
        "tornado",
        "ruamel.yaml",
        "PyJWT",
        "brotli",
        "backports.zstd",
        "cryptography",
    }
    assert "-r requirements/runtime.txt" in (ROOT / "requirements.txt").read_text().splitlines()


# `compression` (zstd) joins the standard library in Python 3.14 (PEP 784); before that, backports.zstd stands in.
STANDARD_LIBRARY = sys.stdlib_module_names | {"compression"}


def imported_packages() -> dict[str, set[str]]:
    """Top-level package → the modules under addon/ that import it (absolute imports only; the addon's own
    modules and the standard library left out)."""
    addon = ROOT / "addon"
    own = {p.stem for p in addon.glob("*.py")} | {p.name for p in addon.iterdir() if p.is_dir()}
    found: dict[str, set[str]] = {}
    for path in addon.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in own and top not in STANDARD_LIBRARY:
                    found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


def canonical_name(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_every_package_the_addon_imports_is_a_runtime_pin():
    """Each import under addon/ comes from a distribution pinned in requirements/runtime.txt or an extra's file
    (requirements/aws.txt: not one that only arrives with another's dependencies), and each pin is imported
    (importlib.metadata maps import names to the distributions installed here)."""
    extras = [line for line in (ROOT / "requirements" / "aws.txt").read_text().splitlines() if line[:1].isalnum()]
    declared = {canonical_name(pin.partition("==")[0]) for pin in RUNTIME_PINS + extras}
    providers = importlib.metadata.packages_distributions()
    imported = imported_packages()
    assert {"mitmproxy", "httpx", "httpcore", "tornado", "ruamel"} <= set(imported)  # the parse sees the imports
    undeclared = {
        top: sorted(modules)
        for top, modules in imported.items()
        if not {canonical_name(d) for d in providers.get(top, [top])} & declared
    }
    assert not undeclared, f"imported but not pinned in requirements/runtime.txt or aws.txt: {undeclared}"
    used = {canonical_name(d) for top in imported for d in providers.get(top, [top])}
    assert declared <= used, f"pinned but imported nowhere under addon/: {sorted(declared - used)}"


def test_compose_file_is_valid_against_the_compose_specification():
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)  # the schema's own $schema: draft-07
    errors = sorted(validator.iter_errors(COMPOSE), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_emulates_a_pod():
    services = COMPOSE["services"]
    assert set(services) == {"proxy", "provider", "upstream", "app"}
    assert services["provider"]["network_mode"] == "service:proxy"
    assert services["app"]["network_mode"] == "service:proxy"
    assert "network_mode" not in services["upstream"]
    assert services["app"]["environment"]["HTTP_PROXY"] == "http://127.0.0.1:8080"
    for name in ("proxy", "provider", "upstream"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    assert "/ready" in services["proxy"]["healthcheck"]["test"][-1]  # healthy = credentials are there
    assert {d: c["condition"] for d, c in services["app"]["depends_on"].items()} == {
        "proxy": "service_healthy",
        "provider": "service_healthy",
        "upstream": "service_healthy",
    }
    dockerfile = services["proxy"]["build"]["dockerfile_inline"].splitlines()
    assert dockerfile[0] == "FROM mitmproxy/mitmproxy:" + MITMPROXY_PIN.split("==")[1]  # the image is the pin
    # every runtime pin is installed, from the one file that holds them
    assert dockerfile.index("COPY requirements/runtime.txt ./requirements/") < dockerfile.index(
        "RUN pip install --no-cache-dir -r requirements/runtime.txt"
    )


def test_every_file_the_stack_references_exists():
    dockerfile = COMPOSE["services"]["proxy"]["build"]["dockerfile_inline"]
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    for name, service in COMPOSE["services"].items():
        for word in service["command"]:
            for path in re.findall(r"(?:addon|scripts)/[\w./-]+\.py", word):
                assert (ROOT / path).is_file(), f"{name}: {path}"


def k8s_documents(name):
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_configmap_matches_the_code_byte_for_byte():
    assert subprocess.run([sys.executable, str(K8S / "generate_configmap.py"), "--check"]).returncode == 0
    maps = {d["metadata"]["name"]: d["data"] for d in k8s_documents("configmap.yaml")}
    package = ROOT / "addon" / "header_augment_core"
    expected = {
        "header-augment-addon": [ROOT / "addon" / "header_augment.py"],
        "header-augment-lib": sorted(package.glob("*.py")),
        "header-augment-lib-kinds": sorted((package / "kinds").glob("*.py")),
        "header-augment-demo-provider": [ROOT / "scripts" / "demo_provider.py"],
        "header-augment-requirements": [RUNTIME],
    }
    assert {p.relative_to(package).parent for p in package.rglob("*.py")} == {Path("."), Path("kinds")}
    assert sorted(maps) == sorted(expected)
    for name, files in expected.items():
        assert sorted(maps[name]) == sorted(f.name for f in files)
        for path in files:
            assert maps[name][path.name].encode() == path.read_bytes(), path


def test_kubernetes_manifests_are_strictly_valid():
    for version in ("1.29.0", "1.37.0"):  # native sidecars need Kubernetes >= 1.29
        result = subprocess.run(
            [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "-k", version, "--quiet"]
            + [str(K8S / "deployment.yaml"), str(K8S / "configmap.yaml")],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def pod_spec():
    (deployment,) = k8s_documents("deployment.yaml")
    return deployment["spec"]["template"]


def test_deployment_references_what_exists():
    pod = pod_spec()["spec"]
    maps = {d["metadata"]["name"]: d["data"] for d in k8s_documents("configmap.yaml")}
    volumes = {v["name"]: v for v in pod["volumes"]}
    files_in_pod: dict[str, set[str]] = {}
    for container in pod["containers"] + pod["initContainers"]:
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]  # every mount names a declared volume
            if "configMap" in volume:
                keys = maps[volume["configMap"]["name"]]  # ...and every ConfigMap is generated
                files_in_pod.setdefault(container["name"], set()).update(f"{mount['mountPath']}/{k}" for k in keys)
    init = {c["name"]: c for c in pod["initContainers"]}
    sidecar = init["header-augment"]
    assert sidecar["image"] == "mitmproxy/mitmproxy:" + MITMPROXY_PIN.split("==")[1]
    script = sidecar["command"][sidecar["command"].index("-s") + 1]
    assert script in files_in_pod["header-augment"]
    package = ROOT / "addon" / "header_augment_core"
    for path in package.rglob("*.py"):  # the whole package, subpackages included, is where the script finds it
        assert (
            f"/srv/header-augment/addon/header_augment_core/{path.relative_to(package)}"
            in files_in_pod["header-augment"]
        ), path
    provider_script = init["header-provider"]["command"][1]
    assert provider_script in files_in_pod["header-provider"]
    (app,) = pod["containers"]
    app_env = {e["name"]: e["value"] for e in app["env"]}
    assert app_env["HTTP_PROXY"] == app_env["HTTPS_PROXY"] == "http://127.0.0.1:8080"
    assert app_env["CURL_CA_BUNDLE"].startswith("/mitmproxy/")
    install = init["install-requirements"]
    assert install["image"] == sidecar["image"]
    assert "/srv/requirements/runtime.txt" in files_in_pod[install["name"]]  # from the generated ConfigMap
    assert {"name": "deps", "mountPath": "/deps"} in install["volumeMounts"]
    assert {"name": "PYTHONPATH", "value": "/deps"} in sidecar["env"]


def test_the_proxy_is_a_native_sidecar_that_holds_the_app_until_credentials_are_there():
    template = pod_spec()
    init = template["spec"]["initContainers"]
    names = [c["name"] for c in init]
    # In order: requirements installed, then the provider, then the proxy (each started before the next).
    assert names == ["install-requirements", "header-provider", "header-augment"]
    assert "restartPolicy" not in init[0] and init[1]["restartPolicy"] == init[2]["restartPolicy"] == "Always"
    proxy = init[2]
    args = proxy["command"]
    listen = next(a for a in args if a.startswith("header_admin_listen="))
    port = int(listen.rsplit(":", 1)[1])
    assert {p["name"]: p["containerPort"] for p in proxy["ports"]} == {"admin": port}
    assert proxy["startupProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/live", "port": "admin"}
    assert "header_require=true" in args and "header_hosts=api.example.com" in args
    annotations = template["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }


def test_init_container_installs_every_runtime_pin_but_mitmproxy(tmp_path):
    """The init container's own shell command, run here against requirements/runtime.txt with `pip` printing its
    arguments and the requirements file it is given instead of installing: the image has mitmproxy, and `pip
    --target` would install it a second time."""
    init = pod_spec()["spec"]["initContainers"][0]
    sh, dash_c, command = init["command"]
    assert (sh, dash_c) == ("sh", "-c") and "pip install --no-cache-dir --target=/deps -r " in command
    command = command.replace("/srv/requirements/runtime.txt", str(RUNTIME)).replace("/tmp/", f"{tmp_path}/")
    printed = subprocess.run(
        ["sh", "-c", 'pip() { printf "%s\\n" "$@"; cat "$5"; }; ' + command], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    pins = tmp_path / "pins.txt"
    assert printed == ["install", "--no-cache-dir", "--target=/deps", "-r", str(pins)] + [
        p for p in RUNTIME_PINS if p != MITMPROXY_PIN
    ]


def healthy(service: str, ports: dict[int, int]) -> bool:
    """The compose service's own health check, run here (with the ports the local stack uses)."""
    words = local_words(COMPOSE["services"][service]["healthcheck"]["test"][1:], ports)
    return subprocess.run(words, capture_output=True, timeout=10).returncode == 0


def local_words(command: list[str], ports: dict[int, int]) -> list[str]:
    """A compose command as a local process on loopback with ephemeral ports."""
    words = []
    for word in command:
        for fixed, ephemeral in ports.items():
            word = re.sub(rf"(?<![\d]){fixed}(?![\d])", str(ephemeral), word)
        word = re.sub(r"\bupstream\b", "127.0.0.1", word.replace("0.0.0.0", "127.0.0.1"))  # the host, not the file
        words.append(word)
    if words[0] == "python":
        words[0] = sys.executable
    return words


def local_command(service: str, ports: dict[int, int], confdir: Path) -> list[str]:
    words = local_words(COMPOSE["services"][service]["command"], ports)
    if words[0] == "mitmdump":
        words = [str(Path(sys.executable).parent / "mitmdump"), "--set", f"confdir={confdir}", *words[1:]]
    return words


def test_the_stack_runs_locally(tmp_path):
    ports = {9000: free_port(), 8000: free_port(), 8080: free_port(), 9090: free_port()}
    env = clean_env()
    procs = {}
    try:
        for service in ("proxy", "provider", "upstream"):
            procs[service] = subprocess.Popen(
                local_command(service, ports, tmp_path),
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        for service in ("proxy", "provider", "upstream"):  # what compose waits for before it starts the app
            wait_until(lambda service=service: healthy(service, ports), timeout=20, what=f"{service} healthy")
        app_env = env | {
            k: re.sub(r"8080", str(ports[8080]), v) for k, v in COMPOSE["services"]["app"]["environment"].items()
        }
        app = subprocess.run(
            local_command("app", ports, tmp_path), cwd=ROOT, env=app_env, capture_output=True, text=True, timeout=60
        )
        assert app.returncode == 0, app.stdout + app.stderr
        seen = [line for line in app.stdout.splitlines() if line.startswith("app: upstream saw")]
        assert len(seen) == 5, app.stdout
        for line in seen:
            assert "Authorization: Bearer demo." in line and "X-Tenant: demo" in line
    finally:
        for proc in procs.values():
            proc.terminate()
        outputs = {service: proc.communicate(timeout=10)[0] for service, proc in procs.items()}
    assert "headers in use: Authorization, X-Tenant" in outputs["proxy"], outputs["proxy"]
    assert not re.search(r"Bearer demo\.\w", outputs["proxy"]), "a token value reached the proxy's log"


@pytest.mark.parametrize("service", ["provider", "upstream", "app"])
def test_service_scripts_show_their_help(service):
    command = COMPOSE["services"][service]["command"]
    result = subprocess.run([sys.executable, str(ROOT / command[1]), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage" in result.stdout, shlex.join(command)


def test_the_pod_can_import_the_addon(tmp_path):
    """Lay the ConfigMaps out as deployment.yaml mounts them in the proxy's container, then load the addon from
    there: a subpackage missing from the ConfigMaps broke the sidecar with ModuleNotFoundError."""
    maps = {d["metadata"]["name"]: d["data"] for d in k8s_documents("configmap.yaml")}
    pod = pod_spec()["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "header-augment")
    for mount in sidecar["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            target = tmp_path / mount["mountPath"].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            for name, text in maps[volume["configMap"]["name"]].items():
                (target / name).write_text(text)
    script = tmp_path / sidecar["command"][sidecar["command"].index("-s") + 1].lstrip("/")
    loaded = subprocess.run(
        [sys.executable, "-c", f"import runpy; runpy.run_path({str(script)!r}); print('loaded')"],
        cwd=tmp_path,
        env=clean_env() | {"PYTHONPATH": str(script.parent)},
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0 and loaded.stdout.strip() == "loaded", loaded.stderr
