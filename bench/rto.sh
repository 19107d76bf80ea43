#!/usr/bin/env bash
# Recovery time of a 10-VM plan, and how fast DNS follows.
#
#   bench/rto.sh                         1 GiB and 20 GiB disks, 3 runs each (about 10 minutes)
#   BENCH_SIZES="1" BENCH_RUNS=1 bench/rto.sh
#
# Ten VMs (firmware only, 32 MiB: the guest's own boot time is excluded, as the target
# says) with one raw disk each of 1 GiB or 20 GiB, holding 64 MiB or 256 MiB of random data,
# have points in region east. Plan "bench" brings up vm01-vm02, then vm03-vm10. For each
# run: `lifeboat failover --plan bench --to east` is started, and dig asks the built-in DNS
# server for all ten names every 50 ms. RTO: from the command's start until every VM runs
# (the command returned) and every name answers its east address. DNS switch: from the
# moment a VM's start step finished (its placement recorded) until dig answers its new
# address. Instant (--instant: overlays over the points' exports, hydrated in the
# background) and full restore, both. Medians of BENCH_RUNS.
#
# Results: stdout and bench/results/rto.md.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in qemu-img qemu-system-x86_64 dig python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (scripts/test.sh installs it)" >&2; exit 1; }
done
LIFEBOAT=${LIFEBOAT:-target/release/lifeboat}
if [ ! -x "$LIFEBOAT" ]; then
    cargo build --release --locked
fi
export LIFEBOAT=$(realpath "$LIFEBOAT")
exec python3 bench/rto.py
