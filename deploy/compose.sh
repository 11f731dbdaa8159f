#!/usr/bin/env bash
# pagehint in real containers, from a machine with no Docker to a clean teardown.
#
#   deploy/compose.sh engine   install Docker's Debian packages if missing; start a
#                              daemon if none answers (vfs, no iptables, no bridge)
#   deploy/compose.sh image    build the base image from Debian's packages when no
#                              registry is reachable, the wheels, then the image
#   deploy/compose.sh up       host + 3 guests (GUESTS=N), waits for the host's health
#   deploy/compose.sh status   the host's view: resident and reported bytes per guest
#   deploy/compose.sh down     stop and remove containers, network and the RAM volume
#   deploy/compose.sh stop-engine   stop the daemon, if this script started it
#   deploy/compose.sh demo     engine, image, up, watch for DEMO_SECONDS (30), down
#   deploy/compose.sh test     engine, image, then the container tests (pytest -m docker)
#   deploy/compose.sh plan [test|demo|engine]   print what that command would change on
#                              this machine (packages, daemon) and do nothing
#
# Before `engine` (and so `demo` and `test`) installs a package or starts dockerd it
# says so, and how to skip; in a terminal (and not under CI) it then waits
# PAGEHINT_DOCKER_NOTICE_WAIT seconds (5) for a Ctrl-C. PAGEHINT_SKIP_DOCKER=1
# (`make test SKIP_DOCKER=1`) skips `engine`, `demo` and `test`: they say
# "skipped (...)" and exit 0 without touching anything.
#
# Every step is idempotent: what is already there is used, not rebuilt.
# Settings (environment): PROJECT (compose project, default pagehint), IMAGE
# (default pagehint:local), BASE (the image's base; default: python:3.11-slim if
# the engine has it or can pull it, else pagehint-base:bookworm built here),
# GUESTS (3), DEMO_SECONDS (30), PYTHON (the Python that builds wheels).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="$ROOT/build/compose"
PROJECT="${PROJECT:-pagehint}"
IMAGE="${IMAGE:-pagehint:local}"
LOCAL_BASE="pagehint-base:bookworm"
GUESTS="${GUESTS:-3}"
DEMO_SECONDS="${DEMO_SECONDS:-30}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PAGEHINT_IMAGE="$IMAGE"
# The host's metrics on any free loopback port unless told otherwise: never clash
# with something on 9100, never expose them beyond this machine.
export PAGEHINT_METRICS_PUBLISH="${PAGEHINT_METRICS_PUBLISH:-127.0.0.1:}"
mkdir -p "$STATE"

say() { printf 'compose.sh: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 1
}

# Why the engine or the image could not be made: the container tests read this and
# report themselves skipped with it, instead of passing silently.
skip_because() {
    printf '%s\n' "$*" >"$STATE/skip-reason"
    die "$*"
}

engine_answers() { docker info >/dev/null 2>&1; }

# How the daemon is started when none answers: no storage driver, firewall or
# network setup of its own to need from the machine.
DOCKERD_FLAGS=(--storage-driver=vfs --iptables=false --bridge=none)
SKIP_HOW="make test SKIP_DOCKER=1 (or PAGEHINT_SKIP_DOCKER=1 in the environment)"

# PAGEHINT_SKIP_DOCKER: 1/true/yes/on skips, empty/0/false/no/off does not.
skip_requested() {
    case "$(printf '%s' "${PAGEHINT_SKIP_DOCKER:-}" | tr '[:upper:]' '[:lower:]')" in
    1 | true | yes | on) return 0 ;;
    "" | 0 | false | no | off) return 1 ;;
    *)
        say "PAGEHINT_SKIP_DOCKER=${PAGEHINT_SKIP_DOCKER}: say 1 to skip the container step, 0 to run it"
        exit 2
        ;;
    esac
}

under_ci() { [[ -n "${CI:-}" && "${CI,,}" != false && "${CI}" != 0 ]]; }

# What `engine` would change here: NEED, the Debian packages it would install;
# START=1 if no engine answers (after installing, it starts dockerd unless one then
# answers). Looks only; changes nothing.
survey_engine() {
    NEED=()
    if ! command -v docker >/dev/null || ! command -v dockerd >/dev/null; then NEED+=(docker.io); fi
    command -v debootstrap >/dev/null || NEED+=(debootstrap)
    if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
        NEED+=(docker-compose)
    fi
    START=0
    engine_answers || START=1
}

# The notice before the machine is changed: what, and how not to. $1 says whether a
# daemon this starts is stopped at the end ("stopped" for demo and test).
notice_engine() {
    local ending="$1"
    ((${#NEED[@]} || START)) || return 0
    say "to run the container step this will change the system:"
    if ((${#NEED[@]})); then
        say "  - install Debian packages with apt-get (apt-get update; apt-get install -y): ${NEED[*]}"
    fi
    if ((START)); then
        if [[ "$ending" == stopped ]]; then
            say "  - start dockerd ${DOCKERD_FLAGS[*]} (log build/compose/dockerd.log) unless an engine then answers, and stop it when the step ends"
        else
            say "  - start dockerd ${DOCKERD_FLAGS[*]} (log build/compose/dockerd.log) unless an engine then answers; it keeps running ($0 stop-engine stops it)"
        fi
    fi
    say "to skip it: $SKIP_HOW"
}

# A moment to read the notice and Ctrl-C, for a person at a terminal (not CI).
pause_for_notice() {
    local wait="${PAGEHINT_DOCKER_NOTICE_WAIT:-5}"
    [[ -t 2 ]] && ! under_ci && [[ "$wait" =~ ^[0-9]+$ ]] && ((wait > 0)) || return 0
    say "going ahead in $wait s (Ctrl-C to stop)"
    sleep "$wait"
}

# `plan CMD`: what CMD would do to this machine, and nothing else.
cmd_plan() {
    local what="${1:-test}" ending=stopped
    case "$what" in
    test | demo) ;;
    engine) ending=running ;;
    *) die "plan: say test, demo or engine (not $what)" ;;
    esac
    if skip_requested; then
        say "plan for $what: skipped (PAGEHINT_SKIP_DOCKER=$PAGEHINT_SKIP_DOCKER): nothing installed, no daemon started"
        return 0
    fi
    survey_engine
    if ((${#NEED[@]} == 0 && START == 0)); then
        say "plan for $what: a Docker engine answers and nothing is missing: the system is not changed"
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        say "plan for $what: not root, so nothing is installed or started; missing: ${NEED[*]:-nothing}; engine answers: $( ((START)) && echo no || echo yes) (the container tests then report themselves skipped)"
        return 0
    fi
    if ((${#NEED[@]})) && ! command -v apt-get >/dev/null; then
        say "plan for $what: need ${NEED[*]} but there is no apt-get: nothing is installed (the container tests then report themselves skipped)"
        return 0
    fi
    say "plan for $what (nothing is done now):"
    notice_engine "$ending"
    if [[ -t 2 ]] && ! under_ci; then
        say "in a terminal it waits ${PAGEHINT_DOCKER_NOTICE_WAIT:-5} s after the notice (Ctrl-C to stop)"
    fi
}

# Set when this very run started the daemon: only then do test and demo stop it.
STARTED_HERE=0

# The pid in dockerd.pid, if it still names a running dockerd (pids are reused).
recorded_dockerd() {
    local pid
    [[ -f "$STATE/dockerd.pid" ]] || return 1
    pid="$(cat "$STATE/dockerd.pid")"
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]] || {
        rm -f "$STATE/dockerd.pid"
        return 1
    }
    echo "$pid"
}

compose() {
    # Compose v2 (the docker CLI plugin) when present, else Debian's v1.
    if docker compose version >/dev/null 2>&1; then
        docker compose -p "$PROJECT" -f "$ROOT/docker-compose.yml" "$@"
    else
        docker-compose -p "$PROJECT" -f "$ROOT/docker-compose.yml" "$@"
    fi
}

# $1: "stopped" when the caller stops a daemon this starts (demo, test), else "running".
cmd_engine() {
    local ending="${1:-running}"
    rm -f "$STATE/skip-reason"
    survey_engine
    local need=("${NEED[@]}") noticed=0
    if ((${#need[@]})); then
        [[ $(id -u) -eq 0 ]] || skip_because "need ${need[*]} and not root to install them"
        command -v apt-get >/dev/null || skip_because "need ${need[*]}; no apt-get here"
        notice_engine "$ending"
        noticed=1
        pause_for_notice
        say "installing ${need[*]} (Debian packages)"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            "${need[@]}"; } >"$STATE/apt.log" 2>&1; then
            skip_because "apt-get install ${need[*]} failed: $(tail -1 "$STATE/apt.log")"
        fi
    fi
    if engine_answers; then
        say "a Docker engine answers: $(docker version --format '{{.Server.Version}}')"
        recorded_dockerd >/dev/null || true # forget a stale pid file
        return 0
    fi
    if [[ -S /var/run/docker.sock && ! -w /var/run/docker.sock ]]; then
        skip_because "the Docker socket is not writable by this user (add it to the docker group)"
    fi
    [[ $(id -u) -eq 0 ]] || skip_because "no Docker engine answers and not root to start one"
    if ((!noticed)); then
        NEED=()
        START=1
        notice_engine "$ending"
        pause_for_notice
    fi
    say "starting dockerd ${DOCKERD_FLAGS[*]}"
    # setsid: the daemon outlives this script and is not killed with its terminal.
    setsid dockerd "${DOCKERD_FLAGS[@]}" >"$STATE/dockerd.log" 2>&1 </dev/null &
    echo $! >"$STATE/dockerd.pid"
    STARTED_HERE=1
    for _ in $(seq 120); do
        engine_answers && {
            say "dockerd is up (pid $(cat "$STATE/dockerd.pid"))"
            return 0
        }
        kill -0 "$(cat "$STATE/dockerd.pid")" 2>/dev/null || break
        sleep 0.5
    done
    skip_because "dockerd did not start: $(tail -1 "$STATE/dockerd.log" 2>/dev/null)"
}

cmd_stop_engine() {
    local pid
    pid="$(recorded_dockerd)" || return 0
    if kill -0 "$pid" 2>/dev/null; then
        say "stopping the dockerd this script started (pid $pid)"
        kill "$pid"
        for _ in $(seq 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/dockerd.pid"
}

# The base: a registry's python:3.11-slim when there is one, else Debian's own
# packages through debootstrap (no registry is needed).
pick_base() {
    if [[ -n "${BASE:-}" ]]; then
        echo "$BASE"
    elif docker image inspect python:3.11-slim >/dev/null 2>&1 ||
        timeout 60 docker pull -q python:3.11-slim >/dev/null 2>&1; then
        echo python:3.11-slim
    else
        echo "$LOCAL_BASE"
    fi
}

build_local_base() {
    docker image inspect "$LOCAL_BASE" >/dev/null 2>&1 && return 0
    command -v debootstrap >/dev/null || skip_because "debootstrap is missing (run: $0 engine)"
    local rootfs="$STATE/rootfs"
    rm -rf "$rootfs"
    say "building $LOCAL_BASE with debootstrap (about a minute)"
    if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" >"$STATE/debootstrap.log" 2>&1; then
        skip_because "debootstrap failed: $(tail -1 "$STATE/debootstrap.log")"
    fi
    # What a container never reads: the package cache and lists, docs, manuals, locales.
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
    tar -C "$rootfs" -c . | docker import - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs"
}

cmd_image() {
    engine_answers || skip_because "no Docker engine answers (run: $0 engine)"
    local base args=()
    base="$(pick_base)"
    if [[ "$base" == "$LOCAL_BASE" ]]; then
        # The wheels must fit the base's Python (bookworm: 3.11).
        if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            die "the offline image's base is Debian bookworm (Python 3.11): set PYTHON to a Python 3.11 to build its wheels"
        fi
        build_local_base
        # No package index inside the build: wheels made here, installed offline there.
        say "building wheels into build/wheels"
        "$PYTHON" "$ROOT/deploy/docker/requirements.py" "$ROOT/pyproject.toml" \
            >"$STATE/requirements.txt"
        if ! "$PYTHON" -m pip wheel -q -w "$ROOT/build/wheels" -r "$STATE/requirements.txt" \
            "setuptools>=77" wheel >"$STATE/wheels.log" 2>&1; then
            skip_because "pip wheel failed: $(tail -1 "$STATE/wheels.log")"
        fi
        args=(--build-arg WHEELS=build/wheels
            --build-arg "PIP_INSTALL_ARGS=--no-index --find-links /wheels")
    fi
    say "building $IMAGE on $base"
    local t0=$SECONDS
    if ! DOCKER_BUILDKIT=0 docker build -q --network host --build-arg "BASE=$base" "${args[@]}" \
        -t "$IMAGE" "$ROOT" >"$STATE/build.log" 2>&1; then
        die "docker build failed: $(grep -iE -m1 'error|invalid|denied|failed' "$STATE/build.log" || tail -1 "$STATE/build.log") (all of it: $STATE/build.log)"
    fi
    local size
    size="$(docker image inspect "$IMAGE" --format '{{.Size}}')"
    say "built $IMAGE in $((SECONDS - t0)) s: $((size / 1000000)) MB"
}

wait_healthy() {
    local id state
    for _ in $(seq 120); do
        id="$(compose ps -q host 2>/dev/null || true)"
        if [[ -n "$id" ]]; then
            state="$(docker inspect "$id" --format '{{.State.Health.Status}}' 2>/dev/null || true)"
            [[ "$state" == healthy ]] && return 0
        fi
        sleep 1
    done
    die "the host did not become healthy; see: docker logs \$(docker ps -qf label=com.docker.compose.service=host)"
}

cmd_up() {
    engine_answers || die "no Docker engine answers (run: $0 engine)"
    docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE (run: $0 image)"
    compose up -d --no-build --scale "guest=$GUESTS"
    wait_healthy
    say "host healthy, $GUESTS guests started; metrics: $(compose port host 9100)"
}

cmd_status() {
    local port
    engine_answers || die "no Docker engine answers (run: $0 engine)"
    [[ -n "$(compose ps -q host 2>/dev/null)" ]] || die "no stack is up (run: $0 up)"
    port="$(compose port host 9100 | sed 's/.*://')"
    "$PYTHON" - "$port" <<'EOF'
import re, sys, urllib.request

text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
rows: dict[str, dict[str, float]] = {}
for name, guest, value in re.findall(
    r'^pagehint_host_(resident_bytes|reported_bytes_total)\{guest="([^"]+)"\} (\S+)$', text, re.M
):
    rows.setdefault(guest, {})[name] = float(value)
print(f"{'guest':<28} {'host resident':>14} {'reported':>12}")
for guest, r in sorted(rows.items()):
    print(
        f"{guest:<28} {r.get('resident_bytes', 0) / 2**20:>10.0f} MiB"
        f" {r.get('reported_bytes_total', 0) / 2**20:>8.0f} MiB"
    )
EOF
}

cmd_down() {
    engine_answers || return 0
    compose down -v --remove-orphans --timeout 20
}

# Stop the daemon at exit only if this run started it.
stop_engine_if_started_here() { if ((STARTED_HERE)); then cmd_stop_engine; fi; }

cmd_demo() {
    cmd_engine stopped
    trap stop_engine_if_started_here EXIT
    if [[ -n "$(compose ps -q 2>/dev/null)" ]]; then
        die "a stack of project $PROJECT is already up: take it down first ($0 down) or set PROJECT"
    fi
    cmd_image
    trap 'cmd_down; stop_engine_if_started_here' EXIT
    cmd_up
    local end=$((SECONDS + DEMO_SECONDS))
    while ((SECONDS < end)); do
        sleep 5
        cmd_status
        echo
    done
    compose stop --timeout 20 guest
    say "the guests' own summaries:"
    compose logs --no-color guest | grep -E 'done:|reported|data loss' || true
}

# The test stacks' projects are phtest<pid>: take down any an interrupted run left.
down_test_stacks() {
    engine_answers || return 0
    local p
    for p in $(docker ps -a --format '{{.Label "com.docker.compose.project"}}' | grep '^phtest' | sort -u); do
        PROJECT="$p" compose down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true
    done
}

cmd_test() {
    local rc=0 answered=0
    engine_answers && answered=1
    # In a subshell: an engine that cannot run here ends it, not this script.
    if (cmd_engine stopped); then
        ((answered)) || STARTED_HERE=1
        trap 'down_test_stacks; stop_engine_if_started_here' EXIT
        trap 'exit 130' INT TERM
        (cmd_image) || rc=$?
    else
        say "container tests will report themselves skipped"
    fi
    "$PYTHON" -m pytest -q -m docker "$ROOT/tests/integration" || rc=$?
    return "$rc"
}

# The skip comes first: a skipped step touches nothing.
case "${1:-}" in
engine | demo | test)
    if skip_requested; then
        say "$1: skipped (PAGEHINT_SKIP_DOCKER=$PAGEHINT_SKIP_DOCKER): no packages installed, no daemon started, no container tests run"
        exit 0
    fi
    ;;
esac

case "${1:-}" in
plan) cmd_plan "${2:-test}" ;;
engine) cmd_engine ;;
image) cmd_image ;;
up) cmd_up ;;
status) cmd_status ;;
down) cmd_down ;;
stop-engine) cmd_stop_engine ;;
demo) cmd_demo ;;
test) cmd_test ;;
*)
    sed -n '2,/^[^#]/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
