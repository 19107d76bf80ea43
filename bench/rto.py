"""The RTO benchmark's driver: see bench/rto.sh."""

import datetime
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIFEBOAT = os.environ["LIFEBOAT"]
WORK = Path(os.environ.get("BENCH_DIR", ROOT / "bench/work/rto")).resolve()
SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", "1 20").split()]
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
RESULTS = ROOT / "bench/results/rto.md"
VMS = [f"vm{n:02d}" for n in range(1, 11)]
os.environ["LIFEBOAT_PASSWORD"] = "lifeboat-bench-password"


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def lifeboat(config, *arguments, check=True):
    result = subprocess.run(
        [LIFEBOAT, "--config", str(config), *arguments], capture_output=True, text=True
    )
    if check and result.returncode != 0:
        sys.exit(f"lifeboat {' '.join(arguments)} failed:\n{result.stderr}")
    return result


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def east_address(index):
    return f"10.1.1.{index + 1}"


def setup(size_gib):
    directory = WORK / f"{size_gib}g"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    port = free_port()
    data_mib = 64 if size_gib < 10 else 256
    text = f"""
[dns]
listen = "127.0.0.1:{port}"
ttl = 1
zones = ["bench.example"]

[[region]]
name = "west"
repository = "{directory}/west"

[[region]]
name = "east"
repository = "{directory}/east"
network = "none"
"""
    for index, vm in enumerate(VMS):
        disk = directory / f"{vm}.raw"
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), f"{size_gib}G"], check=True)
        # Distinct data spread over the disk.
        with open(disk, "r+b") as f:
            for part in range(4):
                f.seek(part * (size_gib << 30) // 4)
                f.write(os.urandom((data_mib << 20) // 4))
        text += f"""
[[vm]]
name = "{vm}"
region = "west"
memory_mib = 32
disks = ["{disk}"]
dns = ["{vm}.bench.example"]
addresses = {{ west = "10.0.1.{index + 1}", east = "{east_address(index)}" }}
"""
    text += '\n[[plan]]\nname = "bench"\ngroups = [["vm01", "vm02"], ["vm03", "vm04", "vm05", "vm06", "vm07", "vm08", "vm09", "vm10"]]\n'
    config = directory / "lifeboat.toml"
    config.write_text(text)
    lifeboat(config, "--region", "east", "init")
    for vm in VMS:
        lifeboat(config, "--region", "east", "backup", "--vm", vm, str(directory / f"{vm}.raw"))
    return directory, config, port, data_mib


def dig(port, name):
    result = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), name, "A", "+short", "+time=1", "+tries=1"],
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


def watch_dns(port, seen, stop):
    """Records when each name first answers its east address."""
    while not stop.is_set():
        for index, vm in enumerate(VMS):
            if vm not in seen and dig(port, f"{vm}.bench.example") == east_address(index):
                seen[vm] = time.time()
        time.sleep(0.05)


def stop_all(config, directory):
    threads = [
        threading.Thread(target=lifeboat, args=(config, "vm", "stop", "--vm", vm, "--grace", "0"), kwargs={"check": False})
        for vm in VMS
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Back home for the next run: the names answer west again.
    state = directory / "lifeboat-state"
    (state / "vms.json").unlink(missing_ok=True)
    shutil.rmtree(state / "vms", ignore_errors=True)


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def one_run(config, directory, port, instant):
    seen, stop = {}, threading.Event()
    deadline = time.time() + 30
    while any(dig(port, f"{vm}.bench.example") == east_address(i) for i, vm in enumerate(VMS)):
        if time.time() > deadline:
            sys.exit("the names never went back to west")
        time.sleep(0.2)
    watcher = threading.Thread(target=watch_dns, args=(port, seen, stop))
    watcher.start()
    started = time.time()
    arguments = ["--json", "failover", "--plan", "bench", "--to", "east"] + (["--instant"] if instant else [])
    result = lifeboat(config, *arguments)
    returned = time.time()
    while len(seen) < len(VMS) and time.time() < returned + 30:
        time.sleep(0.05)
    stop.set()
    watcher.join()
    if len(seen) < len(VMS):
        sys.exit(f"names that never followed: {set(VMS) - set(seen)}")
    report = json.loads(result.stdout)
    finished = {
        step["vm"]: parse_time(step["finished"])
        for step in report["steps"]
        if step["action"] == "start-vm"
    }
    switch = [max(0.0, seen[vm] - finished[vm]) for vm in VMS]
    rto = max(returned, max(seen.values())) - started
    stop_all(config, directory)
    return rto, max(switch), statistics.median(switch)


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in SIZES:
        log(f"{size} GiB disks: making 10 disks and their points in east")
        directory, config, port, data_mib = setup(size)
        server = subprocess.Popen(
            [LIFEBOAT, "--config", str(config), "dns", "serve"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1)
            for instant in (True, False):
                runs = []
                for run in range(RUNS):
                    runs.append(one_run(config, directory, port, instant))
                    log(f"{size} GiB {'instant' if instant else 'restore'} run {run + 1}: RTO {runs[-1][0]:.1f} s, DNS switch max {runs[-1][1]:.2f} s")
                rows.append(
                    (
                        size,
                        data_mib,
                        "instant" if instant else "full restore",
                        statistics.median(r[0] for r in runs),
                        statistics.median(r[1] for r in runs),
                        statistics.median(r[2] for r in runs),
                    )
                )
        finally:
            server.kill()
            server.wait()
        shutil.rmtree(directory, ignore_errors=True)
    lines = [
        f"RTO of a 10-VM plan (2 groups) on this machine, medians of {RUNS} runs "
        f"({time.strftime('%Y-%m-%d')}, `bench/rto.sh`):",
        "",
        "| disk per VM | data per VM | start | RTO (command to all running and all names moved) | DNS switch max | DNS switch median |",
        "|---|---|---|---|---|---|",
    ]
    for size, data, kind, rto, switch_max, switch_median in rows:
        lines.append(f"| {size} GiB | {data} MiB | {kind} | {rto:.1f} s | {switch_max:.2f} s | {switch_median:.2f} s |")
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


main()
