# Container engines for the tests of the `docker` driver: a private dockerd (Debian's
# docker.io, its own containerd and runc) and a private Podman API service (Debian's podman,
# runc), each on its own unix socket under one state directory, never the system's. Images
# come from files Debian already has (busybox-static; this machine's node binary and its
# libraries), imported without any registry; the image tarballs are cached in
# /var/cache/berth-engines/docker. Sourced by scripts/test-env.sh.
#
# Exports BERTH_TEST_DOCKER_SOCKET, BERTH_TEST_PODMAN_SOCKET, BERTH_TEST_IMAGE and
# BERTH_TEST_NODE_IMAGE; stops everything it started through berth_on_cleanup.

BERTH_DOCKER_CACHE=${BERTH_DOCKER_CACHE:-/var/cache/berth-engines/docker}

berth_docker_ping() { # socket
  node -e '
    const req = require("http").request({ socketPath: process.argv[1], path: "/_ping", timeout: 1000 }, (res) => process.exit(res.statusCode === 200 ? 0 : 1));
    req.on("error", () => process.exit(1));
    req.on("timeout", () => process.exit(1));
    req.end();' "$1" 2>/dev/null
}

berth_docker_wait() { # socket seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    berth_docker_ping "$1" && return 0
    sleep 0.1
  done
  return 1
}

# The two image tarballs (rootfs, no registry): busybox (sh, nc, sleep...) and the same plus node.
berth_docker_images() {
  local key r
  key="$(sha256sum /bin/busybox "$(command -v node)" | sha256sum | cut -c1-16)"
  if [ -s "$BERTH_DOCKER_CACHE/busybox-$key.tar" ] && [ -s "$BERTH_DOCKER_CACHE/node-$key.tar" ]; then
    BERTH_DOCKER_BUSYBOX_TAR="$BERTH_DOCKER_CACHE/busybox-$key.tar"
    BERTH_DOCKER_NODE_TAR="$BERTH_DOCKER_CACHE/node-$key.tar"
    return 0
  fi
  mkdir -p "$BERTH_DOCKER_CACHE" || return 1
  r=$(mktemp -d /tmp/berth-rootfs.XXXXXX)
  mkdir -p "$r"/{bin,etc,proc,sys,dev,tmp,root,workspace}
  cp /bin/busybox "$r/bin/busybox"
  local a
  for a in $("$r/bin/busybox" --list); do [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/tmp:/bin/sh\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
  # docker copies the image directory's mode onto a tmpfs mounted there
  chmod 1777 "$r/tmp" "$r/workspace"
  tar -C "$r" -cf "$BERTH_DOCKER_CACHE/busybox-$key.tar.part" . || return 1
  mkdir -p "$r/usr/bin"
  cp "$(command -v node)" "$r/usr/bin/node"
  local lib
  for lib in $(ldd "$(command -v node)" | grep -o '/[^ ]*' | sort -u); do
    mkdir -p "$r$(dirname "$lib")"
    cp -L "$lib" "$r$lib"
  done
  tar -C "$r" -cf "$BERTH_DOCKER_CACHE/node-$key.tar.part" . || return 1
  rm -rf "$r"
  mv "$BERTH_DOCKER_CACHE/busybox-$key.tar.part" "$BERTH_DOCKER_CACHE/busybox-$key.tar"
  mv "$BERTH_DOCKER_CACHE/node-$key.tar.part" "$BERTH_DOCKER_CACHE/node-$key.tar"
  BERTH_DOCKER_BUSYBOX_TAR="$BERTH_DOCKER_CACHE/busybox-$key.tar"
  BERTH_DOCKER_NODE_TAR="$BERTH_DOCKER_CACHE/node-$key.tar"
}

# Import a rootfs tar as image <name>:latest through the Engine API (POST /images/create?fromSrc=-).
berth_docker_import() { # socket tar name
  node -e '
    const fs = require("fs");
    const [sock, tar, name] = process.argv.slice(1);
    const req = require("http").request({ socketPath: sock, method: "POST", headers: { "content-type": "application/x-tar" },
      path: `/images/create?fromSrc=-&repo=${encodeURIComponent(name)}&tag=latest&changes=${encodeURIComponent("CMD [\"/bin/sh\"]")}` },
      (res) => { let body = ""; res.on("data", (d) => (body += d)); res.on("end", () => { if (res.statusCode !== 200 || /"error"/.test(body)) { console.error(body); process.exit(1); } }); });
    req.on("error", (e) => { console.error(e.message); process.exit(1); });
    fs.createReadStream(tar).pipe(req);' "$1" "$2" "$3"
}

berth_ensure_docker() {
  if [ -n "${BERTH_TEST_DOCKER_SOCKET:-}" ] && [ -n "${BERTH_TEST_PODMAN_SOCKET:-}" ]; then
    berth_log "containers: BERTH_TEST_DOCKER_SOCKET and BERTH_TEST_PODMAN_SOCKET are set"
    export BERTH_TEST_IMAGE=${BERTH_TEST_IMAGE:-berth-test-busybox} BERTH_TEST_NODE_IMAGE=${BERTH_TEST_NODE_IMAGE:-berth-test-node}
    return 0
  fi
  local started=$SECONDS
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 || ! command -v runsc >/dev/null 2>&1 || [ ! -x /bin/busybox ]; then
    # docker.io's postinst would start the system daemon unless policy-rc.d says no.
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; fi
    berth_install_debian docker.io podman runc runsc busybox-static || { berth_log "could not install docker.io/podman"; return 1; }
    [ $made_policy = 0 ] || rm -f /usr/sbin/policy-rc.d
  fi
  berth_docker_images || { berth_log "could not build the test images"; return 1; }

  local d
  d=$(mktemp -d /tmp/berth-ct.XXXXXX) || return 1
  chmod 711 "$d"
  # Paths dockerd and podman write whatever their flags say; removed at the end if absent now.
  local p made=()
  for p in /etc/docker/key.json /run/docker /opt/containerd /var/lib/containers /var/lib/cni /run/runc; do [ -e "$p" ] || made+=("$p"); done

  # dockerd: never reads /etc/docker/daemon.json; no bridge, no iptables.
  # gVisor (runsc) as a second runtime: ptrace (kvm hangs on this kind of machine). Its network
  # is `host`: gVisor passes the sandbox's sockets to the container's own network namespace
  # (with network none: only its loopback), so the route Berth opens there to its API works;
  # with runsc's own netstack (`--network=none`) nothing from outside reaches the sandbox.
  local runtimes='{}'
  if command -v runsc >/dev/null 2>&1; then
    runtimes=$(printf '{"runtimes":{"runsc":{"path":"%s","runtimeArgs":["--platform=ptrace","--network=host","--root=%s/runsc"]}}}' "$(command -v runsc)" "$d")
  fi
  echo "$runtimes" >"$d/daemon.json"
  dockerd --config-file "$d/daemon.json" --data-root "$d/docker" --exec-root "$d/dx" --pidfile "$d/dockerd.pid" \
    -H "unix://$d/docker.sock" --bridge=none --iptables=false --ip6tables=false --ip-masq=false --userland-proxy=false \
    --storage-driver=overlay2 --log-level=warn >"$d/dockerd.log" 2>&1 &
  local dockerd_pid=$!
  berth_on_cleanup "berth_docker_stop '$d' $dockerd_pid '${made[*]}'"

  # podman: private storage and configs, runc, cgroupfs, rlimits it may set here, short exec cleanup delay.
  mkdir -p "$d/podman"/{tmp,networks,volumes,runroot,root}
  local nofile nproc
  nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
  { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  cat >"$d/podman/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
log_driver = "k8s-file"
[network]
network_config_dir = "$d/podman/networks"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$d/podman/events.log"
tmp_dir = "$d/podman/tmp"
volume_path = "$d/podman/volumes"
static_dir = "$d/podman/root/libpod"
exit_command_delay = 5
EOF
  printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n' "$d/podman/root" "$d/podman/runroot" >"$d/podman/storage.conf"
  printf 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n' >"$d/podman/registries.conf"
  # The service runs in a network namespace of its own: whatever network podman would make stays off the host.
  CONTAINERS_CONF="$d/podman/containers.conf" CONTAINERS_STORAGE_CONF="$d/podman/storage.conf" CONTAINERS_REGISTRIES_CONF="$d/podman/registries.conf" \
    unshare --net sh -c "ip link set lo up; exec podman system service --time=0 unix://$d/podman.sock" >"$d/podman.log" 2>&1 &
  echo $! >"$d/podman.pid"

  berth_docker_wait "$d/docker.sock" 60 || { berth_log "dockerd did not answer on $d/docker.sock:"; tail -20 "$d/dockerd.log" >&2; return 1; }
  berth_docker_wait "$d/podman.sock" 60 || { berth_log "podman did not answer on $d/podman.sock:"; tail -20 "$d/podman.log" >&2; return 1; }
  local sock
  for sock in "$d/docker.sock" "$d/podman.sock"; do
    berth_docker_import "$sock" "$BERTH_DOCKER_BUSYBOX_TAR" berth-test-busybox || { berth_log "image import into $sock failed"; return 1; }
    berth_docker_import "$sock" "$BERTH_DOCKER_NODE_TAR" berth-test-node || { berth_log "image import into $sock failed"; return 1; }
  done
  export BERTH_TEST_DOCKER_SOCKET="$d/docker.sock" BERTH_TEST_PODMAN_SOCKET="$d/podman.sock"
  export BERTH_TEST_IMAGE=berth-test-busybox BERTH_TEST_NODE_IMAGE=berth-test-node
  berth_log "containers: dockerd $(dockerd --version | cut -d, -f1 | cut -d' ' -f3) and podman $(podman --version | cut -d' ' -f3) ready under $d in $((SECONDS - started)) s"
}

berth_docker_stop() { # state-dir dockerd-pid made-paths
  local d=$1 pid=$2 p c
  for sock in "$d/docker.sock" "$d/podman.sock"; do
    [ -S "$sock" ] || continue
    node -e '
      const http = require("http");
      const sock = process.argv[1];
      const call = (method, path) => new Promise((resolve) => { const r = http.request({ socketPath: sock, method, path }, (res) => { let b = ""; res.on("data", (d) => (b += d)); res.on("end", () => resolve(b)); }); r.on("error", () => resolve("[]")); r.end(); });
      (async () => { for (const c of JSON.parse(await call("GET", "/containers/json?all=1"))) await call("DELETE", `/containers/${c.Id}?force=1&v=1`); })();' "$sock" 2>/dev/null || true
  done
  [ -f "$d/podman.pid" ] && kill "$(cat "$d/podman.pid")" 2>/dev/null
  kill "$pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
  # shims, conmons and runsc processes of ours (their argv names the state dir)
  for c in $(pgrep -f 'containerd-shim|conmon|runsc' || true); do
    tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null | grep -q -- "$d/" && kill -9 "$c" 2>/dev/null
  done
  grep " $d/" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
  for p in $3; do
    case "$p" in
      /run/runc) pgrep -x runc >/dev/null || rm -rf /run/runc ;;
      ?*) rm -rf "$p" ;;
    esac
  done
  rm -rf "$d"
}
