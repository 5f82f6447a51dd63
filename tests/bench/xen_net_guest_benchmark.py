#!/usr/bin/python3
"""xen-net through a real guest: Debian's kernel (its own xen-netfront) on a vif, against the same
programs over a veth pair on the same machine.

The guest (tests/linux's images, booted with xenkvm.serve=MIB) serves MIB MiB over HTTP with
busybox's httpd (sendfile: TSO frames), takes and drops whatever comes to its port 5557 (busybox
nc) and echoes on port 5558 (busybox nc -e cat). The reference runs the same busybox programs in
a network namespace of their own at the far end of a veth pair -- the host stack's own path
between two namespaces, the physical limit of a host-side virtual link. From the host's side of
each, in the same run:
  download   the MIB MiB fetched over HTTP (guest -> host), Gbit/s
  upload     MIB MiB sent to port 5557 (host -> guest), Gbit/s
  rr         one-byte request/response round trips on one TCP connection (TCP_NODELAY), per second
Medians of RUNS, each with the ratio guest / veth. Needs root (namespaces, a tap) and
tests/linux's kernel (fetched into the cache like the Linux tests do). On emu the guest's own
instructions dominate (as on a KVM that emulates them, KVM-PVM); a VMX/SVM host gives the ratio
that matters for xen-net itself.

Run: bazel build -c opt //vmm:xenkvm-vmm &&
     /usr/bin/python3 tests/bench/xen_net_guest_benchmark.py [--accel emu|kvm] [--mib N] [--runs N]
       [--vcpus N]
"""
import argparse
import glob
import json
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST, REFERENCE = "10.0.2.2", "10.0.9.2"


# ---- The client, run inside the host's namespace (--client).

def download(host, mib):
    start = time.monotonic()
    with socket.create_connection((host, 8080), timeout=120) as s:
        s.sendall(b"GET /blob HTTP/1.0\r\n\r\n")
        got = 0
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
    seconds = time.monotonic() - start
    if got < mib << 20:
        raise SystemExit(f"{host}: fetched {got} bytes, fewer than {mib} MiB")
    return (mib << 20) * 8 / seconds / 1e9


def upload(host, mib):
    block = bytes(1 << 20)
    start = time.monotonic()
    with socket.create_connection((host, 5557), timeout=120) as s:
        for _ in range(mib):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):  # the receiver closes once it has read everything
            pass
    return (mib << 20) * 8 / (time.monotonic() - start) / 1e9


def round_trips(host, seconds):
    with socket.create_connection((host, 5558), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        done, start = 0, time.monotonic()
        while time.monotonic() - start < seconds:
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise SystemExit(f"{host}: the echo broke off after {done} round trips")
            done += 1
        return done / (time.monotonic() - start)


def client(host, mib, seconds):
    print(json.dumps({"download": download(host, mib), "upload": upload(host, mib),
                      "rr": round_trips(host, seconds)}))


# ---- The harness.

def run(argv, **kwargs):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


class Namespaces:
    """The host's namespace (a multi-queue tap for the guest at 10.0.2.1, a veth end at 10.0.9.1)
    and the reference's (the veth's other end at 10.0.9.2)."""

    def __init__(self):
        self.host, self.reference = f"xknb-host-{os.getpid()}", f"xknb-ref-{os.getpid()}"
        run(["ip", "netns", "add", self.host])
        run(["ip", "netns", "add", self.reference])
        for step in (["-n", self.host, "tuntap", "add", "dev", "xkb0", "mode", "tap", "multi_queue"],
                     ["-n", self.host, "addr", "add", "10.0.2.1/24", "dev", "xkb0"],
                     ["-n", self.host, "link", "set", "xkb0", "up"],
                     ["-n", self.host, "link", "add", "xkv0", "type", "veth", "peer", "name", "xkv1", "netns",
                      self.reference],
                     ["-n", self.host, "addr", "add", "10.0.9.1/24", "dev", "xkv0"],
                     ["-n", self.reference, "addr", "add", "10.0.9.2/24", "dev", "xkv1"],
                     ["-n", self.host, "link", "set", "xkv0", "up"],
                     ["-n", self.reference, "link", "set", "xkv1", "up"],
                     ["-n", self.host, "link", "set", "lo", "up"],
                     ["-n", self.reference, "link", "set", "lo", "up"]):
            run(["ip"] + step)

    def inside(self, namespace, argv):
        return ["ip", "netns", "exec", namespace] + argv

    def close(self):
        for namespace in (self.host, self.reference):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def start_reference_servers(namespaces, directory, mib):
    """The guest's three servers, the same busybox programs, in the reference's namespace."""
    with open(os.path.join(directory, "blob"), "wb") as blob:
        blob.truncate(mib << 20)
    busybox = shutil.which("busybox") or "/bin/busybox"
    loops = [[busybox, "httpd", "-f", "-p", "8080", "-h", directory],
             ["sh", "-c", f"while :; do {busybox} nc -l -p 5557 < /dev/null > /dev/null; done"],
             ["sh", "-c", f"while :; do {busybox} nc -l -p 5558 -e /bin/cat; done"]]
    return [subprocess.Popen(namespaces.inside(namespaces.reference, argv), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for argv in loops]


def boot_guest(namespaces, vmm, tree, work, accel, mib, vcpus=2):
    """The Linux guest up and serving; returns its process."""
    vmlinuz = sorted(glob.glob(os.path.join(tree, "boot/vmlinuz-*")))[0]
    run([os.path.join(REPO, "tests/linux/build_guest_images.sh"), tree, work])
    cmdline = f"console=hvc0 root=/dev/xvda xenkvm.net={GUEST}/24,10.0.2.1 xenkvm.serve={mib} xenkvm.stay"
    argv = [vmm, "--kernel", vmlinuz, "--initrd", os.path.join(work, "initramfs.cpio.gz"), "--disk",
            f"target={os.path.join(work, 'root.img')},vdev=xvda", "--accel", accel, "--memory", "512",
            "--vcpus", str(vcpus), "--net", "vifname=xkb0", "--cmdline", cmdline]
    guest = subprocess.Popen(namespaces.inside(namespaces.host, argv), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    text, deadline = b"", time.monotonic() + 600
    while b"xenkvm-root: serving" not in text:
        ready, _, _ = select.select([guest.stdout], [], [], 1)
        chunk = os.read(guest.stdout.fileno(), 65536) if ready else b""
        if (ready and not chunk) or time.monotonic() > deadline:
            raise SystemExit(f"the guest never served:\n{text.decode(errors='replace')[-4000:]}")
        text += chunk
    return guest


def measure(namespaces, host, mib, seconds):
    me = os.path.abspath(__file__)
    done = run(namespaces.inside(namespaces.host, [sys.executable, me, "--client", host, "--mib", str(mib),
                                                   "--seconds", str(seconds)]), timeout=900)
    return json.loads(done.stdout)


def stop(process):
    try:
        os.killpg(process.pid, 9)
    except ProcessLookupError:
        pass
    process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accel", default="emu")
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3, help="each round-trip run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--vcpus", type=int, default=2)
    parser.add_argument("--vmm", default=None, help="xenkvm-vmm (default: the opt build's)")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client(args.client, args.mib, args.seconds)
    if os.geteuid() != 0:
        sys.exit("xen_net_guest_benchmark: needs root (network namespaces, a tap)")
    vmm = args.vmm or os.path.join(run(["bazel", "info", "-c", "opt", "bazel-bin"], cwd=REPO).stdout.strip(),
                                   "vmm/xenkvm-vmm")
    fetched = subprocess.run([os.path.join(REPO, "tests/linux/fetch_debian_kernel.sh")], capture_output=True, text=True)
    if fetched.returncode != 0:
        sys.exit(f"xen_net_guest_benchmark: the kernel could not be fetched: {fetched.stderr.strip()}")
    work = tempfile.mkdtemp(prefix="xenkvm-netbench-", dir="/var/tmp")
    namespaces, processes = Namespaces(), []
    try:
        processes += start_reference_servers(namespaces, work, args.mib)
        processes.append(boot_guest(namespaces, vmm, fetched.stdout.strip(), work, args.accel, args.mib,
                                    args.vcpus))
        results = {GUEST: [], REFERENCE: []}
        for _ in range(args.runs):  # alternated, so both see the same machine
            for host in (GUEST, REFERENCE):
                results[host].append(measure(namespaces, host, args.mib, args.seconds))
        print(f"xen-net through Debian's netfront on {args.accel} vs a veth pair, {args.mib} MiB, "
              f"medians of {args.runs}:")
        for key, unit in (("download", "Gbit/s"), ("upload", "Gbit/s"), ("rr", "round trips/s")):
            guest = statistics.median(r[key] for r in results[GUEST])
            veth = statistics.median(r[key] for r in results[REFERENCE])
            print(f"  {key:8}  guest {guest:10.3f} | veth {veth:10.3f} {unit:13} | ratio {guest / veth:.3f}")
    finally:
        for process in processes:
            stop(process)
        namespaces.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
