#!/usr/bin/env bash
# README command (a): installs what is missing, builds everything, and boots the demo guests on the
# default accelerator (kvm where /dev/kvm is usable, else emu):
#  1. the test kit's Xen core kernel: it finds Xen by CPUID, fills its hypercall page, maps
#     shared_info, takes event channels (loopback, timer, poll) through the Xen shim, and powers off
#     with SCHEDOP_shutdown;
#  2. the XenStore kernel: it talks to its XenStore over the ring, watches control/shutdown, and is
#     shut down the way `xl shutdown` does it, with Debian's xenstore-utils on the VM's socket.
# Options after the command go to xenkvm-vmm (e.g. --accel emu).
# xen-disk is an open issue: when it lands, this boots a guest with a xen-disk.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
bazel build //...
vmm=bazel-bin/vmm/xenkvm-vmm

echo "== 1. Xen core guest"
"$vmm" --kernel bazel-bin/tests/guests/xen_core.elf --memory 256 "$@"

echo "== 2. XenStore guest, shut down through XenStore"
dir=$(mktemp -d /tmp/xenkvm-demo-XXXXXX)
trap 'rm -rf "$dir"' EXIT
"$vmm" --kernel bazel-bin/tests/guests/xen_store.elf --memory 64 --name demo \
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
