#!/usr/bin/python3
"""Control-plane benchmark: xenkvmd's API latency and VMM overhead, beside Firecracker's published
bounds (VMM start <= 8 CPU ms, VMM memory overhead <= 5 MiB).

Measures, with a fresh xenkvmd and the ticker guest on each accelerator:
  - CreateVm(start) to the guest's first console output (p50/p99 over --runs VMs),
  - GetVm and ListEventChannels round trips (p50/p99 over 200 calls),
  - VMs created and started per second (sequentially),
  - each running VMM's RSS beyond guest memory (RssAnon + RssFile, guest RAM being RssShmem).

Run: bazel build -c opt //api:xenkvmd //vmm:xenkvm-vmm //tests/guests:xen_ticker &&
     /usr/bin/python3 tests/bench/api_latency.py
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from xenkvm_stubs import generate_stubs  # noqa: E402

import grpc  # noqa: E402
from linux_boot_time import opt_bazel_bin  # noqa: E402

FIRECRACKER_START_CPU_MS = 8.0
FIRECRACKER_OVERHEAD_MIB = 5.0


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def rss_beyond_guest_mib(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return (int(fields["RssAnon"].split()[0]) + int(fields["RssFile"].split()[0])) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", help="Bazel's output tree (default: bazel info -c opt bazel-bin)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--accel", action="append")
    args = parser.parse_args()
    args.bin = args.bin or opt_bazel_bin()
    for binary in ("api/xenkvmd", "vmm/xenkvm-vmm", "tests/guests/xen_ticker.elf"):
        if not os.path.exists(os.path.join(args.bin, binary)):
            sys.exit(f"api_latency: {binary} missing in {args.bin}: "
                     "bazel build -c opt //api:xenkvmd //vmm:xenkvm-vmm //tests/guests:xen_ticker")
    accels = args.accel or (["emu", "kvm"] if os.access("/dev/kvm", os.R_OK | os.W_OK) else ["emu"])
    workdir = tempfile.mkdtemp(prefix="xkbench-", dir="/tmp")
    generate_stubs(workdir)
    from proto.xenkvm.v1 import vm_pb2, vm_pb2_grpc

    socket = os.path.join(workdir, "d.sock")
    daemon = subprocess.Popen([os.path.join(args.bin, "api/xenkvmd"), "--socket", socket, "--state-dir",
                               os.path.join(workdir, "state"), "--vmm", os.path.join(args.bin, "vmm/xenkvm-vmm"),
                               "--log-level", "warn", "--max-vms", str(args.runs + 2)])
    try:
        for _ in range(100):
            if os.path.exists(socket):
                break
            time.sleep(0.05)
        channel = grpc.insecure_channel("unix:" + socket)
        vms = vm_pb2_grpc.VmServiceStub(channel)
        kernel = os.path.abspath(os.path.join(args.bin, "tests/guests/xen_ticker.elf"))
        print(f"{'accel':6} {'start p50':>10} {'start p99':>10} {'VMs/s':>7} {'Get p50':>8} {'Get p99':>8} "
              f"{'Evtchn p50':>10} {'Evtchn p99':>10} {'RSS-guest MiB':>13} {'ref MiB':>8} {'ratio':>6}")
        for accel in accels:
            starts, overheads = [], []
            began = time.perf_counter()
            for i in range(args.runs):
                name = f"{accel}{i}"
                config = vm_pb2.VmConfig(name=name, memory_mib=32, accelerator=accel, kernel=kernel)
                t0 = time.perf_counter()
                vms.CreateVm(vm_pb2.CreateVmRequest(config=config, start=True), timeout=30)
                for chunk in vms.StreamConsole(vm_pb2.StreamConsoleRequest(name=name, replay=True), timeout=30):
                    if chunk.data:
                        break
                starts.append((time.perf_counter() - t0) * 1000)
            rate = args.runs / (time.perf_counter() - began)
            ref = vm_pb2.VmRef(name=f"{accel}0")
            get, evtchn = [], []
            for _ in range(200):
                t0 = time.perf_counter()
                vms.GetVm(ref, timeout=10)
                get.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                vms.ListEventChannels(ref, timeout=10)
                evtchn.append((time.perf_counter() - t0) * 1000)
            for i in range(args.runs):
                vm = vms.GetVm(vm_pb2.VmRef(name=f"{accel}{i}"), timeout=10)
                overheads.append(rss_beyond_guest_mib(vm.pid))
            overhead = statistics.median(overheads)
            print(f"{accel:6} {percentile(starts, 50):8.1f}ms {percentile(starts, 99):8.1f}ms {rate:7.1f} "
                  f"{percentile(get, 50):6.2f}ms {percentile(get, 99):6.2f}ms {percentile(evtchn, 50):8.2f}ms "
                  f"{percentile(evtchn, 99):8.2f}ms {overhead:13.2f} {FIRECRACKER_OVERHEAD_MIB:8.1f} "
                  f"{overhead / FIRECRACKER_OVERHEAD_MIB:6.2f}")
            for i in range(args.runs):
                vms.DestroyVm(vm_pb2.VmRef(name=f"{accel}{i}"), timeout=30)
                vms.DeleteVm(vm_pb2.VmRef(name=f"{accel}{i}"), timeout=10)
        print(f"start = CreateVm(start) to the first console byte; reference: Firecracker's published bounds "
              f"(VMM start <= {FIRECRACKER_START_CPU_MS:g} CPU ms, see tests/bench/boot_time.py for the CPU "
              f"measure; overhead <= {FIRECRACKER_OVERHEAD_MIB:g} MiB)")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
