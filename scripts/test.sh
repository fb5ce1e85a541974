#!/usr/bin/env bash
# The project's test command (README, CI): system packages -> .venv -> ruff, mypy -> the CLI tests on
# the newest dependencies (.venv-newest) -> pytest in .venv.
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
# Azurite (the Azure Blob emulator of the off-site tests) runs on node; npm installs it below.
have node || missing+=(nodejs)
have npm || missing+=(npm)
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

# Azurite from the npm registry into a project-local folder (tests/support/emulators.py).
if [[ ! -x .cache/azurite/node_modules/.bin/azurite-blob ]]; then
    echo "scripts/test.sh: installing azurite into .cache/azurite" >&2
    npm install --prefix .cache/azurite --no-audit --no-fund --silent azurite@3
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

# Bytecode for the project's own modules, as an installed package has it: with
# PYTHONDONTWRITEBYTECODE set (as in the Dockerfile and some CI images) nothing writes it, and
# every CLI, worker and test child would compile the package from source again.
.venv/bin/python -m compileall -q -j 0 lifeos_backup tasks workers tests benchmarks beat_schedule.py >/dev/null

# 3) Lint and type-check (the files and settings are in pyproject.toml's [tool.mypy]).
.venv/bin/ruff check .
.venv/bin/python -m mypy

# 4) The CLI tests again in .venv-newest, on the newest versions pyproject.toml allows: what a
#    fresh clone installs today, while .venv keeps what it got when pyproject last changed. It is
#    rebuilt when pyproject changes and once a day (UTC). Runs with the whole suite (no test
#    paths among the arguments, as CI runs it); LIFEOS_TEST_NEWEST=1 forces it, =0 skips it.
cli_tests=(tests/cli tests/unit/test_cli_errors.py)
whole_suite=1
for arg in "$@"; do
    if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then
        whole_suite=0
    fi
done
if [[ "${LIFEOS_TEST_NEWEST:-$whole_suite}" == 1 ]]; then
    if [[ ! -x .venv-newest/bin/python ]]; then
        python3 -m venv .venv-newest
    fi
    newest_stamp=".venv-newest/.installed-$(sha256sum pyproject.toml | cut -d' ' -f1)-$(date -u +%Y%m%d)"
    if [[ ! -e "$newest_stamp" ]]; then
        .venv-newest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[dev]'
        rm -f .venv-newest/.installed-*
        touch "$newest_stamp"
    fi
    echo "scripts/test.sh: CLI tests on the newest dependencies:" \
        "$(.venv-newest/bin/python -m pip list --format=freeze 2>/dev/null \
            | grep -iE '^(typer|rich|celery|pydantic|sqlalchemy|redis|psycopg)==' | tr '\n' ' ')" >&2
    .venv-newest/bin/python -m pytest -q -p no:cacheprovider "${cli_tests[@]}"
fi

# 5) The whole suite (or what the arguments select) in .venv; pytest's exit code (5 = nothing
#    collected, too) is ours. The whole suite runs in LIFEOS_TEST_WORKERS pytest-xdist processes
#    (default 2): most of its time is spent waiting on servers and workers, not on the CPU. Each
#    process starts its own Redis, PostgreSQL and moto server; 1 runs it in one process. A
#    module's tests stay in one process (loadscope): its module-scoped fixtures (the command-tree
#    walk, a source database) are then made once, not once per process.
workers=()
if [[ "$whole_suite" == 1 && "${LIFEOS_TEST_WORKERS:-2}" -gt 1 ]]; then
    workers=(-n "${LIFEOS_TEST_WORKERS:-2}" --dist loadscope)
fi
exec .venv/bin/python -m pytest "${workers[@]}" "$@"
