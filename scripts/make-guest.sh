#!/usr/bin/env bash
# Builds a tiny Linux guest for the VM tests from Debian packages only: Debian's cloud
# kernel and an initramfs of busybox-static with the virtio modules. Its init mounts the
# first virtio disk (ext4) read-only and prints the file `marker` of it on the serial
# console as "LIFEBOAT-MARKER: …", then idles until the VM is stopped.
#
#   scripts/make-guest.sh DIR      writes DIR/vmlinuz and DIR/initrd.img (once)
set -euo pipefail

dir=$1
[ -s "$dir/vmlinuz" ] && [ -s "$dir/initrd.img" ] && exit 0
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
chmod 777 "$work"

kernel=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
apt-get download "$kernel" busybox-static >/dev/null 2>&1
dpkg-deb -x "$kernel"_*.deb kernel
dpkg-deb -x busybox-static_*.deb busybox
version=${kernel#linux-image-}

mkdir -p root/bin root/lib/modules root/proc root/sys root/dev root/mnt
cp busybox/bin/busybox root/bin/busybox
for module in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
    found=$(find "kernel/lib/modules/$version" -name "$module.ko*" | head -1)
    [ -n "$found" ] || { echo "make-guest: module $module not found in $kernel" >&2; exit 1; }
    cp "$found" "root/lib/modules/"
done
cat > root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
    insmod /lib/modules/$module.ko* || echo "insmod $module failed"
done
for _ in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
if mount -t ext4 -o ro /dev/vda /mnt; then
    echo "LIFEBOAT-MARKER: $(cat /mnt/marker)"
    umount /mnt
else
    echo "LIFEBOAT-MARKER-MISSING: /dev/vda did not mount"
fi
# A server runs until it is stopped.
while :; do sleep 3600; done
INIT
chmod +x root/init
(cd root && find . | ../busybox/bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$dir/initrd.img"
cp "kernel/boot/vmlinuz-$version" "$dir/vmlinuz"
