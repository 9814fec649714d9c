"""moto's server on 127.0.0.1, for the tests that check real AWS requests: it verifies SigV4 once IAM authentication
is on, which `require_auth` turns on after the test has made its account's users, roles and resources."""

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from helpers.ports import free_port
from helpers.running import Running

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def moto_server(region: str) -> Iterator[tuple[str, dict[str, str]]]:
    """The server's URL and boto3's arguments for it (any key: authentication is off until `require_auth`)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and "proxy" not in k.lower()}
    server = Running([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], cwd=ROOT, env=env)
    try:
        server.wait_for(rf"Running on http://127\.0\.0\.1:{port}")
        url = f"http://127.0.0.1:{port}"
        yield url, {"endpoint_url": url, "region_name": region, "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    finally:
        server.kill_group()


def require_auth(url: str, after: int = 0) -> None:
    """IAM authentication on, once `after` more actions have gone unauthenticated (moto's reset-auth)."""
    httpx.post(f"{url}/moto-api/reset-auth", content=str(after).encode(), trust_env=False).raise_for_status()
