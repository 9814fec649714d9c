"""Tokens as providers hand them out. Standard library only, and free of the package: credential.py (beside it, run
as a program by the addon's command kind) imports it as `tokens`."""

import base64
import json


def jwt(exp: object) -> str:
    """An unsigned JWT (header.payload.signature, base64url) with this `exp`."""

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': 'test', 'exp': exp})}.c2ln"
