// A kernel nobody here wrote: Debian's current cloud kernel, fetched at test time
// (fetch_debian_kernel.sh), boots on the emu accelerator as a Xen PVH guest. This is the emu issue's
// milestone: the kernel switches to its own page tables, takes its early page faults (its
// early_make_pgtable handler builds the direct map on demand), finds Xen, and goes on through the
// whole of its init to the mount of a root filesystem it was not given, where it panics and tells
// Xen (SCHEDOP_shutdown crash). The root on xen-disk comes with the real-Linux issue.
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
using testing::Runfile;
using testing::RunProcess;

TEST(LinuxBootTest, DebianCloudKernelBootsOnEmuToItsRootMount) {
  testing::ProcessResult fetched =
      RunProcess({"/bin/bash", Runfile("tests/linux/fetch_debian_kernel.sh")}, absl::Minutes(5));
  if (fetched.status == 2) GTEST_SKIP() << "Debian's cloud kernel could not be fetched: " << fetched.err;
  ASSERT_EQ(fetched.status, 0) << fetched.err;
  const std::string tree(absl::StripTrailingAsciiWhitespace(fetched.out));
  std::string vmlinuz;
  for (const auto& entry : std::filesystem::directory_iterator(tree + "/boot")) {
    if (entry.path().filename().string().rfind("vmlinuz-", 0) == 0) vmlinuz = entry.path();
  }
  ASSERT_FALSE(vmlinuz.empty()) << tree << "/boot holds no vmlinuz";

  // The bzImage as Debian ships it (an lz4 payload): the loader finds the ELF inside.
  testing::ProcessResult boot = RunProcess({Runfile("vmm/xenkvm-vmm"), "--kernel", vmlinuz, "--accel", "emu",
                                            "--memory", "512", "--cmdline", "console=hvc0 earlyprintk=xen"},
                                           absl::Minutes(5));
  const std::string context = absl::StrCat("console:\n", boot.out.substr(boot.out.size() > 6000 ? boot.out.size() - 6000 : 0),
                                           "\nxenkvm-vmm:\n", boot.err);
  EXPECT_THAT(boot.out, HasSubstr("Linux version 6.")) << context;
  EXPECT_THAT(boot.out, HasSubstr("Hypervisor detected: Xen HVM")) << context;
  EXPECT_THAT(boot.out, HasSubstr("Xen version 4.17")) << context;
  EXPECT_THAT(boot.out, HasSubstr("Booting kernel on Xen PVH")) << context;
  EXPECT_THAT(boot.out, HasSubstr("Xen HVM callback vector for event delivery is enabled")) << context;
  EXPECT_THAT(boot.out, HasSubstr("VFS: Unable to mount root fs")) << context;
  EXPECT_EQ(boot.status, 5) << context;  // crashed: the panic, reported to Xen
  EXPECT_THAT(boot.err, HasSubstr("SCHEDOP_shutdown crash")) << context;
}

}  // namespace
}  // namespace xenkvm
