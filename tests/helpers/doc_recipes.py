"""The providers file a recipe of the README or of a page of docs/ writes (`cat > FILE <<'EOF' … EOF` in its `sh`
block), for the test files that run a recipe against a server test_readme.py does not have (OpenBao, moto)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def recipe_providers_file(heading: str, page: str = "README.md") -> str:
    """The text the first `sh` block under the `##`/`###` heading `heading` of `page` writes with its heredoc."""
    text = (ROOT / page).read_text()
    start = re.search(rf"^#{{2,3}} {re.escape(heading)}$", text, re.M)
    assert start, f"{page}: no heading {heading!r}"
    block = re.compile(r"^```sh\n(.*?)^```$", re.M | re.S).search(text, start.end())
    assert block, f"{page}: no sh block under {heading!r}"
    heredoc = re.search(r"^cat > \S+ <<'EOF'\n(.*?)^EOF$", block.group(1), re.M | re.S)
    assert heredoc, f"{page}: the block under {heading!r} writes no file"
    return heredoc.group(1)
