"""Refuses a Python older than pyproject.toml's `requires-python` with a message naming it, before anything is
resolved: pip releases before 24 resolve the pinned dependencies first and then report only that no
mitmproxy==12.3.1 fits, never the project's own requirement. Everything else is in pyproject.toml."""

import re
import sys
from pathlib import Path

from setuptools import setup

# Read as text: tomllib is not in every Python this must refuse (3.10 and older).
_SPEC = re.search(
    r'^requires-python\s*=\s*">=(\d+)\.(\d+)"', (Path(__file__).parent / "pyproject.toml").read_text(), re.MULTILINE
)
if _SPEC is None:
    raise SystemExit('setup.py: pyproject.toml\'s requires-python is not of the form ">=X.Y"')
_NEEDED = (int(_SPEC[1]), int(_SPEC[2]))
if sys.version_info[:2] < _NEEDED:
    raise SystemExit(
        f"header-augment requires Python >={_NEEDED[0]}.{_NEEDED[1]} (requires-python in pyproject.toml); this is "
        f"Python {sys.version.split()[0]}. It also runs only on POSIX systems (Linux, macOS)."
    )

setup()
