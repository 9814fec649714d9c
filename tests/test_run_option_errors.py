"""A bad option stops mitmdump at start-up with one line that says what is wrong, without a traceback.

mitmproxy's script loader logs an OptionsError from the configure it calls after loading a script under a traceback
of our frame ("error in script …", "Traceback (most recent call last):", the raise): three lines of noise before the
one that matters, on a user's first mistake."""

import pytest


@pytest.mark.parametrize(
    ("args", "config", "line"),
    [
        (
            ["--set", "header_hosts=http://127.0.0.1:8000"],
            "",
            "header-augment: header_hosts: 'http://127.0.0.1:8000' is a URL: give its host and port, 127.0.0.1:8000",
        ),
        (
            ["--set", "header_aws_service=s3"],
            "",
            "header-augment: header_provider_url and header_aws_service are both set: give one of",
        ),
        (
            [],
            "header_hosts: ['https://user:s3cret-pw@api.example.com/v1?key=s3cret-pw']\n",
            "header-augment: header_hosts: 'https://…@api.example.com/…' is a URL: give its host, api.example.com",
        ),
    ],
)
def test_a_bad_option_at_start_up_is_one_line(tmp_path, mitmdump, provider, args, config, line):
    if config:
        (tmp_path / "confdir").mkdir()
        (tmp_path / "confdir" / "config.yaml").write_text(config)
    m = mitmdump(
        "--set", f"header_provider_url={provider.url}", "--set", "header_hosts=127.0.0.1", *args, wait_listening=False
    )
    assert m.wait_exit() == 1
    assert sum(line in text for text in m.output.splitlines()) == 1, m.output
    assert "Traceback" not in m.output and "error in script" not in m.output, m.output
    assert "s3cret-pw" not in m.output
