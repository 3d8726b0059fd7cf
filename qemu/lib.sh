# shellcheck shell=bash
# shellcheck disable=SC2034 # FL_*, SERVER_*, GUEST_* and ACCEL_* are for the scripts sourcing this
# qemu/lib.sh: helpers shared by qemu/setup, qemu/run, qemu/test and qemu/bench.
#
# Source it from a bash script that runs with `set -euo pipefail`:
#
#     . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Sourcing only defines variables and functions; it starts nothing and needs nothing provisioned.
# Public functions are listed here; each is documented where it is defined.
#
#   fl_msg / fl_warn / fl_die MSG...   messages on stderr, prefixed "faultline:"
#   fl_now, fl_elapsed START, fl_since START   wall-clock timing helpers
#   need_setup, ensure_setup           is something missing from the cache? run qemu/setup if so
#   choose_accel                       KVM or TCG; sets ACCEL_NAME and ACCEL_ARGS, says which
#   build_server, build_guest_tests    cargo build the server; make -C guest-tests
#   guest_test_files                   GUEST_FILES=(SRC:DEST ...) for what guest-tests built
#   build_initramfs OUT CMD [FILE...]  busybox initramfs whose /init runs CMD and reports its status
#   start_server NAME SOCKET LOG [ARG...], start_servers N DIR [ARG...]
#   check_servers, stop_servers, print_server_logs [LINES]
#   boot_guest [OPTIONS] INITRD LOG [SOCKET...], kill_guest
#
# Variables set by sourcing (override the cache location with FAULTLINE_CACHE; several worktrees
# can share one cache that way):
#   FL_REPO        repository root
#   FL_CACHE       provisioning cache, $FL_REPO/.cache (ignored by git)
#   FL_QEMU        QEMU >= 10.1 wrapper: private prefix loader, -L firmware dirs, QEMU_MODULE_DIR
#   FL_BUSYBOX     busybox-static (bookworm); also our cpio, the host has none
#   FL_PAHOLE      pahole wrapper for kbuild: make ... PAHOLE="$FL_PAHOLE"
#   FL_KVER        guest kernel release, e.g. 6.12.95+deb12-amd64 (empty until qemu/setup ran)
#   FL_BZIMAGE     guest kernel image
#   FL_KDIR        kbuild dir for out-of-tree modules: make -C "$FL_KDIR" M=DIR PAHOLE="$FL_PAHOLE"
#   FL_SRCDIR      the parts of the guest kernel's linux-source that hmm-tests needs (qemu/setup
#                  source stage): lib/test_hmm*, tools/testing/selftests/mm, tools/include, ...
#   FL_SERVER_BIN  faultline-server built by `cargo build --release` (FAULTLINE_SERVER_BIN overrides)
#   FL_EXIT_MARKER the guest prints "$FL_EXIT_MARKER <status>" on the serial console when done
#
# Conventions: functions return non-zero instead of exiting unless their name says otherwise
# (fl_die, ensure_setup). Callers that want a status must capture it without tripping `set -e`:
#     status=0; boot_guest ... || status=$?

FL_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FL_CACHE=${FAULTLINE_CACHE:-$FL_REPO/.cache}
FL_QEMU=$FL_CACHE/bin/qemu-system-x86_64
FL_PAHOLE=$FL_CACHE/bin/pahole
FL_BUSYBOX=$FL_CACHE/busybox/bin/busybox
FL_SERVER_BIN=${FAULTLINE_SERVER_BIN:-$FL_REPO/target/release/faultline-server}
FL_EXIT_MARKER=FAULTLINE-EXIT
FL_INSMOD_MARKER=FAULTLINE-INSMOD-FAILED
FL_QEMU_PID=''
FL_KVER=
FL_BZIMAGE=
FL_KDIR=
FL_KERNEL_PKG_VERSION=
FL_SOURCE_PKG_VERSION=
FL_SRCDIR=$FL_CACHE/linux-source

# The stage files qemu/setup writes once a stage is complete (shell assignments, versions).
FL_STAGES=(qemu busybox pahole kernel source)

# _fl_load_env: read the versions and kernel release recorded by qemu/setup, if any.
_fl_load_env() {
    local stage
    for stage in "${FL_STAGES[@]}"; do
        # shellcheck source=/dev/null
        if [[ -r $FL_CACHE/$stage.env ]]; then . "$FL_CACHE/$stage.env"; fi
    done
    if [[ -n $FL_KVER ]]; then
        FL_BZIMAGE=$FL_CACHE/kernel/boot/vmlinuz-$FL_KVER
        FL_KDIR=$FL_CACHE/kernel/usr/src/linux-headers-$FL_KVER
    fi
}
_fl_load_env

fl_msg() { printf 'faultline: %s\n' "$*" >&2; }
fl_warn() { printf 'faultline: warning: %s\n' "$*" >&2; }
fl_die() {
    printf 'faultline: error: %s\n' "$*" >&2
    exit 1
}

# fl_now: print the wall-clock time in seconds (with microseconds).
fl_now() { printf '%s\n' "$EPOCHREALTIME"; }

# fl_elapsed START: print the seconds elapsed since START (from fl_now), e.g. "7.93".
fl_elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f\n", b - a }'; }

# fl_since START: the same for people, e.g. "7.9 s".
fl_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s\n", b - a }'; }

# need_setup: succeed (status 0) if anything qemu/setup provides is missing.
need_setup() {
    local stage
    for stage in "${FL_STAGES[@]}"; do
        [[ -f $FL_CACHE/$stage.env ]] || return 0
    done
    _fl_load_env
    [[ -x $FL_QEMU && -x $FL_PAHOLE && -x $FL_BUSYBOX ]] || return 0
    [[ -n $FL_KVER && -f $FL_BZIMAGE && -f $FL_KDIR/Makefile ]] || return 0
    [[ -f $FL_SRCDIR/tools/testing/selftests/mm/hmm-tests.c ]] || return 0
    [[ $FL_SOURCE_PKG_VERSION == "$FL_KERNEL_PKG_VERSION" ]] || return 0
    return 1
}

# ensure_setup: run qemu/setup if need_setup says something is missing; exits on failure.
ensure_setup() {
    if need_setup; then
        fl_msg "provisioning is incomplete; running qemu/setup"
        "$FL_REPO/qemu/setup" || fl_die "qemu/setup failed"
        _fl_load_env
        ! need_setup || fl_die "qemu/setup finished but the cache is still incomplete ($FL_CACHE)"
    fi
}

# choose_accel: choose the accelerator and say which on stderr. Sets
#   ACCEL_NAME  "kvm" or "tcg"
#   ACCEL_ARGS  QEMU arguments (array): -accel kvm -cpu host, or -accel tcg -cpu max
# KVM is used only if /proc/cpuinfo shows vmx or svm AND /dev/kvm is readable and writable: on a
# software hypervisor /dev/kvm may exist without hardware virtualisation, and Debian's kernel then
# dies on unemulated instructions. FAULTLINE_ACCEL=kvm|tcg overrides the choice.
choose_accel() {
    local why
    case ${FAULTLINE_ACCEL:-} in
        kvm) ACCEL_NAME=kvm why="forced by FAULTLINE_ACCEL" ;;
        tcg) ACCEL_NAME=tcg why="forced by FAULTLINE_ACCEL" ;;
        '')
            if ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
                ACCEL_NAME=tcg why="no vmx/svm in /proc/cpuinfo"
            elif [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
                ACCEL_NAME=tcg why="/dev/kvm is not usable"
            else
                ACCEL_NAME=kvm why="vmx/svm present and /dev/kvm usable"
            fi
            ;;
        *)
            fl_warn "FAULTLINE_ACCEL must be kvm or tcg, not '$FAULTLINE_ACCEL'"
            return 1
            ;;
    esac
    if [[ $ACCEL_NAME == kvm ]]; then
        ACCEL_ARGS=(-accel kvm -cpu host)
    else
        ACCEL_ARGS=(-accel tcg -cpu max)
    fi
    fl_msg "accelerator: $ACCEL_NAME ($why)"
}

# build_server: cargo build --release -p faultline-server; fails if the binary is not produced.
build_server() {
    fl_msg "building faultline-server (cargo build --release)"
    (cd "$FL_REPO" && cargo build --release -p faultline-server) || return 1
    [[ -x $FL_SERVER_BIN ]] || {
        fl_warn "cargo succeeded but $FL_SERVER_BIN is missing"
        return 1
    }
}

# build_guest_tests: if guest-tests/Makefile exists, build it against the guest kernel:
#   make -C guest-tests KDIR="$FL_KDIR" PAHOLE="$FL_PAHOLE" [LINUX_SRC="$FL_SRCDIR"]
# (LINUX_SRC when qemu/setup's source stage is there: it adds the kernel's hmm-tests.)
# Contract: it produces guest-tests/build/faultline.ko and static programs in guest-tests/build/bin/.
# Does nothing (successfully) without a Makefile.
build_guest_tests() {
    local dir=$FL_REPO/guest-tests
    [[ -f $dir/Makefile ]] || return 0
    [[ -n $FL_KDIR ]] || {
        fl_warn "no guest kernel headers yet (run qemu/setup)"
        return 1
    }
    local src=()
    # The kernel's own hmm-tests (and the driver's check of test_hmm's ABI), when provisioned.
    if [[ -f $FL_SRCDIR/tools/testing/selftests/mm/hmm-tests.c ]]; then src=(LINUX_SRC="$FL_SRCDIR"); fi
    fl_msg "building guest-tests against $FL_KVER"
    make -C "$dir" -j"$(nproc)" KDIR="$FL_KDIR" PAHOLE="$FL_PAHOLE" "${src[@]}"
}

# guest_test_files: set GUEST_FILES (array of SRC:DEST for build_initramfs) to whatever
# guest-tests has built: build/faultline.ko as /faultline.ko, executables in build/bin/ in /bin.
guest_test_files() {
    local build=$FL_REPO/guest-tests/build f
    GUEST_FILES=()
    if [[ -f $build/faultline.ko ]]; then GUEST_FILES+=("$build/faultline.ko:/faultline.ko"); fi
    if [[ -d $build/bin ]]; then
        for f in "$build"/bin/*; do
            if [[ -f $f && -x $f ]]; then GUEST_FILES+=("$f:/bin/${f##*/}"); fi
        done
    fi
}

# fl_shell_quote ARG...: print the arguments as one POSIX sh command line (single-quoted words).
fl_shell_quote() {
    local arg words=() q="'\\''"
    for arg in "$@"; do words+=("'${arg//\'/$q}'"); done
    printf '%s\n' "${words[*]}"
}

# build_initramfs OUT INIT_CMD [SRC[:DEST]...]
#   Write an uncompressed newc initramfs to OUT containing busybox-static as /bin/busybox with all
#   its applets as symlinks (/sbin, /usr/bin, /usr/sbin point to /bin), and an /init that:
#     mounts proc, sysfs, devtmpfs, devpts, tmpfs (/tmp, /run, /dev/shm), debugfs, tracefs;
#     raises the console log level to warnings (the kernel boots "quiet");
#     runs `insmod /faultline.ko` if that file exists; on failure prints the dmesg tail and
#       $FL_INSMOD_MARKER, and skips the command (status 125);
#     runs INIT_CMD with `sh -c` in a clean environment (PATH=/bin HOME=/root TERM=linux),
#       stdin from /dev/null, in /; if INIT_CMD is empty, an interactive login shell instead;
#     prints "$FL_EXIT_MARKER <status>" on the console and powers off (poweroff -f).
#   Each SRC[:DEST] copies a host file or directory into the image. DEST defaults to /bin/NAME for an
#   executable file, /NAME otherwise; a DEST ending in / means DEST/NAME. Later entries win.
#   INIT_CMD is stored verbatim in /etc/faultline/cmd; quote words with fl_shell_quote.
build_initramfs() {
    if (($# < 2)); then
        fl_warn "usage: build_initramfs OUT INIT_CMD [SRC[:DEST]...]"
        return 2
    fi
    local out=$1 cmd=$2 spec src dest root rc=0
    local -a copies=()
    shift 2
    [[ -x $FL_BUSYBOX ]] || {
        fl_warn "busybox is not provisioned ($FL_BUSYBOX); run qemu/setup"
        return 1
    }
    # Resolve every path before working inside the staging directory.
    out=$(realpath -m -- "$out") || return 1
    for spec in "$@"; do
        src=${spec%%:*}
        dest=''
        if [[ $spec == *:* ]]; then dest=${spec#*:}; fi
        [[ -e $src ]] || {
            fl_warn "initramfs: no such file: $src"
            return 1
        }
        if [[ -z $dest ]]; then
            if [[ -f $src && -x $src ]]; then dest=/bin/; else dest=/; fi
        fi
        [[ $dest == /* ]] || dest=/$dest
        if [[ $dest == */ ]]; then dest=$dest${src##*/}; fi
        copies+=("$(realpath -- "$src")" "$dest")
    done
    root=$(mktemp -d "${TMPDIR:-/tmp}/faultline-initramfs.XXXXXX") || return 1
    # Explicit checks: `set -e` does not apply inside a function whose caller tests its status.
    (
        cd "$root" || exit 1
        mkdir -p bin dev proc sys tmp run root etc/faultline mnt usr lib/modules || exit 1
        ln -s bin sbin && ln -s ../bin usr/bin && ln -s ../bin usr/sbin || exit 1
        cp "$FL_BUSYBOX" bin/busybox || exit 1
        for applet in $("$FL_BUSYBOX" --list); do
            [[ -e bin/$applet ]] || ln -s busybox "bin/$applet" || exit 1
        done
        # The kernel opens /dev/console before /init runs; make sure it exists (needs root).
        mknod -m 600 dev/console c 5 1 2>/dev/null || true
        printf 'root:x:0:0:root:/root:/bin/sh\n' >etc/passwd || exit 1
        printf 'root:x:0:\n' >etc/group || exit 1
        if [[ -n $cmd ]]; then printf '%s\n' "$cmd" >etc/faultline/cmd || exit 1; fi
        _fl_write_init >init && chmod 755 init || exit 1
        set -- "${copies[@]}"
        while (($#)); do
            # Later entries win; symlinks are followed (their targets would not exist in the guest).
            mkdir -p ".${2%/*}" && rm -rf ".$2" && cp -RL --preserve=mode,timestamps "$1" ".$2" || exit 1
            shift 2
        done
        set -o pipefail
        find . -mindepth 1 | LC_ALL=C sort | "$FL_BUSYBOX" cpio -o -H newc >"$out.tmp" 2>/dev/null || exit 1
    ) || rc=$?
    rm -rf "$root"
    if ((rc != 0)); then
        rm -f "$out.tmp"
        fl_warn "building the initramfs $out failed"
        return 1
    fi
    mv "$out.tmp" "$out"
}

# _fl_write_init: print the guest's /init (busybox ash).
_fl_write_init() {
    cat <<EOF
#!/bin/sh
# /init generated by qemu/lib.sh build_initramfs.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
hostname faultline
ip link set lo up 2>/dev/null
# Booted "quiet": from here on, show warnings and worse (WARN(), oopses) on the console.
dmesg -n 5
status=0
if [ -f /faultline.ko ]; then
    if ! insmod /faultline.ko; then
        echo "faultline: insmod /faultline.ko failed; kernel log tail:"
        dmesg | tail -n 40
        echo "$FL_INSMOD_MARKER"
        status=125
    fi
fi
if [ "\$status" = 0 ]; then
    cd /
    if [ -s /etc/faultline/cmd ]; then
        env -i PATH=/bin HOME=/root TERM=linux sh -c "\$(cat /etc/faultline/cmd)" </dev/null
        status=\$?
    else
        echo "faultline: interactive shell; 'exit' or Ctrl-D powers off (Ctrl-A x kills QEMU)"
        env -i PATH=/bin HOME=/root TERM="\${TERM:-linux}" PS1='faultline:\w# ' setsid cttyhack sh -l
        status=\$?
    fi
fi
echo "$FL_EXIT_MARKER \$status"
poweroff -f
EOF
}

# ---------------------------------------------------------------------------------------------
# faultline-server instances. Start them from the main shell, not from $(...) or a pipeline:
# they must be children of the script for their exit status to be known.

declare -ga SERVER_NAMES=()   # names in start order
declare -ga SERVER_SOCKETS=() # sockets in start order (boot_guest attaches them as gpu0, gpu1, ...)
declare -gA SERVER_PID=() SERVER_SOCKET=() SERVER_LOG=() SERVER_STATUS=() SERVER_STOPPED=()
declare -gA SERVER_OWNER=() # $BASHPID of the shell that started it (only it can `wait` for it)

# start_server NAME SOCKET LOG [SERVER_ARG...]
#   Run "$FL_SERVER_BIN --socket SOCKET [SERVER_ARG...]" in the background, stdout and stderr to LOG
#   (a stale SOCKET is removed first), and wait until SOCKET exists: up to
#   FAULTLINE_SERVER_START_TIMEOUT seconds (default 10). Fails, with the log, if the server exits
#   before that. Records the instance in SERVER_NAMES, SERVER_SOCKETS, SERVER_PID[NAME],
#   SERVER_SOCKET[NAME], SERVER_LOG[NAME]. A NAME may be reused once its previous server has
#   exited or been stopped (its old record is replaced).
start_server() {
    if (($# < 3)); then
        fl_warn "usage: start_server NAME SOCKET LOG [SERVER_ARG...]"
        return 2
    fi
    local name=$1 sock=$2 log=$3 pid deadline st=0
    shift 3
    [[ -x $FL_SERVER_BIN ]] || {
        fl_warn "$FL_SERVER_BIN not built (cargo build --release -p faultline-server)"
        return 1
    }
    _fl_forget_server "$name" || return 1
    rm -f "$sock"
    "$FL_SERVER_BIN" --socket "$sock" "$@" </dev/null >"$log" 2>&1 &
    pid=$!
    SERVER_NAMES+=("$name")
    SERVER_SOCKETS+=("$sock")
    SERVER_PID[$name]=$pid
    SERVER_SOCKET[$name]=$sock
    SERVER_LOG[$name]=$log
    SERVER_OWNER[$name]=$BASHPID
    deadline=$((SECONDS + ${FAULTLINE_SERVER_START_TIMEOUT:-10}))
    until [[ -S $sock ]]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || st=$?
            SERVER_STATUS[$name]=$st
            fl_warn "server $name exited ($(_fl_describe_status "$st")) before creating $sock"
            print_server_logs 40 "$name"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            fl_warn "server $name (pid $pid) did not create $sock within ${FAULTLINE_SERVER_START_TIMEOUT:-10} s"
            print_server_logs 40 "$name"
            return 1
        fi
        sleep 0.05
    done
    fl_msg "server $name: pid $pid, socket $sock, log $log"
}

# _fl_forget_server NAME: drop NAME's record (fails if that server is still running).
_fl_forget_server() {
    local name=$1 i names=() socks=()
    [[ -n ${SERVER_PID[$name]:-} ]] || return 0
    if [[ -z ${SERVER_STATUS[$name]:-} ]] && kill -0 "${SERVER_PID[$name]}" 2>/dev/null; then
        fl_warn "server $name (pid ${SERVER_PID[$name]}) is still running; stop_servers first"
        return 1
    fi
    for i in "${!SERVER_NAMES[@]}"; do
        [[ ${SERVER_NAMES[$i]} == "$name" ]] && continue
        names+=("${SERVER_NAMES[$i]}")
        socks+=("${SERVER_SOCKETS[$i]}")
    done
    SERVER_NAMES=("${names[@]}")
    SERVER_SOCKETS=("${socks[@]}")
    unset 'SERVER_PID[$name]' 'SERVER_SOCKET[$name]' 'SERVER_LOG[$name]' 'SERVER_STATUS[$name]' \
        'SERVER_STOPPED[$name]' 'SERVER_OWNER[$name]'
}

# start_servers N DIR [SERVER_ARG...]: start_server gpu0..gpu(N-1) with sockets DIR/gpuI.sock and
# logs DIR/gpuI.log.
start_servers() {
    local n=$1 dir=$2 i
    shift 2
    for ((i = 0; i < n; i++)); do
        start_server "gpu$i" "$dir/gpu$i.sock" "$dir/gpu$i.log" "$@" || return 1
    done
}

# _fl_describe_status STATUS: "exit status N" or "killed by SIGNAME".
_fl_describe_status() {
    if [[ ! $1 =~ ^[0-9]+$ ]]; then
        printf 'status unknown\n'
    elif (($1 > 128)); then
        printf 'killed by SIG%s\n' "$(kill -l "$(($1 - 128))" 2>/dev/null || echo "$(($1 - 128))")"
    else
        printf 'exit status %s\n' "$1"
    fi
}

# _fl_reap_server NAME: if NAME's process has exited, record its status and succeed. In a
# subshell (e.g. boot_guest run with &) the server is not our child: its status is "unknown".
_fl_reap_server() {
    local name=$1 st=0
    [[ -n ${SERVER_STATUS[$name]:-} ]] && return 0
    kill -0 "${SERVER_PID[$name]}" 2>/dev/null && return 1
    if [[ ${SERVER_OWNER[$name]:-} == "$BASHPID" ]]; then
        wait "${SERVER_PID[$name]}" 2>/dev/null || st=$?
    else
        st=unknown
    fi
    SERVER_STATUS[$name]=$st
}

# check_servers: fail if any server exited on its own (not through stop_servers) with a non-zero
# status or a signal (a crash); print which, how, and the tail of its log. A server that exited
# with status 0 (e.g. after its client went away) is fine.
check_servers() {
    local name bad=0
    for name in "${SERVER_NAMES[@]}"; do
        _fl_reap_server "$name" || continue
        [[ -n ${SERVER_STOPPED[$name]:-} ]] && continue
        if [[ ${SERVER_STATUS[$name]} != 0 ]]; then
            fl_warn "server $name crashed: $(_fl_describe_status "${SERVER_STATUS[$name]}")"
            print_server_logs 40 "$name"
            bad=1
        fi
    done
    return "$bad"
}

# stop_servers: SIGTERM every running server, wait up to 5 s, then SIGKILL. Records statuses (so a
# later check_servers still reports crashes that happened earlier). Safe to call more than once,
# e.g. from an EXIT trap.
stop_servers() {
    local name deadline
    for name in "${SERVER_NAMES[@]}"; do
        _fl_reap_server "$name" && continue
        SERVER_STOPPED[$name]=1
        kill -TERM "${SERVER_PID[$name]}" 2>/dev/null || true
    done
    deadline=$((SECONDS + 5))
    for name in "${SERVER_NAMES[@]}"; do
        while ! _fl_reap_server "$name"; do
            if ((SECONDS >= deadline)); then
                fl_warn "server $name ignored SIGTERM; killing it"
                kill -KILL "${SERVER_PID[$name]}" 2>/dev/null || true
                deadline=$((SECONDS + 5))
            fi
            sleep 0.05
        done
    done
}

# print_server_logs [LINES [NAME...]]: print the last LINES (default 100) lines of each server's
# log (all servers unless NAMEs are given) to stderr.
print_server_logs() {
    local lines=${1:-100} name
    shift || true
    (($#)) || set -- "${SERVER_NAMES[@]}"
    for name in "$@"; do
        [[ -f ${SERVER_LOG[$name]:-} ]] || continue
        printf -- '----- server %s log (%s, last %s lines) -----\n' \
            "$name" "${SERVER_LOG[$name]}" "$lines" >&2
        tail -n "$lines" "${SERVER_LOG[$name]}" >&2
        printf -- '----- end of server %s log -----\n' "$name" >&2
    done
}

# ---------------------------------------------------------------------------------------------

# _fl_json_string STR: print STR as a JSON string literal.
_fl_json_string() {
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"\n' "$s"
}

# boot_guest [OPTIONS] INITRD LOG [SOCKET...]
#   Boot the guest kernel with INITRD (from build_initramfs) on q35: 2 vCPUs, 1 GiB of shared
#   memfd-backed RAM (vfio-user servers need the fd to reach guest memory), -nodefaults, no
#   network, -no-reboot, kernel panics reboot at once (panic=-1) so QEMU exits. Each SOCKET
#   becomes a vfio-user-pci device, ids gpu0, gpu1, ... in order. The serial console is captured
#   to LOG and, unless --quiet, streamed to stdout. QEMU's stderr goes to LOG.stderr and is
#   replayed on stderr when QEMU exits (interactive mode: straight to the terminal).
#   Options:
#     --timeout SECS      kill QEMU after SECS (default 600, 0 = never; interactive default 0)
#     --interactive       console on this terminal (Ctrl-A x quits QEMU, Ctrl-A c = monitor)
#     --quiet             do not stream the console, only capture it
#     --append ARGS       extra kernel command line
#     --qemu-arg ARG      extra QEMU argument (repeatable)
#     --device-opts JSON  extra members for every vfio-user-pci device,
#                         e.g. '"x-msg-timeout":20000,"x-no-posted-writes":true'
#     --mem SIZE          guest RAM (default 1G);  --cpus N   vCPUs (default 2)
#     --private-mem       plain -m RAM, no shared memory backend (QEMU then maps guest RAM to the
#                         servers without a file descriptor: the device cannot reach it)
#   Calls choose_accel unless ACCEL_ARGS is already set.
#   Returns the guest command's status, taken from the last "$FL_EXIT_MARKER N" console line.
#   Harness failures return 124 (timeout) or 125 (anything else), with the console's tail printed
#   on stderr (unless it was just streamed to the same file as stderr).
#   GUEST_RESULT says what happened: ok, timeout, panic, no-marker, qemu-error, insmod-failed;
#   GUEST_STATUS is the status returned; GUEST_SECONDS the wall time QEMU ran (e.g. 4.12);
#   GUEST_KERNEL_ISSUES the number of kernel WARNING/BUG/Oops reports on the console (warned
#   about, but they do not change the status: callers decide).
boot_guest() {
    local timeout='' interactive=0 quiet=0 append='' devopts='' mem=1G cpus=2 arg private_mem=0
    local -a extra=()
    while (($#)); do
        case $1 in
            --timeout | --append | --qemu-arg | --device-opts | --mem | --cpus)
                (($# >= 2)) || { fl_warn "boot_guest: $1 needs a value"; return 2; } ;;
        esac
        case $1 in
            --timeout) timeout=$2; shift 2 ;;
            --interactive) interactive=1; shift ;;
            --quiet) quiet=1; shift ;;
            --private-mem) private_mem=1; shift ;;
            --append) append=$2; shift 2 ;;
            --qemu-arg) extra+=("$2"); shift 2 ;;
            --device-opts) devopts=$2; shift 2 ;;
            --mem) mem=$2; shift 2 ;;
            --cpus) cpus=$2; shift 2 ;;
            --) shift; break ;;
            -*) fl_warn "boot_guest: unknown option $1"; return 2 ;;
            *) break ;;
        esac
    done
    if (($# < 2)); then
        fl_warn "usage: boot_guest [OPTIONS] INITRD LOG [SOCKET...]"
        return 2
    fi
    local initrd=$1 log=$2 i=0 j sock qpid qst=0 start timed_out=0 deadline=0 status
    shift 2
    GUEST_RESULT='' GUEST_STATUS=125 GUEST_SECONDS='' GUEST_KERNEL_ISSUES=0
    [[ -n $timeout ]] || { if ((interactive)); then timeout=0; else timeout=600; fi; }
    [[ -f $FL_BZIMAGE && -x $FL_QEMU ]] || {
        fl_warn "QEMU or the guest kernel is not provisioned; run qemu/setup"
        return 125
    }
    [[ -f $initrd ]] || { fl_warn "initramfs not found: $initrd"; return 125; }
    if [[ -z ${ACCEL_ARGS+set} ]]; then choose_accel || return 125; fi

    # shellcheck disable=SC2054 # the commas belong to QEMU option values
    local -a cmd=("$FL_QEMU" -nodefaults -no-user-config -no-reboot
        "${ACCEL_ARGS[@]}" -smp "$cpus" -m "$mem")
    if ((private_mem)); then
        cmd+=(-machine q35)
    else
        cmd+=(-object "memory-backend-memfd,id=mem,size=$mem,share=on" -machine q35,memory-backend=mem)
    fi
    cmd+=(-kernel "$FL_BZIMAGE" -initrd "$initrd"
        -append "console=ttyS0 quiet panic=-1 ${append}")
    for sock in "$@"; do
        arg="{\"driver\":\"vfio-user-pci\",\"id\":\"gpu$i\",\"socket\":{\"type\":\"unix\",\"path\":$(_fl_json_string "$sock")}"
        [[ -z $devopts ]] || arg+=",$devopts"
        cmd+=(-device "$arg}")
        i=$((i + 1))
    done
    if ((interactive)); then
        # shellcheck disable=SC2054
        cmd+=(-display none -chardev "stdio,id=con,mux=on,signal=off,logfile=$log"
            -serial chardev:con -object monitor-hmp,id=hmp,chardev=con)
    elif ((quiet)); then
        cmd+=(-display none -chardev "file,id=con,path=$log" -serial chardev:con)
    else
        cmd+=(-display none -chardev "stdio,id=con,logfile=$log" -serial chardev:con)
    fi
    cmd+=("${extra[@]}")

    : >"$log"
    : >"$log.stderr"
    start=$(fl_now)
    if ((interactive)); then
        if ((timeout > 0)); then
            timeout --foreground -k 5 "$timeout" "${cmd[@]}" || qst=$?
            ((qst != 124)) || timed_out=1
        else
            "${cmd[@]}" || qst=$?
        fi
    else
        "${cmd[@]}" </dev/null 2>"$log.stderr" &
        qpid=$!
        FL_QEMU_PID=$qpid
        ((timeout == 0)) || deadline=$((SECONDS + timeout))
        while kill -0 "$qpid" 2>/dev/null; do
            if ((deadline && SECONDS >= deadline)); then
                timed_out=1
                kill -TERM "$qpid" 2>/dev/null || true
                for ((j = 0; j < 10; j++)); do
                    kill -0 "$qpid" 2>/dev/null || break
                    sleep 0.5
                done
                kill -KILL "$qpid" 2>/dev/null || true
                break
            fi
            _fl_watch_servers
            sleep 0.1
        done
        wait "$qpid" || qst=$?
        FL_QEMU_PID=''
        if [[ -s $log.stderr ]]; then sed 's/^/qemu: /' "$log.stderr" >&2; fi
    fi
    GUEST_SECONDS=$(fl_elapsed "$start")

    status=$(tr -d '\r' <"$log" | grep -aoE "$FL_EXIT_MARKER [0-9]+" | tail -n 1 | cut -d' ' -f2) || true
    if ((timed_out)); then
        GUEST_RESULT=timeout GUEST_STATUS=124
        fl_warn "guest timed out after $timeout s; QEMU killed"
    elif grep -aq "$FL_INSMOD_MARKER" "$log"; then
        GUEST_RESULT=insmod-failed GUEST_STATUS=125
        fl_warn "insmod /faultline.ko failed in the guest"
    elif [[ -n $status ]]; then
        GUEST_RESULT=ok GUEST_STATUS=$status
    elif grep -aq 'Kernel panic' "$log"; then
        GUEST_RESULT=panic GUEST_STATUS=125
        fl_warn "guest kernel panic"
    elif ((qst != 0)); then
        GUEST_RESULT=qemu-error GUEST_STATUS=125
        fl_warn "QEMU failed ($(_fl_describe_status "$qst"))"
    else
        GUEST_RESULT=no-marker GUEST_STATUS=125
        fl_warn "the guest stopped without printing '$FL_EXIT_MARKER <status>'"
    fi
    GUEST_KERNEL_ISSUES=$(tr -d '\r' <"$log" | grep -acE \
        '^\[ *[0-9.]+\] (WARNING:|BUG:|Oops|general protection fault|Kernel panic|INFO: task .* blocked)') || true
    if ((GUEST_KERNEL_ISSUES > 0)) && [[ $GUEST_RESULT != panic ]]; then
        fl_warn "the guest kernel reported $GUEST_KERNEL_ISSUES problem(s) (WARNING/BUG/Oops) on the console"
    fi
    # Print the console tail on failure, unless it was just streamed to the same place as stderr.
    if [[ $GUEST_RESULT != ok && -s $log ]] &&
        { ((quiet)) || ! [[ /dev/stdout -ef /dev/stderr ]]; } && ((interactive == 0)); then
        printf -- '----- guest console (%s, last 40 lines) -----\n' "$log" >&2
        tr -d '\r' <"$log" | tail -n 40 >&2
        printf -- '----- end of guest console -----\n' >&2
    fi
    return "$GUEST_STATUS"
}

# kill_guest: stop a QEMU that boot_guest started and has not reaped yet (for traps: when the
# script is interrupted, boot_guest does not get to finish). SIGTERM, then SIGKILL after 5 s.
kill_guest() {
    local pid=${FL_QEMU_PID:-} j
    [[ -n $pid ]] || return 0
    FL_QEMU_PID=''
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((j = 0; j < 50; j++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# _fl_watch_servers: warn once about any server that exits while the guest runs.
_fl_watch_servers() {
    local name
    for name in "${SERVER_NAMES[@]}"; do
        [[ -n ${SERVER_STATUS[$name]:-} ]] && continue
        if _fl_reap_server "$name"; then
            fl_warn "server $name exited while the guest was running ($(_fl_describe_status "${SERVER_STATUS[$name]}"))"
        fi
    done
}
