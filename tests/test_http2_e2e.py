"""HTTP/2 from end to end: the headers we add are in the form HTTP/2 requires, so nothing is logged per request."""

import json
import subprocess
import sys
from pathlib import Path

from echo_upstream import received
from servers import ROOT, clean_env

MITMDUMP = Path(sys.executable).parent / "mitmdump"


def test_http2_upstream_gets_lower_case_names_and_nothing_is_logged_per_request(mitmdump, provider, upstream, tmp_path):
    """mitmproxy logged "Lowercased 'Authorization' header as uppercase is not allowed with HTTP/2." for every
    header we added, on every request to an HTTP/2 upstream."""
    provider.answer({"Authorization": "Bearer h2-token", "X-Tenant": "acme"})
    # An HTTP/2 upstream: a second mitmdump in reverse mode (it speaks HTTP/2 over TLS) before the echo upstream.
    h2_upstream = subprocess.Popen(
        [
            str(MITMDUMP),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            "0",
            "--set",
            f"confdir={tmp_path / 'h2'}",
            "--mode",
            f"reverse:http://127.0.0.1:{upstream.port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(),
        cwd=ROOT,
    )
    try:
        port = None
        for line in h2_upstream.stdout:
            if "listening at 127.0.0.1:" in line:
                port = int(line.rsplit(":", 1)[1].rstrip(".\n"))
                break
        assert port
        m = mitmdump(
            "--set",
            f"header_provider_url={provider.url}",
            "--set",
            "header_hosts=127.0.0.1",
            "--set",
            "ssl_insecure=true",
        )
        m.wait_for("headers in use")
        for _ in range(3):
            out = subprocess.run(
                [
                    "curl",
                    "-s",
                    "--max-time",
                    "10",
                    "--http2",
                    "-x",
                    m.proxy,
                    "--cacert",
                    str(m.confdir / "mitmproxy-ca-cert.pem"),
                    "-w",
                    "\n%{http_version}",
                    f"https://127.0.0.1:{port}/h2",
                ],
                capture_output=True,
                text=True,
                env=clean_env(),
                check=True,
            ).stdout
            body, version = out.rsplit("\n", 1)
            assert version == "2"
            seen = {name.lower(): value for name, value in received(json.loads(body))}
            assert seen["authorization"] == "Bearer h2-token" and seen["x-tenant"] == "acme"
        m.stop()
        assert "Lowercased" not in m.output
    finally:
        h2_upstream.terminate()
        upstream_log = h2_upstream.communicate(timeout=10)[0]
    assert upstream_log.count("HTTP/2.0") == 3  # the requests did reach it over HTTP/2
