#!/usr/bin/env bash
# Builds the disk images Lifeboat's tests and benchmarks use, with qemu-img and
# mkfs.ext4 -d (a real ext4 filesystem holding real files from this machine).
#
#   scripts/make-test-images.sh DIR            small images for the test suite
#   scripts/make-test-images.sh DIR --bench    the benchmark's 2 GiB ext4 and 8 GiB mixed images
#
# Idempotent and safe to run from many processes at once: the first builds, the others
# wait on a lock and find the images done.
set -euo pipefail

dir=${1:?usage: make-test-images.sh DIR [--bench]}
profile=${2:-test}
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
[ -f "$dir/.done-$profile" ] && exit 0

# Copies real files from the given system directories into $1, up to $2 MiB in all.
collect_files() {
    local into=$1 limit_bytes=$(($2 << 20))
    shift 2
    mkdir -p "$into"
    { find "$@" -xdev -type f -readable -size -8M -printf '%s %p\n' 2>/dev/null || true; } |
        awk -v limit="$limit_bytes" '{ total += $1; if (total > limit) exit; sub(/^[0-9]+ /, ""); print }' |
        tar -cf - --files-from=- 2>/dev/null | tar -xf - -C "$into"
}

# A random block of $2 bytes written $3 times in a row to $1.
repeat_block() {
    local file=$1 block_bytes=$2 times=$3
    head -c "$block_bytes" /dev/urandom > "$file.block"
    for _ in $(seq "$times"); do cat "$file.block"; done > "$file"
    rm -f "$file.block"
}

cd "$dir"
rm -rf work && mkdir work

if [ "$profile" = "test" ]; then
    # A real filesystem with real files, and the same content in every format.
    collect_files work/files 40 /usr/lib/python3.11 /usr/lib/python3 /usr/share/perl /usr/share/doc
    mkfs.ext4 -q -F -L lifeboat-test -d work/files fs.raw 64M >/dev/null
    qemu-img convert -f raw -O qcow2 fs.raw fs.qcow2
    qemu-img convert -c -f raw -O qcow2 fs.raw fs-compressed.qcow2
    qemu-img convert -f raw -O vpc -o subformat=fixed,force_size=on fs.raw fs-fixed.vhd
    qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on fs.raw fs-dynamic.vhd
    qemu-img convert -f raw -O vhdx fs.raw fs.vhdx
    # An overlay whose unchanged data lives in its backing file.
    qemu-img create -q -f qcow2 -b fs.qcow2 -F qcow2 overlay.qcow2
    qemu-io -f qcow2 -c 'write -P 0x5a 8M 1M' -c 'write -P 0xa5 40M 64k' overlay.qcow2 >/dev/null

    # Synthetic data: incompressible, all zeros (sparse and written), repeated blocks, and
    # a size that is not a multiple of any chunk size.
    head -c $((16 << 20)) /dev/urandom > random.raw
    truncate -s 16M zeros-sparse.raw
    head -c $((16 << 20)) /dev/zero > zeros-written.raw
    repeat_block repeated.raw 65536 256
    repeat_block repeated-4k.raw 4096 4096
    head -c $((10 << 20)) /dev/urandom > odd-size.raw
    head -c 512 /dev/urandom >> odd-size.raw
else
    # The benchmark's real filesystem: at least 2 GiB with real files.
    collect_files work/files 1300 /usr/lib /usr/share /usr/bin /usr/include
    mkfs.ext4 -q -F -L lifeboat-bench -d work/files bench-fs.raw 2G >/dev/null
    # The 8 GiB mixed image: that filesystem, incompressible data, repeated blocks, zeros
    # written out and a sparse tail.
    truncate -s 8G bench-mixed.raw
    dd if=bench-fs.raw of=bench-mixed.raw bs=4M conv=notrunc,sparse status=none
    head -c $((1 << 30)) /dev/urandom | dd of=bench-mixed.raw bs=4M seek=512 conv=notrunc status=none
    repeat_block work/repeated 1048576 512
    dd if=work/repeated of=bench-mixed.raw bs=4M seek=768 conv=notrunc status=none
    dd if=/dev/zero of=bench-mixed.raw bs=4M seek=896 count=256 conv=notrunc status=none
    head -c $((1 << 30)) /dev/urandom | dd of=bench-mixed.raw bs=4M seek=1280 conv=notrunc status=none
fi

rm -rf work
touch ".done-$profile"
