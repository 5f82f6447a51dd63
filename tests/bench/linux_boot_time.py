#!/usr/bin/python3
"""Linux boot benchmark: Debian's cloud kernel on emu, to its initramfs and to its root's marker.

Boots the kernel the Linux test boots (tests/linux: the vmlinuz as shipped, an initramfs of
busybox-static and xen-blkfront, an ext4 root on xen-disk) RUNS times with xenkvm-vmm --accel emu
and reports the medians of the wall seconds from spawn to
  - "Run /init"            (the kernel's own boot),
  - "initramfs: loading"   (the initramfs's busybox running),
  - "XENKVM-LINUX-ROOT-OK" (the root on xen-disk mounted and its init run),
and the VMM's CPU seconds by then, and the share of the vCPU's time spent in exits (port I/O,
MMIO, hypercalls, EOIs: from the VMM's "exits:" line, printed when the VM ends). The reference, measured in the same run: QEMU TCG (no KVM, no
Xen) booting the same vmlinuz and initramfs to "initramfs: loading" on its serial console (no
xen-blkfront there, so no root). Without qemu-system-x86_64 the reference is reported missing.

Run: bazel build -c opt //vmm:xenkvm-vmm && /usr/bin/python3 tests/bench/linux_boot_time.py
"""
import argparse
import glob
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def opt_bazel_bin():
    """Bazel's -c opt output tree, where the benchmarks' Run: lines build (not the bazel-bin
    symlink, which follows whichever configuration was built last)."""
    return subprocess.run(["bazel", "info", "-c", "opt", "bazel-bin"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()


def cpu_seconds(pid):
    """The process's user and system CPU, its ended threads' included (in clock ticks)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_to_markers(argv, markers, timeout):
    """Spawns argv; returns ({marker: (wall s, cpu s)} for each marker seen on stdout+stderr, text)."""
    start = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen, text = {}, b""
    try:
        while len(seen) < len(markers) and time.monotonic() - start < timeout:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            text += chunk
            for marker in markers:
                if marker not in seen and marker.encode() in text:
                    seen[marker] = (time.monotonic() - start, cpu_seconds(process.pid))
    finally:
        process.kill()
        process.wait()
    return seen, text.decode(errors="replace")


def exit_share(text):
    """The VMM's last line "exits: N in X s of Y vCPU-seconds (Z% ...)": (N, Z) or None."""
    match = re.search(r"exits: (\d+) in [\d.]+ s of [\d.]+ vCPU-seconds \(([\d.]+)%", text)
    return (int(match.group(1)), float(match.group(2))) if match else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--vmm", default=None, help="xenkvm-vmm (default: the -c opt build's)")
    args = parser.parse_args()
    vmm = args.vmm or os.path.join(opt_bazel_bin(), "vmm/xenkvm-vmm")
    if not os.path.exists(vmm):
        sys.exit(f"linux_boot_time: {vmm} missing: bazel build -c opt //vmm:xenkvm-vmm")
    fetched = subprocess.run([os.path.join(REPO, "tests/linux/fetch_debian_kernel.sh")], capture_output=True, text=True)
    if fetched.returncode != 0:
        sys.exit(f"linux_boot_time: the kernel could not be fetched: {fetched.stderr.strip()}")
    tree = fetched.stdout.strip()
    vmlinuz = sorted(glob.glob(os.path.join(tree, "boot/vmlinuz-*")))[0]
    work = tempfile.mkdtemp(prefix="xenkvm-boot-")
    try:
        subprocess.run([os.path.join(REPO, "tests/linux/build_guest_images.sh"), tree, work], check=True,
                       stdout=subprocess.DEVNULL)
        initramfs = os.path.join(work, "initramfs.cpio.gz")
        markers = ["Run /init", "initramfs: loading", "XENKVM-LINUX-ROOT-OK"]
        xenkvm = {marker: [] for marker in markers}
        shares = []
        qemu = []
        qemu_binary = shutil.which("qemu-system-x86_64")
        for _ in range(args.runs):
            image = os.path.join(work, "run.img")
            shutil.copyfile(os.path.join(work, "root.img"), image)
            seen, text = run_to_markers([vmm, "--kernel", vmlinuz, "--initrd", initramfs, "--disk",
                                         f"target={image},vdev=xvda", "--accel", "emu", "--memory", "512",
                                         "--cmdline", "console=hvc0 root=/dev/xvda"], markers + ["exits: "], 300)
            if exit_share(text):
                shares.append(exit_share(text))
            if markers[-1] not in seen:  # say why, rather than only count fewer runs
                tail = "\n".join(text.splitlines()[-25:])
                print(f"linux_boot_time: a boot did not reach {markers[-1]!r}; its last lines:\n{tail}", file=sys.stderr)
            for marker in markers:
                if marker in seen:
                    xenkvm[marker].append(seen[marker])
            if qemu_binary:
                seen, _ = run_to_markers([qemu_binary, "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot",
                                       "-kernel", vmlinuz, "-initrd", initramfs, "-append",
                                       "console=ttyS0 panic=-1"], ["initramfs: loading"], 300)
                if "initramfs: loading" in seen:
                    qemu.append(seen["initramfs: loading"])
        print(f"Debian kernel {os.path.basename(vmlinuz)}, {args.runs} runs, medians (wall s / VMM CPU s):")
        for marker in markers:
            samples = xenkvm[marker]
            if not samples:
                print(f"  xenkvm emu to {marker!r}: not reached")
                continue
            wall = statistics.median(s[0] for s in samples)
            cpu = statistics.median(s[1] for s in samples)
            print(f"  xenkvm emu to {marker!r}: {wall:.2f} s wall, {cpu:.2f} s CPU ({len(samples)} runs)")
        if shares:
            print(f"  exits over the whole boot: {statistics.median(n for n, _ in shares):.0f}, "
                  f"{statistics.median(p for _, p in shares):.1f}% of the vCPU's time spent in them")
        if not qemu_binary:
            print("  reference: qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
        elif not qemu:
            print("  reference: QEMU TCG did not reach the initramfs")
        else:
            reference = statistics.median(s[0] for s in qemu)
            print(f"  QEMU TCG (no Xen) to 'initramfs: loading': {reference:.2f} s wall")
            if xenkvm["initramfs: loading"]:
                ours = statistics.median(s[0] for s in xenkvm["initramfs: loading"])
                print(f"  ratio xenkvm emu / QEMU TCG (to the initramfs): {ours / reference:.2f}x")
            else:
                print("  ratio: none (xenkvm did not reach the initramfs)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
