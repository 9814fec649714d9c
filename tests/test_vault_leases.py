"""kind vault's leased secrets against a real engine: OpenBao's database engine (`bao server -dev`) issuing PostgreSQL
users from a real PostgreSQL server (initdb in the test's directory, on 127.0.0.1). `database/creds/ROLE` is a GET
whose answer carries a renewable lease: renewed at 2/3 of its duration, read afresh when renewal gives less than asked
(its max TTL is near), when renewal is refused (revoked, or expired on the server) and when the token changes.

OpenBao's dev server has no engine whose GET answers a lease that does not renew: PKI's `generate_lease` leases come
from pki/issue and pki/sign, which take only POST (a GET answers 405), and a KV version 1 secret with a `ttl` key
answers a lease_duration with no lease_id (tested here: read at every fetch, as KV is). The clients run on an
injected clock; the server's clock is real where it must expire something (one wait of about a second)."""

import glob
import os
import shutil
import signal
import time
from pathlib import Path

import hvac
import pytest
from processes import Running, free_port
from servers import wait_until
from test_vault import Bao, Clock, client_for_settings, headers_of, settings_for, token_file

from header_augment_core.refresher import Refresher
from header_augment_core.schedule import Schedule

LEASES = """
path "database/creds/*" { capabilities = ["read"] }
path "kv1/*" { capabilities = ["read"] }
"""
CREATE_USER = """CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"""
# Roles of the database engine: (default TTL, max TTL) in seconds.
ROLES = {"hour": (3600, 7200), "capped": (60, 60), "brief": (1, 1)}


def postgres_program(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    assert found[-1], f"{name} not found: these tests need a PostgreSQL server (Debian: apt-get install postgresql)"
    return found[-1]


class Postgres:
    """A PostgreSQL server on 127.0.0.1:`port` with a superuser `admin` (trust authentication), its data in `home`.
    PostgreSQL refuses to run as root: as root, it runs as the `postgres` user, allowed to search the test's private
    directories (CAP_DAC_READ_SEARCH) down to its data directory, which it owns."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        data = home / "pg"
        data.mkdir()
        as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
            caps = "+dac_read_search"
            as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
            as_user += [f"--inh-caps={caps}", f"--ambient-caps={caps}"]
        env = {"PATH": os.environ["PATH"], "LC_ALL": "C"}
        init = Running(
            [*as_user, postgres_program("initdb"), "-D", str(data / "data"), "-A", "trust", "-U", "admin"]
            + ["--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C"],
            cwd=home,
            env=env,
        )
        assert init.wait_exit() == 0, init.output
        self.server = Running(
            [*as_user, postgres_program("postgres"), "-D", str(data / "data"), "-p", str(self.port)]
            + ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "fsync=off"],
            cwd=home,
            env=env,
        )
        self.server.wait_for("ready to accept connections")

    def stop(self) -> None:
        # A fast shutdown: a killed postmaster leaves its shared memory behind.
        if self.server.proc.poll() is None:
            self.server.proc.send_signal(signal.SIGINT)
            try:
                self.server.wait_exit(10)
            finally:
                self.server.kill_group()


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    home = tmp_path_factory.mktemp("leases")
    database = Postgres(home)
    server = None
    try:
        server = Bao(home)
        api = server.api
        api.sys.create_or_update_policy("leases", LEASES)
        api.sys.enable_secrets_engine("database")
        api.secrets.database.configure(
            "pg",
            "postgresql-database-plugin",
            connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{database.port}/postgres"
            "?sslmode=disable",
            username="admin",
            password="trusted",
            allowed_roles=list(ROLES),
        )
        for role, (ttl, max_ttl) in ROLES.items():
            api.secrets.database.create_role(role, "pg", [CREATE_USER], default_ttl=f"{ttl}s", max_ttl=f"{max_ttl}s")
        api.sys.enable_secrets_engine("kv", path="kv1", options={"version": "1"})
        yield server
    finally:
        if server is not None:
            server.stop()
        database.stop()


def client(bao, tmp_path, clock, role="hour", token=None, **fields):
    token = token or bao.token(["leases"], ttl="24h")
    path = token_file(tmp_path, token, f"{role}-token")
    settings = settings_for(bao, {"token_file": path}, secret=f"database/creds/{role}", field="username", **fields)
    return client_for_settings(settings, clock), settings


def user_of(result) -> str:
    ((name, value),) = headers_of(result)
    assert name == "Authorization" and value.startswith("Bearer v-")
    return value.removeprefix("Bearer ")


def lease_of(bao, client) -> dict:
    """The server's record of the lease the client holds (the client keeps its id, never shown anywhere)."""
    return bao.api.sys.read_lease(client._lease.id)["data"]


def test_a_lease_is_renewed_at_two_thirds_of_its_duration_and_its_secret_kept(bao, tmp_path):
    """Driven by a refresher: its schedule brings a fetch at 2/3 of the hour, not before, and the fetches before it
    ask the server nothing (the lease is not renewed early, the user not read again)."""
    clock = Clock()
    vault, settings = client(bao, tmp_path, clock, interval="1h")
    refresher = Refresher(vault, settings, schedule=Schedule(settings.interval), clock=clock)
    refresher.step()
    first = refresher.snapshot.fields
    issued = clock.now
    lease = lease_of(bao, vault)
    assert lease["renewable"] and not lease["last_renewal"]
    while not lease_of(bao, vault)["last_renewal"]:
        assert refresher.next_fetch_at < issued + 3600, "the lease was left to expire"
        clock.now = refresher.next_fetch_at
        refresher.step()
    assert issued + 2400 <= clock.now <= issued + 2400 + 1.5  # the schedule's floor is 1 s
    assert refresher.snapshot.fields == first and refresher.counts.failed == 0
    renewed = vault.fetch()  # the lease renewed by an hour from now: the next renewal 40 minutes on
    assert renewed.ok and renewed.max_age == pytest.approx(2400, abs=2)
    assert lease_of(bao, vault)["id"] == lease["id"]


def test_a_revoked_lease_is_read_again_when_its_renewal_is_refused(bao, tmp_path):
    clock = Clock()
    vault, _ = client(bao, tmp_path, clock)
    first = vault.fetch()
    user, lease = user_of(first), vault._lease.id
    bao.api.sys.revoke_lease(lease)  # an operator's `bao lease revoke`: the user is dropped from the database
    clock.now += first.max_age
    again = vault.fetch()
    assert again.ok, again.reason
    assert user_of(again) != user and vault._lease.id != lease


def test_a_renewal_short_of_what_was_asked_and_a_lease_the_server_expired_are_read_afresh(bao, tmp_path):
    """Role `capped`: 60 s, at most 60 s; renewed once a second of real time has passed, it gets 59 s, less than
    asked: its max TTL is near, so at 2/3 of that it is read again, not renewed. Role `brief`: 1 s, which the server
    ends (and revokes) while the client's clock says 2/3 of it has passed: renewal is refused, the secret read again."""
    capped_clock, brief_clock = Clock(), Clock()
    capped, _ = client(bao, tmp_path, capped_clock, role="capped")
    brief, _ = client(bao, tmp_path, brief_clock, role="brief")
    started = time.monotonic()
    first, short = capped.fetch(), brief.fetch()
    assert first.max_age == pytest.approx(40, abs=1) and short.max_age == pytest.approx(2 / 3, abs=0.1)
    brief_lease = brief._lease.id

    def expired() -> bool:
        try:
            bao.api.sys.read_lease(brief_lease)
        except hvac.exceptions.InvalidRequest:  # "invalid lease": the server revoked it
            return True
        return False

    wait_until(lambda: time.monotonic() >= started + 1.05 and expired(), what="the brief lease to expire")
    capped_clock.now += first.max_age
    renewed = capped.fetch()
    assert user_of(renewed) == user_of(first) and lease_of(bao, capped)["last_renewal"]
    assert 0 < renewed.max_age < 40
    capped_clock.now += renewed.max_age
    assert user_of(capped.fetch()) != user_of(first)

    brief_clock.now += short.max_age
    again = brief.fetch()
    assert again.ok, again.reason
    assert user_of(again) != user_of(short) and brief._lease.id != brief_lease


def test_a_new_token_reads_the_secret_again(bao, tmp_path):
    """The lease belongs to the token that read it: a new token in the file reads a new one at once, due or not."""
    clock = Clock()
    vault, _ = client(bao, tmp_path, clock)
    user = user_of(vault.fetch())
    assert user_of(vault.fetch()) == user  # within the lease: kept
    token_file(tmp_path, bao.token(["leases"], ttl="24h"), "hour-token")
    assert user_of(vault.fetch()) != user


def test_a_lease_longer_than_its_token_is_used_no_longer_than_the_token(bao, tmp_path):
    clock = Clock()
    token = bao.token(["leases"], ttl="10m", renewable=False)
    result = client(bao, tmp_path, clock, token=token)[0].fetch()
    assert result.ok and result.lifetime == pytest.approx(600, abs=2)
    assert result.max_age == pytest.approx(400, abs=2)  # the token's 2/3, before the lease's 40 minutes


def test_a_kv1_secret_with_a_ttl_has_no_lease_and_is_read_at_every_fetch(bao, tmp_path):
    bao.api.secrets.kv.v1.create_or_update_secret("github", {"token": "one", "ttl": "1h"}, mount_point="kv1")
    clock = Clock()
    path = token_file(tmp_path, bao.token(["leases"], ttl="24h"))
    vault = client_for_settings(settings_for(bao, {"token_file": path}, secret="kv1/github", field="token"), clock)
    first = vault.fetch()
    assert headers_of(first) == [("Authorization", "Bearer one")] and vault._lease is None
    bao.api.secrets.kv.v1.create_or_update_secret("github", {"token": "two", "ttl": "1h"}, mount_point="kv1")
    assert headers_of(vault.fetch()) == [("Authorization", "Bearer two")]
