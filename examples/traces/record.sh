#!/usr/bin/env bash
# Record the kernel's page allocator events of one command, as ftrace prints them.
#
#   sudo examples/traces/record.sh OUT.trace COMMAND [ARG...]
#
# Needs root and tracefs. Only the command and its children are traced
# (set_event_pid + event-fork); every setting it changes is put back as it was,
# and tracefs is unmounted again if this script mounted it.
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 OUT.trace COMMAND [ARG...]" >&2; exit 2; }
out="$1"; shift
T=/sys/kernel/tracing
mounted=0
if [[ ! -e $T/trace ]]; then mount -t tracefs nodev "$T"; mounted=1; fi
events=(kmem/mm_page_alloc kmem/mm_page_free kmem/mm_page_free_batched)
old_kb="$(sed 's/ .*//' "$T/buffer_size_kb")"
old_on="$(cat "$T/tracing_on")"
old_fork="$(cat "$T/options/event-fork")"
restore() {
    for e in "${events[@]}"; do echo 0 >"$T/events/$e/enable"; done
    echo >"$T/set_event_pid"
    echo "$old_fork" >"$T/options/event-fork"
    echo "$old_kb" >"$T/buffer_size_kb"
    echo "$old_on" >"$T/tracing_on"
    if ((mounted)); then umount "$T"; fi
}
trap restore EXIT
echo 65536 >"$T/buffer_size_kb"
echo >"$T/trace"
echo 1 >"$T/options/event-fork"
# A shell that waits for the go, so its pid is filtered before the command runs.
bash -c 'read -r _; exec "$@"' traced "$@" < <(sleep 0.2; echo go) &
pid=$!
echo "$pid" >"$T/set_event_pid"
for e in "${events[@]}"; do echo 1 >"$T/events/$e/enable"; done
echo 1 >"$T/tracing_on"
wait "$pid"
echo 0 >"$T/tracing_on"
cat "$T/trace" >"$out"
echo "recorded $(grep -c ': mm_page_' "$out") events to $out" >&2
