# A one-node Kubernetes cluster for the tests of the `kubernetes` driver (test/kubernetes/):
# etcd (Debian's etcd-server), kube-apiserver and kubelet 1.20.2 built from Debian's
# `kubernetes` source package (Debian ships only kubectl from it), and a private containerd
# (Debian's) with runc as the node's runtime. No scheduler and no controller-manager: pods
# name their node (spec.nodeName "localhost"), nothing garbage-collects. Images come from a
# busybox-static root file system written as an image archive and imported into containerd:
# no registry. Pods sit on an L2 bridge with no address on the host, their addresses in a
# loopback range: they reach nothing but each other. Sourced by scripts/test-env.sh.
#
# The build (about 9 minutes on 2 cores) is cached in $BERTH_K8S_CACHE
# (/var/cache/berth-engines/kubernetes); two things make it work here: Debian's reflect2
# 1.0.2 in place of the vendored 1.0.1 (which crashes on Go >= 1.18), and
# restrict_oom_score_adj in containerd's CRI config (root here lacks CAP_SYS_RESOURCE).
#
# Exports BERTH_K8S_API (https://127.0.0.1:<port>), BERTH_K8S_CA (the API server's
# certificate, PEM file), BERTH_K8S_TOKEN (a system:masters token), BERTH_K8S_LIMITED_TOKEN
# (a user with no rights), BERTH_K8S_CLIENT_CERT and BERTH_K8S_CLIENT_KEY (a client
# certificate in system:masters, PEM files), BERTH_K8S_IMAGE, BERTH_K8S_NODE, BERTH_K8S_KUBECONFIG and
# BERTH_K8S_DIR; stops everything it started through berth_on_cleanup (berth_kubernetes_stop).

BERTH_K8S_CACHE=${BERTH_K8S_CACHE:-/var/cache/berth-engines/kubernetes}
BERTH_K8S_PAUSE_IMAGE=docker.io/berth/pause:1
BERTH_K8S_RUN_IMAGE=docker.io/berth/bb:1

berth_k8s_answers() { # api-url token
  curl -skf -m 3 -H "Authorization: Bearer $2" "$1/readyz" >/dev/null 2>&1
}

# A port base with nothing listening on etcd (+0, +1), the API (+43), the kubelet (+48, +50)
# or the CRI stream (+60): a cluster of another shell (or the recipe's 44xxx) keeps its own.
berth_k8s_port_base() {
  local b p busy
  for b in $(seq "${BERTH_K8S_PORT_BASE:-45100}" 100 47100); do
    busy=0
    for p in $b $((b + 1)) $((b + 43)) $((b + 48)) $((b + 50)) $((b + 60)); do
      ss -Hltn "sport = :$p" 2>/dev/null | grep -q . && busy=1
    done
    [ $busy = 0 ] && { echo "$b"; return 0; }
  done
  return 1
}

# kube-apiserver and kubelet from Debian's source package, once per machine.
berth_k8s_build() {
  local B t0=$SECONDS
  B=$(mktemp -d /tmp/berth-k8s-build.XXXXXX) || return 1
  berth_log "kubernetes: building kube-apiserver and kubelet from Debian's source package (about 9 minutes, once; cached in $BERTH_K8S_CACHE)"
  mkdir -p "$B/lists/partial" "$B/src" "$B/home" "$B/gopath/src/k8s.io"
  # The source through apt with a list of its own: nothing under /etc/apt changes.
  echo 'deb-src http://deb.debian.org/debian bookworm main' >"$B/sources.list"
  local apt=(-o Dir::Etc::sourcelist="$B/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$B/lists")
  apt-get "${apt[@]}" update -qq >/dev/null 2>&1 || { berth_log "kubernetes: apt-get update (deb-src) failed"; rm -rf "$B"; return 1; }
  (cd "$B/src" && apt-get "${apt[@]}" source --download-only kubernetes >/dev/null 2>&1) || { berth_log "kubernetes: apt-get source kubernetes failed"; rm -rf "$B"; return 1; }
  tar -C "$B" -xzf "$B"/src/kubernetes_*.orig.tar.gz || { rm -rf "$B"; return 1; }
  local tree
  tree=$(ls -d "$B"/kubernetes-*/ | head -n 1)
  rm -rf "${tree}vendor/github.com/modern-go/reflect2"
  cp -a /usr/share/gocode/src/github.com/modern-go/reflect2 "${tree}vendor/github.com/modern-go/reflect2"
  rm -f "${tree}vendor/github.com/modern-go/reflect2/go.mod"
  ln -s "$tree" "$B/gopath/src/k8s.io/kubernetes"
  # GOPATH mode (module mode wants go.mod updates); make also generates the openapi code.
  if ! (cd "$B/gopath/src/k8s.io/kubernetes" && env GOPATH="$B/gopath" GO111MODULE=off GOPROXY=off GOFLAGS= HOME="$B/home" \
    make WHAT="cmd/kube-apiserver cmd/kubelet" GOLDFLAGS='-s -w' >"$B/make.log" 2>&1); then
    berth_log "kubernetes: the build failed:"
    tail -20 "$B/make.log" >&2
    rm -rf "$B"
    return 1
  fi
  mkdir -p "$BERTH_K8S_CACHE"
  local bin="$B/gopath/src/k8s.io/kubernetes/_output/bin"
  cp "$bin/kube-apiserver" "$BERTH_K8S_CACHE/kube-apiserver.t" && mv -f "$BERTH_K8S_CACHE/kube-apiserver.t" "$BERTH_K8S_CACHE/kube-apiserver"
  cp "$bin/kubelet" "$BERTH_K8S_CACHE/kubelet.t" && mv -f "$BERTH_K8S_CACHE/kubelet.t" "$BERTH_K8S_CACHE/kubelet"
  rm -rf "$B"
  berth_log "kubernetes: built in $((SECONDS - t0)) s"
}

# The two images (pause, and a busybox one runs use) as image archives, from busybox-static.
berth_k8s_images() { # dir
  local d=$1 r="$1/rootfs" a
  mkdir -p "$r"/{bin,etc,proc,sys,dev,tmp,root,workspace}
  cp /bin/busybox "$r/bin/"
  for a in $("$r/bin/busybox" --list); do [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
  chmod 1777 "$r/tmp"
  python3 - "$r" "$d" "$BERTH_K8S_PAUSE_IMAGE" "$BERTH_K8S_RUN_IMAGE" <<'PY'
import hashlib, io, json, os, sys, tarfile
root, out, pause, run = sys.argv[1:5]
layer_buf = io.BytesIO()
with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as t:
    for entry in sorted(os.listdir(root)):
        t.add(os.path.join(root, entry), arcname=entry)
layer = layer_buf.getvalue()
diff_id = hashlib.sha256(layer).hexdigest()
def archive(ref, cmd, path):
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
                      "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]}}).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": [ref], "Layers": [diff_id + "/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as t:
        for name, data in ((diff_id + "/layer.tar", layer), (cfg_name, cfg), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name); info.size = len(data); info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
archive(pause, ["/bin/sleep", "2147483647"], os.path.join(out, "pause.tar"))
archive(run, ["/bin/sh"], os.path.join(out, "bb.tar"))
PY
}

berth_ensure_kubernetes() {
  if [ -n "${BERTH_K8S_API:-}" ] && [ -n "${BERTH_K8S_TOKEN:-}" ] && berth_k8s_answers "$BERTH_K8S_API" "$BERTH_K8S_TOKEN"; then
    berth_log "kubernetes: BERTH_K8S_API is set and answers ($BERTH_K8S_API)"
    return 0
  fi
  local started=$SECONDS
  [ "$(id -u)" = 0 ] || { berth_log "kubernetes: the kubelet and containerd must run as root; run the tests as root"; return 1; }
  local need=()
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  command -v containerd >/dev/null 2>&1 || need+=(containerd)
  command -v runc >/dev/null 2>&1 || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  if [ ! -x "$BERTH_K8S_CACHE/kube-apiserver" ] || [ ! -x "$BERTH_K8S_CACHE/kubelet" ]; then
    command -v go >/dev/null 2>&1 || need+=(golang-go)
    [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need+=(golang-github-modern-go-reflect2-dev)
    command -v make >/dev/null 2>&1 || need+=(make)
    # The kubelet links with cgo; golang-go only recommends a C compiler (recommends are not installed here).
    command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
    command -v rsync >/dev/null 2>&1 || need+=(rsync)
  fi
  if [ ${#need[@]} -gt 0 ]; then
    # The packages' postinst would start the system's daemons unless policy-rc.d says no.
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; fi
    berth_install_debian "${need[@]}" || { [ $made_policy = 0 ] || rm -f /usr/sbin/policy-rc.d; berth_log "kubernetes: could not install ${need[*]}"; return 1; }
    [ $made_policy = 0 ] || rm -f /usr/sbin/policy-rc.d
  fi
  if [ ! -x "$BERTH_K8S_CACHE/kube-apiserver" ] || [ ! -x "$BERTH_K8S_CACHE/kubelet" ]; then
    berth_k8s_build || return 1
  fi

  local d b api token limited sfx
  d=$(mktemp -d /tmp/berth-k8s.XXXXXX) || return 1
  b=$(berth_k8s_port_base) || { berth_log "kubernetes: no free port base"; rm -rf "$d"; return 1; }
  sfx=$(basename "$d" | tr -dc 'a-zA-Z0-9' | tail -c 6 | tr 'A-Z' 'a-z')
  echo "$sfx" >"$d/suffix"
  mkdir -p "$d"/{etcd,certs,cri/cni,cri/ipam,kubelet}
  # Host paths containerd's CRI, CNI and the kubelet write whatever the flags say: the stop removes those this made.
  local p
  : >"$d/made-paths"
  for p in /run/containerd /run/netns /var/lib/cni /var/lib/kubelet /var/log/pods /var/log/containers; do [ -e "$p" ] || echo "$p" >>"$d/made-paths"; done
  [ -d /sys/fs/cgroup/memory/kubepods ] || : >"$d/remove-cgroups"
  berth_on_cleanup "berth_kubernetes_stop '$d'"

  etcd --name berth --data-dir "$d/etcd" --listen-client-urls "http://127.0.0.1:$b" --advertise-client-urls "http://127.0.0.1:$b" \
    --listen-peer-urls "http://127.0.0.1:$((b + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((b + 1))" \
    --initial-cluster "berth=http://127.0.0.1:$((b + 1))" --unsafe-no-fsync --log-level warn >"$d/etcd.log" 2>&1 &
  echo $! >"$d/etcd.pid"
  local i
  for ((i = 0; i < 100; i++)); do curl -sf "http://127.0.0.1:$b/health" >/dev/null 2>&1 && break; sleep 0.1; done

  openssl genrsa -out "$d/certs/sa.key" 2048 2>/dev/null
  token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  limited=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  printf '%s,berth-admin,berth-admin,system:masters\n%s,berth-nobody,berth-nobody,\n' "$token" "$limited" >"$d/tokens.csv"
  chmod 600 "$d/tokens.csv"
  # A client CA and one certificate it signed (group system:masters), for the driver's certificate auth.
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/certs/client-ca.key" -out "$d/certs/client-ca.crt" -days 7 -subj /CN=berth-client-ca 2>/dev/null &&
    openssl req -newkey rsa:2048 -nodes -keyout "$d/certs/client.key" -out "$d/certs/client.csr" -subj /O=system:masters/CN=berth-cert 2>/dev/null &&
    openssl x509 -req -in "$d/certs/client.csr" -CA "$d/certs/client-ca.crt" -CAkey "$d/certs/client-ca.key" -CAcreateserial -out "$d/certs/client.crt" -days 7 2>/dev/null ||
    { berth_log "kubernetes: openssl could not make the client certificate"; return 1; }
  api="https://127.0.0.1:$((b + 43))"
  echo "$api" >"$d/api"
  # 10.0.0.0/24 is only the Service range the API server requires; nothing routes there.
  "$BERTH_K8S_CACHE/kube-apiserver" --etcd-servers="http://127.0.0.1:$b" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --secure-port=$((b + 43)) --insecure-port=0 --cert-dir="$d/certs" --token-auth-file="$d/tokens.csv" --client-ca-file="$d/certs/client-ca.crt" \
    --authorization-mode=RBAC --service-cluster-ip-range=10.0.0.0/24 \
    --service-account-key-file="$d/certs/sa.key" --service-account-signing-key-file="$d/certs/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc --api-audiences=https://kubernetes.default.svc \
    --disable-admission-plugins=ServiceAccount --enable-priority-and-fairness=false --profiling=false \
    --endpoint-reconciler-type=none --kubelet-preferred-address-types=Hostname --v=0 >"$d/apiserver.log" 2>&1 &
  echo $! >"$d/apiserver.pid"
  for ((i = 0; i < 600; i++)); do berth_k8s_answers "$api" "$token" && break; sleep 0.1; done
  berth_k8s_answers "$api" "$token" || { berth_log "kubernetes: kube-apiserver not ready in 60 s:"; tail -10 "$d/apiserver.log" >&2; return 1; }
  cat >"$d/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: berth, cluster: {server: "$api", certificate-authority: "$d/certs/apiserver.crt"}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: berth, context: {cluster: berth, user: admin}}]
current-context: berth
EOF
  chmod 600 "$d/kubeconfig"

  # The node: containerd with CRI, then the kubelet.
  local C="$d/cri"
  berth_k8s_images "$C" || { berth_log "kubernetes: could not write the images"; return 1; }
  # containerd's CRI needs an eth0 with an address: a bridge with no host address, a pool in 127.78.x.0/24.
  cat >"$C/cni/10-berth.conflist" <<EOF
{"cniVersion":"0.4.0","name":"berth-$sfx","plugins":[{"type":"bridge","bridge":"bk$sfx","isGateway":false,"ipMasq":false,
 "ipam":{"type":"host-local","dataDir":"$C/ipam","ranges":[[{"subnet":"127.78.$(( (b / 100) % 250 )).0/24"}]]}}]}
EOF
  echo "bk$sfx" >"$d/bridge"
  cat >"$C/config.toml" <<EOF
version = 2
root = "$C/root"
state = "$C/state"
[grpc]
  address = "$C/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$C/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$BERTH_K8S_PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "$((b + 60))"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$C/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$C/runc"
EOF
  containerd --config "$C/config.toml" >"$C/containerd.log" 2>&1 &
  echo $! >"$C/containerd.pid"
  for ((i = 0; i < 100; i++)); do [ -S "$C/containerd.sock" ] && break; sleep 0.05; done
  ctr --address "$C/containerd.sock" -n k8s.io images import "$C/pause.tar" >/dev/null &&
    ctr --address "$C/containerd.sock" -n k8s.io images import "$C/bb.tar" >/dev/null ||
    { berth_log "kubernetes: containerd did not take the images:"; tail -5 "$C/containerd.log" >&2; return 1; }
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
address: 127.0.0.1
port: $((b + 50))
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $((b + 48))
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
enforceNodeAllocatable: []
evictionHard: {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
makeIPTablesUtilChains: false
volumePluginDir: $d/kubelet/volume-plugins
EOF
  # The node is named localhost: the API server reaches it by that name (a loopback node IP is refused).
  "$BERTH_K8S_CACHE/kubelet" --config="$d/kubelet.yaml" --kubeconfig="$d/kubeconfig" --container-runtime=remote \
    --container-runtime-endpoint="unix://$C/containerd.sock" --root-dir="$d/kubelet" --cert-dir="$d/kubelet/pki" \
    --hostname-override=localhost --v=1 >"$d/kubelet.log" 2>&1 &
  echo $! >"$d/kubelet.pid"
  local ready=no
  for ((i = 0; i < 300; i++)); do
    if curl -skf -m 3 -H "Authorization: Bearer $token" "$api/api/v1/nodes/localhost" 2>/dev/null |
      python3 -c 'import json,sys; c=[x for x in json.load(sys.stdin)["status"]["conditions"] if x["type"]=="Ready"]; sys.exit(0 if c and c[0]["status"]=="True" else 1)' 2>/dev/null; then
      ready=yes
      break
    fi
    sleep 0.2
  done
  [ $ready = yes ] || { berth_log "kubernetes: node localhost not Ready in 60 s:"; tail -10 "$d/kubelet.log" >&2; return 1; }
  export BERTH_K8S_API="$api" BERTH_K8S_CA="$d/certs/apiserver.crt" BERTH_K8S_TOKEN="$token" BERTH_K8S_LIMITED_TOKEN="$limited"
  export BERTH_K8S_CLIENT_CERT="$d/certs/client.crt" BERTH_K8S_CLIENT_KEY="$d/certs/client.key"
  export BERTH_K8S_IMAGE="$BERTH_K8S_RUN_IMAGE" BERTH_K8S_NODE=localhost BERTH_K8S_KUBECONFIG="$d/kubeconfig" BERTH_K8S_DIR="$d"
  berth_log "kubernetes: $("$BERTH_K8S_CACHE/kube-apiserver" --version) at $api, node localhost Ready, under $d in $((SECONDS - started)) s"
}

berth_kubernetes_stop() { # state-dir
  local d=$1 f pid token api n
  [ -d "$d" ] || return 0
  # Pods first, while the kubelet and containerd still run.
  if [ -e "$d/kubelet.pid" ] && [ -e "$d/tokens.csv" ] && [ -s "$d/api" ]; then
    token=$(head -n 1 "$d/tokens.csv" | cut -d, -f1)
    api=$(cat "$d/api")
    for n in $(curl -skf -m 5 -H "Authorization: Bearer $token" "$api/api/v1/pods" |
      python3 -c 'import json,sys; [print(p["metadata"]["namespace"]+"/"+p["metadata"]["name"]) for p in json.load(sys.stdin)["items"]]' 2>/dev/null); do
      curl -skf -m 5 -X DELETE -H "Authorization: Bearer $token" "$api/api/v1/namespaces/${n%%/*}/pods/${n##*/}?gracePeriodSeconds=0" >/dev/null 2>&1 || true
    done
    for _ in $(seq 50); do [ -z "$(ctr --address "$d/cri/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  for f in kubelet.pid apiserver.pid cri/containerd.pid etcd.pid; do
    pid=$(cat "$d/$f" 2>/dev/null || true)
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  # Shims of this cluster's pods (their command lines name its directory), then its mounts, the bridge, host paths.
  for pid in $(pgrep -f containerd-shim || true); do
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$d/" && kill -9 "$pid" 2>/dev/null
  done
  grep " $d/" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  [ -s "$d/bridge" ] && ip link del "$(cat "$d/bridge")" 2>/dev/null
  if [ -s "$d/made-paths" ]; then
    grep ' /run/netns/cni-' /proc/self/mounts | awk '{print $2}' | xargs -r -n1 umount -l 2>/dev/null || true
    while read -r p; do [ -n "$p" ] && rm -rf "$p"; done <"$d/made-paths"
  fi
  if [ -e "$d/remove-cgroups" ]; then
    for c in /sys/fs/cgroup/*/kubepods; do [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null; done
  fi
  rm -rf "$d"
}
