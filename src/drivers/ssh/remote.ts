// The shell scripts the SSH driver runs on the remote host. Each is fixed text passed as
// `sh -c <script> berth <args...>`: the arguments are paths, ids and the run's command
// line, never a value of the run's environment (that travels over stdin, see LAUNCHER),
// so no secret shows in a remote command line or in `ps`.
//
// Layout on the host, for a resource <id> of an environment whose remoteWorkspacePath is <root>:
//   <root>/<id>/                          the resource (provision makes it, destroy removes it)
//   <root>/<id>/.berth-resource.json      its labels (list reads them)
//   <root>/<id>/.berth/exec-<hex>/        one execution: pid ("<pid> <start time>"), out, err,
//                                         exit ("<status> exit|deadline"), stop, deadline
// An execution is a runner (RUNNER) leading its own session and process group, started
// detached from the SSH channel, so it outlives the connection and this server; the
// command runs in the runner's group with its output going to files that any server
// can read back from an offset (WATCH).

/** Quote for a POSIX shell: one single-quoted word. */
export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

export const shCommand = (script: string, args: string[]): string => `exec sh -c ${shellQuote(script)} berth ${args.map(shellQuote).join(' ')}`;

/**
 * Shell functions the scripts share. `st PID`: the process's start time (clock ticks
 * since boot from /proc, or ps's lstart where there is no /proc), empty when it is
 * gone: a pid plus its start time names one process, never a later one that reused the
 * pid. `others G SPARE`: every member of process group G and every descendant of G
 * that left it (setsid), except G itself and SPARE; ps + awk, as every Linux and BSD has them.
 */
const LIB = `st() { if [ -r /proc/self/stat ]; then l=; read -r l 2>/dev/null <"/proc/$1/stat" || return 0; l=\${l##*) }; set -- $l; printf '%s' "\${20}"; else ps -o lstart= -p "$1" 2>/dev/null | tr -s ' ' _; fi; }
others() { ps -e -o pid= -o pgid= -o ppid= 2>/dev/null | awk -v g="$1" -v k="$2" '{ p[NR] = $1; q[NR] = $2; r[NR] = $3 } END { w[g] = 1; c = 1; while (c) { c = 0; for (i = 1; i <= NR; i++) if ((r[i] in w) && !(p[i] in w)) { w[p[i]] = 1; c = 1 } } for (i = 1; i <= NR; i++) if (q[i] == g) w[p[i]] = 1; for (x in w) if (x != g && x != k) print x }'; }
`;

/**
 * The runner: $1 marker, $2 the execution's directory, $3 deadline seconds (0: none),
 * $4 the login's PATH (for the runner's own tools; the command gets the run's PATH), then
 * the command and its args. Started by LAUNCHER as a session leader with stdout on the
 * SSH channel: it reports its pid and start time there, then lets go of the channel.
 *
 * It runs the command in the foreground (so the command gets default signal dispositions,
 * not an async list's ignored SIGINT), in its own process group, and traps TERM so that
 * a TERM to the group leaves it alive to record how the command ended. When the command
 * ends, whatever it left in the group (and its descendants that left the group) is
 * killed before the exit file appears: an execution with an exit file has nothing left
 * running and no more output coming. The deadline is a child that ignores TERM: at the
 * deadline it TERMs the rest, and KILLs it 5 s later.
 *
 * A signal may come between the pid report and the command's start: SIGNAL writes
 * `stop` before it kills, and the command's subshell checks `stop` after it forked (so
 * it is either already in the group when the kill comes, or sees the file).
 */
export const RUNNER = `${LIB}_b_m=$1 _b_f=$2 _b_t=$3 _b_sp=$4; shift 4
_b_rp=$PATH; PATH=$_b_sp
_b_me=$(st $$)
printf '%s %s\\n' "$$" "$_b_me" >"$_b_f/pid" || { printf '%s error=cannot write %s\\n' "$_b_m" "$_b_f/pid"; exit 1; }
printf '%s pid=%s start=%s\\n' "$_b_m" "$$" "$_b_me"
exec >/dev/null 2>&1
trap ':' TERM
if [ "$_b_t" -gt 0 ]; then
  ( trap '' TERM; _b_i=$(exec /bin/sh -c 'echo $PPID'); sleep "$_b_t"; : >"$_b_f/deadline"; printf 'TERM\\n' >"$_b_f/stop"
    k=$(others $$ "$_b_i"); [ -n "$k" ] && kill -TERM $k; sleep 5; k=$(others $$ "$_b_i"); [ -n "$k" ] && kill -KILL $k ) </dev/null &
fi
PATH=$_b_rp
( if [ -e "$_b_f/stop" ]; then read -r q <"$_b_f/stop"; [ "$q" = KILL ] && exit 137; exit 143; fi; exec "$@" ) </dev/null >"$_b_f/out" 2>"$_b_f/err"
_b_s=$?
PATH=$_b_sp
k=$(others $$ 0); [ -n "$k" ] && kill -KILL $k 2>/dev/null
_b_y=exit; [ -e "$_b_f/deadline" ] && _b_y=deadline
printf '%s %s\\n' "$_b_s" "$_b_y" >"$_b_f/exit.tmp" && mv -f "$_b_f/exit.tmp" "$_b_f/exit"`;

/**
 * The launcher, the SSH channel's own command: $1 marker, $2 RUNNER's text, $3 the
 * resource directory, $4 the execution's name, $5 cwd, $6 deadline seconds, then the
 * command and its args. The environment comes on stdin as encodeEnvironment writes it: a
 * line count, then that many lines of `export` (`read` takes one byte at a time from a
 * pipe, so it never swallows more). It makes the execution's directory (never the
 * resource's: a destroyed resource stays destroyed), evaluates the environment, checks
 * cwd and command as the run will see them (its PATH), then starts the runner in a new
 * session: `setsid -f` (util-linux), else perl's setsid, else a background `setsid`
 * (busybox; the command then inherits an ignored SIGINT). Its own variables are `_b_*`:
 * a run's environment may set any other name.
 */
export const LAUNCHER = `_b_m=$1 _b_R=$2 _b_r=$3 _b_x=$4 _b_d=$5 _b_t=$6; shift 6
_b_fail() { printf '%s error=%s\\n' "$_b_m" "$1" >&2; exit 1; }
[ -d "$_b_r" ] && [ ! -L "$_b_r" ] || _b_fail "the resource directory $_b_r does not exist"
_b_f=$_b_r/.berth/$_b_x
mkdir "$_b_r/.berth" 2>/dev/null; mkdir "$_b_f" || _b_fail "cannot make $_b_f"
_b_sp=$PATH
IFS= read -r _b_n || exit 125
_b_s=
while [ "$_b_n" -gt 0 ]; do IFS= read -r _b_l || exit 125; _b_s="$_b_s$_b_l
"; _b_n=$((_b_n-1)); done
eval "$_b_s"; unset _b_s _b_l _b_n
cd -- "$_b_d" 2>/dev/null || { printf '%s spawn-error=cannot enter the working directory %s\\n' "$_b_m" "$_b_d" >&2; exit 126; }
command -v -- "$1" >/dev/null 2>&1 || { printf '%s spawn-error=%s: command not found\\n' "$_b_m" "$1" >&2; exit 127; }
_b_ss=$(PATH=$_b_sp; command -v setsid 2>/dev/null)
_b_pl=$(PATH=$_b_sp; command -v perl 2>/dev/null)
if [ -n "$_b_ss" ] && "$_b_ss" -f /bin/sh -c "$_b_R" berth-run "$_b_m" "$_b_f" "$_b_t" "$_b_sp" "$@" </dev/null 2>/dev/null; then :
elif [ -n "$_b_pl" ]; then "$_b_pl" -MPOSIX -e 'fork and exit 0; POSIX::setsid(); exec @ARGV or exit 127' /bin/sh -c "$_b_R" berth-run "$_b_m" "$_b_f" "$_b_t" "$_b_sp" "$@" </dev/null 2>/dev/null
elif [ -n "$_b_ss" ]; then "$_b_ss" /bin/sh -c "$_b_R" berth-run "$_b_m" "$_b_f" "$_b_t" "$_b_sp" "$@" </dev/null 2>/dev/null &
else _b_fail "neither setsid nor perl is installed on the host: Berth cannot start a process that outlives the connection"
fi
exit 0`;

/**
 * Stream an execution's output: $1 marker, $2 its directory, $3 pgid, $4 start time,
 * $5 stdout offset, $6 stderr offset, $7 chunk bytes, $8 longest poll ms (idle, it looks
 * again after 10 ms, doubling up to that: a short run's end is seen at once, a long
 * quiet one costs a few forks a second). After a `ready`
 * line (what a login script printed before it is skipped), frames on stdout:
 *   O <n>\\n<n bytes>   stdout from the current offset; then it waits for a line on stdin:
 *   E <n>\\n<n bytes>   the same for stderr                      `A` more, `S` count only
 *   K <out> <err>      (count only) the streams have reached these sizes
 *   X <status> <why>   the exit file's content, once both streams are read to their end
 *   L                  the runner is gone without an exit file (killed from outside)
 *   .                  idle heartbeat: a reader that went away ends this script (SIGPIPE)
 * One chunk at a time, acknowledged: the reader's backpressure reaches the file reads.
 * The exit file is looked at before the sizes, so the sizes read after it are final.
 */
export const WATCH = `${LIB}m=$1 f=$2 g=$3 w=$4 o=$5 e=$6 c=$7 p=$8
sz() { if [ -e "$1" ]; then n=$(wc -c <"$1") && echo $((n)); else echo 0; fi; }
printf '%s ready\\n' "$m"
k=0 q=10 h=0
while :; do
  x=; [ -e "$f/exit" ] && x=1
  so=$(sz "$f/out"); se=$(sz "$f/err")
  if [ "$k" = 1 ]; then
    if [ "$so" != "$o" ] || [ "$se" != "$e" ]; then o=$so e=$se; printf 'K %s %s\\n' "$o" "$e"; fi
  elif [ "$so" -gt "$o" ]; then
    n=$((so-o)); [ "$n" -gt "$c" ] && n=$c
    printf 'O %s\\n' "$n"; tail -c +$((o+1)) "$f/out" | head -c "$n"; o=$((o+n))
    IFS= read -r a || exit 0; [ "$a" = S ] && k=1; q=10; continue
  elif [ "$se" -gt "$e" ]; then
    n=$((se-e)); [ "$n" -gt "$c" ] && n=$c
    printf 'E %s\\n' "$n"; tail -c +$((e+1)) "$f/err" | head -c "$n"; e=$((e+n))
    IFS= read -r a || exit 0; [ "$a" = S ] && k=1; q=10; continue
  fi
  if [ -n "$x" ]; then read -r s y <"$f/exit"; printf 'X %s %s\\n' "$s" "$y"; exit 0; fi
  if [ "$(st "$g")" != "$w" ] && [ ! -e "$f/exit" ]; then printf 'L\\n'; exit 0; fi
  h=$((h+q)); [ "$h" -ge 2000 ] && { h=0; printf '.\\n'; }
  sleep "$(printf '%d.%03d' $((q/1000)) $((q%1000)))"
  q=$((q*2)); [ "$q" -gt "$p" ] && q=$p
done`;

/**
 * Signal an execution: $1 TERM|KILL, $2 pgid, $3 start time, $4 its directory. Only if
 * the runner is still the process that started (same start time) and no exit is
 * recorded; the runner itself is spared so that it records how the command ended.
 */
export const SIGNAL = `${LIB}[ "$(st "$2")" = "$3" ] || exit 0
[ -e "$4/exit" ] && exit 0
printf '%s\\n' "$1" >"$4/stop" 2>/dev/null
k=$(others "$2" 0); [ -n "$k" ] && kill -"$1" $k 2>/dev/null
exit 0`;

/** Make a resource: $1 root, $2 its directory, $3 an agent's own cwd to check (or empty); the labels (JSON) on stdin. */
export const PROVISION = `r=$1 d=$2 c=$3
mkdir -p -- "$r" || exit 1
[ -L "$d" ] && { printf '%s is a symbolic link\\n' "$d" >&2; exit 3; }
mkdir -- "$d" 2>/dev/null || [ -d "$d" ] || { printf 'cannot make %s\\n' "$d" >&2; exit 1; }
t="$d/.berth-resource.json.$$"
cat >"$t" && mv -f -- "$t" "$d/.berth-resource.json" || exit 1
if [ -n "$c" ]; then cd -- "$c" 2>/dev/null || { printf 'cannot enter the working directory %s\\n' "$c" >&2; exit 4; }; fi
echo ok`;

/**
 * Remove a resource: $1 its directory. First every execution in it that still runs is
 * killed (its runner too), if the runner is the process that started (start time) and
 * its command line names that execution's directory: a pid file an agent wrote makes it
 * kill nothing else. `rm -rf` on a symbolic link removes the link, never its target.
 */
export const DESTROY = `${LIB}d=$1
[ -e "$d" ] || [ -L "$d" ] || { echo gone; exit 0; }
if [ -d "$d" ] && [ ! -L "$d" ]; then
  for p in "$d"/.berth/exec-*/pid; do
    [ -f "$p" ] || continue
    x=\${p%/pid}
    [ -e "$x/exit" ] && continue
    read -r g w <"$p" || continue
    case $g in ''|*[!0-9]*) continue;; esac
    [ "$(st "$g")" = "$w" ] || continue
    if [ -r "/proc/$g/cmdline" ]; then a=$(tr '\\0' ' ' <"/proc/$g/cmdline"); else a=$(ps -o args= -p "$g"); fi
    case $a in *" berth-run "*" $x "*) ;; *) continue;; esac
    k=$(others "$g" 0); kill -KILL "$g" $k 2>/dev/null
  done
fi
rm -rf -- "$d" || exit 1
echo removed`;

/** The resources under $1 (the root): one line each, "<name>\\t<mtime>\\t<labels JSON>". */
export const LIST = `r=$1
[ -d "$r" ] || exit 0
for l in "$r"/*/.berth-resource.json; do
  [ -f "$l" ] || continue
  d=\${l%/.berth-resource.json}
  t=$(stat -c %Y -- "$l" 2>/dev/null || stat -f %m -- "$l" 2>/dev/null)
  printf '%s\\t%s\\t' "\${d##*/}" "$t"; head -c 65536 -- "$l" | tr -d '\\n\\t'; printf '\\n'
done
exit 0`;
