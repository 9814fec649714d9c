"""The load generator: keep-alive HTTP/1.1 connections sending one request after another through a proxy, each
request's start (CLOCK_MONOTONIC, the same clock in every process) and latency kept. It runs in a process of its
own (`bench.py --loadgen SPEC`), so that it shares a GIL with nothing measured."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

from benchparts.common import BENCH


def spec(proxy_port: int, target: str, seconds: float, connections: int = 1, **fields) -> dict:
    """`target` is the upstream's authority (127.0.0.1:port). Fields: limit (requests), path, method, host (the Host
    header), headers (extra ones), body (bytes of the body), until (a file whose appearance ends the run early),
    answered (a file made once the first answer has come), tolerate_5xx (count such answers in `errors`, go on)."""
    base = {"limit": 200_000, "path": "/bench", "method": "GET", "host": "api.example.com", "headers": {}, "body": 0}
    return {
        "proxy_port": proxy_port,
        "target": target,
        "seconds": seconds,
        "connections": connections,
        **base,
        **fields,
    }


async def _connect(s: dict):
    reader, writer = await asyncio.open_connection("127.0.0.1", s["proxy_port"])
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def _connection(s: dict, request: bytes, deadline: float, results: dict) -> None:
    reader, writer = await _connect(s)
    until = s.get("until")
    latencies, starts = results["latencies"], results["starts"]
    try:
        while time.monotonic() < deadline and len(latencies) < s["limit"] and not (until and os.path.exists(until)):
            at, started = time.monotonic(), time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length, closing = 0, False
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
                elif line.lower() == b"connection: close":
                    closing = True  # moto's server closes every connection, and mitmproxy passes that on
            answer = await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 5") and s.get("tolerate_5xx"):
                results["errors"].append(at)  # moto's server, under load, sometimes answers 500
            elif not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError((head[:80] + answer[:300]).decode(errors="replace"))
            latencies.append(time.perf_counter() - started)
            starts.append(at)
            if len(latencies) == 1 and s.get("answered"):
                open(s["answered"], "x").close()
            if closing:
                writer.close()
                reader, writer = await _connect(s)
    finally:
        writer.close()


def body(size: int) -> bytes:
    """The body a request of the load carries: the same bytes each time, so that one can be signed ahead."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


async def run(s: dict) -> dict:
    body_bytes = body(s["body"])
    headers = {"Host": s["host"], "User-Agent": "bench", "Accept": "*/*", **s["headers"]}
    if s["body"]:
        headers["Content-Length"] = str(len(body_bytes))
    request = (
        f"{s['method']} http://{s['target']}{s['path']} HTTP/1.1\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    ).encode() + body_bytes
    results: dict[str, list[float]] = {"latencies": [], "starts": [], "errors": []}
    started = time.monotonic()
    deadline = started + s["seconds"]
    await asyncio.gather(*(_connection(s, request, deadline, results) for _ in range(s["connections"])))
    return {"requests": len(results["latencies"]), "seconds": time.monotonic() - started, **results}


def main(argument: str) -> None:
    print(json.dumps(asyncio.run(run(json.loads(argument)))))


def start(s: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(BENCH), "--loadgen", json.dumps(s)], stdout=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float) -> dict:
    out, _ = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"the load generator failed ({process.returncode})")
    return json.loads(out)


def load(s: dict) -> dict:
    return finish(start(s), s["seconds"] + 60)
