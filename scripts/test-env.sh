#!/usr/bin/env bash
# Provisions what the tests need, for `npm test` and .ci/run. Source it, then call
# berth_ensure_postgres. It never silently skips: if it cannot provide a service,
# it fails and says why.
#
#   TEST_DATABASE_URL set          -> used as it is
#   127.0.0.1:5432 answers         -> postgres://postgres@127.0.0.1:5432/postgres
#   otherwise                      -> Debian's postgresql is installed if missing, and a
#                                     throwaway cluster (fsync off) runs on a free port
#                                     until this shell exits
#   BERTH_TEST_PG=throwaway forces the last path (to test it where 5432 answers).

berth_log() { echo "[test-env] $*" >&2; }

berth_pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

berth_free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

berth_pg_answers() { # host port
  node -e '
    const s = require("net").connect({ host: process.argv[1], port: Number(process.argv[2]) });
    s.setTimeout(1500);
    s.on("connect", () => { s.destroy(); process.exit(0); });
    s.on("error", () => process.exit(1));
    s.on("timeout", () => process.exit(1));' "$1" "$2"
}

berth_install_debian() { # packages...
  if [ "$(id -u)" != 0 ]; then
    berth_log "need Debian packages $* but am not root; install them and run again"
    return 1
  fi
  berth_log "installing Debian packages: $*"
  if [ -z "${BERTH_APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq -o DPkg::Lock::Timeout=600 >&2 || return 1
    export BERTH_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "$@" >&2
}

berth_ensure_postgres() {
  if [ -n "${TEST_DATABASE_URL:-}" ]; then
    berth_log "PostgreSQL: TEST_DATABASE_URL is set"
    return 0
  fi
  if [ "${BERTH_TEST_PG:-}" != throwaway ] && berth_pg_answers 127.0.0.1 5432; then
    export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
    berth_log "PostgreSQL: using the server on 127.0.0.1:5432"
    return 0
  fi
  local bin
  bin=$(berth_pg_bin)
  if [ -z "$bin" ]; then
    berth_install_debian postgresql postgresql-contrib || { berth_log "could not install postgresql"; return 1; }
    bin=$(berth_pg_bin)
    [ -n "$bin" ] || { berth_log "postgresql installed but no initdb found under /usr/lib/postgresql"; return 1; }
  fi
  local dir port runas=()
  dir=$(mktemp -d /tmp/berth-pg.XXXXXX)
  port=$(berth_free_port)
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" postgres
    chown postgres "$dir"
    runas=(runuser -u postgres --)
  fi
  berth_log "PostgreSQL: starting a throwaway cluster ($bin) in $dir on port $port"
  "${runas[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  "${runas[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >&2 || { cat "$dir/server.log" >&2; return 1; }
  BERTH_PG_STOP="${runas[*]} $bin/pg_ctl -D $dir/data -m immediate stop"
  BERTH_PG_DIR="$dir"
  export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

# sshd for the SSH driver's tests: the tests start their own private sshd (their own
# config, keys and port on 127.0.0.1); this only makes sure the binary is there. No
# system sshd is started.
berth_ensure_sshd() {
  if [ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null 2>&1; then
    berth_log "sshd: /usr/sbin/sshd is installed"
    return 0
  fi
  berth_install_debian openssh-server openssh-client || { berth_log "could not install openssh-server"; return 1; }
  [ -x /usr/sbin/sshd ] || { berth_log "openssh-server installed but /usr/sbin/sshd is missing"; return 1; }
  # Debian's package starts its own service where it can; the tests never use it.
  command -v service >/dev/null 2>&1 && service ssh stop >/dev/null 2>&1 || true
}

berth_ensure_chromium() {
  local bin="${BERTH_CHROMIUM:-/usr/bin/chromium}"
  if [ -x "$bin" ]; then
    berth_log "chromium: $bin is installed"
    return 0
  fi
  # Debian's package: nothing may download a browser (playwright-core only drives this one).
  berth_install_debian chromium fonts-dejavu-core || { berth_log "could not install chromium"; return 1; }
  [ -x "$bin" ] || { berth_log "chromium installed but $bin is missing"; return 1; }
}

# What an engine script started, to stop on exit: berth_on_cleanup "command" (run in reverse order).
BERTH_CLEANUPS=()
berth_on_cleanup() { BERTH_CLEANUPS+=("$1"); }

# Each engine the tests drive (dockerd, podman, bwrap...) brings its own berth_ensure_<engine>
# in scripts/engines/<engine>.sh; scripts/test.sh calls them.
for berth_engine_script in "$(dirname "${BASH_SOURCE[0]}")"/engines/*.sh; do
  [ -e "$berth_engine_script" ] && source "$berth_engine_script"
done
unset berth_engine_script

# Quiet on purpose: the last line of a test run must stay `N passed, N failed, N skipped`.
berth_cleanup() {
  local i
  for ((i = ${#BERTH_CLEANUPS[@]} - 1; i >= 0; i--)); do
    eval "${BERTH_CLEANUPS[$i]}" >/dev/null 2>&1 || true
  done
  BERTH_CLEANUPS=()
  if [ -n "${BERTH_PG_STOP:-}" ]; then
    $BERTH_PG_STOP >/dev/null 2>&1 || true
    rm -rf "${BERTH_PG_DIR:?}"
    BERTH_PG_STOP=
  fi
}
