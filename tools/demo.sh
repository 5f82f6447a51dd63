#!/usr/bin/env bash
# README command (a): installs what is missing, builds everything, and boots the demo guests on the
# default accelerator (kvm where /dev/kvm is usable, else emu):
#  0. first a kernel nobody here wrote: Debian's current cloud kernel (apt-get download into
#     /var/cache/xenkvm), its vmlinuz as shipped, with an initramfs of busybox-static and its own
#     xen-blkfront module and an ext4 root image on xen-disk (both built here, no mount), on emu
#     with 2 vCPUs; the root's init shows it runs on Xen from xvda on both CPUs, and the guest
#     powers off through ACPI;
#  1. a Xen guest with a xen-disk: the test kit's blkfront kernel finds its disk in XenStore,
#     connects through the XenBus handshake (grant-table ring, event channel) and reads, writes,
#     flushes and discards through xenkvm's xen-disk backend; its write lands in the image file;
#  2. the Xen core kernel: CPUID detection, hypercall page, shared_info, event channels (loopback,
#     timer, poll) through the Xen shim, SCHEDOP_shutdown;
#  3. the XenStore kernel, shut down the way `xl shutdown` does it, with Debian's xenstore-utils
#     on the VM's XenStore socket.
# Options after the command go to xenkvm-vmm (e.g. --accel emu).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
bazel build //...
bin=$(bazel info bazel-bin 2>/dev/null)  # not the bazel-bin symlink: it follows the last config built
vmm="$bin/vmm/xenkvm-vmm"

dir=$(mktemp -d /tmp/xenkvm-demo-XXXXXX)
trap 'rm -rf "$dir"' EXIT

echo "== 0. Debian's cloud kernel, to its root on xen-disk (emu)"
if tree=$(tests/linux/fetch_debian_kernel.sh); then
  tests/linux/build_guest_images.sh "$tree" "$dir/linux" >/dev/null
  "$vmm" --kernel "$(ls "$tree"/boot/vmlinuz-* | head -n 1)" --initrd "$dir/linux/initramfs.cpio.gz" \
    --disk "target=$dir/linux/root.img,vdev=xvda" --memory 512 --vcpus 2 --accel emu \
    --cmdline "console=hvc0 root=/dev/xvda"
  echo "-- /proof in the root image, read on the host: \"$(/sbin/debugfs -R 'cat /proof' "$dir/linux/root.img" 2>/dev/null)\""
else
  echo "-- skipped: Debian's kernel package could not be fetched (see above)"
fi

echo "== 1. A Xen guest with a xen-disk"
# 2 MiB image; sector N begins with "xenkvm disk sector N".
/usr/bin/python3 -c '
import sys
with open(sys.argv[1], "wb") as image:
    for n in range(4096):
        text = b"xenkvm disk sector %d" % n
        image.write(text + bytes(512 - len(text)))' "$dir/xvda.img"
"$vmm" --kernel "$bin"/tests/guests/xen_disk.elf --memory 64 --disk "target=$dir/xvda.img,vdev=xvda,access=rw" "$@"
echo "-- sector 16 of the image now: \"$(dd if="$dir/xvda.img" bs=512 skip=16 count=1 2>/dev/null | tr -d '\0')\""

echo "== 2. Xen core guest"
"$vmm" --kernel "$bin"/tests/guests/xen_core.elf --memory 256 "$@"

echo "== 3. XenStore guest, shut down through XenStore"
"$vmm" --kernel "$bin"/tests/guests/xen_store.elf --memory 64 --name demo \
  --xenstore-socket "$dir/xs.sock" "$@" >"$dir/console" 2>"$dir/log" &
pid=$!
for _ in $(seq 300); do
  grep -q "ready for control/shutdown" "$dir/console" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
cat "$dir/console"
export XENSTORED_PATH="$dir/xs.sock"
echo "-- xenstore-ls -f /local/domain/1 (on the VM's XenStore socket)"
xenstore-ls -f /local/domain/1 | grep -E "/(name|domid|data/hello|control/(shutdown|feature-poweroff))"
echo "-- xenstore-write /local/domain/1/control/shutdown poweroff"
xenstore-write /local/domain/1/control/shutdown poweroff
status=0
wait "$pid" || status=$?
tail -n 3 "$dir/console"
grep "xenkvm-vmm:" "$dir/log" || true
exit "$status"
