#!/usr/bin/env bash
# The test command (`npm test`): provision what the tests need, typecheck, build
# dist/ if stale, run the whole suite on PGlite and PostgreSQL. Ends with `N passed, N failed, N skipped`.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/test-env.sh
trap berth_cleanup EXIT

berth_ensure_postgres || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
berth_ensure_sshd || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
berth_ensure_chromium || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
berth_ensure_docker || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
berth_ensure_bwrap || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
berth_ensure_prometheus || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
berth_ensure_paperclip || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
berth_ensure_slurm || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
berth_ensure_kubernetes || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }

echo "[test] typecheck" >&2
if ! npx tsc --noEmit; then
  echo "typecheck failed"
  echo "0 passed, 1 failed, 0 skipped"
  exit 1
fi

# The tests that start the CLI or the server run the compiled dist/: build it if
# the sources changed since (bin/berth.mjs would otherwise run the sources, slowly).
echo "[test] build" >&2
if ! node scripts/build.mjs --if-stale; then
  echo "build failed"
  echo "0 passed, 1 failed, 0 skipped"
  exit 1
fi

npx vitest run "$@"
