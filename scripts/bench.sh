#!/usr/bin/env bash
# Runs a benchmark from bench/ with PostgreSQL provided as for the tests
# (TEST_DATABASE_URL, else 127.0.0.1:5432, else a throwaway cluster).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/test-env.sh
trap berth_cleanup EXIT
berth_ensure_postgres || exit 1
npx tsx "bench/$1.ts" "${@:2}"
