"""The `header-augment` command that `pip install .` / `pipx install .` provide: mitmdump (or mitmweb) with the addon.

mitmproxy loads an addon as a script given by path (`-s`), and after an install nobody knows where pip put
header_augment.py. This command finds it and runs mitmproxy in-process with `-s <that path>` followed by the
user's arguments, so that an install is used like `mitmdump -s addon/header_augment.py` from a clone, but for two
defaults: it listens on 127.0.0.1 (mitmdump's default is every interface), as `scripts/run` does, and mitmproxy's
onboarding app (http://mitm.it) is off unless `onboarding` is set. Without --web, mitmproxy runs with only the addons
that have work under the options given (chain.py): about a third less CPU per request than mitmdump's 36.

    header-augment --set header_provider_url=http://127.0.0.1:9000/headers --set header_hosts=api.example.com
    header-augment --web ...     # mitmweb instead of mitmdump
    header-augment --version
"""

import importlib.metadata
import importlib.util
import sys
import tomllib
from pathlib import Path

from . import launch

SCRIPT_MODULE = "header_augment"
LISTEN_HOST = "127.0.0.1"
HELP = f"""header-augment: mitmdump with the header-augment addon loaded (mitmweb with --web); mitmdump's own
options follow. Unlike mitmdump, it listens on {LISTEN_HOST} unless you pass --listen-host (or set listen_host with
--set or in config.yaml): the proxy adds credentials to the requests it forwards, so whoever can reach it can use them.
mitmproxy's onboarding app (http://mitm.it) is off unless you set onboarding=true, and each of mitmproxy's optional
addons (map_remote, modify_headers, save, proxyauth, ...) runs only once an option of its is set.
"""


def script_path() -> str:
    """Where the installed header_augment.py is, found without importing it (it is mitmproxy's to load)."""
    spec = importlib.util.find_spec(SCRIPT_MODULE)
    if spec is None or not spec.origin:
        raise SystemExit(f"header-augment: the {SCRIPT_MODULE} module is not installed beside header_augment_core")
    return spec.origin


def version() -> str:
    """The version of the code that runs: pyproject.toml's when it runs from a source tree (scripts/run, PYTHONPATH
    set to a clone's addon/, an editable install), where no distribution may be installed or an installed one may be
    another release; the installed distribution's otherwise."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf8")).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        project = {}
    if project.get("name") == "header-augment" and project.get("version"):
        return f"{project['version']} (from the source tree {pyproject.parent})"
    try:
        return importlib.metadata.version("header-augment")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (neither installed nor in a source tree)"


def sets_listen_host(args: list[str]) -> bool:
    """Whether the arguments give listen_host with --set (mitmproxy refuses two values for one option)."""
    return "listen_host" in launch.set_values(args)


def without_onboarding(args: list[str]) -> list[str]:
    """The onboarding app answers http://mitm.it in every flow's request hook: off unless the arguments set it (as a
    --set placed first, like listen_host: config.yaml still overrides it)."""
    if "onboarding" in launch.set_values(args):
        return args
    return ["--set", "onboarding=false", *args]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["placeholder"]:  # a fake credential shaped like a real one; no proxy runs
        from . import placeholder_command

        raise SystemExit(placeholder_command.main(args[1:]))
    if args[:1] in (["login"], ["logout"]):  # a person signs in or out for an entry; no proxy runs (login.py)
        from . import login

        raise SystemExit(login.main(args))
    if "--version" in args:
        print(f"header-augment {version()}")
        print(f"mitmproxy {importlib.metadata.version('mitmproxy')}")
        return
    web = "--web" in args
    args = [arg for arg in args if arg != "--web"]
    if "-h" in args or "--help" in args:
        print(HELP)
        print(launch.options_help())
    if not sets_listen_host(args):
        # As a --set, the first of the ways to set an option that mitmproxy applies: config.yaml and --listen-host
        # still override it.
        args = ["--set", f"listen_host={LISTEN_HOST}", *args]
    if web:
        from mitmproxy.tools.main import mitmweb

        mitmweb(["-s", script_path(), *args])
        return
    from . import chain

    chain.mitmdump(["-s", script_path(), *without_onboarding(args)])


if __name__ == "__main__":
    main()
