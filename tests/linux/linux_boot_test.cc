// A kernel nobody here wrote: Debian's current cloud kernel package, fetched at test time
// (fetch_debian_kernel.sh), boots on the emu accelerator as a Xen PVH guest from its vmlinuz as
// shipped (a bzImage with an lz4 payload), with an initramfs built at test time
// (build_guest_images.sh: busybox-static and the kernel's own xen-blkfront module) and an ext4 root
// image on xen-disk. One boot; the tests read its console.
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"

namespace xenkvm {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::Runfile;
using testing::RunProcess;

struct Boot {
  std::string skip_reason;  // set when the kernel package cannot be fetched
  std::string setup_error;
  std::string root_image;
  testing::ProcessResult result;
  std::string Context() const {
    const std::string& out = result.out;
    return absl::StrCat("console (tail):\n", out.substr(out.size() > 8000 ? out.size() - 8000 : 0),
                        "\nxenkvm-vmm:\n", result.err);
  }
};

const Boot& BootDebianKernel() {
  static const Boot* boot = [] {
    auto* boot = new Boot;
    testing::ProcessResult fetched =
        RunProcess({"/bin/bash", Runfile("tests/linux/fetch_debian_kernel.sh")}, absl::Minutes(5));
    if (fetched.status == 2) {
      boot->skip_reason = absl::StrCat("Debian's cloud kernel could not be fetched: ", fetched.err);
      return boot;
    }
    if (fetched.status != 0) {
      boot->setup_error = absl::StrCat("fetch_debian_kernel.sh failed: ", fetched.err);
      return boot;
    }
    const std::string tree(absl::StripTrailingAsciiWhitespace(fetched.out));
    std::string vmlinuz;
    for (const auto& entry : std::filesystem::directory_iterator(tree + "/boot")) {
      if (entry.path().filename().string().rfind("vmlinuz-", 0) == 0) vmlinuz = entry.path();
    }
    const std::string images = absl::StrCat(::testing::TempDir(), "/linux-images");
    testing::ProcessResult built = RunProcess(
        {"/bin/bash", Runfile("tests/linux/build_guest_images.sh"), tree, images}, absl::Minutes(2));
    if (vmlinuz.empty() || built.status != 0) {
      boot->setup_error = absl::StrCat("no vmlinuz in ", tree, " or build_guest_images.sh failed: ", built.err);
      return boot;
    }
    boot->root_image = images + "/root.img";
    boot->result = RunProcess({Runfile("vmm/xenkvm-vmm"), "--kernel", vmlinuz, "--initrd",
                               images + "/initramfs.cpio.gz", "--disk",
                               absl::StrCat("target=", boot->root_image, ",vdev=xvda"), "--accel", "emu",
                               "--vcpus", "2", "--memory", "512", "--cmdline", "console=hvc0 root=/dev/xvda"},
                              absl::Minutes(5));
    return boot;
  }();
  return *boot;
}

#define BOOT_OR_SKIP(boot)                                          \
  const Boot& boot = BootDebianKernel();                            \
  if (!boot.skip_reason.empty()) GTEST_SKIP() << boot.skip_reason; \
  ASSERT_TRUE(boot.setup_error.empty()) << boot.setup_error

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
  testing::ProcessResult proof = RunProcess({"/sbin/debugfs", "-R", "cat /proof", boot.root_image});
  EXPECT_THAT(proof.out, HasSubstr("written by the guest on 6.")) << proof.err;
}

}  // namespace
}  // namespace xenkvm
