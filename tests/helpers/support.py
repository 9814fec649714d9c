"""What the tests of kinds `file` and `command` share: the helper programs, credentials as providers write them,
files changed the ways they are changed in production, and a look at processes through /proc."""

import json
import os
import shutil
from pathlib import Path

from helpers.procfs import processes
from helpers.tokens import NO_EXP, jwt
from helpers.waiting import wait_until

__all__ = ["NO_EXP", "jwt"]  # the tests import them from here

HELPERS = Path(__file__).resolve().parent
CREDENTIAL = str(HELPERS / "credential.py")
HANG = str(HELPERS / "hang.sh")
LEAVE_CHILD = str(HELPERS / "leave-child.sh")
DAEMONS = str(HELPERS / "daemons.sh")


def exec_credential(token="ec-token", stamp=None, version="client.authentication.k8s.io/v1", **status) -> bytes:
    status = {"token": token, **status} if token is not None else status
    if stamp is not None:
        status["expirationTimestamp"] = stamp
    return json.dumps({"apiVersion": version, "kind": "ExecCredential", "status": status}).encode()


def atomic_write(path: Path, data: str) -> None:
    """Write a new file next to `path` and rename it over `path`, as careful writers do."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data)
    os.replace(tmp, path)


def kubelet_volume(directory: Path, name: str, data: str, version: str) -> Path:
    """A Secret/ConfigMap/projected volume as the kubelet writes it: `name -> ..data/name`, `..data -> ..<version>`.
    A new version is swapped in by replacing the `..data` symlink atomically; the old directory is then removed."""
    versioned = directory / f"..{version}"
    versioned.mkdir()
    (versioned / name).write_text(data)
    link = directory / "..data_tmp"
    link.symlink_to(versioned.name)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    os.replace(link, directory / "..data")
    if old:
        shutil.rmtree(directory / old)
    if not (directory / name).is_symlink():
        (directory / name).symlink_to(f"..data/{name}")
    return directory / name


def wait_dead(pid: int) -> None:
    """Wait for `pid` to be killed: a zombie (reaped by its parent or pid 1 in a moment) or gone."""
    wait_until(lambda: processes().get(pid, ("Z",))[0] == "Z", what=f"process {pid} killed")


def zombie_children() -> list[int]:
    """Zombies the test process has left unreaped."""
    return [pid for pid, (state, parent, _) in processes().items() if parent == os.getpid() and state == "Z"]


def pid_lines(path: Path, count: int = 1) -> list[list[int]]:
    """The pids a helper wrote to `path`, a line per run, once there are `count` lines."""
    lines = wait_until(
        lambda: path.exists() and len(lines := path.read_text().splitlines()) >= count and lines,
        what=f"{count} lines in {path}",
    )
    return [[int(p) for p in line.split()] for line in lines]
