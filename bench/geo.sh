#!/usr/bin/env bash
# Geo copy benchmark: Lifeboat's geo-sync against rclone sync, on the same repository, in one
# run; and the copy lag of geo-sync --follow while backups keep coming.
#
#   bench/geo.sh                       the repository of the benchmark images (2 GiB + 8 GiB)
#   BENCH_PROFILE=smoke bench/geo.sh   a small repository, a few minutes
#
# Measured, from a cold page cache, medians over BENCH_RUNS runs:
#   1. dir → dir: lifeboat geo-sync --to DIR vs rclone sync SOURCE DIR (a fresh target each run)
#   2. dir → S3:  the same into a local S3 server (s3s-fs on 127.0.0.1)
#   3. lag: a backup every LAG_INTERVAL seconds of a disk changing under qemu-io, with
#      geo-sync --follow running; for each point, the time from its manifest being written in
#      the source to the point being listed in the copy.
# Settings (environment): BENCH_PROFILE (full, smoke), BENCH_RUNS (3), BENCH_DIR
# (bench/work), LIFEBOAT (target/release/lifeboat), LAG_POINTS (20), LAG_INTERVAL (2).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH_PROFILE=${BENCH_PROFILE:-full}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_DIR=${BENCH_DIR:-bench/work}
LIFEBOAT=${LIFEBOAT:-target/release/lifeboat}
LAG_POINTS=${LAG_POINTS:-20}
LAG_INTERVAL=${LAG_INTERVAL:-2}
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
WORK=$BENCH_DIR/geo
RESULTS=$WORK/results.tsv
export LIFEBOAT_PASSWORD=lifeboat-bench-password

die() { echo "geo bench: $*" >&2; exit 1; }
log() { echo "geo bench: $*" >&2; }

ensure_tools() {
    command -v rclone >/dev/null || { apt-get install -y -qq rclone >/dev/null 2>&1 || die "install rclone"; }
    [ -x /usr/bin/time ] || apt-get install -y -qq time >/dev/null 2>&1
    if [ ! -x "$LIFEBOAT" ]; then cargo build --release --quiet; fi
    LIFEBOAT=$(cd "$(dirname "$LIFEBOAT")" && pwd)/$(basename "$LIFEBOAT")
    S3S=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
    [ -x "$S3S" ] || cargo install --quiet --locked s3s-fs --version =0.14.1 --features binary
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

# Runs a command from a cold cache, followed by sync, and records its seconds under key $1.
timed() {
    local key=$1
    shift
    drop_caches
    /usr/bin/time -f '%e' -o "$WORK/time" bash -c '"$@" >/dev/null 2>"$0" && sync' "$WORK/last.log" "$@" ||
        { cat "$WORK/last.log" >&2; die "failed: $*"; }
    record "$key" "$(cat "$WORK/time")"
}

record() { printf '%s\t%s\n' "$@" >>"$RESULTS"; }

median() {
    awk -F'\t' -v k="$1" '$1 == k { print $2 }' "$RESULTS" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# The source repository: the foundation benchmark's images backed up (built once).
make_source() {
    SOURCE=$WORK/source
    [ -f "$SOURCE/.done-$BENCH_PROFILE" ] && return
    rm -rf "$SOURCE"
    local images=()
    if [ "$BENCH_PROFILE" = full ]; then
        scripts/make-test-images.sh "$BENCH_DIR/images" --bench
        images=("$BENCH_DIR/images/bench-fs.raw" "$BENCH_DIR/images/bench-mixed.raw")
    else
        scripts/make-test-images.sh "$BENCH_DIR/images-test"
        images=("$BENCH_DIR/images-test/fs.raw" "$BENCH_DIR/images-test/random.raw" "$BENCH_DIR/images-test/fs.vhdx")
    fi
    "$LIFEBOAT" init --repo "$SOURCE" >/dev/null
    local number=0
    for image in "${images[@]}"; do
        number=$((number + 1))
        "$LIFEBOAT" backup --repo "$SOURCE" --vm "vm$number" "$image" >/dev/null
    done
    touch "$SOURCE/.done-$BENCH_PROFILE"
}

S3_PORT=18014
start_s3() {
    rm -rf "$WORK/s3" && mkdir -p "$WORK/s3/lifeboat"
    "$S3S" --host 127.0.0.1 --port "$S3_PORT" --access-key bench --secret-key bench-secret "$WORK/s3" >/dev/null 2>&1 &
    S3_PID=$!
    for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/$S3_PORT) 2>/dev/null && return; sleep 0.05; done
    die "s3s-fs did not start"
}
stop_s3() { kill "$S3_PID" 2>/dev/null || true; wait "$S3_PID" 2>/dev/null || true; }

export AWS_ENDPOINT=http://127.0.0.1:$S3_PORT AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret \
    AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
# rclone 1.60 refuses to start when AWS_CA_BUNDLE is set (and the server is plain HTTP).
unset AWS_CA_BUNDLE
export RCLONE_CONFIG_BENCHS3_TYPE=s3 RCLONE_CONFIG_BENCHS3_PROVIDER=Other \
    RCLONE_CONFIG_BENCHS3_ENDPOINT=http://127.0.0.1:$S3_PORT RCLONE_CONFIG_BENCHS3_ACCESS_KEY_ID=bench \
    RCLONE_CONFIG_BENCHS3_SECRET_ACCESS_KEY=bench-secret RCLONE_CONFIG_BENCHS3_REGION=us-east-1

copies() {
    local run=$1
    rm -rf "$WORK/copy-lifeboat" "$WORK/copy-rclone"
    timed dir_lifeboat_s "$LIFEBOAT" geo-sync --repo "$SOURCE" --to "$WORK/copy-lifeboat" --threads 4
    timed dir_rclone_s rclone sync --transfers 4 --checkers 8 "$SOURCE" "$WORK/copy-rclone"
    start_s3
    timed s3_lifeboat_s "$LIFEBOAT" geo-sync --repo "$SOURCE" --to "s3://lifeboat/lifeboat-$run" --threads 8
    timed s3_rclone_s rclone sync --transfers 8 --checkers 8 "$SOURCE" "benchs3:lifeboat/rclone-$run"
    stop_s3
    # Both copies hold everything: rclone's by the file count, Lifeboat's by its points.
    [ "$(find "$WORK/copy-rclone" -type f | wc -l)" -eq "$(find "$SOURCE" -type f | wc -l)" ] || die "rclone copied too little"
    [ "$(ls "$WORK/copy-lifeboat/points" | wc -l)" -eq "$(ls "$SOURCE/points" | wc -l)" ] || die "geo-sync copied too little"
    log "copy run $run/$BENCH_RUNS done"
}

# Lag of geo-sync --follow behind backups made every LAG_INTERVAL seconds; $1 is the copy
# location, $2 the directory where its points appear as files.
lag() {
    local copy=$1 points_dir=$2 name=$3
    local repo=$WORK/lag-source disk=$WORK/lag-disk.qcow2
    rm -rf "$repo" "$disk" "$WORK/lag-copy" && "$LIFEBOAT" init --repo "$repo" >/dev/null
    qemu-img create -q -f qcow2 "$disk" 1G
    qemu-io -f qcow2 -c 'write -P 1 0 256M' "$disk" >/dev/null
    "$LIFEBOAT" geo-sync --repo "$repo" --to "$copy" --follow --interval 0.2 >/dev/null 2>&1 &
    local follower=$!
    python3 - "$LIFEBOAT" "$repo" "$disk" "$points_dir" "$LAG_POINTS" "$LAG_INTERVAL" >"$WORK/lag-$name.txt" <<'PY'
import json, os, random, subprocess, sys, time
lifeboat, repo, disk, points_dir, count, interval = sys.argv[1:7]
rng = random.Random(7)
for _ in range(int(count)):
    started = time.time()
    # About 4 MiB of new data per point, 4 KiB at a time, as a busy VM writes.
    commands = "\n".join(f"write -P {rng.randrange(1, 255)} {rng.randrange(0, 1 << 30, 4096)} 4k" for _ in range(1000))
    subprocess.run(["qemu-io", "-f", "qcow2", disk], input=commands.encode(), stdout=subprocess.DEVNULL, check=True)
    out = subprocess.run([lifeboat, "backup", "--json", "--repo", repo, "--vm", "lag", disk], capture_output=True, check=True)
    point = json.loads(out.stdout)["point"]
    # The point exists from the moment its manifest is written in the source.
    committed = os.stat(os.path.join(repo, "points", point)).st_mtime
    while not os.path.exists(os.path.join(points_dir, point)):
        if time.time() - committed > 120:
            sys.exit(f"point {point} never reached the copy")
        time.sleep(0.005)
    print(f"{time.time() - committed:.3f}", flush=True)
    time.sleep(max(0.0, float(interval) - (time.time() - started)))
PY
    kill "$follower" 2>/dev/null || true
    wait "$follower" 2>/dev/null || true
    sort -g "$WORK/lag-$name.txt" | awk '{ v[NR] = $1 } END { printf "%s\t%s\t%s\n", v[int((NR + 1) / 2)], v[int(NR * 0.9 + 0.5)], v[NR] }'
}

main() {
    ensure_tools
    mkdir -p "$WORK"
    : >"$RESULTS"
    make_source
    local bytes
    bytes=$(du -sb --exclude=.done-* "$SOURCE" | cut -f1)
    for run in $(seq "$BENCH_RUNS"); do copies "$run"; done
    log "measuring lag dir → dir"
    local lag_dir
    lag_dir=$(lag "$WORK/lag-copy" "$WORK/lag-copy/points" dir)
    log "measuring lag dir → S3"
    start_s3
    local lag_s3
    lag_s3=$(lag "s3://lifeboat/lag" "$WORK/s3/lifeboat/lag/points" s3)
    stop_s3
    mkdir -p "$ROOT/bench/results"
    {
        echo "# Geo copy: Lifeboat geo-sync and rclone sync"
        echo
        echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); profile $BENCH_PROFILE; $BENCH_RUNS runs, medians"
        echo "- Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
        echo "- Versions: $("$LIFEBOAT" --version), $(rclone version | head -1), s3s-fs 0.14.1 on 127.0.0.1"
        echo "- Source repository: $(awk -v b="$bytes" 'BEGIN { printf "%.2f GiB", b / 2^30 }') (the foundation benchmark's images backed up)"
        echo "- rclone sync copies the repository's files; Lifeboat geo-sync copies whole points in commit order and checks every pack's hash"
        echo
        echo "| Copy | Lifeboat (s) | rclone (s) | Lifeboat (MiB/s) | rclone (MiB/s) | Lifeboat/rclone throughput |"
        echo "|---|---:|---:|---:|---:|---:|"
        for target in dir s3; do
            local ours theirs
            ours=$(median "${target}_lifeboat_s")
            theirs=$(median "${target}_rclone_s")
            awk -v t="$target" -v a="$ours" -v b="$theirs" -v n="$bytes" 'BEGIN {
                printf "| dir → %s | %.2f | %.2f | %.1f | %.1f | %.2f |\n", (t == "dir" ? "dir" : "S3"), a, b, n / a / 2^20, n / b / 2^20, b / a }'
        done
        echo
        echo "## Copy lag at a steady backup rate"
        echo
        echo "A backup every $LAG_INTERVAL s of a qcow2 disk with about 4 MiB of new data each time, geo-sync --follow running;"
        echo "lag = from the point's manifest being written in the source to the point being listed in the copy ($LAG_POINTS points)."
        echo
        echo "| Copy | median (s) | p90 (s) | max (s) |"
        echo "|---|---:|---:|---:|"
        echo "$lag_dir" | awk -F'\t' '{ printf "| dir → dir | %s | %s | %s |\n", $1, $2, $3 }'
        echo "$lag_s3" | awk -F'\t' '{ printf "| dir → S3 | %s | %s | %s |\n", $1, $2, $3 }'
    } | tee "$ROOT/bench/results/geo-latest.md"
}

main "$@"
