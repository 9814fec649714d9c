#!/usr/bin/env python3
"""A credential helper for the tests of kind `command`: `credential MODE [ARG...]` behaves as MODE says.

token VALUE                 print VALUE
cat FILE                    print FILE (so a test can rotate what is printed)
exec-credential SECONDS LOG an ExecCredential (v1) expiring SECONDS from now, token ec-<n> for the n-th run; each
                            run appends its wall-clock time to LOG
exec-info FILE              write KUBERNETES_EXEC_INFO (or "unset") and the number of bytes on stdin to FILE as
                            JSON, then print an ExecCredential without expiry
jwt SECONDS STATE           an unsigned JWT whose exp is SECONDS after the first run (kept in STATE): later runs
                            print the same token, which expires
nothing                     print nothing (a message on stderr), exit 0
garbage                     print bytes that are no credential
big                         print 2 MiB
fail SECRET                 print SECRET on stdout, a line on stderr, exit 3
noisy-stderr                several stderr lines, the last one long, with escape sequences, controls and a URL
signal                      end by SIGTERM
"""

import datetime
import json
import os
import signal
import sys
import time


def exec_credential(token: str, expires: float | None = None) -> str:
    status = {"token": token}
    if expires is not None:
        when = datetime.datetime.fromtimestamp(expires, datetime.UTC)
        status["expirationTimestamp"] = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": status})


def main(mode: str, *args: str) -> int:
    out = sys.stdout
    if mode == "token":
        print(args[0])
    elif mode == "cat":
        with open(args[0]) as f:
            out.write(f.read())
    elif mode == "exec-credential":
        with open(args[1], "a") as log:
            log.write(f"{time.time()}\n")
        with open(args[1]) as log:
            runs = len(log.readlines())
        print(exec_credential(f"ec-{runs}", time.time() + float(args[0])))
    elif mode == "exec-info":
        seen = {"exec_info": os.environ.get("KUBERNETES_EXEC_INFO", "unset"), "stdin_bytes": len(sys.stdin.read())}
        with open(args[0], "w") as f:
            json.dump(seen, f)
        print(exec_credential("ec-info"))
    elif mode == "jwt":
        # tokens.py is beside this file, first on a program's path; imported here only, so that a copy of this
        # program elsewhere (a test's) still runs every other mode.
        from tokens import jwt

        if not os.path.exists(args[1]):
            with open(args[1], "w") as f:
                f.write(str(int(time.time() + float(args[0]))))
        with open(args[1]) as f:
            print(jwt(int(f.read())))
    elif mode == "nothing":
        print("no credentials configured", file=sys.stderr)
    elif mode == "garbage":
        sys.stdout.buffer.write(b"\x00\xff not a token \x1b[2J\r\n")
    elif mode == "big":
        sys.stdout.buffer.write(b"x" * (2 * 1024 * 1024))
    elif mode == "fail":
        print(args[0])
        print("warning: something minor\nerror: login required", file=sys.stderr)
        return 3
    elif mode == "noisy-stderr":
        sys.stderr.write(
            "first line\n\x1b[31merror:\x1b[0m \x07bell https://user:pw@idp.example/t?code=s3cr3t " + "x" * 300 + "\n\n"
        )
        return 1
    elif mode == "signal":
        os.kill(os.getpid(), signal.SIGTERM)
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
