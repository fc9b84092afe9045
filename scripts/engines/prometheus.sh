# Prometheus for the metrics test (test/prometheus/): Debian's package, only the binary.
# The test starts its own Prometheus (its own config, a temporary data directory, a free
# port) that scrapes a real `berth serve`, and kills it at the end; no system service is
# used. Sourced by scripts/test-env.sh.
#
# Exports BERTH_TEST_PROMETHEUS (the binary).

berth_ensure_prometheus() {
  local bin="${BERTH_TEST_PROMETHEUS:-/usr/bin/prometheus}"
  if [ ! -x "$bin" ]; then
    berth_install_debian prometheus || { berth_log "could not install prometheus"; return 1; }
    [ -x "$bin" ] || { berth_log "prometheus installed but $bin is missing"; return 1; }
    # Debian's package starts its own service where it can; the tests never use it.
    command -v service >/dev/null 2>&1 && service prometheus stop >/dev/null 2>&1 || true
  fi
  berth_log "prometheus: $bin ($("$bin" --version 2>&1 | head -n 1))"
  export BERTH_TEST_PROMETHEUS="$bin"
}
