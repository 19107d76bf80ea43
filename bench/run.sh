#!/usr/bin/env bash
# Side-by-side benchmark of Lifeboat, restic and borg on the same disk images.
#
#   bench/run.sh                          the 2 GiB ext4 and 8 GiB mixed images (long)
#   BENCH_PROFILE=smoke BENCH_RUNS=1 bench/run.sh   small images, a few minutes
#
# For every image and every tool, each repetition measures, from a cold page cache:
#   1. a full backup into a fresh encrypted repository,
#   2. an incremental backup after 1 % of the image was overwritten in place with random
#      4 KiB blocks (the same offsets and bytes for every tool),
#   3. a restore of the latest backup into an empty directory, checked bit for bit,
#   4. the repository's size after each backup.
# Wall-clock seconds and peak RSS come from /usr/bin/time; every measured step ends with
# `sync`, so data a tool left in the page cache is counted as written. The report gives
# medians over the repetitions and goes to stdout and bench/results/latest.md.
#
# Settings (environment):
#   BENCH_PROFILE  full (default) or smoke
#   BENCH_RUNS     repetitions per measurement (default 3)
#   BENCH_DIR      work directory for images and repositories (default bench/work)
#   LIFEBOAT       the lifeboat binary (default target/release/lifeboat, built if missing)
#   BENCH_SEED     seed of the random writes (default 4242)
#
# Tool settings, all encrypted:
#   lifeboat  default repository: AES-256-GCM, 64 KiB chunks compressed in groups of up to 2 MiB, zstd level 3
#   restic    repository version 2, --compression auto (zstd)
#   borg      repokey encryption, --compression lz4 (borg's default compression)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

BENCH_PROFILE=${BENCH_PROFILE:-full}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_DIR=${BENCH_DIR:-bench/work}
BENCH_SEED=${BENCH_SEED:-4242}
LIFEBOAT=${LIFEBOAT:-target/release/lifeboat}
RESULTS_DIR=$ROOT/bench/results
TOOLS=(lifeboat restic borg)

mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
RAW_RESULTS=$BENCH_DIR/results.tsv

export LIFEBOAT_PASSWORD=lifeboat-bench-password
export RESTIC_PASSWORD=$LIFEBOAT_PASSWORD
export BORG_PASSPHRASE=$LIFEBOAT_PASSWORD

die() {
    echo "bench: $*" >&2
    exit 1
}

log() {
    echo "bench: $*" >&2
}

# ---------------------------------------------------------------------------------------
# Tools and machine
# ---------------------------------------------------------------------------------------

# Installs restic, borg and GNU time from Debian packages if any is missing.
ensure_tools() {
    local missing=()
    command -v restic >/dev/null || missing+=(restic)
    command -v borg >/dev/null || missing+=(borgbackup)
    [ -x /usr/bin/time ] || missing+=(time)
    command -v python3 >/dev/null || missing+=(python3)
    command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
    [ ${#missing[@]} -eq 0 ] && return
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]})"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
        die "cannot install ${missing[*]}"
}

# Builds Lifeboat if its binary is missing, and makes its path absolute.
ensure_lifeboat() {
    if [ ! -x "$LIFEBOAT" ]; then
        [ "$LIFEBOAT" = target/release/lifeboat ] || die "no lifeboat binary at $LIFEBOAT"
        log "building lifeboat"
        cargo build --release --quiet
    fi
    LIFEBOAT=$(cd "$(dirname "$LIFEBOAT")" && pwd)/$(basename "$LIFEBOAT")
}

# Empties the page cache so the next step reads from disk (ignored where not allowed).
CACHE_DROPS=yes
drop_caches() {
    sync
    if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
        CACHE_DROPS=no
    fi
}

# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------

# Copies real files from system directories into $1, up to $2 MiB in all.
collect_files() {
    local into=$1 limit_bytes=$(($2 << 20))
    shift 2
    mkdir -p "$into"
    { find "$@" -xdev -type f -readable -size -8M -printf '%s %p\n' 2>/dev/null || true; } |
        awk -v limit="$limit_bytes" '{ total += $1; if (total > limit) exit; sub(/^[0-9]+ /, ""); print }' |
        tar -cf - --files-from=- 2>/dev/null | tar -xf - -C "$into"
}

# The smoke profile's images, laid out like the benchmark's at a smaller scale:
# smoke-fs.raw, a 256 MiB ext4 filesystem with real files, and smoke-mixed.raw, 512 MiB of
# that filesystem, random data, repeated blocks, written zeros and sparse holes.
make_smoke_images() {
    local dir=$1
    mkdir -p "$dir"
    [ -f "$dir/.done-smoke" ] && return
    rm -rf "$dir/files" "$dir"/smoke-*.raw
    collect_files "$dir/files" 150 /usr/share/doc /usr/lib/python3 /usr/lib/python3.11 \
        /usr/share/perl /usr/share/man /usr/share/locale
    mkfs.ext4 -q -F -L lifeboat-smoke -d "$dir/files" "$dir/smoke-fs.raw" 256M >/dev/null
    rm -rf "$dir/files"
    local mixed=$dir/smoke-mixed.raw
    truncate -s 512M "$mixed"
    dd if="$dir/smoke-fs.raw" of="$mixed" bs=4M conv=notrunc,sparse status=none   #   0-256 MiB
    head -c $((64 << 20)) /dev/urandom | dd of="$mixed" bs=4M seek=64 conv=notrunc status=none
    head -c $((1 << 20)) /dev/urandom >"$dir/block"                                # 320-352 MiB
    for _ in $(seq 32); do cat "$dir/block"; done |
        dd of="$mixed" bs=4M seek=80 iflag=fullblock conv=notrunc status=none
    rm -f "$dir/block"
    dd if=/dev/zero of="$mixed" bs=4M seek=88 count=8 conv=notrunc status=none     # 352-384 MiB
    # 384-416 MiB stays a hole.
    head -c $((32 << 20)) /dev/urandom | dd of="$mixed" bs=4M seek=104 iflag=fullblock \
        conv=notrunc status=none                                                    # 416-448 MiB
    # 448-512 MiB stays a hole.
    touch "$dir/.done-smoke"
}

# Builds the images of the chosen profile and sets IMAGES to their paths.
prepare_images() {
    local dir
    case $BENCH_PROFILE in
    full)
        dir=$BENCH_DIR/images
        log "building the benchmark images in $dir (once)"
        scripts/make-test-images.sh "$dir" --bench
        IMAGES=("$dir/bench-fs.raw" "$dir/bench-mixed.raw")
        ;;
    smoke)
        dir=$BENCH_DIR/images-smoke
        make_smoke_images "$dir"
        IMAGES=("$dir/smoke-fs.raw" "$dir/smoke-mixed.raw")
        ;;
    *) die "BENCH_PROFILE must be full or smoke, not '$BENCH_PROFILE'" ;;
    esac
}

# Writes $2, the random writes for an image of $1 bytes: 1 % of its 4 KiB blocks, picked
# and filled by a generator with a fixed seed, as (8-byte offset, 4096 bytes) records.
make_changes() {
    python3 - "$1" "$2" "$BENCH_SEED" <<'PY'
import random, struct, sys
size, out, seed = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
block = 4096
rng = random.Random(seed)
blocks = sorted(rng.sample(range(size // block), max(1, size // block // 100)))
with open(out, "wb") as f:
    for b in blocks:
        f.write(struct.pack("<Q", b * block))
        f.write(rng.randbytes(block))
PY
}

# Applies the random writes in $2 to image $1 in place (same file, no truncation).
apply_changes() {
    python3 - "$1" "$2" <<'PY'
import os, struct, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
with open(sys.argv[2], "rb") as changes:
    while header := changes.read(8):
        (offset,) = struct.unpack("<Q", header)
        os.pwrite(fd, changes.read(4096), offset)
os.fsync(fd)
os.close(fd)
PY
}

# Copies image $1 to $2 keeping its layout: holes stay holes, written zeros stay written
# (cp would turn written zeros into holes).
copy_image() {
    python3 - "$1" "$2" <<'PY'
import os, sys
source = os.open(sys.argv[1], os.O_RDONLY)
target = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
size = os.fstat(source).st_size
os.ftruncate(target, size)
offset = 0
while offset < size:
    try:
        start = os.lseek(source, offset, os.SEEK_DATA)
    except OSError:
        break
    end = os.lseek(source, start, os.SEEK_HOLE)
    while start < end:
        data = os.pread(source, min(8 << 20, end - start), start)
        os.pwrite(target, data, start)
        start += len(data)
    offset = end
os.fsync(target)
PY
}

# ---------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------

# Runs a command in directory $2 from a cold cache, followed by sync, and sets SECONDS_TAKEN
# and PEAK_RSS_KIB. Output goes to log file $1; a failure shows it and stops the benchmark.
measure() {
    local log_file=$1 directory=$2
    shift 2
    drop_caches
    if ! /usr/bin/time -f '%e %M' -o "$log_file.time" \
        bash -c 'cd "$1" && shift && "$@" && sync' _ "$directory" "$@" >"$log_file" 2>&1; then
        tail -n 30 "$log_file" >&2
        die "failed: $* (log: $log_file)"
    fi
    read -r SECONDS_TAKEN PEAK_RSS_KIB <"$log_file.time"
}

# Records one measured value: image, tool, metric, value.
record() {
    printf '%s\t%s\t%s\t%s\n' "$@" >>"$RAW_RESULTS"
}

# Fails loudly unless restored file $2 equals the backed-up image $1 bit for bit.
check_restore() {
    local original=$1 restored=$2 tool=$3
    [ -n "$restored" ] && [ -f "$restored" ] || die "$tool restored no disk.raw"
    cmp "$original" "$restored" >/dev/null ||
        die "$tool restored an image that differs from the backup source ($restored)"
}

# Each tool's commands. The *_command functions set COMMAND for a measured step; every
# step runs with the run directory (which holds disk.raw) as its working directory, except
# restores, which run in the empty target directory.
init_repository() {
    local tool=$1 repo=$2
    case $tool in
    lifeboat) "$LIFEBOAT" init --repo "$repo" ;;
    restic) restic init --repo "$repo" --repository-version 2 ;;
    borg) borg init --encryption repokey "$repo" ;;
    esac
}

backup_command() {
    local tool=$1 repo=$2 label=$3
    case $tool in
    lifeboat) COMMAND=("$LIFEBOAT" backup --repo "$repo" --vm bench disk.raw) ;;
    restic) COMMAND=(restic backup --repo "$repo" --compression auto disk.raw) ;;
    borg) COMMAND=(borg create --compression lz4 "$repo::$label" disk.raw) ;;
    esac
}

restore_command() {
    local tool=$1 repo=$2 target=$3
    case $tool in
    lifeboat) COMMAND=("$LIFEBOAT" restore latest --repo "$repo" --vm bench --target "$target") ;;
    restic) COMMAND=(restic restore latest --repo "$repo" --target "$target") ;;
    borg) COMMAND=(borg extract "$repo::incremental") ;;
    esac
}

# One repetition of all four measurements for one tool on one image.
bench_tool() {
    local image=$1 tool=$2 changes=$3 run=$4
    local name
    name=$(basename "$image" .raw)
    local dir=$BENCH_DIR/run/$name-$tool-$run
    local repo=$dir/repo target=$dir/restored
    rm -rf "$dir"
    mkdir -p "$dir" "$target"
    # Caches and configuration stay inside the run directory, removed after the run.
    export RESTIC_CACHE_DIR=$dir/restic-cache BORG_BASE_DIR=$dir/borg-base
    copy_image "$image" "$dir/disk.raw"
    init_repository "$tool" "$repo" >"$dir/init.log" 2>&1 ||
        { cat "$dir/init.log" >&2; die "$tool init failed"; }

    # 1. Full backup into the fresh repository.
    backup_command "$tool" "$repo" full
    measure "$dir/full.log" "$dir" "${COMMAND[@]}"
    record "$name" "$tool" full_s "$SECONDS_TAKEN"
    record "$name" "$tool" full_rss_kib "$PEAK_RSS_KIB"
    local repo_full_bytes
    repo_full_bytes=$(du -sb "$repo" | cut -f1)
    record "$name" "$tool" repo_full_b "$repo_full_bytes"

    # 2. Incremental backup of the same path after the random writes.
    apply_changes "$dir/disk.raw" "$changes"
    backup_command "$tool" "$repo" incremental
    measure "$dir/incremental.log" "$dir" "${COMMAND[@]}"
    record "$name" "$tool" incr_s "$SECONDS_TAKEN"
    record "$name" "$tool" incr_rss_kib "$PEAK_RSS_KIB"
    local repo_incremental_bytes
    repo_incremental_bytes=$(du -sb "$repo" | cut -f1)
    record "$name" "$tool" repo_incr_b "$repo_incremental_bytes"
    record "$name" "$tool" repo_added_b $((repo_incremental_bytes - repo_full_bytes))

    # 3. Restore of the latest backup into an empty directory (borg extracts into its
    # working directory), then a bit-for-bit check against the image backed up.
    restore_command "$tool" "$repo" "$target"
    measure "$dir/restore.log" "$target" "${COMMAND[@]}"
    record "$name" "$tool" restore_s "$SECONDS_TAKEN"
    record "$name" "$tool" restore_rss_kib "$PEAK_RSS_KIB"
    check_restore "$dir/disk.raw" "$(find "$target" -type f -name disk.raw | head -n 1)" "$tool"

    log "$name $tool run $run/$BENCH_RUNS done, restore verified"
    rm -rf "$dir"
}

# Lifeboat only: the cost of an incremental backup as the change grows, when change
# information exists. The first image becomes a qcow2 disk; after a full backup, qemu-io
# (qemu's block layer, as a VM would) writes $percent % of its 4 KiB blocks at random, and
# the next backup reads only what the image's dirty bitmap marks.
bench_change_tracking() {
    local image=$1
    local name
    name=$(basename "$image" .raw)
    local dir=$BENCH_DIR/run/$name-tracking
    for percent in 0.5 1 2 4; do
        for run in $(seq "$BENCH_RUNS"); do
            rm -rf "$dir"
            mkdir -p "$dir"
            qemu-img convert -f raw -O qcow2 "$image" "$dir/disk.qcow2"
            "$LIFEBOAT" init --repo "$dir/repo" >/dev/null
            "$LIFEBOAT" backup --repo "$dir/repo" --vm bench "$dir/disk.qcow2" >/dev/null
            python3 - "$(stat -c %s "$image")" "$percent" "$BENCH_SEED" >"$dir/writes" <<'PY'
import random, sys
size, percent, seed = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
blocks = size // 4096
for block in rng.sample(range(blocks), int(blocks * percent / 100)):
    print(f"write -P {rng.randrange(1, 256)} {block * 4096} 4k")
PY
            qemu-io -f qcow2 "$dir/disk.qcow2" <"$dir/writes" >/dev/null
            measure "$dir/incremental.json" "$dir" \
                "$LIFEBOAT" backup --json --repo "$dir/repo" --vm bench "$dir/disk.qcow2"
            record "$name" tracking "incr_s_$percent" "$SECONDS_TAKEN"
            for field in bytes_read bytes_new bytes_stored; do
                record "$name" tracking "${field}_$percent" \
                    "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$dir/incremental.json" "$field")"
            done
            log "$name change tracking $percent % run $run/$BENCH_RUNS done"
        done
    done
    rm -rf "$dir"
}

# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

# Median of one metric over the repetitions.
median() {
    awk -F'\t' -v i="$1" -v t="$2" -v m="$3" '$1 == i && $2 == t && $3 == m { print $4 }' \
        "$RAW_RESULTS" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Prints one table row: label, then the three tools' values, then Lifeboat/restic and
# Lifeboat/borg. $2 is an awk expression of `v` (the median) giving the shown value, $5
# the printf format of values.
row() {
    local label=$1 expression=$2 metric=$3 image=$4 format=${5:-%.1f}
    local values=()
    for tool in "${TOOLS[@]}"; do
        values+=("$(median "$image" "$tool" "$metric")")
    done
    awk -v label="$label" -v format="$format" -v size="$IMAGE_SIZE" -v a="${values[0]}" -v b="${values[1]}" -v c="${values[2]}" "
        function f(v) { return $expression }
        function ratio(x, y) { return y > 0 ? sprintf(\"%.2f\", x / y) : \"n/a\" }
        BEGIN {
            x = f(a); y = f(b); z = f(c)
            printf \"| %s | \" format \" | \" format \" | \" format \" | %s | %s |\n\", label, x, y, z, ratio(x, y), ratio(x, z)
        }"
}

# The Markdown report for all images.
report() {
    local mib='v / 1048576' per_second='(v > 0 ? size / v / 1048576 : 0)' kib='v / 1024'
    echo "# Lifeboat, restic and borg: backup and restore of VM disk images"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Profile: $BENCH_PROFILE, $BENCH_RUNS run(s) per measurement, medians shown"
    echo "- Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) memory, $(uname -sr)"
    echo "- Work directory filesystem: $(df -T "$BENCH_DIR" | awk 'NR == 2 { print $2 }')"
    echo "- Versions: $("$LIFEBOAT" --version), $(restic version | cut -d' ' -f1-2), $(borg --version)"
    echo "- Settings: all repositories encrypted. Lifeboat defaults (AES-256-GCM, 64 KiB chunks," \
        "compressed in groups of up to 2 MiB, zstd level 3); restic repository version 2 with --compression auto; borg repokey with" \
        "--compression lz4 (borg's default). Caches of restic and borg start empty in every run."
    echo "- Page cache dropped before every measured step: $CACHE_DROPS. Every measured step ends" \
        "with sync. Incremental: 1 % of the image's 4 KiB blocks overwritten in place with random" \
        "data (the same blocks and bytes for every tool). Every restore was checked bit for bit."
    echo "- Restores use each tool's defaults: Lifeboat leaves all-zero chunks as holes in the" \
        "restored image; restic 0.14 and borg (without --sparse) write the zeros out."
    echo "- Ratios are Lifeboat's value divided by the other tool's: above 1 is better for" \
        "throughput, below 1 is better for time, memory and size."
    for image in "${IMAGES[@]}"; do
        local name
        name=$(basename "$image" .raw)
        IMAGE_SIZE=$(stat -c %s "$image")
        echo
        echo "## $name.raw: $(awk -v s="$IMAGE_SIZE" 'BEGIN { printf "%.2f GiB", s / 2^30 }'), $(du -B1 "$image" | awk '{ printf "%.2f GiB", $1 / 2^30 }') allocated"
        echo
        echo "| Measure | Lifeboat | restic | borg | Lifeboat/restic | Lifeboat/borg |"
        echo "|---|---:|---:|---:|---:|---:|"
        row "Full backup: time (s)" v full_s "$name" %.2f
        row "Full backup: throughput (MiB/s)" "$per_second" full_s "$name"
        row "Full backup: peak RSS (MiB)" "$kib" full_rss_kib "$name"
        row "Repository after full backup (MiB)" "$mib" repo_full_b "$name"
        row "Incremental backup: time (s)" v incr_s "$name" %.2f
        row "Incremental backup: peak RSS (MiB)" "$kib" incr_rss_kib "$name"
        row "Incremental backup: repository growth (MiB)" "$mib" repo_added_b "$name"
        row "Repository after incremental (MiB)" "$mib" repo_incr_b "$name"
        row "Restore: time (s)" v restore_s "$name" %.2f
        row "Restore: throughput (MiB/s)" "$per_second" restore_s "$name"
        row "Restore: peak RSS (MiB)" "$kib" restore_rss_kib "$name"
    done
    local first
    first=$(basename "${IMAGES[0]}" .raw)
    echo
    echo "## Incremental cost as the change grows ($first as qcow2, Lifeboat with its dirty bitmap)"
    echo
    echo "| Blocks rewritten (4 KiB, random) | Time (s) | Read (MiB) | New (MiB) | Stored (MiB) |"
    echo "|---:|---:|---:|---:|---:|"
    for percent in 0.5 1 2 4; do
        awk -v p="$percent" -v t="$(median "$first" tracking "incr_s_$percent")" \
            -v r="$(median "$first" tracking "bytes_read_$percent")" \
            -v n="$(median "$first" tracking "bytes_new_$percent")" \
            -v s="$(median "$first" tracking "bytes_stored_$percent")" \
            'BEGIN { printf "| %s %% | %.2f | %.1f | %.1f | %.1f |\n", p, t, r / 2^20, n / 2^20, s / 2^20 }'
    done
}

# ---------------------------------------------------------------------------------------

main() {
    [[ $BENCH_RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive number"
    ensure_tools
    ensure_lifeboat
    prepare_images
    : >"$RAW_RESULTS"
    mkdir -p "$BENCH_DIR/changes"
    for image in "${IMAGES[@]}"; do
        local changes
        changes=$BENCH_DIR/changes/$(basename "$image" .raw).changes
        make_changes "$(stat -c %s "$image")" "$changes"
        for run in $(seq "$BENCH_RUNS"); do
            for tool in "${TOOLS[@]}"; do
                bench_tool "$image" "$tool" "$changes" "$run"
            done
        done
    done
    bench_change_tracking "${IMAGES[0]}"
    rm -rf "$BENCH_DIR/run"
    mkdir -p "$RESULTS_DIR"
    report | tee "$RESULTS_DIR/latest.md"
    cp "$RAW_RESULTS" "$RESULTS_DIR/latest.tsv"
}

main "$@"
