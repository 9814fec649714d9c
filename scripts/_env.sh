# Sourced by scripts/run, scripts/test and scripts/bench: finds a Python >= 3.12, creates .venv on first use and
# keeps it in step with requirements.txt (and requirements/runtime.txt, which it includes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

_is_py312() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }

find_python() {
    local c
    for c in python3.13 python3.12 python3; do
        # pyenv shims exist for every installed version but fail unless that version is active: try, don't trust.
        if command -v "$c" >/dev/null 2>&1 && _is_py312 "$c"; then command -v "$c"; return 0; fi
    done
    for c in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.* 2>/dev/null | sort -rV); do
        if [ -x "$c/bin/python3" ] && _is_py312 "$c/bin/python3"; then echo "$c/bin/python3"; return 0; fi
    done
    echo "header-augment needs Python 3.12 or newer: none found on PATH or under pyenv" >&2
    return 1
}

ensure_venv() {
    local stamp="$VENV/.requirements.sha256" want
    # requirements.txt includes requirements/*.txt: a change to any of them reinstalls.
    want="$(cat "$ROOT/requirements.txt" "$ROOT"/requirements/*.txt | sha256sum | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/python" ] || ! _is_py312 "$VENV/bin/python"; then
        echo "header-augment: first run: creating .venv and installing requirements.txt (about a minute)…" >&2
        rm -rf "$VENV"
        "$(find_python)" -m venv "$VENV"
    elif [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "header-augment: requirements changed: updating .venv from requirements.txt…" >&2
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements.txt"
        echo "$want" >"$stamp"
    fi
    export PATH="$VENV/bin:$PATH"
}
