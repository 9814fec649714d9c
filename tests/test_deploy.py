"""Keeps docker-compose.yaml and the Kubernetes sample honest where no container runtime runs."""

import ast
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml
from echo_upstream import received
from helpers.ports import free_port
from servers import ROOT, clean_env, wait_until

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
K8S = ROOT / "scripts" / "kubernetes"
GATEWAY = K8S / "gateway"
IMAGE_ROOT = "/srv/header-augment"  # WORKDIR of the compose image
POD_ADDON = "/srv/header-augment/addon"  # where the samples' ConfigMaps put the addon and its package
COMMAND_MODULE = "header_augment_core.cli"  # the header-augment command, as the containers run it
RUNTIME = ROOT / "requirements" / "runtime.txt"
RUNTIME_PINS = [line for line in RUNTIME.read_text().splitlines() if line and not line.startswith("#")]
EXTRAS = ("aws", "vault")  # requirements/NAME.txt: pyproject's optional dependencies
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
    (requirements/aws.txt, vault.txt: not one that only arrives with another's dependencies), and each pin is imported
    (importlib.metadata maps import names to the distributions installed here)."""
    extras = [
        line
        for name in EXTRAS
        for line in (ROOT / "requirements" / f"{name}.txt").read_text().splitlines()
        if line[:1].isalnum()
    ]
    declared = {canonical_name(pin.partition("==")[0]) for pin in RUNTIME_PINS + extras}
    providers = importlib.metadata.packages_distributions()
    imported = imported_packages()
    assert {"mitmproxy", "httpx", "httpcore", "tornado", "ruamel"} <= set(imported)  # the parse sees the imports
    undeclared = {
        top: sorted(modules)
        for top, modules in imported.items()
        if not {canonical_name(d) for d in providers.get(top, [top])} & declared
    }
    assert not undeclared, f"imported but not pinned in requirements/runtime.txt or an extra's: {undeclared}"
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
            + [str(K8S / "deployment.yaml"), str(K8S / "configmap.yaml")]
            + [str(path) for path in sorted(GATEWAY.glob("*.yaml"))],
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
    # The header-augment command, which loads the script beside its package: both on the PYTHONPATH given.
    assert sidecar["command"][:3] == ["python", "-m", COMMAND_MODULE]
    assert f"{POD_ADDON}/header_augment.py" in files_in_pod["header-augment"]
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
    assert {"name": "PYTHONPATH", "value": f"/deps:{POD_ADDON}"} in sidecar["env"]


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


def _install_container(sample: str) -> dict:
    spec = pod_spec() if sample == "deployment" else gateway_objects()[("Deployment", "gateway")]["spec"]["template"]
    return next(c for c in spec["spec"]["initContainers"] if c["name"] == "install-requirements")


@pytest.mark.parametrize("sample", ["deployment", "gateway"])
def test_init_container_installs_every_runtime_pin_but_mitmproxy(tmp_path, sample):
    """The init container's own shell command, run here against requirements/runtime.txt with `pip` printing its
    arguments and the requirements file it is given instead of installing: the image has mitmproxy, and `pip
    --target` would install it a second time. (The gateway's split the pins into words, so a pin's environment marker
    became arguments pip refuses, and its pods never started.)"""
    init = _install_container(sample)
    sh, dash_c, command = init["command"]
    assert (sh, dash_c) == ("sh", "-c") and "pip install --no-cache-dir --target=/deps -r " in command
    command = command.replace("/tmp/pins.txt", f"{tmp_path}/pins.txt")
    command = command.replace("/srv/requirements/runtime.txt", str(RUNTIME))
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
    if words[1:3] == ["-m", COMMAND_MODULE]:
        words = [*words[:3], "--set", f"confdir={confdir}", *words[3:]]
    return words


def local_environment(service: str) -> dict[str, str]:
    """A compose service's environment for a local process: the image's clone is this one."""
    environment = COMPOSE["services"][service].get("environment", {})
    return {k: v.replace(IMAGE_ROOT, str(ROOT)) for k, v in environment.items() if k == "PYTHONPATH"}


def test_the_stack_runs_locally(tmp_path):
    ports = {9000: free_port(), 8000: free_port(), 8080: free_port(), 9090: free_port()}
    env = clean_env()
    procs = {}
    try:
        for service in ("proxy", "provider", "upstream"):
            procs[service] = subprocess.Popen(
                local_command(service, ports, tmp_path),
                cwd=ROOT,
                env=env | local_environment(service),
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
    # What the command does: find the script beside its package on the PYTHONPATH, which mitmproxy then loads.
    (path,) = [e["value"] for e in sidecar["env"] if e["name"] == "PYTHONPATH"]
    pythonpath = ":".join(str(tmp_path / part.lstrip("/")) for part in path.split(":"))
    load = f"import runpy; from {COMMAND_MODULE} import script_path; runpy.run_path(script_path()); print('loaded')"
    loaded = subprocess.run(
        [sys.executable, "-c", load],
        cwd=tmp_path,
        env=clean_env() | {"PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0 and loaded.stdout.strip() == "loaded", loaded.stderr


# -- the shared gateway (scripts/kubernetes/gateway/) -------------------------------------------------------------

# Made with kubectl as the README says (they hold the CA, which no sample should ship): name -> the README's command.
MADE_WITH_KUBECTL = {
    "gateway-ca": "kubectl create secret generic gateway-ca --from-file=mitmproxy-ca.pem=",
    "gateway-ca-cert": "kubectl create configmap gateway-ca-cert --from-file=mitmproxy-ca-cert.pem=",
}


def gateway_objects() -> dict[tuple[str, str], dict]:
    """(kind, name) -> object, for every file of the gateway sample."""
    return {
        (d["kind"], d["metadata"]["name"]): d
        for path in sorted(GATEWAY.glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    }


def test_the_gateway_scales_out_and_stays_up_through_disruptions():
    objects = gateway_objects()
    deployment = objects[("Deployment", "gateway")]
    spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert spec["replicas"] >= 2 and spec["selector"]["matchLabels"] == labels
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert all(c["labelSelector"]["matchLabels"] == labels for c in spread.values())
    (proxy,) = pod["containers"]
    args = proxy["command"]
    listen = next(a for a in args if a.startswith("header_admin_listen="))
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports == {"proxy": 8080, "admin": int(listen.rsplit(":", 1)[1])}
    assert "--listen-port=8080" in args
    for probe, path in (("startupProbe", "/ready"), ("readinessProbe", "/ready"), ("livenessProbe", "/live")):
        assert proxy[probe]["httpGet"] == {"path": path, "port": "admin"}
    assert proxy["resources"]["requests"]["cpu"]  # what the autoscaler's utilisation is a share of
    # One CA for every replica, from a Secret, in a confdir mitmproxy can write to (it adds mitmproxy-dhparam.pem
    # there at start-up, and a read-only Secret volume as the confdir made it fail).
    confdir = next(a.removeprefix("confdir=") for a in args if a.startswith("confdir="))
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[confdir]["name"]] == {"name": mounts[confdir]["name"], "emptyDir": {}}
    ca = mounts[f"{confdir}/mitmproxy-ca.pem"]
    assert ca["subPath"] == "mitmproxy-ca.pem" and volumes[ca["name"]]["secret"]["secretName"] == "gateway-ca"

    service = objects[("Service", "gateway")]["spec"]
    assert service["selector"] == labels and service["ports"] == [
        {"name": "proxy", "port": 8080, "targetPort": "proxy"}
    ]
    budget = objects[("PodDisruptionBudget", "gateway")]["spec"]
    assert budget["selector"]["matchLabels"] == labels and 0 < budget["minAvailable"] < spec["replicas"]
    hpa = objects[("HorizontalPodAutoscaler", "gateway")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["minReplicas"] == spec["replicas"] < hpa["maxReplicas"]
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]


def test_only_labelled_clients_reach_the_proxy_port():
    objects = gateway_objects()
    policy = objects[("NetworkPolicy", "gateway")]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app": "gateway"} and policy["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["ingress"]}
    assert set(by_port) == {8080, 9090}
    (clients,) = by_port[8080]
    assert set(clients) == {"podSelector"}  # pods of this namespace with the label, nothing wider
    client_labels = objects[("Deployment", "orders")]["spec"]["template"]["metadata"]["labels"]
    assert clients["podSelector"]["matchLabels"].items() <= client_labels.items()
    gateway_labels = objects[("Deployment", "gateway")]["spec"]["template"]["metadata"]["labels"]
    assert not clients["podSelector"]["matchLabels"].items() <= gateway_labels.items()


def test_the_gateway_references_what_exists():
    objects = gateway_objects()
    maps = {d["metadata"]["name"] for d in k8s_documents("configmap.yaml")}
    maps |= {name for kind, name in objects if kind == "ConfigMap"}
    secrets = {name for kind, name in objects if kind == "Secret"}
    readme = (ROOT / "docs" / "kubernetes.md").read_text()
    for name, command in MADE_WITH_KUBECTL.items():
        assert command in readme, name
    for kind, name in (("Deployment", "gateway"), ("Deployment", "orders")):
        pod = objects[(kind, name)]["spec"]["template"]["spec"]
        for volume in pod["volumes"]:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in maps | set(MADE_WITH_KUBECTL), volume
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets | set(MADE_WITH_KUBECTL), volume
        mounted = {m["name"] for c in pod["containers"] + pod.get("initContainers", []) for m in c["volumeMounts"]}
        assert mounted == {v["name"] for v in pod["volumes"]}
        for container in pod["containers"]:
            for env in container.get("env", []):
                if "valueFrom" in env:
                    ref = env["valueFrom"]["secretKeyRef"]
                    assert ref["key"] in objects[("Secret", ref["name"])]["stringData"]


def gateway_pod_files(root: Path) -> list[str]:
    """Lay out the gateway container's mounts under `root` as the pod has them (Secrets and ConfigMaps as the
    kubelet writes them: each key a symlink into a ..data directory), with a CA made by mitmproxy; its command."""
    objects = gateway_objects()
    maps = {d["metadata"]["name"]: d["data"] for d in k8s_documents("configmap.yaml")}
    maps |= {name: d["data"] for (kind, name), d in objects.items() if kind == "ConfigMap"}
    secrets = {name: d["stringData"] for (kind, name), d in objects.items() if kind == "Secret"}
    pod = objects[("Deployment", "gateway")]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (proxy,) = pod["containers"]
    for mount in proxy["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            data = maps[volume["configMap"]["name"]]
        elif "secret" in volume and volume["secret"]["secretName"] in secrets:
            data = secrets[volume["secret"]["secretName"]]
        else:
            continue
        target = root / mount["mountPath"].lstrip("/")
        (target / "..data").mkdir(parents=True, exist_ok=True)
        for key, text in data.items():
            (target / "..data" / key).write_text(text)
            (target / key).symlink_to(Path("..data") / key)
    return proxy["command"]


def test_the_gateway_gives_each_client_its_own_token(tmp_path, upstream):
    """The gateway's container as a local process: its command, its mounted files (paths under a temporary root,
    the providers' hosts pointed at a local upstream), the client's HTTPS_PROXY user and password."""
    root = tmp_path / "pod"
    command = gateway_pod_files(root)
    providers = root / "etc/header-augment/providers/..data/providers.yaml"
    text = providers.read_text().replace("/run/", f"{root}/run/")
    providers.write_text(text.replace("hosts: api.partner.example", f"hosts: 127.0.0.1:{upstream.port}"))
    confdir = tmp_path / "confdir"
    words = []
    for word in command:
        for prefix in ("/srv/header-augment/", "/etc/header-augment/"):
            word = word.replace(prefix, f"{root}{prefix}")
        words.append(word.replace("0.0.0.0", "127.0.0.1").replace("=8080", "=0").replace(":9090", ":0"))
    assert words[:3] == ["python", "-m", COMMAND_MODULE]
    words = [sys.executable, *words[1:]]
    words[words.index("confdir=/mitmproxy")] = f"confdir={confdir}"
    (container,) = gateway_objects()[("Deployment", "gateway")]["spec"]["template"]["spec"]["containers"]
    (path,) = [e["value"] for e in container["env"] if e["name"] == "PYTHONPATH"]
    env = clean_env() | {"PYTHONPATH": ":".join(f"{root}{part}" for part in path.split(":"))}
    proc = subprocess.Popen(words, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("proxy listening at" in line for line in lines) or proc.poll() is not None, what="up")
        port = int(re.search(r"proxy listening at 127\.0\.0\.1:(\d+)", "".join(lines)).group(1))
        client = gateway_objects()[("Secret", "orders-proxy")]["stringData"]["HTTPS_PROXY"]
        proxy_url = client.replace("@gateway:8080", f"@127.0.0.1:{port}")
        wait_until(lambda: any("orders" in line and "headers in use" in line for line in lines), what="orders ready")
        with httpx.Client(proxy=proxy_url, trust_env=False, timeout=10) as http:
            seen = received(http.get(upstream.url).json())
        assert [v for n, v in seen if n.lower() == "authorization"] == ["Bearer sample-orders-token"]
        assert not [n for n, _ in seen if n.lower() == "proxy-authorization"]
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", trust_env=False, timeout=10) as http:
            assert http.get(upstream.url).status_code == 407
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(5)
    assert "sample-orders-token" not in "".join(lines) and "orders-demo-password" not in "".join(lines)


def test_each_sample_client_password_is_its_htpasswd_line():
    import bcrypt

    objects = gateway_objects()
    lines = dict(
        line.split(":", 1) for line in objects[("Secret", "gateway-htpasswd")]["stringData"]["htpasswd"].splitlines()
    )
    url = httpx.URL(objects[("Secret", "orders-proxy")]["stringData"]["HTTPS_PROXY"])
    assert (url.host, url.port) == ("gateway", 8080)  # the Service
    assert bcrypt.checkpw(url.password.encode(), lines[url.username].encode())
    providers = yaml.safe_load(objects[("ConfigMap", "gateway-providers")]["data"]["providers.yaml"])["providers"]
    assert sorted(name for entry in providers for name in entry["clients"]) == sorted(lines)  # one entry per user
