#!/usr/bin/python3
"""Boot benchmark: xenkvm-vmm process start to the guest's first instruction.

The default guest (tests/guests/first_byte.S) writes a newline to the debug port at its second
instruction, which the VMM passes straight to its stdout: the first byte there marks the guest's
start. Another kernel (--kernel, e.g. the hello guest) measures to its first console line instead.

For each accelerator it starts the VMM RUNS times and reports the medians of
  - wall ms from spawn to the first byte on the VMM's stdout,
  - CPU ms the VMM's threads had used by then (from /proc/PID/task/*/schedstat, nanoseconds),
  - VMM RSS beyond guest memory at that moment (RssAnon + RssFile; guest RAM is the memfd-backed
    RssShmem, left out), and the peak RSS of the whole process (ru_maxrss, guest pages included).
Firecracker's published bounds are printed beside them as the reference: <= 8 CPU ms to a ready
VMM and <= 5 MiB of VMM memory overhead.

Run: bazel build -c opt //vmm:xenkvm-vmm //tests/guests:first_byte &&
     /usr/bin/python3 tests/bench/boot_time.py [--runs 20] [--vmm PATH] [--kernel PATH]
"""
import argparse
import os
import select
import statistics
import subprocess
import sys
import time

from linux_boot_time import opt_bazel_bin

FIRECRACKER_CPU_MS = 8.0
FIRECRACKER_OVERHEAD_MIB = 5.0


def cpu_ns(pid):
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def rss_beyond_guest_kib(pid):
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
    except FileNotFoundError:
        return None
    return int(fields["RssAnon"].split()[0]) + int(fields["RssFile"].split()[0])


def one_run(vmm, kernel, accel):
    start = time.perf_counter()
    process = subprocess.Popen([vmm, "--kernel", kernel, "--accel", accel, "--log-level", "warn"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ready, _, _ = select.select([process.stdout], [], [], 30)
    if not ready:
        process.kill()
        raise RuntimeError(f"no console output from the {accel} guest within 30 s")
    wall_ms = (time.perf_counter() - start) * 1000
    if not os.read(process.stdout.fileno(), 1):  # readable at EOF too: the VMM ended first
        process.wait()
        raise RuntimeError(f"xenkvm-vmm --accel {accel} exited ({process.returncode}) before the guest's "
                           f"first byte: {process.stderr.read().decode(errors='replace').strip()}")
    cpu_ms = cpu_ns(process.pid) / 1e6
    rss_kib = rss_beyond_guest_kib(process.pid)
    # The default guest waits in HLT; another kernel may still be running: either way it is stopped.
    process.terminate()
    process.stdout.read()
    process.stderr.read()
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0  # reaped here, for ru_maxrss
    return wall_ms, cpu_ms, rss_kib, usage.ru_maxrss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vmm", help="xenkvm-vmm (default: the -c opt build's)")
    parser.add_argument("--kernel", help="the guest (default: the -c opt build's first_byte.elf)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--accel", action="append", help="emu, kvm (default: both, kvm if usable)")
    args = parser.parse_args()
    tree = None if args.vmm and args.kernel else opt_bazel_bin()
    args.vmm = args.vmm or os.path.join(tree, "vmm/xenkvm-vmm")
    args.kernel = args.kernel or os.path.join(tree, "tests/guests/first_byte.elf")
    for path in (args.vmm, args.kernel):
        if not os.path.exists(path):
            sys.exit(f"boot_time: {path} missing: bazel build -c opt //vmm:xenkvm-vmm //tests/guests:first_byte")
    accels = args.accel or (["emu", "kvm"] if os.access("/dev/kvm", os.R_OK | os.W_OK) else ["emu"])
    print(f"{'accel':6} {'wall ms':>9} {'CPU ms':>9} {'ref CPU ms':>10} {'ratio':>6} "
          f"{'RSS-guest MiB':>13} {'ref MiB':>8} {'ratio':>6} {'peak RSS MiB':>12}")
    for accel in accels:
        runs = [one_run(args.vmm, args.kernel, accel) for _ in range(args.runs)]
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        overhead = statistics.median(r[2] for r in runs if r[2] is not None) / 1024
        peak = statistics.median(r[3] for r in runs) / 1024
        print(f"{accel:6} {wall:9.2f} {cpu:9.2f} {FIRECRACKER_CPU_MS:10.1f} {cpu / FIRECRACKER_CPU_MS:6.2f} "
              f"{overhead:13.2f} {FIRECRACKER_OVERHEAD_MIB:8.1f} {overhead / FIRECRACKER_OVERHEAD_MIB:6.2f} "
              f"{peak:12.2f}")
    print(f"medians of {args.runs} runs; reference: Firecracker's published bounds "
          f"(<= {FIRECRACKER_CPU_MS:g} CPU ms, <= {FIRECRACKER_OVERHEAD_MIB:g} MiB overhead)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
