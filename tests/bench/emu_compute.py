#!/usr/bin/python3
"""Compute benchmark: the emu accelerator against QEMU's TCG on the same guest code.

Runs the compute guest (tests/guests/compute.c: a CRC, a prime sieve, recursion, a copy with a
checksum, between two console lines) on `xenkvm-vmm --accel emu` and on `qemu-system-x86_64 -accel
tcg` (PVH boot of the same ELF), alternated, and times each from the guest's "compute: start" line
to its "compute: done" line (wall seconds, and the process's CPU seconds meanwhile). Both runs must
print the same results. The ratio is TCG's time over emu's: 1.0 is TCG's speed (issue 15 asks for
>= 0.8).

Run: bazel build -c opt //vmm:xenkvm-vmm //tests/guests:compute &&
     /usr/bin/python3 tests/bench/emu_compute.py [--runs 3] [--rounds 8]
"""
import argparse
import os
import re
import shutil
import statistics
import sys

from linux_boot_time import opt_bazel_bin, run_to_markers

MARKERS = ["compute: start", "compute: done", "PASS"]
RESULT = re.compile(r"compute: done (crc \w+ primes \d+ fibonacci \d+ sum \w+)")


def timed(argv, timeout):
    """(wall s, CPU s, result line) between the markers, or exits with what the guest printed."""
    seen, text = run_to_markers(argv, MARKERS, timeout)
    result = RESULT.search(text)
    if len(seen) < len(MARKERS) or not result:
        sys.exit(f"emu_compute: {argv[0]} did not finish the guest's work in {timeout} s:\n{text[-2000:]}")
    (start_wall, start_cpu), (done_wall, done_cpu) = seen[MARKERS[0]], seen[MARKERS[1]]
    return done_wall - start_wall, done_cpu - start_cpu, result.group(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=8, help="the guest's work (its rounds=N)")
    parser.add_argument("--bin", default=None, help="Bazel's output tree (default: bazel info -c opt bazel-bin)")
    parser.add_argument("--timeout", type=int, default=600)
    args = parser.parse_args()
    tree = args.bin or opt_bazel_bin()
    vmm, guest = os.path.join(tree, "vmm/xenkvm-vmm"), os.path.join(tree, "tests/guests/compute.elf")
    for path in (vmm, guest):
        if not os.path.exists(path):
            sys.exit(f"emu_compute: {path} missing: bazel build -c opt //vmm:xenkvm-vmm //tests/guests:compute")
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        sys.exit("emu_compute: qemu-system-x86_64, the reference, is not installed (apt-get install qemu-system-x86)")
    cmdline = f"rounds={args.rounds}"
    runs = {
        "emu": [vmm, "--accel", "emu", "--memory", "64", "--kernel", guest, "--cmdline", cmdline],
        "tcg": [qemu, "-accel", "tcg", "-m", "64", "-nographic", "-no-reboot", "-kernel", guest, "-append", cmdline],
    }
    measured = {name: [] for name in runs}
    results = set()
    for _ in range(args.runs):
        for name, argv in runs.items():  # alternated, so a busy moment hits both
            wall, cpu, result = timed(argv, args.timeout)
            measured[name].append((wall, cpu))
            results.add(result)
    if len(results) != 1:
        sys.exit(f"emu_compute: the runs disagree on the guest's results: {sorted(results)}")
    print(f"guest: {os.path.basename(guest)} {cmdline}; results {results.pop()}")
    print(f"{'run':6} {'wall s':>8} {'CPU s':>8}   (medians of {args.runs})")
    medians = {}
    for name, samples in measured.items():
        medians[name] = (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples))
        print(f"{name:6} {medians[name][0]:8.3f} {medians[name][1]:8.3f}")
    print(f"ratio (TCG time / emu time): wall {medians['tcg'][0] / medians['emu'][0]:.2f}, "
          f"CPU {medians['tcg'][1] / medians['emu'][1]:.2f}")


if __name__ == "__main__":
    main()
