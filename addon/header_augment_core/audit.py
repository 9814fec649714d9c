"""The audit log (option `header_audit_log`): one JSON object per line for every flow the addon acted on or refused.

    {"ts": "2026-03-01T12:00:00.123Z", "action": "added", "provider": "github",
     "client": {"address": "127.0.0.1", "user": "alice"}, "method": "GET", "scheme": "https",
     "host": "api.github.com", "port": 443, "path": "/user", "headers": ["Authorization"], "status": 200,
     "reason": null, "credential": "3f9a1c77e2d54b8a"}

`action` is one of ACTIONS: added, substituted and signed (the request left with our credential), denied and
reported (the egress policy: reported is what header_egress=report lets through and deny would refuse), refused (the
proxy's own answer instead of a credential: header_require's 503, header_audit_require's 503) and failed (the
upstream never answered a request that carried a credential). A line is written when the flow ends, so `status` is
the upstream's (or the proxy's own answer); a request that went out without a credential and was not denied gets no
line. A connection refused before any request (socks5, an address check) has no method, path or status.

`credential` is an HMAC-SHA256 of the values added, under a key made at start and held only in this process's memory,
cut to 16 hex characters: equal credentials show equal fingerprints within one run, and it tells nobody else
anything. No value, no query string, no body is ever written.

The event loop only puts a small record (plain values, and references to the immutable snapshots that were added)
into a bounded queue; a full queue drops the record and counts it (audit_dropped). The standard library does the
rest on a thread of its own: `QueueListener` takes the records off the queue, and a `WatchedFileHandler` writes them,
reopening the file when logrotate has renamed it. The JSON, the fingerprint and the write all happen on that thread.
The file is created 0600. A line that cannot be written is counted (audit_failed) and makes the log unwritable until
a later line or probe succeeds: with `header_audit_require`, requests that would carry a credential are answered
503 meanwhile.
"""

import hashlib
import hmac
import json
import logging
import logging.handlers
import os
import queue
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

from .clients import user_of
from .counters import AddonCounters
from .fields import SettingsError

ACTIONS = ("added", "substituted", "signed", "denied", "reported", "refused", "failed")
QUEUE_SIZE = 10_000
FINGERPRINT_CHARS = 16
KEY_BYTES = 32
MAX_PATH_CHARS = 2048  # a path is a client's to choose: a line stays a line
FLUSH_GRACE = 1.0  # what closing the log waits, at most, for the lines queued to be written
_PROBE = object()  # a record that writes nothing: it reopens the file if needed, to learn whether it can be written


def new_key() -> bytes:
    """The fingerprints' key: made once per addon, never written anywhere."""
    return secrets.token_bytes(KEY_BYTES)


class Line:
    """What the event loop hands the writer for one line: plain values (bytes as the flow holds them, decoded on
    the writer's thread) and `credentials`, each a snapshot's header fields or a signer's key parts."""

    __slots__ = (
        "at",
        "action",
        "providers",
        "headers",
        "credentials",
        "address",
        "user",
        "method",
        "scheme",
        "host",
        "port",
        "path",
        "status",
        "reason",
    )

    def __init__(
        self,
        action: str,
        host: str,
        port: int,
        address: str | None,
        user: str | None,
        *,
        method: bytes | None = None,
        scheme: str | None = None,
        path: bytes | None = None,
        status: int | None = None,
        reason: str | None = None,
        providers: tuple[str, ...] = (),
        headers: tuple[str, ...] = (),
        credentials: tuple = (),
    ) -> None:
        self.at = time.time()
        self.action, self.host, self.port, self.address, self.user = action, host, port, address, user
        self.method, self.scheme, self.path, self.status, self.reason = method, scheme, path, status, reason
        self.providers, self.headers, self.credentials = providers, headers, credentials


def flow_line(
    flow: Any, action: str, reason: str | None, given: Sequence[tuple[Any, Any]], refused_by: Any = None
) -> Line:
    """The line for a flow that ends now. `given`: (binding, snapshot) for each entry that added to it or signed it;
    `refused_by`: the settings of the entry that refused it, when nothing was added."""
    request = flow.request.data
    response = flow.response
    peer = flow.client_conn.peername
    providers, headers, credentials = [], [], []
    if refused_by is not None:
        providers.append(refused_by.name or refused_by.label)  # label: the source, made once
    for binding, snapshot in given:
        settings = binding.settings
        providers.append(settings.name or settings.label)
        if binding.signer is None:
            headers.extend(snapshot.display_names)
            credentials.append(snapshot.fields)
        else:  # the signature differs per request: the fingerprint is of the key it was made with
            headers.extend(name.decode("ascii") for name in snapshot.lowered)  # Authorization, the session token
            signing = binding.refresher.snapshot.signing
            if signing is not None:
                credentials.append((signing.access_key, signing.secret_key, signing.token or ""))
    return Line(
        action,
        request.host,
        request.port,
        peer[0] if peer else None,
        user_of(flow),
        method=request.method,
        scheme=request.scheme.decode("ascii", "replace") or None,  # a CONNECT has neither
        path=request.path or None,
        status=response.status_code if response is not None else None,
        reason=reason,
        providers=tuple(dict.fromkeys(providers)),
        headers=tuple(dict.fromkeys(headers)),
        credentials=tuple(credentials),
    )


def connection_line(client: Any, requester: Any, action: str, host: str, port: int, reason: str) -> Line:
    """The line for a connection refused (or reported) before any request: no method, path or status."""
    peer = client.peername
    return Line(action, host, port, peer[0] if peer else None, user_of(requester), reason=reason)


def fingerprint(key: bytes, credentials: tuple) -> str | None:
    if not credentials:
        return None
    # Each part is a snapshot's header fields, (name, value) in bytes, or a signer's key parts, strings.
    values = [item[1] if isinstance(item, tuple) else item.encode() for part in credentials for item in part]
    return hmac.new(key, b"\0".join(values), hashlib.sha256).hexdigest()[:FINGERPRINT_CHARS]


def _timestamp(at: float) -> str:
    """RFC 3339, UTC, milliseconds."""
    millis = int(at * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}Z"


def render(line: Line, key: bytes) -> str:
    client: dict[str, str] = {"address": line.address} if line.address else {}
    if line.user is not None:
        client["user"] = line.user
    path = None
    if line.path is not None:
        path = line.path.split(b"?", 1)[0].decode("utf-8", "replace")[:MAX_PATH_CHARS]
    record = {
        "ts": _timestamp(line.at),
        "action": line.action,
        "provider": ", ".join(line.providers) or None,
        "client": client,
        "method": line.method.decode("ascii", "replace") if line.method is not None else None,
        "scheme": line.scheme,
        "host": line.host,
        "port": line.port,
        "path": path,
        "headers": list(line.headers),
        "status": line.status,
        "reason": line.reason,
        "credential": fingerprint(key, line.credentials),
    }
    return json.dumps(record, separators=(",", ":"))


class _AuditFile(logging.handlers.WatchedFileHandler):
    """The file, written on the listener's thread. A failure never escapes (the listener would log it with the
    record): it is counted, the file is closed, and the next line or probe opens it again."""

    def __init__(self, path: str, log: "AuditLog") -> None:
        self._log = log
        super().__init__(path, encoding="utf-8")  # opens it now: an OSError here is the option's error

    def _open(self):
        # Created 0600 whatever the umask: the lines name clients, hosts and paths.
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return open(fd, "a", encoding="utf-8")

    def emit(self, record) -> None:
        log = self._log
        try:
            if self.stream is None:  # closed after a failure: open it again
                self.stream = self._open()
                self._statstream()
            else:
                self.reopenIfNeeded()  # renamed away (logrotate), or replaced: a new file at the path
            if record is not _PROBE:
                self.stream.write(render(record, log.key) + "\n")
                self.stream.flush()
        except Exception:  # OSError mostly (ENOSPC, EACCES, ENOTDIR); never a value in what is counted
            log.writable = False
            if record is not _PROBE:
                log.counters.audit_failed += 1
            stream, self.stream = self.stream, None
            if stream is not None:
                try:
                    stream.close()
                except Exception:
                    pass  # what it still held is lost with the line, and counted
        else:
            log.writable = True
            if record is not _PROBE:
                log.counters.audit_written += 1


class _Listener(logging.handlers.QueueListener):
    def enqueue_sentinel(self) -> None:
        # The documented place to change how the end is queued (the base's put_nowait is Queue's, not SimpleQueue's).
        self.queue.put(self._sentinel)


class AuditLog:
    """One open audit log: the queue the event loop puts lines into, and the listener thread that writes them."""

    def __init__(
        self, path: str, counters: AddonCounters, key: bytes, require: bool = False, queue_size: int = QUEUE_SIZE
    ) -> None:
        self.path = path
        self.counters = counters
        self.key = key
        self.require = require
        self.writable = True  # written by the listener's thread, read by the loop
        try:
            self._file = _AuditFile(path, self)
        except OSError as e:
            raise SettingsError(f"header_audit_log: cannot open {path}: {e.strerror or type(e).__name__}") from None
        # SimpleQueue: a put is a C call with no Python lock (Queue's costs the loop microseconds); its bound is
        # kept here, by the one thread that puts lines (the loop's): the writer only ever makes it shorter.
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._size = queue_size
        self._listener = _Listener(self._queue, self._file)
        self._listener.start()

    def put(self, line: Line) -> None:
        """Never blocks: a full queue drops the line, and counts it."""
        if self._queue.qsize() >= self._size:
            self.counters.audit_dropped += 1
        else:
            self._queue.put(line)

    def probe(self) -> None:
        """Checks, on the writer's thread, that the file can still be written (and opens it again if it was
        renamed or could not be): called each second, so that header_audit_require refuses soon after the log
        becomes unwritable, and serves again soon after it is back, with no request needed to find out."""
        if self._queue.qsize() < self._size:  # else the lines queued will find out
            self._queue.put(_PROBE)

    def close(self) -> None:
        """Stops the writer once it has written what is queued; waits for that FLUSH_GRACE at most."""

        def stop() -> None:
            self._listener.stop()  # the lines queued are written first
            self._file.close()

        stopping = threading.Thread(target=stop, name="header-augment audit close", daemon=True)
        stopping.start()
        stopping.join(FLUSH_GRACE)
