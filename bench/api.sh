#!/usr/bin/env bash
# The control plane under load: lifeboat serve with 100 protected VMs (4 replication groups
# of 25, each VM a 4 MiB raw disk, captured and received on this machine so every VM has an
# RPO), probed regions, and the metrics of it all.
#
#   bench/api.sh                     (about 3 minutes)
#   BENCH_SECONDS=5 bench/api.sh     shorter wrk runs
#
# wrk (Debian) from a second process, 2 threads and 32 connections, BENCH_SECONDS per
# endpoint, with a reader's API token: GET /api/status, /api/vms, /api/points, /api/jobs,
# /metrics. Throughput and latency percentiles as wrk reports them. The dashboard's first
# load: headless Chromium through chromedriver, from navigation until the status page has
# rendered its data (body[data-ready="1"]), median of 10 loads, each in a fresh tab state.
#
# Results: stdout and bench/results/api.md.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in wrk chromium chromedriver qemu-img python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install wrk chromium chromium-driver)" >&2; exit 1; }
done
LIFEBOAT=${LIFEBOAT:-target/release/lifeboat}
if [ ! -x "$LIFEBOAT" ]; then
    cargo build --release --locked
fi
export LIFEBOAT=$(realpath "$LIFEBOAT")
exec python3 bench/api.py
