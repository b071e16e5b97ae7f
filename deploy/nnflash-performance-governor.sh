#!/bin/sh
# nnflash-performance-governor: put every cpufreq policy on the `performance` governor, so that
# latency measurements run at a fixed, maximal requested clock (see deploy/README.md).
#
#   nnflash-performance-governor           set performance on every policy (needs root)
#   nnflash-performance-governor --check   only report the current governors (any user)
#
# Exit status: 0 every policy is (now) on performance; 1 a policy is not, a write failed, not
# root, or no cpufreq; 2 bad usage.
#
# Installed by hand (deploy/README.md):
#   sudo install -m 0755 nnflash-performance-governor.sh /usr/local/sbin/nnflash-performance-governor
#
# NNFLASH_CPUFREQ_DIR overrides /sys/devices/system/cpu/cpufreq (for testing with a fake tree).

set -u

GOVERNOR=performance
CPUFREQ_DIR=${NNFLASH_CPUFREQ_DIR:-/sys/devices/system/cpu/cpufreq}
PROG=nnflash-performance-governor

usage() {
    echo "usage: $PROG [--check]" >&2
    echo "  (no option)  set the '$GOVERNOR' governor on every cpufreq policy (run as root)" >&2
    echo "  --check      only report the current governors; exit 1 unless all are '$GOVERNOR'" >&2
}

die() {
    echo "$PROG: error: $*" >&2
    exit 1
}

check_only=0
case $# in
    0) ;;
    1)
        case $1 in
            --check) check_only=1 ;;
            -h | --help) usage; exit 0 ;;
            *) usage; exit 2 ;;
        esac
        ;;
    *) usage; exit 2 ;;
esac

# The policies that have a governor file. An unmatched glob stays literal: test for the file.
found=0
for gov_file in "$CPUFREQ_DIR"/policy*/scaling_governor; do
    [ -f "$gov_file" ] && found=1 && break
done
if [ "$found" -eq 0 ]; then
    die "no cpufreq policies under $CPUFREQ_DIR (no CPU frequency scaling here: a container," \
        "a VM, or a kernel without cpufreq); nothing to set"
fi

if [ "$check_only" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    die "must run as root to change the governor (try: sudo $0); use --check to only report"
fi

status=0
for gov_file in "$CPUFREQ_DIR"/policy*/scaling_governor; do
    [ -f "$gov_file" ] || continue
    dir=${gov_file%/scaling_governor}
    name=${dir##*/}
    cpus=$(cat "$dir/related_cpus" 2>/dev/null || echo "?")
    current=$(cat "$gov_file" 2>/dev/null) || current="?"
    cur_khz=$(cat "$dir/scaling_cur_freq" 2>/dev/null || echo "?")
    max_khz=$(cat "$dir/scaling_max_freq" 2>/dev/null || echo "?")

    if [ "$check_only" -eq 1 ]; then
        echo "$name (cpus $cpus): governor $current, requested $cur_khz kHz (max $max_khz kHz)"
        [ "$current" = "$GOVERNOR" ] || status=1
        continue
    fi

    if [ "$current" = "$GOVERNOR" ]; then
        echo "$name (cpus $cpus): already $GOVERNOR"
        continue
    fi
    available=$(cat "$dir/scaling_available_governors" 2>/dev/null || echo "")
    case " $available " in
        *" $GOVERNOR "*) ;;
        *)
            if [ -n "$available" ]; then
                echo "$PROG: error: $name: governor '$GOVERNOR' not offered (available: $available)" >&2
                status=1
                continue
            fi
            ;;
    esac
    # The redirection's own error (EACCES, EINVAL) is reported below, not by the shell.
    if ! { printf '%s\n' "$GOVERNOR" > "$gov_file"; } 2>/dev/null; then
        echo "$PROG: error: $name: cannot write $gov_file" >&2
        status=1
        continue
    fi
    now=$(cat "$gov_file" 2>/dev/null) || now="?"
    if [ "$now" = "$GOVERNOR" ]; then
        echo "$name (cpus $cpus): $current -> $GOVERNOR"
    else
        echo "$PROG: error: $name: wrote '$GOVERNOR' but the governor reads '$now'" >&2
        status=1
    fi
done
exit "$status"
