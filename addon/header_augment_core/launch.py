"""What the launchers (scripts/run, the `header-augment` command) read from the arguments they pass on to mitmproxy.

They hand mitmdump the user's arguments as they are, and need only know which options those set: with `--set
name[=value]` or `--set=name[=value]` (mitmproxy's two spellings; argparse takes no shorter prefix of --set, which
--server-replay and others share), or in the confdir's config.yaml / config.yml, which mitmproxy reads after the
command line. scripts/run starts its demo provider only when none of the provider sources is set anywhere, and both
list the addon's options under --help.

    python -m header_augment_core.launch plan ARGS...   shell assignments for scripts/run (see `plan`)
    python -m header_augment_core.launch help           the addon's options, one line each
"""

import re
import shlex
import sys
from pathlib import Path

from mitmproxy import exceptions, optmanager
from mitmproxy.options import CONF_DIR

from .fields import Option

# Arguments with which mitmdump prints something and exits without proxying: no demo provider for those.
INFORMATIONAL = ("-h", "--help", "--version", "--options", "--commands")


def set_values(args: list[str]) -> dict[str, str | None]:
    """name → value of each `--set name[=value]` / `--set=name[=value]` before any `--` (None: no `=value`)."""
    found: dict[str, str | None] = {}
    words = iter(args)
    for arg in words:
        if arg == "--":
            break
        if arg == "--set":
            given = next(words, None)
        elif arg.startswith("--set="):
            given = arg.removeprefix("--set=")
        else:
            continue
        if given is not None:
            name, equals, value = given.partition("=")
            found[name] = value if equals else None
    return found


def config_files(args: list[str]) -> list[Path]:
    """The config files mitmproxy will read, in its order (the last one wins), relative to the current directory."""
    confdir = set_values(args).get("confdir") or CONF_DIR
    paths = [Path(confdir).expanduser() / name for name in ("config.yaml", "config.yml")]
    return [path for path in paths if path.is_file()]


def config_names(path: Path) -> set[str]:
    """The options a config file sets, read as mitmproxy reads it; none from a file it cannot read (mitmproxy
    reports that itself when it starts)."""
    try:
        data = optmanager.parse(path.read_text(encoding="utf8"))
    except (OSError, UnicodeDecodeError, exceptions.OptionsError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def named_options(args: list[str]) -> set[str]:
    """Every option the arguments set, on the command line or in a config file."""
    names = set(set_values(args))
    for path in config_files(args):
        names |= config_names(path)
    return names


def sources() -> tuple[str, ...]:
    """The options the credentials come from: with none of them set, the addon adds nothing."""
    from .options import LOCATORS  # the option table, imported only where needed: the command's --set check is not

    return (*LOCATORS, "header_providers_file")


def plan(args: list[str]) -> str:
    """For scripts/run, as shell assignments: `config` (the config file whose options override the command line's, or
    empty), `named` (every option set, each followed by a space, after a leading one) and `demo` (1 when no provider
    source is set and mitmdump is to proxy, 0 otherwise)."""
    named = named_options(args)
    files = config_files(args)
    informational = any(arg in INFORMATIONAL for arg in args)
    demo = not informational and not named.intersection(sources())
    assignments = {
        "config": str(files[-1]) if files else "",
        "named": " " + "".join(f"{name} " for name in sorted(named)),
        "demo": "1" if demo else "0",
    }
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in assignments.items())


def _default(option: Option) -> str:
    if option.typespec is bool:
        return "true" if option.default else "false"
    if isinstance(option.default, list | tuple):
        return shlex.quote(",".join(option.default))
    return shlex.quote(str(option.default))


def _summary(text: str) -> str:
    """A help text's first sentence, and any sentence that gives the default (where the table's is empty)."""
    sentences = re.split(r"(?<=\.)\s+(?=[A-Z])", text)
    return " ".join([sentences[0], *(s for s in sentences[1:] if s.startswith("Default"))])


def options_help() -> str:
    """The addon's options, one line each: `name=default` as --set writes it, and what it does."""
    from .options import OPTIONS

    rows = [(f"{option.name}={_default(option)}", _summary(option.help)) for option in OPTIONS]
    width = max(len(left) for left, _ in rows)
    lines = [
        "header-augment's options (--set NAME=VALUE, or NAME: VALUE in config.yaml; shown with their defaults).",
        f"The headers come from one of: {', '.join(sources())}.",
        *(f"  {left:<{width}}  {right}" for left, right in rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if argv[:1] == ["plan"]:
        sys.stdout.write(plan(argv[1:]))
    elif argv == ["help"]:
        sys.stdout.write(options_help())
    else:
        raise SystemExit(f"usage: python -m {__spec__.name} plan ARGS... | help")


if __name__ == "__main__":
    main(sys.argv[1:])
