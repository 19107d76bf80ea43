#!/usr/bin/env bash
# Lifeboat's quick start on embedded defaults: builds Lifeboat, makes a sample VM disk
# (a qcow2 image holding a real ext4 filesystem), backs it up twice into a local encrypted
# repository, lists the points, restores the first one and checks it with qemu-img compare.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
lifeboat="$PWD/target/release/lifeboat"
work=${QUICKSTART_DIR:-$PWD/quickstart}
rm -rf "$work" && mkdir -p "$work"
cd "$work"

export LIFEBOAT_REPO="$work/repository"
export LIFEBOAT_PASSWORD="quickstart password"
run() { printf '\n$ %s\n' "$*"; "$@"; }

echo "== a sample VM disk: ext4 with real files, as qcow2"
# Up to 80 MiB of this machine's documentation, whatever is installed.
mkdir files
{ find /usr/share/doc -xdev -type f -readable -size -8M -printf '%s %p\n' 2>/dev/null || true; } |
    awk -v limit=$((80 << 20)) '{ total += $1; if (total > limit) exit; sub(/^[0-9]+ /, ""); print }' |
    tar -cf - --files-from=- 2>/dev/null | tar -xf - -C files
mkfs.ext4 -q -F -L web1-root -d files web1-root.raw 128M >/dev/null
qemu-img convert -f raw -O qcow2 web1-root.raw web1-root.qcow2 && rm -rf files web1-root.raw
cp web1-root.qcow2 web1-root-at-first-backup.qcow2

run "$lifeboat" init
run "$lifeboat" backup --vm web1 web1-root.qcow2
echo
echo "== the VM writes 4 MiB (qemu-io), then the next backup reads only what changed"
qemu-io -f qcow2 -c 'write -P 0x42 32M 4M' web1-root.qcow2 >/dev/null
run "$lifeboat" backup --vm web1 web1-root.qcow2
run "$lifeboat" points
first=$("$lifeboat" points --vm web1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["point"])')
run "$lifeboat" restore "$first" --target restored
run qemu-img compare web1-root-at-first-backup.qcow2 restored/web1-root.qcow2
run "$lifeboat" verify --read-data
echo
echo "quick start done: repository in $LIFEBOAT_REPO, restored disk in $work/restored"
