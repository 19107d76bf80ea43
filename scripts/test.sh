#!/usr/bin/env bash
# Runs Lifeboat's whole test suite on a fresh machine: installs what the tests need,
# checks formatting and lints, then runs every test. Run as root (the tests mount small
# tmpfs filesystems to fill disks on purpose).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "the test suite runs as root (it mounts tmpfs filesystems to test full disks)" >&2
    exit 1
fi

# Debian packages the tests drive: qemu-img/qemu-io/qemu-nbd, mkfs.ext4, mount, dig, and
# BIND's named (the target of RFC 2136 updates; its system service is left stopped).
need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v qemu-nbd >/dev/null || need+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v flock >/dev/null || need+=(util-linux)
command -v dig >/dev/null || need+=(dnsutils)
command -v named >/dev/null || need+=(bind9)
# curl and openssl: the control plane's HTTPS is checked with a self-signed certificate.
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
# PostgreSQL's server binaries (the control plane's shared state; tests start their own
# cluster on a free port, the system service is left stopped).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# Headless Chromium and its WebDriver for the dashboard's end-to-end test.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
    # The tests start their own named on a free port.
    { systemctl stop named || service named stop; } >/dev/null 2>&1 || true
    { systemctl stop postgresql || service postgresql stop; } >/dev/null 2>&1 || true
fi

# qemu-system-x86_64 for the VM tests: from bookworm-backports, the same qemu 10 as the
# machine's qemu-utils (Debian 12's own qemu-system-x86 7.2 would replace them with 7.2).
if ! command -v qemu-system-x86_64 >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    if grep -q bookworm /etc/os-release && [ ! -e /etc/apt/sources.list.d/backports.sources ]; then
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            >/etc/apt/sources.list.d/backports.sources
    fi
    apt-get update -qq
    if grep -q bookworm /etc/os-release; then
        apt-get install -y -qq -t bookworm-backports --no-install-recommends qemu-system-x86 >/dev/null
    else
        apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
    fi
fi

# A real S3-compatible server for the object storage tests, keeping objects on disk so it
# survives being killed and restarted.
if ! command -v s3s-fs >/dev/null && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
    cargo install --quiet --locked s3s-fs --version =0.14.1 --features binary
fi

# Azurite, Microsoft's Azure Blob Storage emulator, for the Azure Blob tests (Node.js from
# Debian if the machine has none).
if ! command -v azurite-blob >/dev/null; then
    if ! command -v npm >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq nodejs npm >/dev/null
    fi
    npm install --global --silent azurite@3.37.0 >/dev/null
fi

# schemathesis (PyPI), which fuzzes lifeboat serve's API from its OpenAPI document, in a
# virtual environment of its own.
SCHEMATHESIS_VENV=/opt/lifeboat-test/schemathesis
if [ ! -x "$SCHEMATHESIS_VENV/bin/schemathesis" ]; then
    if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -m venv "$SCHEMATHESIS_VENV"
    "$SCHEMATHESIS_VENV/bin/pip" install --quiet schemathesis==4.32.5
fi
export LIFEBOAT_SCHEMATHESIS="$SCHEMATHESIS_VENV/bin/schemathesis"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
