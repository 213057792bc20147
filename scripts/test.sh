#!/bin/bash
# Run every test suite (as root, on Debian 12). Does its own set-up first.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
"$ROOT/scripts/setup.sh"
"$ROOT/scripts/e2e-setup.sh"   # containerd, podman, cnitool for tests/e2e
exec "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider "${@:-tests}"
