#!/usr/bin/env python3
"""Helpers of bench/replication.sh: RPO sampling, per-run figures, the report.

  replication_stats.py sample STATE_JSON OUT_TSV        RPO every 0.25 s until killed
  replication_stats.py churn DIR NAME RATE             one churn run -> a TSV line
  replication_stats.py fio KIND BS DEPTH FIO_JSON      one fio run -> a TSV line
  replication_stats.py report CHURN_TSV OVERHEAD_TSV   markdown tables
"""

import datetime
import json
import statistics
import sys
import time


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(values, p):
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def sample(state_path, out_path):
    with open(out_path, "w") as out:
        while True:
            now = time.time()
            try:
                with open(state_path) as f:
                    sealed = json.load(f).get("sealed_time", "")
                if sealed:
                    out.write(f"{now:.3f}\t{now - parse_time(sealed):.3f}\n")
                    out.flush()
            except (OSError, ValueError):
                pass
            time.sleep(0.25)


def all_cuts(directory):
    cuts = []
    with open(f"{directory}/ship.jsonl") as f:
        for line in f:
            try:
                cuts.append(json.loads(line))
            except ValueError:
                continue
    return cuts


def churn(directory, name, rate):
    with open(f"{directory}/fio.json") as f:
        fio = json.load(f)
    job = fio["jobs"][0]
    with open(f"{directory}/fio-end") as f:
        end = float(f.read())
    runtime = job["job_runtime"] / 1000
    # The first 5 s warm up (journal, page cache); the window is the rest of the run.
    start = end - runtime + 5
    rpo = []
    with open(f"{directory}/rpo.tsv") as f:
        for line in f:
            at, value = line.split()
            if start <= float(at) <= end:
                rpo.append(float(value))
    cuts = []
    with open(f"{directory}/ship.jsonl") as f:
        for line in f:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            if start <= parse_time(report["time"]) <= end:
                cuts.append(report)
    # RPO of a "latest" failover: the age of the newest cut committed in the recovery
    # repository (a commit lands `seconds` after its cut time), at each sample instant.
    committed = sorted(
        (parse_time(c["time"]) + c["seconds"], parse_time(c["time"]))
        for c in all_cuts(directory)
    )
    latest = []
    for at in (float(line.split()[0]) for line in open(f"{directory}/rpo.tsv")):
        if start <= at <= end:
            done = [cut for landed, cut in committed if landed <= at]
            if done:
                latest.append(at - done[-1])
    seconds = max(end - start, 1e-9)
    writes = [c["writes"] for c in cuts]
    pending = [c["journal_bytes"] / 2**20 for c in cuts]
    written = sum(c["journal_bytes"] for c in cuts) / 2**20 / seconds
    shipped = sum(c["shipped_bytes"] for c in cuts) / 2**20 / seconds
    achieved = job["write"]["bw_bytes"] / 2**20
    fields = [
        name,
        rate,
        f"{achieved:.1f}",
        f"{percentile(latest, 50):.2f}",
        f"{percentile(latest, 99):.2f}",
        f"{percentile(rpo, 50):.2f}",
        f"{percentile(rpo, 99):.2f}",
        f"{max(rpo) if rpo else float('nan'):.2f}",
        f"{percentile(writes, 50):.0f}",
        f"{percentile(writes, 99):.0f}",
        f"{percentile(pending, 50):.1f}",
        f"{percentile(pending, 99):.1f}",
        f"{written:.1f}",
        f"{shipped:.1f}",
        str(len(rpo)),
    ]
    print("\t".join(fields))


def fio_line(kind, bs, depth, path):
    with open(path) as f:
        job = json.load(f)["jobs"][0]["write"]
    clat = job.get("clat_ns", {}).get("percentile", {})
    fields = [
        kind,
        bs,
        depth,
        f"{job['iops']:.0f}",
        f"{job['bw_bytes'] / 2**20:.1f}",
        f"{clat.get('50.000000', 0) / 1000:.1f}",
        f"{clat.get('99.000000', 0) / 1000:.1f}",
    ]
    print("\t".join(fields))


def vm_report(path):
    """The qemu-img bench table: kind, bs, depth, count, seconds per line."""
    try:
        with open(path) as f:
            runs = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    except FileNotFoundError:
        return
    if not runs:
        return
    sizes = {"4k": 4096, "64k": 65536}
    print("## Capture overhead as a VM sees it (qemu-img bench sequential writes, medians)")
    print()
    print("| writes | path | IOPS | MiB/s | mean latency µs | vs direct (writeback) "
          "| vs direct (cache=none) | vs qemu-nbd |")
    print("|---|---|---|---|---|---|---|---|")
    shapes = []
    for r in runs:
        if (r[1], r[2]) not in shapes:
            shapes.append((r[1], r[2]))
    for bs, depth in shapes:
        iops = {}
        for kind in ["direct", "direct-cache-none", "qemu-nbd", "qemu-nbd-cache-none", "lifeboat",
                     "lifeboat-capture"]:
            chosen = [int(r[3]) / float(r[4]) for r in runs
                      if r[0] == kind and r[1] == bs and r[2] == depth]
            if chosen:
                iops[kind] = statistics.median(chosen)
        for kind, value in iops.items():
            ratios = []
            for base in ["direct", "direct-cache-none", "qemu-nbd"]:
                ratios.append(f"{value / iops[base]:.2f}×" if base in iops else "-")
            mib = value * sizes.get(bs, 0) / 2**20
            latency = int(depth) / value * 1e6
            print(f"| {bs} QD{depth} | {kind} | {value:.0f} | {mib:.1f} | {latency:.1f} "
                  f"| {' | '.join(ratios)} |")
    print()
    print("Ratios are throughput: above 1 the path is faster than the base. Mean latency is")
    print("queue depth divided by IOPS.")
    print()


def report(churn_path, overhead_path, vm_overhead_path=None):
    rows = [line.rstrip("\n").split("\t") for line in open(churn_path) if line.strip()]
    print("## RPO under sustained churn (one VM, random 64 KiB writes, cuts every 1 s)")
    print()
    print("| run | target MiB/s | fio sustained MiB/s | RPO latest p50 / p99 s "
          "| RPO processed p50 / p99 / max s "
          "| writes pending per cut p50 / p99 | MiB pending per cut p50 / p99 "
          "| written MiB/s | shipped MiB/s | RPO samples |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} / {r[4]} | {r[5]} / {r[6]} / {r[7]} "
              f"| {r[8]} / {r[9]} | {r[10]} / {r[11]} | {r[12]} | {r[13]} | {r[14]} |")
    print()
    print("RPO latest: age of the newest cut committed in the recovery repository (what a")
    print("failover to the latest state recovers, after applying the cuts not yet processed).")
    print("RPO processed: age of the newest point the receiver has made (a failover to the")
    print("latest processed point, at once).")
    print()
    try:
        with open(overhead_path) as f:
            runs = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    except FileNotFoundError:
        return  # the overhead part was not run
    shapes = []
    for r in runs:
        if (r[1], r[2]) not in shapes:
            shapes.append((r[1], r[2]))
    print("## Capture overhead (fio random writes to one 4 GiB raw image, medians)")
    print()
    print("| writes | path | IOPS | MiB/s | latency p50 µs | latency p99 µs "
          "| throughput vs direct | vs qemu-nbd |")
    print("|---|---|---|---|---|---|---|---|")
    for bs, depth in shapes:
        medians = {}
        for kind in ["direct", "qemu-nbd", "lifeboat", "lifeboat-capture"]:
            chosen = [r for r in runs if r[0] == kind and r[1] == bs and r[2] == depth]
            if not chosen:
                continue
            medians[kind] = [statistics.median(float(r[i]) for r in chosen) for i in range(3, 7)]
        for kind, (iops, bw, p50, p99) in medians.items():
            direct = medians.get("direct", [0, 0])[1]
            nbd = medians.get("qemu-nbd", [0, 0])[1]
            versus_direct = f"{bw / direct:.2f}×" if direct else "-"
            versus_nbd = f"{bw / nbd:.2f}×" if nbd else "-"
            print(f"| {bs} QD{depth} | {kind} | {iops:.0f} | {bw:.1f} | {p50:.1f} | {p99:.1f} "
                  f"| {versus_direct} | {versus_nbd} |")
    print()
    if vm_overhead_path:
        vm_report(vm_overhead_path)


def main():
    command = sys.argv[1]
    if command == "sample":
        sample(sys.argv[2], sys.argv[3])
    elif command == "churn":
        churn(sys.argv[2], sys.argv[3], sys.argv[4])
    elif command == "fio":
        fio_line(*sys.argv[2:6])
    elif command == "report":
        report(*sys.argv[2:5])
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
