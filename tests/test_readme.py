"""The README and the pages of docs/ outside "Point your clients at it" and docs/clients.md (tests/test_clients.py runs
those, and the config.yaml block of docs/options.md): every command they show is run here as written, every fenced
block is accounted for, and the tables of options and metrics are the addon's.

How the commands are run (the only liberties taken with their text):
- As in test_clients: from a scratch directory whose entries link to the repository's top level, with a scratch HOME
  (so `~/.mitmproxy`, the confdir, is each proxy's own) and the test's environment without its proxy variables. Ports
  the README names become the test's: 8000 (the echo upstream) and 9090 free ones, 8080 any free port (for
  scripts/run HEADER_AUGMENT_PORT=0) and, in the curl command, the port that proxy reports; 9000 (your own provider)
  a test provider's; 9901 (the admin endpoint) 0, which the page says picks a free port and logs it.
- The quick start's `scripts/run` gets `--set header_hosts=` with scripts/run's own default (127.0.0.1:8000 and
  localhost:8000), 8000 mapped like the echo upstream's: the default names port 8000, which need not be free here.
- The recipes' hosts (*.googleapis.com, an EKS endpoint, vault.example.com, api.partner.example, api.example.com) do
  not resolve here. So each recipe's scripts/run, the projected-token args, `header-augment` and the scripts/run
  examples of "The two commands" get `--mode upstream:` a `LoopbackProxy`, whose resolver answers 127.0.0.1:
  mitmproxy still sends each request to the name, which is what header_hosts is matched with, and the test sends
  its request to such a name on the echo upstream's port (the Vault recipe's port 8200 is mapped to it). Every
  proxy started here also gets `--set confdir=<scratch>`, and every one but scripts/run's (which take
  HEADER_AUGMENT_PORT and HOME) `--listen-host 127.0.0.1 --listen-port 0`.
- `--set header_admin_listen=127.0.0.1:9901` (Readiness, liveness and metrics) is given to a mitmdump whose provider
  the test holds, so that /ready can be seen before and after the first answer.
- Absolute paths become the same paths under a scratch root (`PATHS`, each named); the files the recipes assume are
  there are created: the cluster's CA (really the CA of the TLS echo upstream that stands in for the EKS endpoint, so
  mitmproxy verifies it with that file), the projected volume as the kubelet lays it out, the OAuth2 client secrets,
  the sandbox's OpenAI key. The container's /addon/header_augment.py is the clone's.
- `gcloud`, `aws` and `gh` are stand-ins (tests/helpers/bin/), first on PATH, answering exactly the recipes' arguments.
- The Drive recipe's `scripts/run login` runs as written, against a stand-in for Google's endpoints whose person
  approves every sign-in at once; the sandbox's workload block runs its lines against that section's proxy (its
  `https://` URL the echo upstream's, reached through `http_proxy`), and `gh` and `git` are checked by the requests
  they would send.
- `header-augment` (Install it) is `python -m header_augment_core.cli` from the clone: the function pyproject.toml
  installs as that command (tests/test_packaging.py runs the installed command from a wheel).
- The fleet simulation of docs/herd.md runs for 100 proxies; the bench of docs/performance.md only parses its
  arguments (tests/test_bench_smoke.py runs it at its smallest).
Every proxy is started at once by the module's `world`, and each test waits for its own.
"""

import base64
import datetime
import json
import logging
import os
import re
import shlex
import signal
import ssl
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import header_augment
import httpx
import pytest
import yaml
from conftest import client_for
from helpers.support import jwt, kubelet_volume
from mitmproxy import certs, exceptions
from mitmproxy.test import taddons
from processes import Running, processes_in_group
from prometheus_client.parser import text_string_to_metric_families
from servers import ADDON, MITMDUMP, ROOT, HeldProvider, LoopbackProxy, Mitmdump, Provider, Upstream, wait_until
from test_clients import BLOCKS as CLIENTS_BLOCKS
from test_clients import (
    Block,
    answers,
    free_port,
    has_demo_headers,
    header,
    readme_blocks,
    scratch,
    shell_env,
    substitute,
)
from token_issuers import (
    ACCESS_TOKEN_TYPE,
    JWT_BEARER_ASSERTION,
    JWT_TYPE,
    AuthlibSignIn,
    FederationEndpoint,
    GitHubApi,
    GoogleTokenEndpoint,
    rsa_key,
    signed,
)

from header_augment_core import settings as shared_settings
from header_augment_core.durations import parse_duration
from header_augment_core.kinds import KINDS
from header_augment_core.options import LOCATORS, OPTIONS
from header_augment_core.providers_file import load_providers_file

# A dozen proxies start at once: on a busy 2-core machine the first test may wait for most of them.
pytestmark = pytest.mark.timeout(150)

# The front page, then the reference: one page of docs/ per subject, each linked from the README's contents.
PAGES = ["README.md", *sorted(f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md"))]
TEXT = {page: (ROOT / page).read_text() for page in PAGES}
README = TEXT["README.md"]
CLIENT_BLOCKS = set(CLIENTS_BLOCKS)  # tests/test_clients.py runs those (all `sh`: it checks that)
BLOCKS = [b for page in PAGES for b in readme_blocks(page) if b not in CLIENT_BLOCKS]
STAND_INS = ROOT / "tests" / "helpers" / "bin"
VENV_BIN = MITMDUMP.parent
START = 90  # bound on a proxy's start-up with a dozen starting at once on a busy machine: only guards against a hang
LISTENING = r"proxy (?:\(upstream mode\) )?listening at 127\.0\.0\.1:(\d+)"
# Where the README's blocks keep files, each mapped to the same directory under a test's scratch root.
PATHS = (
    "/etc/header-augment",  # the cluster's CA, the static headers file, the providers files
    "/var/log/header-augment",  # the sandbox's audit log
    "/var/run/secrets/api-token",  # the projected volume
    "/run/secrets",  # the OAuth2 client secret
    "/var/run/secrets/tokens",  # the projected token exchanged for Google Cloud's
    "/var/run/secrets/azure",  # the token Azure workload identity projects
)
IN_THE_CLONE = {"/addon/header_augment.py": ADDON}  # where the pod mounts the addon
EKS_HOST = "0123456789ABCDEF0123456789ABCDEF.gr7.eu-west-1.eks.amazonaws.com"
OPENAI_KEY = "sk-the-real-openai-key-only-the-proxy-reads"  # the sandbox's /run/secrets/openai-key
OWN_HEADERS = {"Authorization": "Bearer from-your-own-provider", "X-Tenant": "acme"}  # the provider on port 9000
# What the recipes of the kinds that mint tokens name, which their token endpoints' stand-ins check.
GITHUB_APP, GITHUB_INSTALLATION = "123456", "7890123"
GOOGLE_ACCOUNT = "egress@my-project.iam.gserviceaccount.com"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
POOL = "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/my-pool/providers/my-cluster"
AZURE_CLIENT = "00000000-1111-2222-3333-444444444444"
AZURE_TOKEN_URL = "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token"
WORKLOAD = "system:serviceaccount:default:app"
DRIVE_CLIENT = "1234-abc.apps.googleusercontent.com"


def section_text(name: str, page: str = "README.md") -> str:
    """The `## name` section of the README or of a page of docs/ (`# name`: a page's text before its first `##`),
    `###` subsections included, fenced blocks left out."""
    text = re.sub(r"^```.*?^```$", "", TEXT[page], flags=re.M | re.S)
    start = re.search(rf"^#{{1,2}} {re.escape(name)}$", text, re.M).end()
    end = re.compile(r"^#{1,2} ", re.M).search(text, start)
    return text[start : end.start() if end else len(text)]


def blocks_in(section: str, language: str = "sh", page: str = "README.md") -> list[Block]:
    return [b for b in BLOCKS if b.page == page and b.section == section and b.language == language]


def only(items: list):
    (item,) = items
    return item


def mapped(text: str, root: Path) -> str:
    """`text` with each absolute path in it mapped: under `root` (PATHS) or into the clone; any other one fails."""
    for path in re.findall(r"(?<![\w.:/~-])/(?!/)[\w./-]+", text):  # `//host/…` is a network path, not a file
        assert path in IN_THE_CLONE or any(path == p or path.startswith(p + "/") for p in PATHS), path
    for path, there in IN_THE_CLONE.items():
        text = text.replace(path, str(there))
    for path in PATHS:
        text = re.sub(rf"(?<![\w./-]){re.escape(path)}(?![\w.-])", str(root) + path, text)
    return text


def setting(words: list[str], name: str) -> str:
    """The value of `--set name=…` among a command's words."""
    return only([w.split("=", 1)[1] for w in words if w.startswith(f"{name}=")])


def stand_in_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the stand-ins first on PATH, then the venv's mitmdump."""
    return env | {"PATH": f"{STAND_INS}:{VENV_BIN}:{env['PATH']}"}


def printed(command: str) -> str:
    """What a stand-in prints for `command`."""
    result = subprocess.run(shlex.split(command), env=stand_in_env(dict(os.environ)), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def in_use(run: Running, provider: str = ".*?") -> str:
    """The header names that a provider's first fetch put in use; fails at once on a failed one, naming its reason."""
    match = run.wait_for(rf"header provider {provider}: (?:headers in use: (.*)|refresh failed: .*)$", START)
    assert match.group(1) is not None, run.output
    return match.group(1)


def through(proxy_port: int, url: str, **kwargs) -> dict:
    """What the echo upstream saw of a GET of `url` through the proxy."""
    with client_for(f"http://127.0.0.1:{proxy_port}", **kwargs) as client:
        response = client.get(url)
    assert response.status_code == 200, response.text
    return response.json()


def given(answer: dict, names) -> dict[str, list[str]]:
    return {name: header(answer, name) for name in names}


# -- what the README's recipes must deliver --------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    url: str  # a destination the recipe's header_hosts names; {plain}/{tls}: the echo upstreams' ports
    # From the scratch root and the world, once the block ran and its first fetch is done: what must arrive there.
    headers: Callable[[Path, "World"], dict[str, str]]


def issued(name: str) -> Callable[[Path, "World"], dict[str, str]]:
    """The last token the stand-in for the recipe's token endpoint (`World.issuers`) issued, as Bearer."""
    return lambda fs, world: {"Authorization": f"Bearer {world.issuers[name].issued[-1]}"}


RECIPES = {  # the README's, then those of docs/recipes.md
    "Google APIs with `gcloud auth print-access-token`": Recipe(
        "http://storage.googleapis.com:{plain}/",
        lambda fs, world: {"Authorization": f"Bearer {printed('gcloud auth print-access-token').strip()}"},
    ),
    "A person's Google Drive: sign in once": Recipe("http://www.googleapis.com:{plain}/", issued("drive")),
    "A static file of headers": Recipe(
        "http://api.partner.example:{plain}/",
        lambda fs, world: json.loads((fs / "etc/header-augment/partner.json").read_text()),
    ),
    "A Kubernetes cluster API with `aws eks get-token`": Recipe(
        f"https://{EKS_HOST}:{{tls}}/",
        lambda fs, world: {
            "Authorization": "Bearer "
            + json.loads(printed("aws eks get-token --cluster-name my-cluster --region eu-west-1"))["status"]["token"]
        },
    ),
    "Kubernetes to Google Cloud with Workload Identity Federation": Recipe(
        "http://storage.googleapis.com:{plain}/", issued("gcp")
    ),
    "The GitHub API as a GitHub App": Recipe("http://api.github.com:{plain}/", issued("github")),
    "A Google service-account key": Recipe("http://storage.googleapis.com:{plain}/", issued("google")),
    "An AKS workload with Azure workload identity": Recipe("http://management.azure.com:{plain}/", issued("azure")),
}
S3_RECIPE = "S3, signed by the proxy: `kind: aws-sigv4`"  # tests/test_aws_sigv4_e2e.py runs it, against moto
VAULT_RECIPE = "Vault or OpenBao from Kubernetes"  # tests/test_vault.py runs it, against OpenBao
SECRETS_MANAGER = "AWS Secrets Manager"  # tests/test_aws_secrets.py runs it, against moto
NOT_HERE = (S3_RECIPE, VAULT_RECIPE, SECRETS_MANAGER)
RECIPE_BLOCKS = {b.subsection: b for b in blocks_in("Where credentials come from") if b.subsection not in NOT_HERE}
RECIPE_BLOCKS |= {b.section: b for b in BLOCKS if b.page == "docs/recipes.md" and b.language == "sh"}
PROJECTED = only(blocks_in("A projected service-account token in Kubernetes", "yaml", "docs/recipes.md"))
PROVIDERS = only(blocks_in("Several providers: `header_providers_file`", "yaml", "docs/providers-file.md"))
INSTALL = only(blocks_in("Install it", page="docs/install.md"))
QUICK_START = blocks_in("The two commands")[1]
PROSE_COMMANDS = [  # the inline commands of "The two commands", line breaks inside them undone
    " ".join(span.split())
    for span in re.findall(r"`([^`]+)`", section_text("The two commands"))
    if re.match(r"(\w+=\S+ )*scripts/run ", span + " ") and span != "scripts/run"
]
WEB = "scripts/run --web"  # run by tests/test_scripts_run.py (mitmweb's UI port needs choosing there)
PROSE = [c for c in PROSE_COMMANDS if c != WEB]
SANDBOX = "Sandboxes and CI: placeholders"
SANDBOX_START, SANDBOX_WORKLOAD = blocks_in(SANDBOX)


# -- the running world -------------------------------------------------------------------------------------------


@dataclass
class Launch:
    """One of the README's commands, started from `base`: work/ and home/ (see test_clients.scratch), fs/ (the root
    the block's absolute paths are mapped under) and confdir/ (where the test's `--set confdir=` points)."""

    base: Path
    run: Running

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def fs(self) -> Path:
        return self.base / "fs"

    @property
    def confdir(self) -> Path:
        return self.base / "confdir"

    def port(self) -> int:
        return int(self.run.wait_for(LISTENING, START).group(1))

    def interrupt(self) -> None:
        try:
            os.killpg(self.run.pgid, signal.SIGINT)
        except ProcessLookupError:
            pass


def launch(base: Path, command: str | list[str], env: dict[str, str] | None = None) -> Launch:
    """`command` (shell text, or a program and its arguments) from a scratch directory `base`, which may hold fs/."""
    work, home = scratch(base)
    argv = ["bash", "-c", f"set -euo pipefail\n{command}"] if isinstance(command, str) else command
    env = stand_in_env(shell_env(home)) | (env or {})
    return Launch(base, Running(argv, cwd=work, env=env))


def proxy_args(base: Path, relay: LoopbackProxy | None, listen: bool = True) -> list[str]:
    """What the test adds to a recipe's proxy: a free loopback port (scripts/run: HEADER_AUGMENT_PORT=0 instead), a
    confdir of its own, and the relay."""
    args = ["--listen-host", "127.0.0.1", "--listen-port", "0"] if listen else []
    args += ["--set", f"confdir={base / 'confdir'}"]
    return args + (["--mode", f"upstream:{relay.url}"] if relay else [])


@dataclass
class World:
    echo: Upstream
    tls_echo: Upstream
    relay: LoopbackProxy
    provider: Provider
    held: HeldProvider
    ports: dict[int, int]
    quick: Launch
    prose: dict[str, Launch]
    recipes: dict[str, Launch]
    projected: Launch
    providers: Launch
    install: Launch
    sandbox: Launch
    admin: Mitmdump
    issuers: dict[str, object]  # the stand-ins for the recipes' token endpoints, by provider name

    def url(self, template: str) -> str:
        return template.format(plain=self.echo.port, tls=self.tls_echo.port)


@dataclass
class Issuers:
    """Stand-ins for the token endpoints the minting recipes call (tests/token_issuers.py, each verifying the JWT it
    is sent with the public key), the files those recipes read, and their endpoints' URLs mapped to the stand-ins'."""

    by_name: dict
    files: dict[str, bytes]  # path (as the README writes it) → content
    urls: dict[str, str]

    @classmethod
    def start(cls) -> "Issuers":
        app_pem, app_public = rsa_key()
        account_pem, account_public = rsa_key()
        cluster_pem, cluster_public = rsa_key()  # the cluster's service-account issuer
        github = GitHubApi(GITHUB_APP, GITHUB_INSTALLATION, app_public)
        google = GoogleTokenEndpoint(GOOGLE_ACCOUNT, {"4f2a9c": account_public}, [CLOUD_PLATFORM])
        exchange = {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": JWT_TYPE,
            "audience": POOL,
            "scope": CLOUD_PLATFORM,
            "requested_token_type": ACCESS_TOKEN_TYPE,
        }
        gcp = FederationEndpoint(cluster_public, "https:" + POOL, "subject_token", exchange)
        assertion = {
            "grant_type": "client_credentials",
            "client_id": AZURE_CLIENT,
            "client_assertion_type": JWT_BEARER_ASSERTION,
            "scope": "https://management.azure.com/.default",
        }
        azure = FederationEndpoint(cluster_public, "api://AzureADTokenExchange", "client_assertion", assertion)
        drive = AuthlibSignIn(DRIVE_CLIENT, "google-client-s3cret")
        drive.device_interval, drive.person = 1, "alice"  # the person approves at once; `login` polls a second later
        files = {
            "/etc/header-augment/github-app.pem": app_pem,
            "/etc/header-augment/google-key.json": google.key_file(account_pem, "4f2a9c").encode(),
            "/var/run/secrets/tokens/gcp-token": signed(cluster_pem, sub=WORKLOAD, aud="https:" + POOL).encode(),
            "/var/run/secrets/azure/tokens/azure-identity-token": signed(
                cluster_pem, sub=WORKLOAD, aud="api://AzureADTokenExchange"
            ).encode(),
            "/etc/header-augment/google-client-secret": b"google-client-s3cret\n",
            "/run/secrets/openai-key": f"{OPENAI_KEY}\n".encode(),
        }
        urls = {"https://api.github.com": github.base, "https://sts.googleapis.com/v1/token": gcp.url}
        urls[AZURE_TOKEN_URL] = azure.url
        urls["https://oauth2.googleapis.com/token"] = drive.base + "/token"
        urls["https://oauth2.googleapis.com/device/code"] = drive.base + "/device"
        return cls({"github": github, "google": google, "gcp": gcp, "azure": azure, "drive": drive}, files, urls)

    def prepare(self, block: Block, fs: Path) -> list[str]:
        """Write the files the block reads under `fs`; its lines with the endpoints' URLs mapped."""
        for path, content in self.files.items():
            if path in block.text:
                (fs / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
                (fs / path.lstrip("/")).write_bytes(content)
        lines = []
        for line in block.lines:
            for url, stand_in in self.urls.items():
                line = line.replace(url, stand_in)
            lines.append(line)
        return lines

    def close(self) -> None:
        for issuer in self.by_name.values():
            issuer.close()


def cluster_pki(directory: Path) -> tuple[Path, Path]:
    """A CA, and signed by it a certificate (with its key) for the EKS endpoint: the cluster's, as `aws eks
    describe-cluster` would give its CA. Made with the cryptography package mitmproxy uses."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])

    def certificate(subject: x509.Name, subject_key, *extensions) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(subject_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(ca_key, hashes.SHA256())

    unused = ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "encipher_only")
    ca = certificate(
        ca_name,
        ca_key,
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                decipher_only=False,
                **dict.fromkeys(unused, False),
            ),
            True,
        ),
    )
    server = certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        key,
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.SubjectAlternativeName([x509.DNSName(EKS_HOST.lower())]), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    )
    pem = serialization.Encoding.PEM
    ca_file, server_file = directory / "cluster-ca.pem", directory / "apiserver.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    server_file.write_bytes(server.public_bytes(pem) + private)
    return ca_file, server_file


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("readme")
    servers: list = []
    launches: list[Launch] = []
    admin = None

    def serve(server):
        servers.append(server)
        return server

    def started(item: Launch) -> Launch:
        launches.append(item)
        return item

    def directory(name: str) -> Path:
        (base / name).mkdir()
        return base / name

    try:
        ca_file, server_file = cluster_pki(base)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(server_file)
        echo, tls_echo = serve(Upstream()), serve(Upstream(ssl_context=tls))
        relay, provider, held = serve(LoopbackProxy()), serve(Provider()), serve(HeldProvider())
        issuers = serve(Issuers.start())
        provider.answer(OWN_HEADERS)
        held.answer({"Authorization": "Bearer admin-t0ken"})
        ports = {8000: free_port(), 8200: echo.port, 9000: provider.port, 9090: free_port(), 9901: 0}

        run_env = {"HEADER_AUGMENT_PORT": "0"}
        default_hosts = re.search(r'--set "header_hosts=([^"]+)"', (ROOT / "scripts" / "run").read_text()).group(1)
        hosts = substitute(default_hosts, ports)
        quick = started(launch(directory("quick"), f"scripts/run --set header_hosts={hosts}", run_env))
        prose = {
            command: started(
                launch(directory(f"prose{i}"), f"{substitute(command, ports)} --mode upstream:{relay.url}", run_env)
            )
            for i, command in enumerate(PROSE)
        }
        recipes = {
            subsection: started(launch_recipe(directory(f"recipe{i}"), block, ports, relay, ca_file, issuers))
            for i, (subsection, block) in enumerate(RECIPE_BLOCKS.items())
        }
        projected = started(launch_projected(directory("projected"), relay))
        providers = started(launch_providers_file(directory("providers")))
        install = started(launch_install(directory("install"), ports, relay))
        sandbox = started(launch_recipe(directory("sandbox"), SANDBOX_START, ports, relay, ca_file, issuers))
        admin_args = shlex.split(substitute(ADMIN_SETTING, ports))
        admin = Mitmdump(
            directory("admin") / "confdir",
            *("--set", f"header_provider_url={held.url}", "--set", "header_hosts=api.example.com", *admin_args),
            wait_listening=False,
        )
        yield World(
            echo,
            tls_echo,
            relay,
            provider,
            held,
            ports,
            quick,
            prose,
            recipes,
            projected,
            providers,
            install,
            sandbox,
            admin,
            issuers.by_name,
        )
    finally:
        for item in launches:
            item.interrupt()
        if admin is not None:
            admin.proc.send_signal(signal.SIGINT)
        for item in launches:
            try:
                item.run.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass  # killed just below
            item.run.kill_group()
        if admin is not None:
            admin.stop()
        for server in servers:
            server.close()


def launch_recipe(
    base: Path, block: Block, ports: dict[int, int], relay: LoopbackProxy, ca_file: Path, issuers: Issuers
) -> Launch:
    """The recipe's commands, its paths, ports and token endpoints mapped, its scripts/run with `proxy_args`; the files
    it reads made."""
    fs = base / "fs"
    if "ssl_verify_upstream_trusted_ca=/etc/header-augment/my-cluster-ca.pem" in block.text:
        (fs / "etc" / "header-augment").mkdir(parents=True)
        (fs / "etc" / "header-augment" / "my-cluster-ca.pem").write_bytes(ca_file.read_bytes())
    extra = shlex.join(proxy_args(base, relay, listen=False))
    lines = [mapped(substitute(line, ports), fs) for line in issuers.prepare(block, fs)]
    proxy = [line.startswith("scripts/run ") and not line.startswith("scripts/run login ") for line in lines]
    assert sum(proxy) == 1, block.text
    command = "\n".join(f"{line} {extra}" if starts else line for line, starts in zip(lines, proxy, strict=True))
    return launch(base, command, {"HEADER_AUGMENT_PORT": "0"})


# -- the blocks ---------------------------------------------------------------------------------------------------


def test_every_block_is_run_or_checked_here():
    """A new block fails here until a test runs it (or says why it cannot): the README's rule (issue 11), which holds
    for the pages of docs/ too."""
    R, W = "README.md", "Where credentials come from"
    assert [(b.page, b.section, b.subsection, b.language) for b in BLOCKS] == [
        (R, "header-augment", "", ""),  # the picture
        (R, "The two commands", "", "sh"),  # test_the_two_commands
        (R, "The two commands", "", "sh"),  # test_the_quick_start_shows_the_demo_headers
        (R, "The two commands", "", ""),  # its output: test_the_quick_start_shows_the_demo_headers
        (R, SANDBOX, "", "sh"),  # test_the_sandbox_s_proxy_…
        (R, SANDBOX, "", "sh"),  # test_the_sandbox_s_workload_…
        (R, W, "Google APIs with `gcloud auth print-access-token`", "sh"),  # test_the_recipe…
        (R, W, "A person's Google Drive: sign in once", "sh"),  # test_the_recipe…, test_the_drive_sign_in_…
        # tests/test_vault.py::test_the_readme_recipe_kubernetes_auth, against OpenBao; test_the_secret_stores_…
        (R, W, VAULT_RECIPE, "sh"),
        # tests/test_aws_secrets.py::test_the_readme_recipe_secrets_manager, against moto; test_the_secret_stores_…
        (R, W, SECRETS_MANAGER, "sh"),
        (R, W, "A static file of headers", "sh"),  # test_the_recipe…
        (R, W, S3_RECIPE, "yaml"),  # tests/test_aws_sigv4_e2e.py
        (R, W, S3_RECIPE, "sh"),  # tests/test_aws_sigv4_e2e.py
        ("docs/aws.md", "SDK clients and the AWS CLI", "", "sh"),  # tests/test_docs_aws_clients.py
        ("docs/aws.md", "SDK clients and the AWS CLI", "", "python"),  # tests/test_docs_aws_clients.py
        ("docs/aws.md", "SDK clients and the AWS CLI", "", "sh"),  # tests/test_docs_aws_clients.py
        ("docs/compose.md", "A pod with sidecars: `docker compose up`", "", ""),  # its output: test_kubernetes_and_…
        ("docs/egress.md", "Egress policy", "", "yaml"),  # test_the_egress_example_loads
        ("docs/herd.md", "The result (N = 10,000, interval 360 s)", "", "sh"),  # test_the_herd_commands_run
        ("docs/hosts.md", "Which clients get them: `header_clients`", "", "yaml"),  # test_the_clients_example_…
        ("docs/install.md", "Install it", "", "sh"),  # test_the_install_command_runs
        ("docs/internals.md", "The two paths", "", ""),  # the map of the code: test_the_internals_map_names_files_…
        ("docs/kubernetes.md", "Kubernetes", "", "sh"),  # test_kubernetes_and_compose_name_files_that_exist
        ("docs/kubernetes.md", "A shared gateway: `scripts/kubernetes/gateway/`", "", "sh"),  # test_the_gateway_…
        ("docs/performance.md", "Performance", "", "sh"),  # test_the_bench_commands_are_the_benchs
        ("docs/providers-file.md", "Several providers: `header_providers_file`", "", "yaml"),  # …_providers_file_…
        ("docs/recipes.md", "A Kubernetes cluster API with `aws eks get-token`", "", "sh"),  # test_the_recipe…
        ("docs/recipes.md", "A projected service-account token in Kubernetes", "", "yaml"),  # …_projected_…
        ("docs/recipes.md", "Kubernetes to Google Cloud with Workload Identity Federation", "", "sh"),  # …
        ("docs/recipes.md", "The GitHub API as a GitHub App", "", "sh"),  # test_the_recipe…
        ("docs/recipes.md", "A Google service-account key", "", "sh"),  # test_the_recipe…
        ("docs/recipes.md", "An AKS workload with Azure workload identity", "", "sh"),  # test_the_recipe…
        ("docs/troubleshooting.md", "Troubleshooting", "", ""),  # messages: test_the_troubleshooting_messages_…
    ]
    assert list(RECIPE_BLOCKS) == list(RECIPES)
    assert sorted(PROSE_COMMANDS) == sorted([*PROSE, WEB])
    assert '"--web"' in (ROOT / "tests" / "test_scripts_run.py").read_text()


def test_the_contents_link_every_section_and_every_page_of_docs():
    contents = README[: README.index("\n## ")]
    listed = re.findall(r"^- \[(.+)\]\(#([\w-]+)\)$", contents, re.M)
    sections = re.findall(r"^## (.+)$", README, re.M)
    assert [title for title, _ in listed] == sections
    for title, anchor in listed:
        assert anchor == anchor_of(title), title
    # Each page of docs/ once, by its title; each starts with its title and a one-line summary.
    pages = re.findall(r"^- \[(.+?)\]\((docs/[\w-]+\.md)\)", contents, re.M)
    assert sorted(page for _, page in pages) == PAGES[1:]
    for title, page in pages:
        head = TEXT[page].split("\n", 4)
        assert head[0] == f"# {title}" and head[1] == "" and head[2] and head[3] == "", page


def anchor_of(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def test_every_link_between_the_pages_leads_somewhere():
    """A moved section leaves no link behind: each relative link names a file that exists and, with `#anchor`, a
    heading of that page."""
    for page in PAGES:
        text = re.sub(r"^```.*?^```$", "", TEXT[page], flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"\w+:", target):
                continue  # https: and the like
            path, _, anchor = target.partition("#")
            there = (ROOT / page).parent / path if path else ROOT / page
            assert there.exists(), (page, target)
            if anchor:
                headings = re.findall(r"^#+ (.+)$", there.read_text(), re.M)
                assert anchor in {anchor_of(h) for h in headings}, (page, target)


def test_the_two_commands():
    commands = [line.split("#")[0].split() for line in blocks_in("The two commands")[0].lines]
    assert commands == [["scripts/run"], ["scripts/test"]]
    for (command,) in commands:
        assert os.access(ROOT / command, os.X_OK), command
    # scripts/run is tested in tests/test_scripts_run.py; scripts/test is what CI runs.
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_quick_start_shows_the_demo_headers(world):
    quick = world.quick
    ports = world.ports | {8080: quick.port()}
    assert in_use(quick.run) == "Authorization, X-Tenant"
    background, foreground = [], []
    for line in QUICK_START.lines:
        (background if re.search(r"&\s*(#.*)?$", line) else foreground).append(substitute(line, ports))
    assert len(background) == 1 and len(foreground) == 1, QUICK_START.text
    upstream = Running(["bash", "-c", background[0]], cwd=quick.work, env=shell_env(quick.home))
    try:
        upstream.wait_for(rf"echo upstream listening on http://127\.0\.0\.1:{ports[8000]}/", START)
        result = subprocess.run(
            ["bash", "-c", foreground[0]], cwd=quick.work, env=shell_env(quick.home), capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        (answer,) = answers(result.stdout)
        assert header(answer, "Host") == [f"127.0.0.1:{ports[8000]}"]
        assert has_demo_headers(answer), answer
        shown = only([b for b in BLOCKS if b.section == "The two commands" and b.language == ""]).text
        expected = re.escape(shown.replace("127.0.0.1:8000", f"127.0.0.1:{ports[8000]}")).replace("…", ".+?")
        assert re.fullmatch(expected, result.stdout), result.stdout  # one line, as shown, with its newline
    finally:
        upstream.kill_group()


@pytest.mark.parametrize("command", PROSE, ids=lambda c: re.sub(r"\w+://\S+", "URL", c))
def test_the_commands_in_the_two_commands_prose_run(world, command):
    launched = world.prose[command]
    port = launched.port()
    in_use(launched.run)
    if "HEADER_AUGMENT_PORT=9090" in command:
        assert port == world.ports[9090]
        return
    answer = through(port, f"http://api.example.com:{world.echo.port}/")
    if "header_provider_url=" in command:
        assert given(answer, OWN_HEADERS) == {name: [value] for name, value in OWN_HEADERS.items()}
        # "the demo provider is then not started"
        assert "demo provider" not in launched.run.output
        assert not [c for c in processes_in_group(launched.run.pgid).values() if "demo_provider" in c]
    else:
        assert has_demo_headers(answer), answer


# -- where credentials come from -------------------------------------------------------------------------------------


@pytest.mark.parametrize("subsection", RECIPES)
def test_the_recipe_delivers_its_headers_to_its_hosts_only(world, subsection):
    launched, recipe = world.recipes[subsection], RECIPES[subsection]
    port = launched.port()
    names = in_use(launched.run)
    expected = recipe.headers(launched.fs, world)
    assert names == ", ".join(expected)
    url = world.url(recipe.url)
    relayed = len(world.relay.targets)
    ca = ssl.create_default_context(cafile=launched.confdir / "mitmproxy-ca-cert.pem")
    answer = through(port, url, verify=ca)
    assert given(answer, expected) == {name: [value] for name, value in expected.items()}
    # It went to that name (which the relay sent to the echo upstream), not to an address.
    assert httpx.URL(url).netloc.decode() in world.relay.targets[relayed:]
    elsewhere = through(port, f"http://example.org:{world.echo.port}/")
    assert given(elsewhere, expected) == dict.fromkeys(expected, [])


def test_the_static_file_is_readable_by_its_owner_only(world):
    launched = world.recipes["A static file of headers"]
    in_use(launched.run)
    assert stat.S_IMODE((launched.fs / "etc/header-augment/partner.json").stat().st_mode) == 0o600


def test_the_drive_sign_in_wrote_the_refresh_token_the_proxy_rotated(world):
    """`scripts/run login` signed the person in (the stand-in saw one device sign-in) and printed where to go, never a
    token; the proxy then traded that refresh token and saved the rotated one in its place, 0600."""
    launched, signin = world.recipes["A person's Google Drive: sign in once"], world.issuers["drive"]
    in_use(launched.run)
    assert len(signin.issued_by_device) == 1 and signin.presented[0] == signin.issued_by_device[0]
    assert re.search(rf"open {re.escape(signin.base)}/activate and enter the code \S+", launched.run.output)
    for token in (*signin.refresh_tokens, *signin.issued):
        assert token not in launched.run.output
    saved = launched.fs / "etc/header-augment/drive.token"
    assert saved.read_text().strip() == signin.latest() != signin.issued_by_device[0]
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


def test_the_secret_stores_recipes_load_as_providers_files(tmp_path):
    """The Vault and Secrets Manager recipes cannot run here (tests/test_vault.py and tests/test_aws_secrets.py run
    them against OpenBao and moto): each block writes one providers file, which loads, and starts the proxy with it."""
    vault = only([b for b in blocks_in("Where credentials come from") if b.subsection == VAULT_RECIPE])
    found = []
    manager = only([b for b in blocks_in("Where credentials come from") if b.subsection == SECRETS_MANAGER])
    for block in (vault, manager):
        written, text = re.search(r"^cat > (\S+) <<'EOF'\n(.*?)^EOF$", block.text, re.M | re.S).groups()
        assert only([line for line in block.lines if line.startswith("scripts/run ")]) == (
            f"scripts/run --set header_providers_file={written}"
        )
        path = tmp_path / Path(written).name
        path.write_text(text)
        ((settings, _),) = load_providers_file(str(path))[0]
        found.append((settings.name, settings.kind, settings.hosts.patterns))
    assert found == [("github", "vault", ("api.github.com",)), ("openai", "aws-secrets-manager", ("api.openai.com",))]


def placeholders_of(launched: Launch) -> dict[str, str]:
    """The sandbox's providers file as the block wrote it: each entry's placeholder, by its env name."""
    written = yaml.safe_load((launched.fs / "etc/header-augment/sandbox.yaml").read_text())
    return {entry["env"]: entry["placeholder"] for entry in written["providers"]}


def test_the_sandbox_s_proxy_swaps_placeholders_and_denies_the_rest(world):
    """One providers file: the deny policy with its allow rule beside the two placeholder entries, each made by
    `scripts/run placeholder`; the audit log records the swaps and the refusals."""
    launched = world.sandbox
    port = launched.port()
    assert in_use(launched.run, r"github \(command gh\)") == "Authorization"
    assert in_use(launched.run, r"openai \(.*\)") == "Authorization"
    held = placeholders_of(launched)
    assert re.fullmatch(r"ghp_\w{36}", held["GH_TOKEN"]) and held["OPENAI_API_KEY"].startswith("sk-proj-")
    real = printed("gh auth token").strip()
    echo = world.echo.port
    with client_for(f"http://127.0.0.1:{port}") as client:
        bearer = {"Authorization": f"Bearer {held['GH_TOKEN']}"}
        swapped = client.get(f"http://api.github.com:{echo}/user", headers=bearer)
        assert header(swapped.json(), "Authorization") == [f"Bearer {real}"]
        assert f"Bearer {held['GH_TOKEN']}" in swapped.text and real not in swapped.text  # the answer: the placeholder
        # git's form: the placeholder as Basic's password, toward the entry's other host
        cloned = client.get(f"http://github.com:{echo}/org/repo/info/refs", auth=("x-access-token", held["GH_TOKEN"]))
        basic = base64.b64encode(f"x-access-token:{real}".encode()).decode()
        assert header(cloned.json(), "Authorization") == [f"Basic {basic}"]
        # The OpenAI key in a JSON body (its entry's `substitute: [header, body]`): the echo counts the bytes it got.
        posted = {"model": "gpt-4o-mini", "api_key": held["OPENAI_API_KEY"], "input": "hi"}
        json_type = {"Content-Type": "application/json"}
        sent = client.post(f"http://api.openai.com:{echo}/v1/responses", content=json.dumps(posted), headers=json_type)
        real_body = json.dumps(posted | {"api_key": OPENAI_KEY}).encode()
        assert sent.json()["body_bytes"] == len(real_body) != len(json.dumps(posted).encode())
        allowed = client.get(f"http://pypi.org:{echo}/simple/")
        assert allowed.status_code == 200
        elsewhere = client.get(f"http://pypi.org:{echo}/simple/", headers=bearer)  # allowed host, not the entry's
        denied = client.get(f"http://example.org:{echo}/")
    assert (elsewhere.status_code, denied.status_code) == (403, 403)
    audit = launched.fs / "var/log/header-augment/audit.jsonl"
    wanted = {"substituted", "refused", "denied"}

    def actions() -> set[str]:
        lines = audit.read_text().splitlines(keepends=True) if audit.exists() else []
        return {json.loads(line)["action"] for line in lines if line.endswith("\n")}

    wait_until(lambda: wanted <= actions(), START, what=f"{wanted} in the audit log")
    assert real not in audit.read_text() and held["GH_TOKEN"] not in audit.read_text()


def test_the_sandbox_s_workload_gets_the_placeholders_only(world):
    """The workload's block against the sandbox's proxy: its admin endpoint (port 9901 → the one it logged), its
    proxy port (8080), its CA (~/.mitmproxy → its confdir). The exports and the curl run as written, but for curl's
    URL, the echo upstream's over http (so curl takes the proxy from `http_proxy`); `gh` reads GH_TOKEN and `git`
    sends the URL's password as Basic's (checked in the test above), which cannot run here."""
    launched = world.sandbox
    port = launched.port()
    in_use(launched.run, r"github \(command gh\)")
    in_use(launched.run, r"openai \(.*\)")
    admin = int(launched.run.wait_for(r"admin endpoint listening at 127\.0\.0\.1:(\d+)", START).group(1))
    (launched.home / ".mitmproxy").unlink(missing_ok=True)
    (launched.home / ".mitmproxy").symlink_to(launched.confdir)
    exports, runs = [], []
    for line in SANDBOX_WORKLOAD.lines:
        (runs if re.match(r"(gh|git|curl) ", line) else exports).append(substitute(line, world.ports | {9901: admin}))
    assert [line.split()[0] for line in runs] == ["gh", "git", "curl"]
    assert "$GH_TOKEN" in runs[1] and "x-access-token:" in runs[1]
    exports = [line.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for line in exports]
    curl = runs[2].replace("https://api.openai.com/", f"http://api.openai.com:{world.echo.port}/")
    shown = 'printf "%s\\n" "$GH_TOKEN" "$OPENAI_API_KEY" "$HTTPS_PROXY" "$SSL_CERT_FILE"'
    env = shell_env(launched.home)
    done = subprocess.run(
        ["bash", "-c", "\n".join(["set -euo pipefail", *exports, shown, f"http_proxy=$HTTPS_PROXY {curl}"])],
        cwd=launched.work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    gh_token, openai_key, proxy, ca, answer = done.stdout.split("\n", 4)
    held = placeholders_of(launched)
    assert (gh_token, openai_key) == (held["GH_TOKEN"], held["OPENAI_API_KEY"])
    assert proxy == f"http://127.0.0.1:{port}" and Path(ca).resolve() == (launched.confdir / "mitmproxy-ca-cert.pem")
    (seen,) = answers(answer)
    assert header(seen, "Authorization") == [f"Bearer {OPENAI_KEY}"]
    assert OPENAI_KEY not in answer and held["OPENAI_API_KEY"] in answer


def test_the_stand_ins_answer_only_the_recipes_arguments():
    assert printed("gcloud auth print-access-token").strip()
    assert printed("gh auth token").strip()
    credential = json.loads(printed("aws eks get-token --cluster-name my-cluster --region eu-west-1"))
    assert credential["kind"] == "ExecCredential" and credential["status"]["token"]
    expires = datetime.datetime.fromisoformat(credential["status"]["expirationTimestamp"])
    left = expires - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(minutes=14) < left <= datetime.timedelta(minutes=15)
    for command in ("gcloud auth login", "gcloud auth print-access-token --verbosity=debug", "aws eks get-token", "gh"):
        result = subprocess.run(shlex.split(command), env=stand_in_env(dict(os.environ)), capture_output=True)
        assert result.returncode != 0 and result.stderr, command


def projected_fragment() -> dict:
    return yaml.safe_load(PROJECTED.text)


def test_the_projected_token_fragment_is_a_strictly_valid_pod_spec(tmp_path):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "proxy"}, "spec": projected_fragment()}
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    for version in ("1.29.0", "1.37.0"):  # as tests/test_deploy.py validates the sample
        result = subprocess.run(
            [str(VENV_BIN / "kubernetes-validate"), "--strict", "-k", version, "--quiet", str(tmp_path / "pod.yaml")],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    # The file the proxy reads is the token the volume projects, where the container mounts it.
    spec = projected_fragment()
    (container,) = spec["containers"]
    (mount,) = container["volumeMounts"]
    (volume,) = spec["volumes"]
    (source,) = volume["projected"]["sources"]
    assert mount["name"] == volume["name"]
    path = f"{mount['mountPath']}/{source['serviceAccountToken']['path']}"
    assert setting(container["args"], "header_provider_file") == path


def launch_projected(base: Path, relay: LoopbackProxy) -> Launch:
    """The fragment's container args (mitmdump found on PATH, as in the image), the token in a projected volume as
    the kubelet lays it out."""
    (container,) = projected_fragment()["containers"]
    (mount,) = container["volumeMounts"]
    volume = Path(mapped(mount["mountPath"], base / "fs"))
    volume.mkdir(parents=True)
    kubelet_volume(volume, "token", jwt(int(time.time()) + 3600), "2025_01_01_00_00_00.000000001")
    return launch(base, [mapped(arg, base / "fs") for arg in container["args"]] + proxy_args(base, relay))


def test_the_projected_token_fragment_args_deliver_the_token(world):
    launched = world.projected
    port = launched.port()
    assert in_use(launched.run) == "Authorization"
    token = (launched.fs / "var/run/secrets/api-token/token").read_text()
    answer = through(port, f"http://api.example.com:{world.echo.port}/")
    assert header(answer, "Authorization") == [f"Bearer {token}"]


# -- operating -----------------------------------------------------------------------------------------------------


def providers_file(base: Path) -> Path:
    """The README's providers file, its paths mapped, with the files it names."""
    fs = base / "fs"
    (fs / "run" / "secrets").mkdir(parents=True)
    (fs / "run" / "secrets" / "partner-client-secret").write_text("partner-s3cret\n")
    (fs / "run" / "secrets" / "vault-secret-id").write_text("vault-secret-id\n")
    path = base / "providers.yaml"
    path.write_text(mapped(PROVIDERS.text, fs))
    return path


def test_the_providers_file_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{STAND_INS}:{os.environ['PATH']}")  # the google entry's gcloud must be found
    entries, _ = load_providers_file(str(providers_file(tmp_path)))
    assert [(s.name, s.kind) for s, _ in entries] == [
        ("internal", "http"),
        ("partner", "oauth2"),
        ("partner-key", "vault"),
        ("google", "command"),
    ]


def launch_providers_file(base: Path) -> Launch:
    command = ["mitmdump", "-s", "addon/header_augment.py", "--set", f"header_providers_file={providers_file(base)}"]
    return launch(base, command + proxy_args(base, None))


def test_the_providers_file_starts_mitmdump(world):
    """Its providers on 127.0.0.1:9000, idp.partner.example and vault.example.com are not there: their fetches fail,
    which is no settings error. The one that is there gives its header."""
    launched = world.providers
    launched.port()
    assert in_use(launched.run, r"google \(command gcloud\)") == "Authorization"
    assert launched.run.proc.poll() is None, launched.run.output


ADMIN = "Readiness, liveness and metrics: `header_admin_listen`", "docs/operating.md"
ADMIN_SETTING = re.search(r"`(--set header_admin_listen=[^`]+)`", section_text(*ADMIN)).group(1)
ADMIN_REQUESTS = [
    ("GET", "/ready"),
    ("GET", "/live"),
    ("GET", "/metrics"),
    ("GET", "/status"),
    ("POST", "/refresh"),
    ("GET", "/placeholders.env"),
]


def test_the_admin_endpoint_answers_as_the_table_says(world):
    table = re.findall(r"^\| `(GET|POST) (/[\w.]+)` \|", section_text(*ADMIN), re.M)
    assert table == ADMIN_REQUESTS
    admin, held = world.admin, world.held
    port = int(admin.wait_for(r"admin endpoint listening at 127\.0\.0\.1:(\d+)", START).group(1))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10) as client:
        assert held.arrived.wait(START)
        waiting = client.get("/ready")
        assert waiting.status_code == 503 and waiting.text.startswith(f"{held.url}: "), waiting.text
        held.release()
        admin.wait_for("headers in use: Authorization$", START)
        fetches = held.count  # the first; the next is the refresh's (the interval is 6 minutes)
        answers_ = {(method, path): client.request(method, path) for method, path in ADMIN_REQUESTS}
    assert {request: r.status_code for request, r in answers_.items()} == {
        ("GET", "/ready"): 200,
        ("GET", "/live"): 200,
        ("GET", "/metrics"): 200,
        ("GET", "/status"): 200,
        ("POST", "/refresh"): 202,
        ("GET", "/placeholders.env"): 200,
    }
    assert answers_[("GET", "/placeholders.env")].text == ""  # its one provider has no placeholder
    held.wait_for_requests(fetches + 1)  # the refresh asked the provider again
    status = json.loads(answers_[("GET", "/status")].text)
    assert "Authorization" in json.dumps(status) and "admin-t0ken" not in json.dumps(status)
    scraped = [s for f in text_string_to_metric_families(answers_[("GET", "/metrics")].text) for s in f.samples]
    paragraph = re.search(r"^Metrics, each with the label .*?\n\n", section_text(*ADMIN), re.M | re.S).group()
    assert sorted(re.findall(r"`(header_augment_\w+)`", paragraph)) == sorted({s.name for s in scraped})
    # An entry without a name: its source.
    assert {s.labels["provider"] for s in scraped if "provider" in s.labels} == {held.url}
    # Those of the scheduler, the egress policy and the audit log are the addon's own, not an entry's.
    assert {s.name.split("_")[2] for s in scraped if "provider" not in s.labels} <= {
        "scheduler",
        "denied",
        "reported",
        "audit",
    }
    for label, values in re.findall(r"`(\w+)`: ((?:`\w+`(?:, )?)+)", paragraph):
        assert {s.labels[label] for s in scraped if label in s.labels} - {""} == set(re.findall(r"\w+", values))


def test_the_install_command_runs(world):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["header-augment"] == "header_augment_core.cli:main"
    launched = world.install
    port = launched.port()
    assert in_use(launched.run) == "Authorization, X-Tenant"
    answer = through(port, f"http://api.example.com:{world.echo.port}/")
    assert given(answer, OWN_HEADERS) == {name: [value] for name, value in OWN_HEADERS.items()}


def launch_install(base: Path, ports: dict[int, int], relay: LoopbackProxy) -> Launch:
    """`header-augment …` as the installed command runs it: header_augment_core.cli's main, here from the clone."""
    words = shlex.split(substitute(only(INSTALL.lines), ports))
    assert words[0] == "header-augment"
    command = [sys.executable, "-m", "header_augment_core.cli", *words[1:], *proxy_args(base, relay)]
    return launch(base, command, {"PYTHONPATH": str(ROOT / "addon")})


# -- options, Kubernetes, compose ------------------------------------------------------------------------------------


def test_the_options_table_is_the_addons():
    rows = re.findall(r"^\| `(header_\w+)` \|([^|]*)\|", section_text("Options", "docs/options.md"), re.M)
    shown = {name: cell.strip() for name, cell in rows}
    assert len(rows) == len(shown) and sorted(shown) == sorted(o.name for o in OPTIONS)
    described = {  # defaults the table describes rather than shows
        "header_provider_format": "by source",
        "header_provider_timeout": "`5s`, `30s` for commands",
    }
    for option in OPTIONS:
        cell = shown[option.name]
        if option.name in described:
            assert cell == described[option.name] and option.default == ""
        elif literal := re.fullmatch(r"`([^`]*)`", cell):
            default = str(option.default).lower() if isinstance(option.default, bool) else option.default
            assert literal.group(1) == default, option.name
        else:
            assert cell == "" and option.default in ("", []), option.name
    # "by source": what each source's content is by default, as "Where credentials come from" lists it
    contents = re.findall(
        r"^\| [^|]+ \| `(\w+)` \(`\w+`\) \| `(\w+)` \|", section_text("Where credentials come from"), re.M
    )
    with_content = {name: kind for name, kind in LOCATORS.items() if "format" in kind.DEFAULTS}  # not aws-sigv4
    assert sorted(contents) == sorted((name, kind.DEFAULTS["format"]) for name, kind in with_content.items())
    assert parse_duration("5s") == shared_settings.DEFAULT_TIMEOUT
    assert parse_duration("30s") == KINDS["command"].DEFAULTS["timeout"]


def test_kubernetes_and_compose_name_files_that_exist():
    """`kubectl apply` and `docker compose up` cannot run here (no cluster, no container engine); the README says
    how the tests keep them honest (tests/test_deploy.py). What they name must be there."""
    kubectl = only(only(blocks_in("Kubernetes", page="docs/kubernetes.md")).lines)
    files = re.findall(r"-f (\S+)", kubectl)
    assert files == ["scripts/kubernetes/configmap.yaml", "scripts/kubernetes/deployment.yaml"]
    for name in [*files, "scripts/kubernetes/generate_configmap.py", "docker-compose.yaml"]:
        assert (ROOT / name).is_file(), name
    compose = only(blocks_in("A pod with sidecars: `docker compose up`", "", "docs/compose.md"))
    assert compose.text.startswith("$ docker compose up\n")


def test_the_gateway_commands_make_a_ca_mitmproxy_uses_and_apply_files_that_exist(tmp_path):
    """The openssl and cat lines run here for real; mitmproxy then signs with that CA from a confdir holding it
    alone, as the gateway's pods mount it. The kubectl lines cannot run (no cluster): what they name must be there."""
    block = only(blocks_in("A shared gateway: `scripts/kubernetes/gateway/`", page="docs/kubernetes.md"))
    made = []
    for line in block.lines:
        if line.startswith("kubectl "):
            made.append(line)
        else:
            subprocess.run(line, shell=True, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    confdir = tmp_path / "confdir"
    confdir.mkdir()
    (confdir / "mitmproxy-ca.pem").write_bytes((tmp_path / "mitmproxy-ca.pem").read_bytes())
    store = certs.CertStore.from_store(confdir, "mitmproxy", 2048)
    issued = store.get_cert("api.partner.example", [])
    assert issued.cert.issuer == certs.Cert.from_pem((tmp_path / "mitmproxy-ca-cert.pem").read_bytes()).subject
    *creates, apply = made
    assert [re.search(r"create (?:secret generic|configmap) (\S+)", line).group(1) for line in creates] == [
        "gateway-ca",
        "gateway-ca-cert",
    ]
    for path in re.findall(r"-f (\S+)", apply):
        assert (ROOT / path).exists(), path
    assert "scripts/kubernetes/gateway/" in apply


def test_the_egress_example_loads(tmp_path):
    """The egress page's providers file: a deny policy with its allow rules, one of them for one client."""
    block = only(blocks_in("Egress policy", "yaml", "docs/egress.md"))
    path = tmp_path / "providers.yaml"
    path.write_text(block.text)
    entries, _ = load_providers_file(str(path))
    assert [(s.name, s.hosts.patterns) for s, _ in entries] == [("github", ("api.github.com",))]
    egress = entries.egress
    assert egress.default == "deny"
    assert [(r.hosts.patterns, r.clients.patterns if r.clients else None) for r in egress.rules] == [
        (("pypi.org", "files.pythonhosted.org"), None),
        (("api.github.com",), ("ci-runner",)),
    ]


def test_the_clients_example_loads(tmp_path):
    """The providers file of `header_clients`, loaded with proxyauth set: one token per workload, for one host."""
    block = only(blocks_in("Which clients get them: `header_clients`", "yaml", "docs/hosts.md"))
    path = tmp_path / "providers.yaml"
    path.write_text(block.text)
    entries, _ = load_providers_file(str(path))
    assert [(s.name, s.kind, s.hosts.patterns, s.clients.patterns) for s, _ in entries] == [
        ("orders-team", "file", ("api.partner.example",), ("orders",)),
        ("batch-nodes", "file", ("api.partner.example",), ("10.20.0.0/16",)),
    ]


TROUBLES = only(blocks_in("Troubleshooting", "", "docs/troubleshooting.md")).text.splitlines()


def test_the_troubleshooting_messages_of_pending_values_are_the_addons(caplog):
    """Of the start-up errors the README quotes, those about pending `--set` values, which the addon logs itself."""
    with caplog.at_level(logging.ERROR), taddons.context() as tctx:
        tctx.options.set("header_require=maybe", "header_requir=true", defer=True)
        tctx.master.addons.register(header_augment.HeaderAugment())
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == [line for line in TROUBLES if line.startswith("header-augment: ")]


def test_the_troubleshooting_messages_of_unusable_options_are_the_addons():
    """The others: an unusable configuration's OptionsError, whose traceback mitmdump ends with that line."""
    addon, raised = header_augment.HeaderAugment(), []
    with taddons.context(addon) as tctx:
        for bad in ({"header_refresh_interval": "10x", "header_hosts": ["api.example.com"]}, {}):  # {}: no hosts
            with pytest.raises(exceptions.OptionsError) as error:
                tctx.configure(addon, header_provider_url="http://127.0.0.1:9000/headers", **bad)
            raised.append(f"{type(error.value).__module__}.{type(error.value).__name__}: {error.value}")
    assert raised == [line for line in TROUBLES if not line.startswith("header-augment: ")]


# -- the pages of docs/ that describe the code and its measurements ------------------------------------------------


def without_the_venv() -> dict[str, str]:
    """The environment of a shell that has not put .venv/bin on PATH (scripts/test has): what a reader's is."""
    path = [d for d in os.environ["PATH"].split(os.pathsep) if Path(d).resolve() != VENV_BIN.resolve()]
    return dict(os.environ) | {"PATH": os.pathsep.join(path)}


def test_the_herd_commands_run():
    """As written but for a fleet of 100, not 10,000 (tests/test_herd.py asserts the figures at 2,000): a row for
    each scenario and schedule the command names."""
    for line in only(blocks_in("The result (N = 10,000, interval 360 s)", page="docs/herd.md")).lines:
        done = subprocess.run(
            ["bash", "-c", f"{line} -n 100"], cwd=ROOT, env=without_the_venv(), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        words = shlex.split(line)[2:]  # after `.venv/bin/python scripts/herd.py`
        scenarios = [w for i, w in enumerate(words) if not w.startswith("-") and words[i - 1] != "--schedule"]
        schedules = [w for i, w in enumerate(words) if words[i - 1] == "--schedule"]
        schedules += ["no-spread", "spread"] if "--compare" in words else []
        rows = re.findall(r"^\| (\S+) +\| (\S+) +\| 100 ", done.stdout, re.M)
        assert sorted(rows) == sorted((s, k) for s in scenarios for k in schedules), done.stdout


def test_the_bench_commands_are_the_benchs():
    """A full run takes a quarter of an hour (tests/test_bench_smoke.py runs each part at its smallest): each command
    shown is one the scripts take, its arguments checked by their parsers (`--help` after them)."""
    for line in only(blocks_in("Performance", page="docs/performance.md")).lines:
        command = line.split("#")[0]
        done = subprocess.run(
            ["bash", "-c", f"{command} --help"], cwd=ROOT, env=without_the_venv(), capture_output=True, text=True
        )
        assert done.returncode == 0 and "usage:" in done.stdout, line + done.stderr


def test_the_internals_map_names_files_that_exist():
    (block,) = [b for b in BLOCKS if b.page == "docs/internals.md"]
    modules = {path.name for path in (ROOT / "addon").rglob("*.py")}
    named = re.findall(r"\b(\w+\.py)\b", block.text)
    assert set(named) == modules - {"__init__.py"}, set(named) ^ (modules - {"__init__.py"})
