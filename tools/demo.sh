#!/usr/bin/env bash
# README command (a): installs what is missing, builds everything, and boots the demo guest on the
# default accelerator (kvm where /dev/kvm is usable, else emu). The demo guest is the test kit's
# Xen core kernel: it finds Xen by CPUID, fills its hypercall page, maps shared_info, takes event
# channels (loopback, timer, poll) through the Xen shim, and powers off with SCHEDOP_shutdown.
# xen-disk is an open issue: when it lands, this boots a guest with a xen-disk.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
bazel build //...
bazel-bin/vmm/xenkvm-vmm --kernel bazel-bin/tests/guests/xen_core.elf --memory 256 "$@"
