#!/usr/bin/python3
"""xen-disk through a real guest: the kit's blkfront (tests/guests/xen_disk_bench.c) in a VM keeps
QD 4 KiB random requests in flight on a xen-disk, for QD 1, 8 and 32, and times them with the
pvclock; fio with io_uring does the same I/O (block size, depth, cache mode, one job) on the same
image file in the same run. Prints IOPS of each and the ratio guest / fio.

Unlike xen_disk_benchmark (an in-process frontend), the guest's path has it all: its requests and
kicks (EVTCHNOP_send hypercalls, VM exits), the event loop, the ring's thread and engine, the
event back into the guest and its interrupt. On a host whose KVM emulates guest instructions
(KVM-PVM) or on emu, the guest's own code dominates.

Run: bazel build -c opt //vmm:xenkvm-vmm //tests/guests:xen_disk_bench &&
     /usr/bin/python3 tests/bench/xen_disk_guest_benchmark.py [--accel kvm|emu] [--requests N]
       [--cache writeback|none] [--write]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

from linux_boot_time import opt_bazel_bin

DEPTHS = (1, 8, 32)


def fio_iops(image, depth, write, cache, seconds):
    rw = "randwrite" if write else "randread"
    command = ["fio", "--name=reference", f"--filename={image}", f"--rw={rw}", "--bs=4k", "--ioengine=io_uring",
               f"--iodepth={depth}", f"--direct={1 if cache == 'none' else 0}", "--invalidate=0", "--numjobs=1",
               "--time_based", f"--runtime={seconds}", "--randrepeat=0", "--output-format=terse",
               "--terse-version=3"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    fields = output[output.index("3;fio-"):].split(";")
    return float(fields[48 if write else 7])


def guest_iops(vmm, guest, image, accel, requests, write, cache):
    cmdline = f"requests={requests}" + (" write" if write else "")
    disk = f"target={image},vdev=xvda,access=rw,cache={cache}"
    result = subprocess.run([vmm, "--kernel", guest, "--accel", accel, "--disk", disk, "--cmdline", cmdline,
                             "--log-level", "error"], capture_output=True, text=True, timeout=1800)
    found = {}
    for match in re.finditer(r"xen-disk-bench: \w+ qd=(\d+) requests=(\d+) ns=(\d+)", result.stdout):
        depth, done, ns = (int(group) for group in match.groups())
        found[depth] = done / (ns / 1e9)
    if len(found) != len(DEPTHS):
        sys.exit(f"the guest did not report every depth (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accel", default="kvm")
    # Enough for a run of ~0.3 s or more at each depth: emu does up to ~1 M a second (20000, the
    # old default, took 21 ms at depth 32 and its ratios swung by a third between runs); KVM-PVM
    # here ~14 k.
    parser.add_argument("--requests", type=int, help="requests per depth (default: 300000 on emu, 20000 on kvm)")
    parser.add_argument("--cache", default="writeback", choices=("writeback", "none"))
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--fio-seconds", type=int, default=2)
    bin_dir = opt_bazel_bin()
    parser.add_argument("--vmm", default=os.path.join(bin_dir, "vmm/xenkvm-vmm"))
    parser.add_argument("--guest", default=os.path.join(bin_dir, "tests/guests/xen_disk_bench.elf"))
    args = parser.parse_args()
    if args.requests is None:
        args.requests = 300000 if args.accel == "emu" else 20000
    with tempfile.TemporaryDirectory(dir="/var/tmp") as directory:
        image = os.path.join(directory, "disk.img")
        with open(image, "wb") as f:
            for _ in range(256):
                f.write(b"x" * (1 << 20))
        guest = guest_iops(args.vmm, args.guest, image, args.accel, args.requests, args.write, args.cache)
        kind = "random write" if args.write else "random read"
        print(f"4 KiB {kind} through a guest on {args.accel} (cache={args.cache}) vs fio io_uring on the same file")
        for depth in DEPTHS:
            reference = fio_iops(image, depth, args.write, args.cache, args.fio_seconds)
            print(f"QD{depth:<2}  fio {reference:9.0f} IOPS | guest {guest[depth]:9.0f} IOPS | ratio {guest[depth] / reference:.3f}")


if __name__ == "__main__":
    main()
