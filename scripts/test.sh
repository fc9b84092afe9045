#!/usr/bin/env bash
# The test command (`npm test`): provision what the tests need, typecheck, run
# the whole suite on PGlite and PostgreSQL. Ends with `N passed, N failed, N skipped`.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/test-env.sh
trap berth_cleanup EXIT

berth_ensure_postgres || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
berth_ensure_sshd || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
berth_ensure_chromium || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }

echo "[test] typecheck" >&2
if ! npx tsc --noEmit; then
  echo "typecheck failed"
  echo "0 passed, 1 failed, 0 skipped"
  exit 1
fi

npx vitest run "$@"
