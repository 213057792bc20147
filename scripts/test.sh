#!/bin/bash
# Run every test suite (as root, on Debian 12). Does its own set-up first.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
"$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider "${@:-tests}"
