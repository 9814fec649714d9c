"""Tokens as providers hand them out. Standard library only, and free of the package: credential.py (beside it, run
as a program by the addon's command kind) imports it as `tokens`."""

import base64
import json

NO_EXP = object()  # for jwt(): no `exp` claim at all


def jwt(exp: object) -> str:
    """An unsigned JWT (header.payload.signature, base64url) with this `exp` (none at all for NO_EXP)."""

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"sub": "test"} | ({} if exp is NO_EXP else {"exp": exp})
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2ln"
