"""Why a refresh failed: a short reason for people (never a value, a secret or a URL query) and a class for metrics.

Failures are values once they leave a client (`FetchResult.reason`); inside one, `Failed` carries them up.
"""

# The only failure classes a metric label may carry: a small fixed set, never free text.
REASON_CLASSES = (
    "timeout",  # the call, the command or the read did not finish within the timeout
    "connect",  # no connection (refused, unreachable, DNS)
    "tls",  # TLS handshake or certificate verification
    "status",  # an HTTP status other than 200
    "body",  # the answer could not be read (cut short, bad encoding)
    "size",  # the answer, or the headers it asks for, is over a limit
    "format",  # not in the expected format (not JSON, not an object, no token, ...)
    "expired",  # the credential had already expired when it was read
    "file",  # a file (a provider's, a secret, a key) is missing, unreadable, not a regular file or the kernel's
    "command",  # a command provider's command could not run or failed
    "not_found",  # a secret store has nothing at the path, id or name given (404)
    "permission",  # the store refused the read (403) while the credential it was made with is still good
    "auth",  # a refused login or grant, or a credential the server no longer accepts: sign in or log in again
    "other",
)


class Failed(Exception):
    """A failed fetch: `reason` for logs and the status report, `reason_class` one of REASON_CLASSES."""

    def __init__(self, reason: str, reason_class: str = "format") -> None:
        assert reason_class in REASON_CLASSES, reason_class
        super().__init__(reason)
        self.reason = reason
        self.reason_class = reason_class
