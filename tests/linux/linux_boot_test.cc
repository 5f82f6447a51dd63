// A kernel nobody here wrote: Debian's current cloud kernel package, fetched at test time
// (fetch_debian_kernel.sh), boots on the emu accelerator as a Xen PVH guest from its vmlinuz as
// shipped (a bzImage with an lz4 payload), with an initramfs built at test time
// (build_guest_images.sh: busybox-static and the kernel's own xen-blkfront module) and an ext4 root
// image on xen-disk. One boot with xenkvm-vmm, which the first tests read; then one through
// xenkvmd and xenkvmctl, as an operator runs it; then Debian's pvgrub2 booting the kernel and
// initramfs it finds on the guest's own disk, as Xen users boot their images.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "components/kvm/kvm.h"
#include "tests/testing/subprocess.h"

namespace xenkvm {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::Runfile;
using testing::RunProcess;

// Debian's kernel and the images built for it, once per test binary.
struct Images {
  std::string skip_reason;  // set when the kernel package cannot be fetched
  std::string setup_error;
  std::string vmlinuz;
  std::string initramfs;
  std::string root_image;
  std::string boot_image;  // root_image plus /boot: the kernel, the initramfs, grub.cfg
  std::string pvgrub;      // grub-i386-xen_pvh.bin, or empty with pvgrub_skip_reason
  std::string pvgrub_skip_reason;
};

// Expects the guest's /proof in `image`, read the way a host that mounts the image would see it.
// The guest powers off without unmounting (`poweroff -f` after `sync`), so its last metadata may
// be in the journal only, and a commit after the sync (ext4's background work) can be half
// written in place (debugfs on the raw image once found a block bitmap whose checksum did not
// match). A copy gets the journal replayed and is checked (e2fsck -p: 0 or 1 is consistent, 4 and
// above means it was not, e.g. a write lost) before the file is read.
void ExpectGuestProofIn(const std::string& image) {
  const std::string copy = absl::StrCat(::testing::TempDir(), "/proof-check.img");
  std::filesystem::copy_file(image, copy, std::filesystem::copy_options::overwrite_existing);
  testing::ProcessResult checked = RunProcess({"/sbin/e2fsck", "-fp", copy});
  EXPECT_TRUE(checked.status == 0 || checked.status == 1)
      << "e2fsck -fp on the guest's root (exit " << checked.status << "): " << checked.out << checked.err;
  testing::ProcessResult proof = RunProcess({"/sbin/debugfs", "-R", "cat /proof", copy});
  EXPECT_THAT(proof.out, HasSubstr("written by the guest on 6.")) << proof.err;
  std::filesystem::remove(copy);
}

// Fetches a Debian cloud kernel (`suite`: the machine's own when empty, else through
// XENKVM_DEBIAN_SUITE) and builds the images for it under `dir`.
Images FetchKernelAndBuildImages(const std::string& suite, const std::string& dir) {
  Images images;
  std::vector<std::string> fetch = {"/bin/bash", Runfile("tests/linux/fetch_debian_kernel.sh")};
  if (!suite.empty()) fetch.insert(fetch.begin(), {"/usr/bin/env", "XENKVM_DEBIAN_SUITE=" + suite});
  const std::string which = suite.empty() ? "Debian's cloud kernel" : "Debian " + suite + "'s cloud kernel";
  testing::ProcessResult fetched = RunProcess(fetch, absl::Minutes(5));
  if (fetched.status == 2) {
    images.skip_reason = absl::StrCat(which, " could not be fetched: ", fetched.err);
    return images;
  }
  if (fetched.status != 0) {
    images.setup_error = absl::StrCat("fetch_debian_kernel.sh (", which, ") failed: ", fetched.err);
    return images;
  }
  const std::string tree(absl::StripTrailingAsciiWhitespace(fetched.out));
  for (const auto& entry : std::filesystem::directory_iterator(tree + "/boot")) {
    if (entry.path().filename().string().rfind("vmlinuz-", 0) == 0) images.vmlinuz = entry.path();
  }
  testing::ProcessResult built =
      RunProcess({"/bin/bash", Runfile("tests/linux/build_guest_images.sh"), tree, dir}, absl::Minutes(2));
  if (images.vmlinuz.empty() || built.status != 0) {
    images.setup_error = absl::StrCat("no vmlinuz in ", tree, " or build_guest_images.sh failed: ", built.err);
    return images;
  }
  images.initramfs = dir + "/initramfs.cpio.gz";
  images.root_image = dir + "/root.img";
  images.boot_image = dir + "/boot.img";
  return images;
}

const Images& PrepareImages() {
  static const Images* images = [] {
    auto* images = new Images(FetchKernelAndBuildImages("", absl::StrCat(::testing::TempDir(), "/linux-images")));
    if (!images->skip_reason.empty() || !images->setup_error.empty()) return images;
    testing::ProcessResult pvgrub =
        RunProcess({"/bin/bash", Runfile("tests/linux/fetch_debian_pvgrub.sh")}, absl::Minutes(5));
    if (pvgrub.status == 0) {
      images->pvgrub = std::string(absl::StripTrailingAsciiWhitespace(pvgrub.out));
    } else if (pvgrub.status == 2) {
      images->pvgrub_skip_reason = absl::StrCat("Debian's pvgrub2 (grub-xen-host) could not be fetched: ", pvgrub.err);
    } else {
      images->setup_error = absl::StrCat("fetch_debian_pvgrub.sh failed: ", pvgrub.err);
    }
    return images;
  }();
  return *images;
}

#define IMAGES_OR_SKIP(images)                                          \
  const Images& images = PrepareImages();                               \
  if (!images.skip_reason.empty()) GTEST_SKIP() << images.skip_reason; \
  ASSERT_TRUE(images.setup_error.empty()) << images.setup_error

struct Boot {
  const Images* images = nullptr;
  testing::ProcessResult result;
  std::string network_skip_reason;  // why the boot had no vif
  std::string fetched;  // what the host's peer fetched from the guest: "BYTES SHA256"
  std::string sent;     // what it sent the guest: "BYTES SHA256"
  std::string Context() const {
    const std::string& out = result.out;
    return absl::StrCat("console (tail):\n", out.substr(out.size() > 8000 ? out.size() - 8000 : 0),
                        "\nxenkvm-vmm:\n", result.err, "\nhost fetched: ", fetched,
                        "\nhost sent: ", sent);
  }
};

// A network namespace of the test's own with a tap at 10.0.2.1/24 (multi-queue, so a vif may have
// several queues on it): the guest's vif and the host's end of it see only each other. Removed (with the tap) when it goes.
class TestNetwork {
 public:
  static constexpr char kTap[] = "xkt0";
  static constexpr char kHostAddress[] = "10.0.2.1";
  TestNetwork() : name_(absl::StrCat("xenkvm-test-", getpid())) {
    for (const std::vector<std::string>& step :
         {std::vector<std::string>{"netns", "add", name_},
          {"-n", name_, "tuntap", "add", "dev", kTap, "mode", "tap", "multi_queue"},
          {"-n", name_, "addr", "add", absl::StrCat(kHostAddress, "/24"), "dev", kTap},
          {"-n", name_, "link", "set", kTap, "up"}}) {
      std::vector<std::string> argv = {"/bin/ip"};
      argv.insert(argv.end(), step.begin(), step.end());
      testing::ProcessResult done = RunProcess(argv);
      if (done.status != 0) {
        error_ = absl::StrCat("ip ", absl::StrJoin(step, " "), ": ", done.err);
        return;
      }
      created_ = true;
    }
  }
  ~TestNetwork() {
    if (created_) RunProcess({"/bin/ip", "netns", "del", name_});
  }
  const std::string& error() const { return error_; }
  // `argv` run inside the namespace.
  std::vector<std::string> Inside(std::vector<std::string> argv) const {
    argv.insert(argv.begin(), {"/bin/ip", "netns", "exec", name_});
    return argv;
  }

 private:
  std::string name_;
  std::string error_;
  bool created_ = false;
};

// The host's end of the guest's TCP transfers (xenkvm.tcp): fetches the guest's 512 KiB over HTTP
// from its busybox httpd (sent with sendfile: segments as large as the guest's TSO makes them),
// then sends it 512 KiB of its own on port 5556, printing for each "BYTES SHA256" on a line.
constexpr char kPeer[] = R"(
import hashlib, os, socket, time
deadline = time.time() + 300
def retry(attempt):
    while True:
        try:
            return attempt()
        except OSError:
            if time.time() > deadline: raise
            time.sleep(0.5)
def fetch():
    s = socket.create_connection(("10.0.2.2", 8080), timeout=60)
    s.sendall(b"GET /blob HTTP/1.0\r\n\r\n"); reply = b""
    while True:
        d = s.recv(65536)
        if not d: break
        reply += d
    s.close(); return reply.split(b"\r\n\r\n", 1)[1]
got = retry(fetch)
print(len(got), hashlib.sha256(got).hexdigest(), flush=True)
blob = os.urandom(524288)
s = retry(lambda: socket.create_connection(("10.0.2.2", 5556), timeout=2))
s.settimeout(60); s.sendall(blob); s.shutdown(socket.SHUT_WR)
while s.recv(4096): pass
s.close(); print(len(blob), hashlib.sha256(blob).hexdigest(), flush=True)
)";

// One boot with xenkvm-vmm directly, which the first tests read: the root on xen-disk, and a vif
// on a tap in a network namespace of its own, to which the guest talks.
const Boot& BootDebianKernel() {
  static const Boot* boot = [] {
    auto* boot = new Boot;
    boot->images = &PrepareImages();
    const Images& images = *boot->images;
    if (!images.skip_reason.empty() || !images.setup_error.empty()) return boot;
    std::vector<std::string> argv = {Runfile("vmm/xenkvm-vmm"), "--kernel", images.vmlinuz, "--initrd",
                                     images.initramfs, "--disk", absl::StrCat("target=", images.root_image, ",vdev=xvda"),
                                     "--accel", "emu", "--vcpus", "2", "--memory", "512", "--cmdline",
                                     "console=hvc0 root=/dev/xvda"};
    TestNetwork network;
    pid_t peer = -1;
    const std::string peer_log = absl::StrCat(::testing::TempDir(), "/peer.log");
    if (network.error().empty()) {
      argv.back() += absl::StrCat(" xenkvm.net=10.0.2.2/24,", TestNetwork::kHostAddress, " xenkvm.tcp");
      argv.insert(argv.end(), {"--net", absl::StrCat("vifname=", TestNetwork::kTap)});
      argv = network.Inside(argv);
      peer = testing::StartProcess(network.Inside({"/usr/bin/python3", "-c", kPeer}), peer_log);
    } else {
      boot->network_skip_reason = absl::StrCat("no network namespace with a tap here: ", network.error());
    }
    boot->result = RunProcess(argv, absl::Minutes(5));
    if (peer > 0) {
      kill(peer, SIGTERM);  // done already when the guest took everything
      waitpid(peer, nullptr, 0);
      std::ifstream log(peer_log);
      std::getline(log, boot->fetched);
      std::getline(log, boot->sent);
    }
    return boot;
  }();
  return *boot;
}

#define BOOT_OR_SKIP(boot)       \
  IMAGES_OR_SKIP(images);        \
  const Boot& boot = BootDebianKernel()

// Everything up to the guest's own userspace: the bzImage's ELF found, Xen found, the ACPI tables
// read (the vCPU, hardware-reduced sleep), the Xen clock and timer, grant tables set up (their
// frames outside RAM), the initramfs's busybox running.
TEST(LinuxBootTest, DebianCloudKernelBootsToItsInitramfsOnEmu) {
  BOOT_OR_SKIP(boot);
  const std::string& out = boot.result.out;
  EXPECT_THAT(boot.result.err, HasSubstr("bzImage (boot protocol 2.")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("Linux version 6.")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("Booting kernel on Xen PVH")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("ACPI: RSDP 0x00000000000E0000")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("ACPI: PM: (supports S0 S5)")) << boot.Context();
  // Both vCPUs: the MADT names two, the second starts through INIT and start-up IPIs (real mode).
  EXPECT_THAT(out, HasSubstr("smpboot: Allowing 2 CPUs")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("smp: Brought up 1 node, 2 CPUs")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("installing Xen timer for CPU 1")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("Xen HVM callback vector for event delivery is enabled")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("installing Xen timer for CPU 0")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("clocksource: Switched to clocksource xen")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("Grant tables using version 1 layout")) << boot.Context();
  EXPECT_THAT(out, Not(HasSubstr("add_to_physmap failed"))) << boot.Context();
  EXPECT_THAT(out, HasSubstr("Run /init as init process")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("initramfs: loading")) << boot.Context();  // busybox's shell runs
  EXPECT_THAT(out, Not(HasSubstr("segfault"))) << boot.Context();
  EXPECT_THAT(out, HasSubstr("ACPI: PM: Preparing to enter system sleep state S5")) << boot.Context();
  EXPECT_EQ(boot.result.status, 0) << boot.Context();  // `poweroff -f`, through ACPI's S5
}

// The rest: xen-blkfront loaded (alternatives applied to it, which needs the emu's SERIALIZE), the
// root on xen-disk mounted and switched to, the root's init proving where it runs, its file in the
// image, read back on the host without a mount.
TEST(LinuxBootTest, DebianCloudKernelRunsItsRootFromXenDiskOnEmu) {
  BOOT_OR_SKIP(boot);
  const std::string& out = boot.result.out;
  EXPECT_THAT(out, HasSubstr("blkfront: xvda:")) << boot.Context();  // the module, loaded by insmod
  EXPECT_THAT(out, HasSubstr("EXT4-fs (xvda): mounted filesystem")) << boot.Context();
  EXPECT_THAT(out, Not(HasSubstr("Oops"))) << boot.Context();
  EXPECT_THAT(out, HasSubstr("xenkvm-root: hypervisor=xen")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("xenkvm-root: cpus=2 online=0-1")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("xenkvm-root: ran-on-cpu1=1")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("xenkvm-root: root=/dev/xvda ext4")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("xenkvm-root: root-driver=vbd")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("XENKVM-LINUX-ROOT-OK")) << boot.Context();
  EXPECT_EQ(boot.result.status, 0) << boot.Context();
  ExpectGuestProofIn(images.root_image);
}

// Debian 13's cloud kernel (Linux 6.12, fetched from trixie through a private apt configuration):
// since 6.9 Linux trusts the MADT's CPUs only when the boot CPU's IA32_APIC_BASE carries the BSP
// flag, which the emu answers itself (Unicorn reads that MSR as 0).
TEST(LinuxBootTest, NewerDebianCloudKernelRunsItsRootOnBothCpusOnEmu) {
  const Images images = FetchKernelAndBuildImages("trixie", absl::StrCat(::testing::TempDir(), "/linux-images-trixie"));
  if (!images.skip_reason.empty()) GTEST_SKIP() << images.skip_reason;
  ASSERT_TRUE(images.setup_error.empty()) << images.setup_error;
  Boot boot;
  boot.result = RunProcess({Runfile("vmm/xenkvm-vmm"), "--kernel", images.vmlinuz, "--initrd", images.initramfs,
                            "--disk", absl::StrCat("target=", images.root_image, ",vdev=xvda"), "--accel", "emu",
                            "--vcpus", "2", "--memory", "512", "--cmdline", "console=hvc0 root=/dev/xvda"},
                           absl::Minutes(5));
  const std::string& out = boot.result.out;
  EXPECT_THAT(out, Not(HasSubstr("not marked in APICBASE"))) << boot.Context();
  EXPECT_THAT(out, HasSubstr("smp: Brought up 1 node, 2 CPUs")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("xenkvm-root: hypervisor=xen")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("xenkvm-root: cpus=2 online=0-1")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("xenkvm-root: ran-on-cpu1=1")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("xenkvm-root: root-driver=vbd")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("XENKVM-LINUX-ROOT-OK")) << boot.Context();
  EXPECT_EQ(boot.result.status, 0) << boot.Context();
  ExpectGuestProofIn(images.root_image);
}

// One vCPU: the emu then runs the guest's blocks with no hook at all (components/accel/README.md,
// "Stops are exact from any thread"), so the kernel's timer, event-channel upcalls, disk
// completions and interrupt windows all arrive by stops sent from other threads and by the
// instructions that set IF.
TEST(LinuxBootTest, DebianCloudKernelRunsItsRootOnOneCpuOnEmu) {
  IMAGES_OR_SKIP(images);
  const std::string root = absl::StrCat(::testing::TempDir(), "/one-cpu-root.img");
  std::filesystem::copy_file(images.root_image, root, std::filesystem::copy_options::overwrite_existing);
  Boot boot;
  boot.result = RunProcess({Runfile("vmm/xenkvm-vmm"), "--kernel", images.vmlinuz, "--initrd", images.initramfs,
                            "--disk", absl::StrCat("target=", root, ",vdev=xvda"), "--accel", "emu", "--vcpus", "1",
                            "--memory", "512", "--cmdline", "console=hvc0 root=/dev/xvda"},
                           absl::Minutes(5));
  const std::string& out = boot.result.out;
  EXPECT_THAT(out, Not(HasSubstr("Oops"))) << boot.Context();
  EXPECT_THAT(out, HasSubstr("xenkvm-root: cpus=1 online=0")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("xenkvm-root: root-driver=vbd")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("XENKVM-LINUX-ROOT-OK")) << boot.Context();
  EXPECT_EQ(boot.result.status, 0) << boot.Context();
}

// The kernel's own xen-netfront on xenkvm's xen-net: the vif found in XenStore, connected with
// checksum and segmentation offloads both ways (the tap with IFF_VNET_HDR), an address on it, ICMP
// echo to the host's end of the tap, and 512 KiB over TCP each way that arrive whole (the
// receiver computes the same SHA-256 the sender printed).
TEST(LinuxBootTest, DebianCloudKernelNetfrontTalksToTheHostThroughATap) {
  BOOT_OR_SKIP(boot);
  if (!boot.network_skip_reason.empty()) GTEST_SKIP() << boot.network_skip_reason;
  const std::string& out = boot.result.out;
  EXPECT_THAT(boot.result.err, HasSubstr("xen-net vif0: connected to tap xkt0")) << boot.Context();
  // A queue for each of the guest's two vCPUs, each on a queue of the (multi-queue) tap.
  EXPECT_THAT(boot.result.err, HasSubstr("2 queue(s)")) << boot.Context();
  EXPECT_THAT(boot.result.err, HasSubstr("rx checksum offload, rx tso4, rx tso6")) << boot.Context();
  // Segmentation left to the host's stack one way and to the guest's the other (the counts at
  // disconnection: neither is zero).
  EXPECT_THAT(boot.result.err, ::testing::ContainsRegex(
                                   "disconnected after tx [0-9]+ packets \\([1-9][0-9]* segmentation-offloaded\\), "
                                   "rx [0-9]+ \\([1-9][0-9]*\\)"))
      << boot.Context();
  EXPECT_THAT(out, HasSubstr("xenkvm-root: net-driver=vif")) << boot.Context();
  EXPECT_THAT(out, HasSubstr("xenkvm-root: ping=ok")) << boot.Context();
  const size_t at = out.find("xenkvm-root: blob-sha256=");
  ASSERT_NE(at, std::string::npos) << boot.Context();
  const std::string sha256 = out.substr(at + 25, 64);
  EXPECT_EQ(boot.fetched, absl::StrCat("524288 ", sha256)) << boot.Context();
  const size_t received = out.find("xenkvm-root: blob-received=");
  ASSERT_NE(received, std::string::npos) << boot.Context();
  ASSERT_FALSE(boot.sent.empty()) << boot.Context();
  EXPECT_EQ(out.substr(received + 27, boot.sent.size()), boot.sent) << boot.Context();
}

// Why this host's KVM cannot run a distribution's kernel, or nothing when it can: KVM must be
// usable, not KVM-PVM (its instruction emulator, which runs every guest instruction, lacks
// cmpxchg16b, xrstor, popcnt, ldmxcsr...), and hand inline VMCALL hypercalls to userspace
// (CONFIG_KVM_XEN's KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL: Debian's 6.1 kernels make every hypercall
// that way).
std::string KvmCannotRunLinux() {
  if (absl::Status usable = kvm::KvmUsable(); !usable.ok()) {
    return absl::StrCat("KVM is not usable here: ", usable.message());
  }
  if (access("/sys/module/kvm_pvm", F_OK) == 0) {
    return "this host's KVM is KVM-PVM, whose instruction emulator cannot run a stock kernel "
           "(cmpxchg16b, xrstor, popcnt, ldmxcsr fail; QEMU -accel kvm dies there too)";
  }
  absl::StatusOr<kvm::Kvm> system = kvm::Kvm::Open();
  absl::StatusOr<kvm::XenCapabilities> xen =
      system.ok() ? system->ProbeXen() : absl::StatusOr<kvm::XenCapabilities>(system.status());
  if (!xen.ok() || !xen->Has(kvm::XenCapability::kInterceptHypercall)) {
    return absl::StrCat("this host kernel does not hand Xen hypercalls made with VMCALL to userspace (no "
                        "CONFIG_KVM_XEN INTERCEPT_HCALL: ",
                        xen.ok() ? xen->ToString() : std::string(xen.status().message()), ")");
  }
  return "";
}

// The same kernel on kvm, where the host can run it.
TEST(LinuxBootTest, DebianCloudKernelRunsItsRootFromXenDiskOnKvm) {
  IMAGES_OR_SKIP(images);
  if (std::string why = KvmCannotRunLinux(); !why.empty()) GTEST_SKIP() << why;
  testing::ProcessResult result =
      RunProcess({Runfile("vmm/xenkvm-vmm"), "--kernel", images.vmlinuz, "--initrd", images.initramfs, "--disk",
                  absl::StrCat("target=", images.root_image, ",vdev=xvda"), "--accel", "kvm", "--vcpus", "2",
                  "--memory", "512", "--cmdline", "console=hvc0 root=/dev/xvda"},
                 absl::Minutes(5));
  EXPECT_THAT(result.out, HasSubstr("xenkvm-root: hypervisor=xen")) << result.err;
  EXPECT_THAT(result.out, HasSubstr("xenkvm-root: cpus=2 online=0-1")) << result.err;
  EXPECT_THAT(result.out, HasSubstr("XENKVM-LINUX-ROOT-OK")) << result.err;
  EXPECT_EQ(result.status, 0) << result.err;
}

// xenkvmd in a directory of its own (short: the per-VM sockets live under it), driven with xenkvmctl.
class Xenkvmd {
 public:
  // In `network`'s namespace when given (its VMMs' taps are there).
  explicit Xenkvmd(const std::string& dir, const TestNetwork* network = nullptr) : dir_(dir), socket_(dir + "/d.sock") {
    std::vector<std::string> argv = {Runfile("api/xenkvmd"), "--socket", socket_, "--state-dir", dir + "/s", "--vmm",
                                     Runfile("vmm/xenkvm-vmm")};
    pid_ = testing::StartProcess(network ? network->Inside(argv) : argv, dir + "/daemon.log");
    for (int i = 0; i < 100 && access(socket_.c_str(), F_OK) != 0; ++i) absl::SleepFor(absl::Milliseconds(50));
  }
  ~Xenkvmd() {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
    std::error_code error;
    std::filesystem::remove_all(dir_, error);
  }
  testing::ProcessResult Ctl(std::vector<std::string> args) const {
    args.insert(args.begin(), {Runfile("tools/xenkvmctl"), "--socket", socket_});
    return RunProcess(args, absl::Minutes(2));
  }

 private:
  std::string dir_;
  std::string socket_;
  pid_t pid_ = 0;
};

// The way an operator runs it: an xl.cfg through xenkvmd, its console through xenkvmctl, and
// `xenkvmctl shutdown` powering it off through XenStore (the kernel's own shutdown watcher runs
// /sbin/poweroff, which the root's init answers).
// What `xenkvmctl info` says the guest holds, in KiB (0 when it does not say).
uint64_t HeldKib(const std::string& info) {
  const std::string key = "the guest holds ";
  const size_t at = info.find(key);
  uint64_t kib = 0;
  if (at == std::string::npos) return 0;
  const std::string number = info.substr(at + key.size(), info.find(' ', at + key.size()) - at - key.size());
  return absl::SimpleAtoi(number, &kib) ? kib : 0;
}

// Linux's balloon driver follows `xenkvmctl mem-set` (XenStore memory/target): it gives 128 MiB
// back with XENMEM_decrease_reservation and takes it again with populate_physmap.
TEST(LinuxBootTest, DebianCloudKernelThroughXenkvmdBalloonsAndShutsDownThroughXenStore) {
  IMAGES_OR_SKIP(images);
  char dir[] = "/tmp/xkl-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const TestNetwork network;
  const bool with_network = network.error().empty();
  const Xenkvmd daemon(dir, with_network ? &network : nullptr);
  auto ctl = [&daemon](std::vector<std::string> args) { return daemon.Ctl(std::move(args)); };
  const std::string config = absl::StrCat(dir, "/debian.cfg");
  std::ofstream(config) << "name = \"debian\"\ntype = \"pvh\"\nkernel = \"" << images.vmlinuz << "\"\nramdisk = \""
                        << images.initramfs << "\"\nextra = \"console=hvc0 root=/dev/xvda xenkvm.stay"
                        << (with_network ? " xenkvm.net=10.0.2.2/24,10.0.2.1" : "") << "\"\n"
                        << "memory = 512\nvcpus = 2\naccelerator = \"emu\"\ndisk = [ 'target=" << images.root_image
                        << ",vdev=xvda,access=rw' ]\n"
                        << (with_network ? "vif = [ 'vifname=xkt0,mac=00:16:3e:00:00:42' ]\n" : "");
  testing::ProcessResult created = ctl({"create", config});
  ASSERT_EQ(created.status, 0) << created.err;
  std::string console;
  for (int i = 0; i < 240 && console.find("XENKVM-LINUX-WAITING") == std::string::npos; ++i) {
    absl::SleepFor(absl::Milliseconds(500));
    console = ctl({"console", "debian", "--no-follow"}).out;
  }
  EXPECT_THAT(console, HasSubstr("Linux version 6.")) << console;
  EXPECT_THAT(console, HasSubstr("xenkvm-root: cpus=2")) << console;
  ASSERT_THAT(console, HasSubstr("XENKVM-LINUX-WAITING")) << console;
  EXPECT_THAT(console, HasSubstr("xen:events: Using FIFO-based ABI")) << console;
  if (with_network) {
    // The vif from xl.cfg's vif: connected, the guest's ping counted; then unplugged while the host
    // pings the guest (the guest's netfront lets go mid-traffic) and plugged again (it connects to
    // the new one, the guest configures it, and the host's pings are answered again).
    EXPECT_THAT(console, HasSubstr("xenkvm-root: ping=ok")) << console;
    // Only what the guest printed after the boot goes with a failure below: a CI log that keeps a
    // failure's first and last lines then still shows the guest's account of the unplug and plug.
    auto console_since_boot = [&] {
      const std::string now = ctl({"console", "debian", "--no-follow"}).out;
      return now.size() >= console.size() ? now.substr(console.size()) : now;
    };
    std::string vifs = ctl({"network-list", "debian"}).out;
    EXPECT_THAT(vifs, ::testing::ContainsRegex("0 +00:16:3e:00:00:42 +xkt0 +- +Connected +Connected +[1-9]")) << vifs;
    testing::ProcessResult flowing;
    std::thread traffic([&] { flowing = RunProcess(network.Inside({"/usr/bin/busybox", "ping", "-i", "0.2", "-w", "20", "10.0.2.2"}), absl::Seconds(40)); });
    absl::SleepFor(absl::Seconds(3));
    // emu under load is slow: time enough for netfront to close, as xl's default 10 s may not be.
    testing::ProcessResult detached = ctl({"network-detach", "debian", "00:16:3e:00:00:42", "--timeout", "120"});
    traffic.join();
    EXPECT_THAT(flowing.out, HasSubstr("bytes from 10.0.2.2")) << flowing.out << flowing.err;  // flowing at the unplug
    EXPECT_EQ(detached.status, 0) << detached.err;
    EXPECT_THAT(detached.out, HasSubstr("released by the guest"));
    EXPECT_THAT(ctl({"network-list", "debian"}).out, Not(HasSubstr("xkt0")));
    testing::ProcessResult attached = ctl({"network-attach", "debian", "vifname=xkt0"});
    ASSERT_EQ(attached.status, 0) << attached.err;
    EXPECT_THAT(attached.out, HasSubstr("vif1 attached"));  // indexes are not reused
    for (int i = 0; i < 240; ++i) {
      vifs = ctl({"network-list", "debian"}).out;
      if (::testing::Matches(::testing::ContainsRegex("Connected +Connected"))(vifs)) break;
      absl::SleepFor(absl::Milliseconds(500));
    }
    EXPECT_THAT(vifs, ::testing::ContainsRegex("1 +00:16:3e:[0-9a-f:]+ +xkt0 +- +Connected +Connected"))
        << vifs << "the console since the boot:\n" << console_since_boot();
    bool answered = false;
    for (int i = 0; i < 60 && !answered; ++i) {
      answered = RunProcess(network.Inside({"/usr/bin/busybox", "ping", "-c", "1", "-W", "2", "10.0.2.2"}), absl::Seconds(10)).status == 0;
    }
    EXPECT_TRUE(answered) << "the replugged vif never answered; the console since the boot:\n"
                          << console_since_boot();
  } else {
    std::cout << "no vif in this boot: " << network.error() << "\n";
  }
  for (const uint64_t target_mib : {384, 512}) {
    testing::ProcessResult set = ctl({"mem-set", "debian", absl::StrCat(target_mib)});
    ASSERT_EQ(set.status, 0) << set.err;
    uint64_t held = 0;
    for (int i = 0; i < 240; ++i) {
      held = HeldKib(ctl({"info", "debian"}).out);
      if (held + 4096 >= target_mib * 1024 && held <= target_mib * 1024 + 4096) break;
      absl::SleepFor(absl::Milliseconds(500));
    }
    EXPECT_NEAR(static_cast<double>(held), static_cast<double>(target_mib * 1024), 4096) << "target " << target_mib << " MiB";
  }
  testing::ProcessResult shutdown = ctl({"shutdown", "debian"});
  EXPECT_EQ(shutdown.status, 0) << shutdown.err;
  const std::string info = ctl({"info", "debian"}).out;
  EXPECT_THAT(info, HasSubstr("shutdown")) << info;
  EXPECT_THAT(info, HasSubstr("the guest powered off")) << info;  // not destroyed at the deadline
  EXPECT_THAT(ctl({"console", "debian", "--no-follow"}).out, HasSubstr("xenkvm-root: shutdown asked"));
}

// Xen users boot the kernel inside their image: `kernel =` names Debian's pvgrub2 for PVH and the
// only other thing is the disk. GRUB (32-bit, PVH) asks Xen for the memory map, places its grant
// table and shared info outside RAM, reads /boot/grub/grub.cfg, the kernel and the initramfs with
// its own blkfront, and starts Linux with the bzImage protocol; Linux finds Xen and the ACPI tables
// itself and runs the same root as above.
TEST(LinuxBootTest, Pvgrub2BootsTheKernelOnTheGuestDiskThroughXenkvmd) {
  IMAGES_OR_SKIP(images);
  if (!images.pvgrub_skip_reason.empty()) GTEST_SKIP() << images.pvgrub_skip_reason;
  char dir[] = "/tmp/xkg-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::optional<Xenkvmd> daemon(std::in_place, dir);
  auto ctl = [&daemon](std::vector<std::string> args) { return daemon->Ctl(std::move(args)); };
  const std::string config = absl::StrCat(dir, "/pvgrub.cfg");
  std::ofstream(config) << "name = \"own-kernel\"\ntype = \"pvh\"\nkernel = \"" << images.pvgrub
                        << "\"\nmemory = 512\nvcpus = 2\naccelerator = \"emu\"\ndisk = [ 'target=" << images.boot_image
                        << ",vdev=xvda,access=rw' ]\n";
  testing::ProcessResult created = ctl({"create", config});
  ASSERT_EQ(created.status, 0) << created.err;
  std::string info;
  for (int i = 0; i < 480 && info.find("the guest powered off") == std::string::npos; ++i) {
    absl::SleepFor(absl::Milliseconds(500));
    info = ctl({"info", "own-kernel"}).out;
  }
  const std::string console = ctl({"console", "own-kernel", "--no-follow"}).out;
  EXPECT_THAT(info, HasSubstr("the guest powered off")) << info << console;
  EXPECT_THAT(console, HasSubstr("Welcome to GRUB!")) << console;
  EXPECT_THAT(console, HasSubstr("Loading the kernel from the guest disk")) << console;
  EXPECT_THAT(console, HasSubstr("Linux version 6.")) << console;
  EXPECT_THAT(console, HasSubstr("Booting paravirtualized kernel on Xen PVH")) << console;
  EXPECT_THAT(console, HasSubstr("xenkvm-root: cpus=2 online=0-1")) << console;
  EXPECT_THAT(console, HasSubstr("xenkvm-root: root=/dev/xvda ext4")) << console;
  EXPECT_THAT(console, HasSubstr("XENKVM-LINUX-ROOT-OK")) << console;
  daemon.reset();  // the image is released before it is read
  ExpectGuestProofIn(images.boot_image);
}

}  // namespace
}  // namespace xenkvm
