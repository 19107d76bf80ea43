"""The control plane benchmark's driver: see bench/api.sh."""

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIFEBOAT = os.environ["LIFEBOAT"]
WORK = Path(os.environ.get("BENCH_DIR", ROOT / "bench/work/api")).resolve()
SECONDS = int(os.environ.get("BENCH_SECONDS", "15"))
RESULTS = ROOT / "bench/results/api.md"
GROUPS = 4
PER_GROUP = 25
os.environ["LIFEBOAT_PASSWORD"] = "lifeboat-bench-password"
ENDPOINTS = ["/api/status", "/api/vms", "/api/points", "/api/jobs", "/metrics"]


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lifeboat(config, *arguments):
    result = subprocess.run(
        [LIFEBOAT, "--config", str(config), *arguments], capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"lifeboat {' '.join(arguments)} failed:\n{result.stderr}")
    return result.stdout


def setup():
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "disks").mkdir(parents=True)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    config = WORK / "lifeboat.toml"
    text = f"""
[settings]
state = "{WORK / 'state'}"

[[region]]
name = "west"
repository = "{WORK / 'west'}"
probe = "tcp:127.0.0.1:{listener.getsockname()[1]}"

[[region]]
name = "east"
repository = "{WORK / 'east'}"
"""
    vms = []
    for index in range(GROUPS * PER_GROUP):
        name = f"vm{index:03d}"
        disk = WORK / "disks" / f"{name}.raw"
        with open(disk, "wb") as f:
            f.write(os.urandom(256 * 1024))
            f.truncate(4 << 20)
        vms.append((name, disk))
        text += f'\n[[vm]]\nname = "{name}"\nregion = "west"\ndisks = ["{disk}"]\n'
    text += '\n[[plan]]\nname = "all"\ngroups = [' + ", ".join(
        "[" + ", ".join(f'"{name}"' for name, _ in vms[g * PER_GROUP:(g + 1) * PER_GROUP]) + "]"
        for g in range(GROUPS)
    ) + "]\n"
    config.write_text(text)
    lifeboat(config, "--region", "east", "init")
    lifeboat(config, "--region", "west", "init")
    return config, vms, listener


def protect(config, vms):
    processes = []
    for group in range(GROUPS):
        members = vms[group * PER_GROUP:(group + 1) * PER_GROUP]
        arguments = [LIFEBOAT, "--config", str(config), "--region", "east", "protect",
                     "--group", f"g{group}", "--interval", "1",
                     "--socket", str(WORK / f"g{group}.sock")]
        for name, disk in members:
            arguments += ["--vm", f"{name}={disk}"]
        processes.append(subprocess.Popen(arguments, stdout=subprocess.DEVNULL,
                                          stderr=open(WORK / f"protect-g{group}.log", "w")))
        processes.append(subprocess.Popen(
            [LIFEBOAT, "--config", str(config), "--region", "east", "receive", "--follow",
             "--interval", "1", "--group", f"g{group}", "--replicas", str(WORK / f"replicas-g{group}")],
            stdout=subprocess.DEVNULL, stderr=open(WORK / f"receive-g{group}.log", "w")))
    deadline = time.time() + 300
    while time.time() < deadline:
        status = json.loads(lifeboat(config, "--json", "status"))
        rpos = [vm for repository in status.get("replication", []) for group in repository["groups"]
                for vm in group["vms"] if vm.get("rpo_seconds") is not None]
        if len(rpos) == GROUPS * PER_GROUP:
            return processes
        time.sleep(2)
    sys.exit("the 100 VMs never all had an RPO")


def get(url, token=None):
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def serve(config):
    process = subprocess.Popen(
        [LIFEBOAT, "--config", str(config), "--json", "serve", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=open(WORK / "serve.log", "w"), text=True)
    started = json.loads(process.stdout.readline())
    base = started["url"]
    deadline = time.time() + 120
    while time.time() < deadline:
        vms = json.loads(get(f"{base}/api/vms"))
        points = json.loads(get(f"{base}/api/points"))
        if sum(1 for vm in vms if vm["rpo_seconds"] is not None) == GROUPS * PER_GROUP and points:
            return process, base
        time.sleep(1)
    sys.exit("serve never saw the 100 VMs' RPO")


def webdriver(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["value"]


def dashboard_loads(base, count=10):
    port = free_port()
    driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    profile = tempfile.mkdtemp()
    try:
        for _ in range(100):
            try:
                webdriver(port, "GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                     f"--user-data-dir={profile}"]
        session = webdriver(port, "POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": arguments}}}})["sessionId"]
        times = []
        for _ in range(count):
            webdriver(port, "POST", f"/session/{session}/url", {"url": "about:blank"})
            started = time.monotonic()
            webdriver(port, "POST", f"/session/{session}/url", {"url": f"{base}/#status"})
            while not webdriver(port, "POST", f"/session/{session}/execute/sync", {
                    "script": "return document.body.dataset.ready === '1' && "
                              "document.body.dataset.page === 'status';", "args": []}):
                time.sleep(0.005)
            times.append(time.monotonic() - started)
        webdriver(port, "DELETE", f"/session/{session}")
        return times
    finally:
        driver.kill()
        shutil.rmtree(profile, ignore_errors=True)


def wrk(url, token):
    output = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{SECONDS}s", "--latency", "-H", f"Authorization: Bearer {token}", url],
        capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))

    def percentile(p):
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", output).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return rate, percentile(50), percentile(99), int(errors.group(1)) if errors else 0


def main():
    log("setting up 100 VMs in 4 groups")
    config, vms, listener = setup()
    processes = protect(config, vms)
    try:
        log("every VM has an RPO; starting lifeboat serve")
        server, base = serve(config)
        processes.append(server)
        metrics = get(f"{base}/metrics").decode()
        lines = len([line for line in metrics.splitlines() if not line.startswith("#")])
        log("dashboard first loads")
        loads = dashboard_loads(base)
        token = json.loads(lifeboat(config, "--json", "user", "add", "bench", "--role", "reader"))["token"]
        rows = []
        for endpoint in ENDPOINTS:
            log(f"wrk {endpoint}")
            size = len(get(f"{base}{endpoint}", token))
            rate, p50, p99, errors = wrk(f"{base}{endpoint}", token)
            rows.append((endpoint, size, rate, p50, p99, errors))
    finally:
        for process in processes:
            process.kill()
        listener.close()
    cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    report = [
        f"100 protected VMs (4 groups of 25), {lines} metric lines; wrk -t2 -c32 -d{SECONDS}s, "
        f"reader token; {cpu} cores shared by wrk, lifeboat serve and the 8 replication processes.",
        "",
        "| endpoint | response bytes | requests/s | p50 ms | p99 ms | non-2xx |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for endpoint, size, rate, p50, p99, errors in rows:
        report.append(f"| `{endpoint}` | {size} | {rate:.0f} | {p50:.2f} | {p99:.2f} | {errors} |")
    report += [
        "",
        f"Dashboard first load (navigation to the status page rendered with its data), "
        f"{len(loads)} loads: median {statistics.median(loads) * 1000:.0f} ms, "
        f"max {max(loads) * 1000:.0f} ms.",
    ]
    text = "\n".join(report) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
