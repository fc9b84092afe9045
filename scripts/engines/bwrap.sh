# Bubblewrap for the tests of local runs under `isolation: "bubblewrap"` (test/bwrap/):
# Debian's bubblewrap, installed if missing, then proven able to make the namespaces a
# sandbox needs (pid, ipc, uts, network; user namespaces where it runs unprivileged), with
# the same flags Berth uses. The relay into a sandbox's network also needs nsenter and
# unshare (util-linux) and perl (perl-base). Sourced by scripts/test-env.sh.

berth_ensure_bwrap() {
  if ! command -v bwrap >/dev/null 2>&1; then
    berth_install_debian bubblewrap || { berth_log "could not install bubblewrap"; return 1; }
    command -v bwrap >/dev/null 2>&1 || { berth_log "bubblewrap installed but no bwrap on PATH"; return 1; }
  fi
  local t
  for t in nsenter unshare perl; do
    command -v "$t" >/dev/null 2>&1 || { berth_log "bubblewrap runs need $t (util-linux / perl-base) and it is missing"; return 1; }
  done
  local err
  if ! err=$(bwrap --die-with-parent --new-session --unshare-pid --unshare-ipc --unshare-uts --unshare-net --cap-drop ALL \
    --ro-bind / / --proc /proc --dev /dev --tmpfs /tmp -- true 2>&1); then
    berth_log "bwrap cannot make a sandbox here (user namespaces allowed? kernel.unprivileged_userns_clone, user.max_user_namespaces): $err"
    return 1
  fi
  berth_log "bubblewrap: $(command -v bwrap) ($(bwrap --version 2>&1 | head -n 1)), namespaces work"
}
