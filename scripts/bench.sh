#!/usr/bin/env bash
# Runs a benchmark from bench/ with PostgreSQL provided as for the tests
# (TEST_DATABASE_URL, else 127.0.0.1:5432, else a throwaway cluster), and sshd or
# Chromium, dockerd and podman, or a Slurm cluster for the benchmarks that need them (`cli` needs none of them).
# `pools` measures containers too when BERTH_TEST_DOCKER_SOCKET and BERTH_TEST_IMAGE name a running engine.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/test-env.sh
trap berth_cleanup EXIT
[ "$1" = cli ] || berth_ensure_postgres || exit 1
case "$1" in
  ssh) berth_ensure_sshd || exit 1 ;;
  dashboard) berth_ensure_chromium || exit 1 ;;
  containers) berth_ensure_docker || exit 1 ;;
  bwrap) berth_ensure_bwrap || exit 1 ;;
  slurm) berth_ensure_slurm || exit 1 ;;
  k8s) berth_ensure_kubernetes || exit 1 ;;
esac
npx tsx "bench/$1.ts" "${@:2}"
