#!/usr/bin/env bash
# The project's test command (README, CI): system packages -> .venv -> ruff -> pytest.
# Extra arguments go to pytest, e.g. `scripts/test.sh -q tests/unit`.
# Tests start their own throwaway PostgreSQL/Redis (tests/support/services.py), so
# we only need the binaries here, never a running service.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
export DEBIAN_FRONTEND=noninteractive

have() { command -v "$1" >/dev/null 2>&1; }

have_pg_server() {
    # Debian keeps initdb off PATH: look where tests/support/services.py looks.
    local bindir
    if have pg_config && bindir="$(pg_config --bindir 2>/dev/null)" && [[ -x "$bindir/initdb" ]]; then
        return 0
    fi
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

# 1) Debian packages the tests need.
missing=()
have_pg_server || missing+=(postgresql)
have redis-server || missing+=(redis-server)
have zstd || missing+=(zstd)
have tar || missing+=(tar)
have gzip || missing+=(gzip)
have python3 || missing+=(python3)
# Headless browser test of Flower (tests/integration/test_operations.py): Debian's browser and
# its matching driver, used by Selenium as they are (no browser download).
have chromium || missing+=(chromium)
have chromedriver || missing+=(chromium-driver)
if [[ ! -x .venv/bin/python ]] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

if ((${#missing[@]})); then
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "scripts/test.sh: missing system packages: ${missing[*]}" >&2
        echo "install them with: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    echo "scripts/test.sh: installing ${missing[*]}" >&2
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# 2) Virtualenv with the project and its dev extras; reinstall only when pyproject changes.
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -e "$stamp" ]]; then
    .venv/bin/python -m pip install -q -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# 3) Lint, then the tests; pytest's exit code (5 = nothing collected, too) is ours.
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
