#!/usr/bin/env python3
"""The demo workload: sends requests through the proxy named by HTTP_PROXY and prints which headers the upstream
(scripts/echo_upstream.py) received. It knows nothing about tokens; the proxy adds them. Standard library only.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

from echo_upstream import received

SHOWN = ("Authorization", "X-Tenant")


def redact(name: str, value: str) -> str:
    # Enough to see that a token arrived and when it rotates, not enough to reuse it from a log.
    return value if name != "Authorization" else value[:18] + "…"


def fetch(url: str, timeout: float) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # honours HTTP_PROXY from the environment
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, {"error": e.read().decode(errors="replace").strip()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://upstream:8000/")
    parser.add_argument("--count", type=int, default=3, help="requests to print (0: forever)")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--wait", type=float, default=30.0, help="how long to retry while the proxy answers 503")
    args = parser.parse_args()
    print(
        f"app: sending to {args.url} through {os.environ.get('HTTP_PROXY') or os.environ.get('http_proxy')}", flush=True
    )
    deadline = time.monotonic() + args.wait
    sent = 0
    while args.count == 0 or sent < args.count:
        status, body = fetch(args.url, timeout=10)
        if status == 503 and time.monotonic() < deadline:
            print(f"app: proxy not ready ({body.get('error', '')}); retrying", flush=True)
            time.sleep(0.5)
            continue
        if status != 200:
            print(f"app: HTTP {status}: {body}", flush=True)
            return 1
        seen = {name: value for name, value in received(body) if name in SHOWN}
        shown = ", ".join(f"{name}: {redact(name, seen[name])}" for name in SHOWN if name in seen) or "none"
        print(f"app: upstream saw {shown}", flush=True)
        sent += 1
        if args.count == 0 or sent < args.count:
            time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
