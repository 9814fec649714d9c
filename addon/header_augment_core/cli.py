"""The `header-augment` command that `pip install .` / `pipx install .` provide: mitmdump (or mitmweb) with the addon.

mitmproxy loads an addon as a script given by path (`-s`), and after an install nobody knows where pip put
header_augment.py. This command finds it and runs mitmproxy in-process with `-s <that path>` followed by the
user's arguments unchanged, so that an install is used like `mitmdump -s addon/header_augment.py` from a clone:

    header-augment --set header_provider_url=http://127.0.0.1:9000/headers --set header_hosts=api.example.com
    header-augment --web ...     # mitmweb instead of mitmdump
    header-augment --version
"""

import importlib.metadata
import importlib.util
import sys

SCRIPT_MODULE = "header_augment"


def script_path() -> str:
    """Where the installed header_augment.py is, found without importing it (it is mitmproxy's to load)."""
    spec = importlib.util.find_spec(SCRIPT_MODULE)
    if spec is None or not spec.origin:
        raise SystemExit(f"header-augment: the {SCRIPT_MODULE} module is not installed beside header_augment_core")
    return spec.origin


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if "--version" in args:
        print(f"header-augment {importlib.metadata.version('header-augment')}")
        print(f"mitmproxy {importlib.metadata.version('mitmproxy')}")
        return
    web = "--web" in args
    args = [arg for arg in args if arg != "--web"]

    from mitmproxy.tools.main import mitmdump, mitmweb

    (mitmweb if web else mitmdump)(["-s", script_path(), *args])


if __name__ == "__main__":
    main()
