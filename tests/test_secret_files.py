"""The files the proxy takes a credential from (OAuth2 secrets, subject tokens and assertions, signing keys) and the
files it is pointed at (providers file, file providers) are read one way, files.read_regular: a regular file within
a limit, opened without blocking, never one of the kernel's (/proc, /sys), however a symlink leads there. What an
OAuth2 file holds is checked to be what its field is for before it is sent. A command's stderr line, kept in its
failure reason, has anything credential-shaped masked."""

import os
import shutil
import subprocess
import sys
import urllib.parse

import pytest
from helpers.tokens import jwt
from servers import ROOT, Provider

from header_augment_core.failures import Failed
from header_augment_core.fields import SettingsError
from header_augment_core.files import read_regular
from header_augment_core.kinds.oauth2 import MAX_SECRET_FILE_BYTES
from header_augment_core.providers_file import load_providers_file
from header_augment_core.settings import parse_settings

KERNEL_FILE = "a kernel file (/proc, /sys): not read"
# A regular file of size 0 that reads as the environment; the kernel's hostname; a sysfs attribute.
KERNEL_FILES = ["/proc/self/environ", "/proc/sys/kernel/hostname", "/sys/devices/system/cpu/online"]
ASSERTION = jwt(4_000_000_000)
OAUTH2_FIELDS = {
    "client_secret_file": {"client_id": "proxy"},
    "client_assertion_file": {"client_id": "proxy"},
    "subject_token_file": {"grant": "token-exchange"},
}
NOT_VISIBLE_ASCII = "has characters other than visible ASCII, or more than one line"
NOT_A_JWT = "not a JWT (three base64url parts)"


def settings_of(**fields):
    return parse_settings({"hosts": "*", **fields}, str)


def point(link, target) -> None:
    """Make `link` a symlink to `target`, swapped in atomically (as the kubelet swaps a mounted secret's `..data`)."""
    staged = link.with_name(link.name + ".new")
    staged.symlink_to(target)
    os.replace(staged, link)


def good_content(field: str) -> str:
    return "s3cret" if field == "client_secret_file" else ASSERTION


# -- the one read -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", KERNEL_FILES)
def test_a_kernel_file_is_refused_by_the_shared_read_directly_or_through_a_symlink(tmp_path, target):
    link = tmp_path / "secret"
    point(link, target)
    for path in (target, link):
        with pytest.raises(Failed) as refused:
            read_regular(str(path), 1 << 20)
        assert (refused.value.reason, refused.value.reason_class) == (KERNEL_FILE, "file")


def test_every_reader_refuses_a_kernel_file_naming_its_field(tmp_path):
    link = tmp_path / "environ"
    point(link, "/proc/self/environ")
    file_provider = settings_of(kind="file", path=str(link))
    result = file_provider.source.client(file_provider.timeout).fetch()
    assert (result.reason, result.reason_class) == (KERNEL_FILE, "file")
    with pytest.raises(SettingsError) as refused:
        load_providers_file(str(link))
    assert str(refused.value) == f"header_providers_file {link}: {KERNEL_FILE}"
    key_files = [
        ({"kind": "github-app", "app_id": "1", "installation_id": "2"}, "private_key_file"),
        ({"kind": "google-service-account", "scopes": ["s"]}, "key_file"),
    ]
    for field, fields in OAUTH2_FIELDS.items():
        key_files.append(({"kind": "oauth2", "url": "http://127.0.0.1:9/token", **fields}, field))
    for fields, field in key_files:
        with pytest.raises(SettingsError) as refused:
            settings_of(**fields, **{field: str(link)})
        assert str(refused.value) == f"{field}: {KERNEL_FILE}"


def _in_a_mount_namespace(script: str, *args: str) -> list[str]:
    """`script` run by sh with `args` in a mount namespace of its own (what it mounts goes with it): its lines."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("mounting in a namespace of our own needs unshare(1) and CAP_SYS_ADMIN")
    done = subprocess.run(
        [unshare, "-m", "--propagation", "private", "sh", "-ec", script, "sh", *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT / "addon")},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


READ_AND_SAY = """
import sys
import urllib.parse
from header_augment_core.failures import Failed
from header_augment_core.files import read_regular
try:
    read_regular(sys.argv[1], 1 << 20)
    print("read")
except Failed as e:
    print(e.reason)
"""


def test_a_proc_mounted_elsewhere_and_sysfs_without_a_proc_are_refused_too(tmp_path):
    """The device of the opened file is checked, not its name: another procfs (a container's /host/proc) is refused
    as /proc is, and without /proc (so without its mountinfo) the sysfs at /sys still is."""
    elsewhere = tmp_path / "host-proc"
    elsewhere.mkdir()
    script = """
mount -t proc proc "$2"
"$1" -c "$3" "$2/self/environ"
"$1" -c "$3" "$2/sys/kernel/hostname"
"$1" -c "$3" "$4"
umount -l /proc
test ! -e /proc/self/mountinfo
"$1" -c "$3" /sys/devices/system/cpu/online
"$1" -c "$3" "$4"
"""
    lines = _in_a_mount_namespace(script, sys.executable, str(elsewhere), READ_AND_SAY, str(ROOT / "pyproject.toml"))
    assert lines == [KERNEL_FILE, KERNEL_FILE, "read", KERNEL_FILE, "read"]


# -- OAuth2's files: bounded, and checked before they are sent ---------------------------------------------------


@pytest.fixture
def endpoint():
    """A token endpoint that records every request (and answers none usefully: only what reaches it matters)."""
    recording = Provider()
    yield recording
    recording.close()


def oauth2_client(endpoint, field, path):
    settings = settings_of(kind="oauth2", url=endpoint.url, **OAUTH2_FIELDS[field], **{field: str(path)})
    return settings.source.client(settings.timeout)


def _huge(path):
    path.write_bytes(b"a" * (MAX_SECRET_FILE_BYTES + 1))
    return path


TARGETS = {
    "/dev/zero": (lambda tmp: "/dev/zero", "not a regular file", "file"),
    "a FIFO": (lambda tmp: os.mkfifo(tmp / "fifo") or tmp / "fifo", "not a regular file", "file"),
    "a huge file": (lambda tmp: _huge(tmp / "huge"), f"larger than {MAX_SECRET_FILE_BYTES} bytes", "size"),
    "/proc/self/environ": (lambda tmp: "/proc/self/environ", KERNEL_FILE, "file"),
}


@pytest.mark.parametrize("field", OAUTH2_FIELDS)
@pytest.mark.parametrize("target", TARGETS)
def test_a_secret_file_swapped_for_a_device_fifo_huge_or_kernel_file_fails_the_refresh_naming_the_field(
    tmp_path, endpoint, field, target
):
    make, reason, reason_class = TARGETS[target]
    good = tmp_path / "good"
    good.write_text(good_content(field) + "\n")
    link = tmp_path / "mounted-secret"
    point(link, good)
    client = oauth2_client(endpoint, field, link)
    assert client.fetch().reason == "token response has no access_token"  # read, sent, answered
    assert endpoint.count == 1
    point(link, make(tmp_path))
    result = client.fetch()
    assert (result.reason, result.reason_class) == (f"{field}: {reason}", reason_class)
    assert endpoint.count == 1  # nothing was sent


def test_a_fifo_at_start_is_refused_naming_the_field_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for field, fields in OAUTH2_FIELDS.items():
        with pytest.raises(SettingsError) as refused:
            settings_of(kind="oauth2", url="http://127.0.0.1:9/token", **fields, **{field: str(fifo)})
        assert str(refused.value) == f"{field}: not a regular file"


ENVIRONMENT = b"PATH=/usr/bin\0AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\0HOME=/root\0"


@pytest.mark.parametrize(
    ("field", "content", "reason"),
    [
        ("client_secret_file", ENVIRONMENT, NOT_VISIBLE_ASCII),
        ("client_secret_file", b"first line\nsecond line\n", NOT_VISIBLE_ASCII),
        ("client_secret_file", b"s3cret\twith a tab", NOT_VISIBLE_ASCII),
        ("client_secret_file", "s3cr\u00e9t".encode(), NOT_VISIBLE_ASCII),
        ("client_assertion_file", ENVIRONMENT, NOT_A_JWT),
        ("client_assertion_file", b"an opaque token", NOT_A_JWT),
        ("client_assertion_file", ASSERTION.rpartition(".")[0].encode(), NOT_A_JWT),  # two parts
        ("client_assertion_file", f"{ASSERTION}\n{ASSERTION}\n".encode(), NOT_A_JWT),
        ("subject_token_file", ENVIRONMENT, NOT_A_JWT),
        ("subject_token_file", b"opaque-token", NOT_A_JWT),
    ],
)
def test_what_a_file_holds_is_checked_before_it_is_sent(tmp_path, endpoint, field, content, reason):
    path = tmp_path / "file"
    path.write_text(good_content(field))
    client = oauth2_client(endpoint, field, path)
    path.write_bytes(content)
    result = client.fetch()
    assert (result.reason, result.reason_class) == (f"{field}: {reason}", "format")
    assert endpoint.count == 0
    with pytest.raises(SettingsError) as refused:  # and at start
        oauth2_client(endpoint, field, path)
    assert str(refused.value) == f"{field}: {reason}"


@pytest.mark.parametrize(
    ("token_type", "content", "sent"),
    [
        ("urn:ietf:params:oauth:token-type:id_token", "opaque-token", None),
        ("urn:ietf:params:oauth:token-type:id_token", f" {ASSERTION}\n", ASSERTION),
        ("urn:ietf:params:oauth:token-type:access_token", "opaque-token\n", "opaque-token"),
        ("urn:ietf:params:oauth:token-type:access_token", "first\nsecond", None),
        ("urn:ietf:params:oauth:token-type:saml2", ENVIRONMENT.decode(), None),
    ],
)
def test_a_subject_token_is_checked_as_its_type_says(tmp_path, endpoint, token_type, content, sent):
    """An ID token is a JWT; a token of another type may be opaque, but is visible ASCII on one line."""
    path = tmp_path / "subject-token"
    path.write_text(content)
    fields = {"kind": "oauth2", "url": endpoint.url, "grant": "token-exchange", "subject_token_file": str(path)}
    if sent is None:
        with pytest.raises(SettingsError) as refused:
            settings_of(**fields, subject_token_type=token_type)
        reason = NOT_A_JWT if token_type.endswith("id_token") else NOT_VISIBLE_ASCII
        assert str(refused.value) == f"subject_token_file: {reason}"
        return
    settings = settings_of(**fields, subject_token_type=token_type)
    settings.source.client(settings.timeout).fetch()
    (request,) = endpoint.requests
    form = dict(urllib.parse.parse_qsl(request["body"].decode()))
    assert (form["subject_token"], form["subject_token_type"]) == (sent, token_type)


def test_a_secret_keeps_its_spaces_and_loses_only_its_final_newline(tmp_path, endpoint):
    path = tmp_path / "secret"
    path.write_text(" s3cret with spaces \r\n")
    settings = settings_of(
        kind="oauth2", url=endpoint.url, client_id="proxy", client_secret_file=str(path), client_auth="post"
    )
    settings.source.client(settings.timeout).fetch()
    (request,) = endpoint.requests
    assert dict(urllib.parse.parse_qsl(request["body"].decode()))["client_secret"] == " s3cret with spaces "


# -- a command's stderr line -----------------------------------------------------------------------------------

STDERR_LINES = [
    ("error: token rejected: Bearer ya29.a0AfH6SMBx3dL-k_2", "error: token rejected: Bearer ***"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA== refused", "Authorization: Basic *** refused"),
    (f"bad assertion {ASSERTION}, try again", "bad assertion ***, try again"),
    (f"cut short: {ASSERTION[:30]}", "cut short: ***"),
    ("key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY is invalid", "key *** is invalid"),
    ("ghp_16C7e42F292c6912E7710c838347Ae178B4a expired", "*** expired"),
    ("session 0123456789abcdef0123456789abcdef", "session ***"),
    # Words, flags, paths and short numbers stay readable.
    (
        "ERROR: (gcloud.auth.print-access-token) application_default_credentials not found in /home/me/.config",
        "ERROR: (gcloud.auth.print-access-token) application_default_credentials not found in /home/me/.config",
    ),
    ("Bearer token required (HTTP 401, request 12345)", "Bearer token required (HTTP 401, request 12345)"),
]


@pytest.mark.parametrize(("line", "shown"), STDERR_LINES)
def test_a_commands_stderr_line_has_anything_credential_shaped_masked_in_its_reason(line, shown):
    program = [sys.executable, "-c", "import sys; sys.stderr.write(sys.argv[1] + '\\n'); sys.exit(1)", line]
    settings = settings_of(kind="command", command=program)
    result = settings.source.client(settings.timeout).fetch()
    name = os.path.basename(sys.executable)
    assert (result.reason, result.reason_class) == (f"{name}: exit status 1: {shown}", "command")
