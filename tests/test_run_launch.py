"""What the launchers read from the arguments before starting mitmproxy (header_augment_core/launch.py): which options
are set, on the command line or in config.yaml, whether scripts/run starts its demo provider, and the options' help."""

import re
import shlex
import subprocess

import pytest

from header_augment_core import launch
from header_augment_core.options import LOCATORS, OPTIONS


def planned(args: list[str]) -> dict[str, str]:
    """scripts/run's variables after it evals the plan, read back from a real bash."""
    script = f'eval {shlex.quote(launch.plan(args))}; printf \'%s\\n\' "$config" "$named" "$demo"'
    shell = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    config, named, demo = shell.stdout.removesuffix("\n").split("\n")
    return {"config": config, "named": named, "demo": demo}


@pytest.mark.parametrize(
    ("args", "values"),
    [
        ([], {}),
        (["--set", "header_hosts=a.example"], {"header_hosts": "a.example"}),
        (["--set=header_hosts=a.example"], {"header_hosts": "a.example"}),
        (["--set", "header_require"], {"header_require": None}),
        (["--set", "header_scope=~h a=b"], {"header_scope": "~h a=b"}),  # only the first = separates
        (["--listen-port", "0", "--set"], {}),  # argparse refuses it; nothing is set
        (["--set", "a=1", "--", "--set", "b=2"], {"a": "1"}),  # after --: filter expressions
        (["--setx=a=1", "-s", "x.py", "set=y"], {}),
    ],
)
def test_set_values_in_both_spellings(args, values):
    assert launch.set_values(args) == values


@pytest.mark.parametrize("source", [*LOCATORS, "header_providers_file"])
@pytest.mark.parametrize("form", ["set", "set=", "config.yaml", "config.yml"])
def test_any_source_anywhere_means_no_demo(tmp_path, source, form):
    """The demo was started unless header_provider_url was among the arguments: with header_aws_service, mitmdump
    then refused two sources; with a providers file, the demo headers went beside the user's."""
    confdir = tmp_path / "confdir"
    confdir.mkdir()
    args = ["--set", f"confdir={confdir}", "--set", "header_hosts=127.0.0.1"]
    if form == "set":
        args += ["--set", f"{source}=x"]
    elif form == "set=":
        args += [f"--set={source}=x"]
    else:
        (confdir / form).write_text(f"{source}: x\nheader_merge: append\n")
    plan = planned(args)
    assert plan["demo"] == "0"
    assert f" {source} " in plan["named"] and " header_hosts " in plan["named"]
    assert plan["config"] == (str(confdir / form) if form.startswith("config") else "")


def test_no_source_means_the_demo(tmp_path):
    confdir = tmp_path / "confdir"
    confdir.mkdir()
    # Named where a source's name is a value, or only a prefix: none of them is set.
    (confdir / "config.yaml").write_text("header_refresh_interval: 30s\nheader_provider_name: header_provider_url\n")
    plan = planned(["--set", f"confdir={confdir}", "--set", "header_hosts=header_aws_service", "--", "--set=x"])
    assert plan == {
        "config": str(confdir / "config.yaml"),
        "named": " confdir header_hosts header_provider_name header_refresh_interval ",
        "demo": "1",
    }


def test_the_config_file_mitmproxy_reads_last_is_named(tmp_path):
    (tmp_path / "config.yaml").write_text("header_hosts: a.example\n")
    (tmp_path / "config.yml").write_text("header_provider_file: /x\n")
    plan = planned(["--set", f"confdir={tmp_path}"])
    assert plan["config"] == str(tmp_path / "config.yml") and plan["demo"] == "0"
    assert plan["named"] == " confdir header_hosts header_provider_file "


def test_the_default_confdir_is_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".mitmproxy").mkdir()
    (tmp_path / ".mitmproxy" / "config.yaml").write_text("header_providers_file: /x\n")
    assert planned([]) == {
        "config": str(tmp_path / ".mitmproxy" / "config.yaml"),
        "named": " header_providers_file ",
        "demo": "0",
    }
    assert planned(["--set", "confdir=~/elsewhere"])["demo"] == "1"


@pytest.mark.parametrize(
    "text", ["header_provider_url: [unclosed\n", "just a string\n", "- {header_provider_url: x}\n", "\xff"]
)
def test_a_config_file_mitmproxy_cannot_read_names_nothing(tmp_path, text):
    """mitmproxy reports the error itself once it starts."""
    (tmp_path / "config.yaml").write_bytes(text.encode("latin-1"))
    assert planned(["--set", f"confdir={tmp_path}"])["named"] == " confdir "


@pytest.mark.parametrize("flag", ["-h", "--help", "--version", "--options", "--commands"])
def test_no_demo_for_a_command_line_that_only_prints(flag):
    assert planned([flag])["demo"] == "0"


def test_the_options_help_has_every_option_once_with_its_default_and_first_sentence():
    text = launch.options_help()
    rows = re.findall(r"^  (header_\w+)=('[^']*'|\S*)  +(\S.*)$", text, re.MULTILINE)
    assert [name for name, _, _ in rows] == [option.name for option in OPTIONS]
    assert len(text.splitlines()) == 2 + len(OPTIONS)  # one line each
    for option in OPTIONS:
        line = re.search(rf"^  {option.name}=.*$", text, re.MULTILINE)[0]
        assert option.help.split(". ")[0] in line
    assert re.search(r"^  header_refresh_interval=360s +How often the provider is asked", text, re.MULTILINE)
    assert re.search(r"^  header_token_prefix='Bearer ' +With header_provider_format=token", text, re.MULTILINE)
    assert re.search(r"^  header_require=false +Answer in-scope requests with 503", text, re.MULTILINE)
    assert re.search(r"^  header_hosts='' +The hosts that get", text, re.MULTILINE)
    assert "Default: 5s, and 30s for a command." in re.search(r"^  header_provider_timeout=.*$", text, re.M)[0]
    assert ", ".join([*LOCATORS, "header_providers_file"]) in text
