"""End to end for kinds `file` and `command`: a real mitmdump with the addon, real files changed the ways they are
changed in production, real child processes, echo upstreams on loopback and a real client."""

import os
import threading
import time
import urllib.parse
from functools import partial

import pytest
from conftest import client_for, values_of
from helpers.support import (
    CREDENTIAL,
    HANG,
    atomic_write,
    exec_credential,
    jwt,
    kubelet_volume,
    pid_lines,
    processes,
    wait_dead,
)
from servers import ROOT, Upstream, wait_until

CONSOLE = str(ROOT / "tests" / "console_set.py")
# A change to a file must reach the request path within 2 s; polled up to this, for a loaded machine.
CHANGE_DEADLINE = 4.0


@pytest.fixture
def upstreams():
    """Echo upstreams on loopback, one per provider (each provider's hosts name its own port)."""
    made: list[Upstream] = []

    def make(n: int) -> list[Upstream]:
        made.extend(Upstream() for _ in range(n))
        return made[-n:]

    yield make
    closing = [threading.Thread(target=u.close) for u in made]  # each close waits for its server's next poll
    for t in closing:
        t.start()
    for t in closing:
        t.join()


def status_of(client, label: str) -> str:
    """The lines of `augment.status` about the provider labelled `label`."""
    text = client.get("http://console.test/" + urllib.parse.quote("augment.status")).text
    blocks = text.split("\n[")[1:]
    return next(b for b in blocks if b.split("  kind=")[0].split("] ", 1)[1] == label)


def status_showing(client, label: str, reason: str) -> str | None:
    """The provider's lines of `augment.status` if they show `reason` as its last error."""
    block = status_of(client, label)
    return block if f"last error: {reason}\n" in block else None


def seen_after(client, url: str, name: str, value: str, since: float) -> float:
    """Seconds from `since` until a request to `url` reaches it with `name: value` (polled up to CHANGE_DEADLINE)."""
    remaining = since + CHANGE_DEADLINE - time.monotonic()
    wait_until(lambda: values_of(client.get(url), name) == [value], remaining, what=f"{name}: {value} at {url}")
    return time.monotonic() - since


def test_files_rotated_and_broken(mitmdump, upstreams, tmp_path):
    token_renamed, token_swapped, headers_renamed, headers_swapped, by_exec = upstreams(5)
    token = tmp_path / "token"
    token.write_text("tok-file-1\n")
    (tmp_path / "kube-token").mkdir()
    swapped_token = kubelet_volume(tmp_path / "kube-token", "token", "tok-kube-1", "2026_01_01")
    headers_file = tmp_path / "headers.json"
    headers_file.write_text('{"X-Tenant": "tenant-v1"}')
    (tmp_path / "kube-headers").mkdir()
    swapped_headers = kubelet_volume(tmp_path / "kube-headers", "headers.json", '{"X-Tenant": "kube-v1"}', "2026_01_01")
    ec = tmp_path / "ec.json"
    ec.write_bytes(exec_credential("ec-file-1"))
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        f"""
- name: kube-token
  path: {swapped_token}
  format: token
  hosts: 127.0.0.1:{token_swapped.port}
- name: headers
  path: {headers_file}
  hosts: 127.0.0.1:{headers_renamed.port}
- name: kube-headers
  path: {swapped_headers}
  hosts: 127.0.0.1:{headers_swapped.port}
- name: ec
  path: {ec}
  format: exec-credential
  hosts: 127.0.0.1:{by_exec.port}
"""
    )
    m = mitmdump(
        *("--set", f"header_provider_file={token}", "--set", "header_provider_format=token"),
        *("--set", f"header_hosts=127.0.0.1:{token_renamed.port}", "--set", f"header_providers_file={providers}"),
        *("-s", CONSOLE, "--set", "termlog_verbosity=debug"),
    )
    with client_for(m.proxy) as client:
        assert values_of(client.get(token_renamed.url), "Authorization") == ["Bearer tok-file-1"]
        assert values_of(client.get(token_swapped.url), "Authorization") == ["Bearer tok-kube-1"]
        assert values_of(client.get(headers_renamed.url), "X-Tenant") == ["tenant-v1"]
        assert values_of(client.get(headers_swapped.url), "X-Tenant") == ["kube-v1"]
        assert values_of(client.get(by_exec.url), "Authorization") == ["Bearer ec-file-1"]

        changed = time.monotonic()
        atomic_write(token, "tok-file-2\n")
        kubelet_volume(tmp_path / "kube-token", "token", "tok-kube-2", "2026_01_02")
        atomic_write(headers_file, '{"X-Tenant": "tenant-v2"}')
        kubelet_volume(tmp_path / "kube-headers", "headers.json", '{"X-Tenant": "kube-v2"}', "2026_01_02")
        latencies = {
            "token, atomic rename": seen_after(
                client, token_renamed.url, "Authorization", "Bearer tok-file-2", changed
            ),
            "token, ..data swap": seen_after(client, token_swapped.url, "Authorization", "Bearer tok-kube-2", changed),
            "headers, atomic rename": seen_after(client, headers_renamed.url, "X-Tenant", "tenant-v2", changed),
            "headers, ..data swap": seen_after(client, headers_swapped.url, "X-Tenant", "kube-v2", changed),
        }
        print("on the request path after:", ", ".join(f"{what} {s:.2f}s" for what, s in latencies.items()))

        # Broken each its own way: the reason is reported, and the last good headers stay in use. (Run as root,
        # chmod 000 would not stop the read: a FIFO or a directory in the file's place does.)
        token.unlink()
        os.mkfifo(token)
        headers_file.unlink()
        headers_file.mkdir()
        swapped_headers.unlink()
        ec.write_text("")
        for label, reason in [
            (str(token), "not a regular file"),
            (f"headers ({headers_file})", "not a regular file"),
            (f"kube-headers ({swapped_headers})", "cannot open it (No such file or directory)"),
            (f"ec ({ec})", "empty"),
        ]:
            block = wait_until(partial(status_showing, client, label, reason), what=f"{label}: {reason}")
            assert "state: failing, keeping the last good headers\n" in block
        assert values_of(client.get(token_renamed.url), "Authorization") == ["Bearer tok-file-2"]
        assert values_of(client.get(headers_renamed.url), "X-Tenant") == ["tenant-v2"]
        assert values_of(client.get(headers_swapped.url), "X-Tenant") == ["kube-v2"]
        assert values_of(client.get(by_exec.url), "Authorization") == ["Bearer ec-file-1"]
    assert m.stop() == 0
    for value in ("tok-file-", "tok-kube-", "tenant-v", "kube-v", "ec-file-1"):
        assert value not in m.output


def test_commands_each_format_refresh_expiry_and_failures(mitmdump, upstreams, tmp_path):
    by_option, by_exec, by_jwt, by_headers, by_failing, by_hanging = upstreams(6)
    token = tmp_path / "token"
    token.write_text("tok-cmd-1")
    runs = tmp_path / "runs"
    exp_state = tmp_path / "jwt-exp"
    headers_json = tmp_path / "headers.json"
    headers_json.write_text('{"X-From-Command": "hdr-value"}')
    hang_pids = tmp_path / "hang-pids"
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        f"""
- name: exec
  command: [{CREDENTIAL}, exec-credential, "2", {runs}]
  format: exec-credential
  hosts: 127.0.0.1:{by_exec.port}
- name: jwt
  command: [{CREDENTIAL}, jwt, "3", {exp_state}]
  require: true
  hosts: 127.0.0.1:{by_jwt.port}
- name: headers
  command: [{CREDENTIAL}, cat, {headers_json}]
  format: headers
  hosts: 127.0.0.1:{by_headers.port}
- name: failing
  command: [{CREDENTIAL}, fail, stdout-s3cret-value]
  hosts: 127.0.0.1:{by_failing.port}
- name: hanging
  command: [{HANG}, {hang_pids}]
  timeout: 1s
  hosts: 127.0.0.1:{by_hanging.port}
"""
    )
    m = mitmdump(
        # The arguments, quoted as in a shell; the last one stands for a secret given on the command line.
        *("--set", f"header_provider_command={CREDENTIAL} cat '{token}' 'arg s3cret value'"),
        *("--set", f"header_hosts=127.0.0.1:{by_option.port}", "--set", f"header_providers_file={providers}"),
        *("-s", CONSOLE, "--set", "termlog_verbosity=debug"),
    )
    with client_for(m.proxy) as client:
        first_jwt = values_of(client.get(by_jwt.url), "Authorization")  # first: it is good for 3 s only
        assert first_jwt == [f"Bearer {jwt(int(exp_state.read_text()))}"]
        assert values_of(client.get(by_option.url), "Authorization") == ["Bearer tok-cmd-1"]
        assert values_of(client.get(by_headers.url), "X-From-Command") == ["hdr-value"]

        # augment.refresh runs the commands again now.
        token.write_text("tok-cmd-2")
        assert client.get("http://console.test/augment.refresh").status_code == 200
        wait_until(lambda: values_of(client.get(by_option.url), "Authorization") == ["Bearer tok-cmd-2"])

        # The ExecCredential expires 2 s after each run: it is run again before that, long before the interval.
        wait_until(lambda: len(runs.read_text().splitlines()) >= 3, what="three runs of the exec command")
        # A request may fall between an ExecCredential's expiry and its next run on a loaded machine: wait for one.
        wait_until(lambda: [v[:10] for v in values_of(client.get(by_exec.url), "Authorization")] == ["Bearer ec-"])
        times = [float(t) for t in runs.read_text().split()]
        print("exec-credential runs after:", ", ".join(f"{b - a:.2f}s" for a, b in zip(times, times[1:], strict=False)))

        # The JWT is never renewed: once it has expired, header_require refuses.
        m.wait_for(r"jwt \(command credential\.py\): refresh failed: credential\.py: token expired")
        refused = wait_until(lambda: (r := client.get(by_jwt.url)).status_code == 503 and r, what="503")
        assert "the provider's headers expired" in refused.text

        failing = status_of(client, "failing (command credential.py)")
        assert "last error: credential.py: exit status 3: error: login required\n" in failing
        assert values_of(client.get(by_failing.url), "Authorization") == []

        m.wait_for(r"hanging \(command hang\.sh\): refresh failed: hang\.sh: timed out after 1s")
        [[leader, child], *_] = pid_lines(hang_pids)
        wait_dead(leader)
        wait_dead(child)
    assert m.stop() == 0
    # Whatever run was hanging when mitmdump stopped was killed, its child too: none of them is left.
    hung = {pid for pids in pid_lines(hang_pids) for pid in pids}
    wait_until(lambda: not hung & processes().keys(), what="every hanging run and its child gone")
    for secret in ("stdout-s3cret-value", "s3cret value", "tok-cmd-1", "tok-cmd-2", "hdr-value", "ec-1", first_jwt[0]):
        assert secret not in m.output
    assert str(token) not in m.output and str(runs) not in m.output  # the arguments are never shown
