#!/usr/bin/env bash
# Continuous replication benchmark: RPO under sustained churn, and what the capture path
# costs a writer.
#
#   bench/replication.sh                       everything (about 15 minutes)
#   BENCH_SECONDS=20 bench/replication.sh      shorter churn runs
#   BENCH_PARTS="overhead" bench/replication.sh   only some parts (churn, hotspot, overhead)
#
# 1. Churn. One VM's raw disk is protected (`lifeboat protect --interval 1`, shipping into
#    a local encrypted recovery repository) while `lifeboat receive --follow` makes points
#    from the cuts. fio writes random 64 KiB blocks through the NBD export at a fixed rate
#    (50, 100, 200 MiB/s, queue depth 4) for BENCH_SECONDS. Every 0.25 s the RPO is sampled:
#    now minus the time up to which the recovery region holds a point with every write
#    (the receiver's sealed_time). Reported: RPO p50/p99/max, the writes and bytes pending
#    when each cut was taken, and the rate fio sustained.
# 2. Journal or cut. The same at 100 MiB/s with a hot-spot workload (zipf 1.2: a few
#    blocks written again and again), shipping every write as journaled
#    (--ship-every-write) or each cut's end state (the default): bytes shipped and RPO.
# 3. Capture overhead. Writes (4 KiB at queue depth 1: latency; 64 KiB at queue depth 8:
#    throughput) to the same preallocated raw image: directly, through qemu-nbd (an NBD
#    export without capture; with qemu-img bench also with --cache=none), through `lifeboat protect` (capture, journal and shipping
#    running), and through protect with shipping paused (capture alone). Twice: fio random
#    writes (psync / io_uring buffered directly, libnbd through the exports), and
#    qemu-img bench sequential writes through qemu's block layer, what a VM's disk does
#    (directly both with cache=writeback and with cache=none, aio=native), each measured
#    after an unmeasured first pass. Medians of BENCH_RUNS.
#
# The recovery repository and the receiver share this machine (2 cores), so the RPO
# figures include their CPU cost; in production the receiver runs in another region.
# Results: stdout and bench/results/replication.md.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
LIFEBOAT=${LIFEBOAT:-target/release/lifeboat}
BENCH_DIR=${BENCH_DIR:-bench/work/replication}
BENCH_SECONDS=${BENCH_SECONDS:-60}
BENCH_RUNS=${BENCH_RUNS:-3}
RATES=${BENCH_RATES:-"50 100 200"}
PARTS=${BENCH_PARTS:-"churn hotspot overhead"}
RESULTS=$ROOT/bench/results/replication.md
export LIFEBOAT_PASSWORD=lifeboat-bench-password

log() { echo "bench: $*" >&2; }
die() {
    echo "bench: $*" >&2
    exit 1
}

for tool in fio qemu-img qemu-nbd python3; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install fio qemu-utils python3)"
done
fio --enghelp 2>/dev/null | grep -qw nbd || die "this fio has no nbd engine"
if [ ! -x "$LIFEBOAT" ]; then
    cargo build --release --locked
fi
LIFEBOAT=$(realpath "$LIFEBOAT")
mkdir -p "$BENCH_DIR" "$(dirname "$RESULTS")"
BENCH_DIR=$(realpath "$BENCH_DIR")

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

wait_for() { # FILE SECONDS
    local i=0
    while [ ! -e "$1" ]; do
        sleep 0.1
        i=$((i + 1))
        [ $i -lt $(($2 * 10)) ] || die "$1 never appeared"
    done
}

# churn NAME RATE_MIB FIO_EXTRA PROTECT_EXTRA: one protected VM under fio churn.
churn() {
    local name=$1 rate=$2 fio_extra=$3 protect_extra=$4
    local dir=$BENCH_DIR/$name
    rm -rf "$dir"
    mkdir -p "$dir"
    "$LIFEBOAT" --repo "$dir/recovery" init >/dev/null 2>&1
    qemu-img create -q -f raw "$dir/vm.raw" 4G
    # shellcheck disable=SC2086
    "$LIFEBOAT" --repo "$dir/recovery" --json protect --group bench --vm "vm=$dir/vm.raw" \
        --socket "$dir/nbd.sock" --interval 1 $protect_extra >"$dir/ship.jsonl" 2>"$dir/protect.log" &
    local protect=$!
    PIDS+=("$protect")
    wait_for "$dir/nbd.sock" 30
    "$LIFEBOAT" --repo "$dir/recovery" --json receive --group bench --replicas "$dir/replicas" \
        --follow --interval 0.2 >"$dir/receive.jsonl" 2>"$dir/receive.log" &
    local receive=$!
    PIDS+=("$receive")
    wait_for "$dir/replicas/state.json" 60
    python3 "$ROOT/bench/replication_stats.py" sample "$dir/replicas/state.json" "$dir/rpo.tsv" &
    local sampler=$!
    PIDS+=("$sampler")
    log "$name: fio at $rate MiB/s for $BENCH_SECONDS s"
    # shellcheck disable=SC2086
    fio --name=churn --ioengine=nbd --uri="nbd+unix:///vm/vm.raw?socket=$dir/nbd.sock" \
        --rw=randwrite --bs=64k --iodepth=4 --rate="${rate}m" --size=4g \
        --time_based --runtime="$BENCH_SECONDS" --randseed=42 $fio_extra \
        --output-format=json --output="$dir/fio.json" >/dev/null
    date +%s.%N >"$dir/fio-end"
    sleep 3
    kill "$sampler" "$protect" "$receive" 2>/dev/null || true
    wait "$sampler" "$protect" "$receive" 2>/dev/null || true
    python3 "$ROOT/bench/replication_stats.py" churn "$dir" "$name" "$rate" >>"$BENCH_DIR/churn.tsv"
    # Keep the logs; the disks and repository take gigabytes.
    rm -rf "$dir/vm.raw" "$dir/replicas"/*/*.raw "$dir/recovery"
}

# fio_run NAME ENGINE_ARGS: one fio write job against an image, JSON to NAME.json.
fio_run() {
    local out=$1
    shift
    fio --name=w --rw=randwrite --size=4g --time_based --runtime=15 --randseed=7 \
        --output-format=json --output="$out" "$@" >/dev/null
}

# qemu_bench KIND BS DEPTH TARGET QEMU_IMG_ARGS: qemu-img bench writes (what a VM's block
# layer does) to TARGET, one line of vm-overhead.tsv.
qemu_bench() {
    local kind=$1 bs=$2 depth=$3 target=$4
    shift 4
    local count=$((depth == 1 ? 100000 : 40000)) seconds
    # One pass first, not measured: the steady state of a disk that has been written for
    # a while (the image in the page cache; the capture's payload memory allocated and the
    # shipper caught up), the same for every path.
    qemu-img bench -w -f raw -c "$count" -d "$depth" -s "$bs" "$@" "$target" >/dev/null
    sync
    [[ "$kind" != lifeboat* ]] || sleep 5
    seconds=$(qemu-img bench -w -f raw -c "$count" -d "$depth" -s "$bs" "$@" "$target" |
        sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
    [ -n "$seconds" ] || die "qemu-img bench on $target printed no time"
    printf '%s\t%s\t%s\t%s\t%s\n' "$kind" "$bs" "$depth" "$count" "$seconds" >>"$BENCH_DIR/vm-overhead.tsv"
}

# start_target KIND INTERVAL: serves the overhead image as KIND (qemu-nbd, or lifeboat
# protect shipping every INTERVAL seconds); sets URI and SERVER.
start_target() {
    local kind=$1 interval=$2 dir=$BENCH_DIR/overhead
    sync
    if [[ "$kind" == qemu-nbd* ]]; then
        local cache=writeback aio=threads
        [ "$kind" = qemu-nbd ] || cache=none aio=native
        qemu-nbd -f raw -t --shared=8 -k "$dir/server.sock" --cache=$cache --aio=$aio -x vm "$dir/vm.raw" &
        SERVER=$!
        URI="nbd+unix:///vm?socket=$dir/server.sock"
    else
        rm -f "$dir/vm.raw.lifeboat-dirty"
        "$LIFEBOAT" --repo "$dir/recovery" init >/dev/null 2>&1
        "$LIFEBOAT" --repo "$dir/recovery" protect --group overhead --vm "vm=$dir/vm.raw" \
            --socket "$dir/server.sock" --interval "$interval" >/dev/null 2>"$dir/protect.log" &
        SERVER=$!
        URI="nbd+unix:///vm/vm.raw?socket=$dir/server.sock"
    fi
    PIDS+=("$SERVER")
    wait_for "$dir/server.sock" 30
    # Let the initial sync of the preallocated (all zero) image go by.
    [[ "$kind" == qemu-nbd* ]] || sleep 2
}

stop_target() {
    local dir=$BENCH_DIR/overhead
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    rm -rf "$dir/server.sock" "$dir/recovery"
}

# Capture overhead: the same writes directly to the image and through each export, with
# fio (engines psync/io_uring and libnbd) and with qemu-img bench (qemu's block layer).
overhead() {
    local dir=$BENCH_DIR/overhead
    rm -rf "$dir"
    mkdir -p "$dir"
    qemu-img create -q -f raw -o preallocation=falloc "$dir/vm.raw" 4G
    : >"$BENCH_DIR/overhead.tsv"
    : >"$BENCH_DIR/vm-overhead.tsv"
    for run in $(seq 1 "$BENCH_RUNS"); do
        for shape in "4k 1" "64k 8"; do
            set -- $shape
            local bs=$1 depth=$2
            log "overhead run $run: $bs at queue depth $depth"
            sync
            if [ "$depth" = 1 ]; then
                fio_run "$dir/direct.json" --filename="$dir/vm.raw" --ioengine=psync --bs="$bs"
            else
                fio_run "$dir/direct.json" --filename="$dir/vm.raw" --ioengine=io_uring --bs="$bs" --iodepth="$depth"
            fi
            python3 "$ROOT/bench/replication_stats.py" fio direct "$bs" "$depth" "$dir/direct.json" >>"$BENCH_DIR/overhead.tsv"
            sync
            qemu_bench direct "$bs" "$depth" "$dir/vm.raw" -t writeback
            sync
            qemu_bench direct-cache-none "$bs" "$depth" "$dir/vm.raw" -t none -i native

            # qemu-nbd (an export without capture), also writing the image with O_DIRECT
            # (qemu-img bench only: what an NBD export writing like cache=none reaches);
            # capture with shipping running every second; capture alone (the first cut
            # ships the initial sync; the next is an hour away).
            for mode in "qemu-nbd 0" "qemu-nbd-cache-none 0" "lifeboat 1" "lifeboat-capture 3600"; do
                set -- $mode
                local kind=$1
                start_target "$kind" "$2"
                if [ "$kind" != qemu-nbd-cache-none ]; then
                    fio_run "$dir/$kind.json" --ioengine=nbd --uri="$URI" --bs="$bs" --iodepth="$depth"
                    python3 "$ROOT/bench/replication_stats.py" fio "$kind" "$bs" "$depth" "$dir/$kind.json" >>"$BENCH_DIR/overhead.tsv"
                fi
                qemu_bench "$kind" "$bs" "$depth" "$URI"
                stop_target
            done
        done
    done
}

[ -e "$BENCH_DIR/churn.tsv" ] && [[ " $PARTS " != *" churn "* ]] || : >"$BENCH_DIR/churn.tsv"
if [[ " $PARTS " == *" churn "* ]]; then
    for rate in $RATES; do
        churn "churn-$rate" "$rate" "" ""
    done
fi
if [[ " $PARTS " == *" hotspot "* ]]; then
    churn "hotspot-cut" 100 "--random_distribution=zipf:1.2" ""
    churn "hotspot-journal" 100 "--random_distribution=zipf:1.2" "--ship-every-write"
fi
if [[ " $PARTS " == *" overhead "* ]]; then
    overhead
fi

{
    echo "# Replication benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)," \
        "lifeboat $("$LIFEBOAT" --version | awk '{print $2}'), $(fio --version), $(qemu-nbd --version | head -1)"
    echo
    python3 "$ROOT/bench/replication_stats.py" report "$BENCH_DIR/churn.tsv" "$BENCH_DIR/overhead.tsv" "$BENCH_DIR/vm-overhead.tsv"
} | tee "$RESULTS"
