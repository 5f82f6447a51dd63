// The archive binaries link (../BUILD.bazel, libunicorn_x86_64) carries x86-64 alone, and an
// engine's translation buffer keeps its first huge page in small pages (translation_buffer.cc).
#include <unicorn/unicorn.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

extern "C" void uc_init_arm(void*) __attribute__((weak));
extern "C" void uc_init_aarch64(void*) __attribute__((weak));
extern "C" void uc_init_mips(void*) __attribute__((weak));
extern "C" void uc_init_x86_64(void*) __attribute__((weak));

namespace {

TEST(UnicornLink, OnlyX86IsLinkedIn) {
  EXPECT_EQ(&uc_init_arm, nullptr);
  EXPECT_EQ(&uc_init_aarch64, nullptr);
  EXPECT_EQ(&uc_init_mips, nullptr);
  EXPECT_NE(&uc_init_x86_64, nullptr);
}

struct Vma {
  uint64_t start, end;
  std::string permissions, flags;
};

std::vector<Vma> AnonymousExecutableVmas() {
  std::vector<Vma> vmas;
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  while (std::getline(smaps, line)) {
    std::istringstream fields(line);
    std::string range, permissions, offset, device, inode, path;
    fields >> range >> permissions >> offset >> device >> inode >> path;
    if (range.find('-') != std::string::npos && device.find(':') != std::string::npos) {
      if (permissions == "rwxp" && path.empty() && inode == "0") {
        vmas.push_back({std::stoull(range.substr(0, range.find('-')), nullptr, 16),
                        std::stoull(range.substr(range.find('-') + 1), nullptr, 16), permissions, ""});
      } else if (!vmas.empty() && vmas.back().flags.empty()) {
        vmas.back().flags = "-";  // the next mapping's header: that one's flags are done
      }
    } else if (line.rfind("VmFlags:", 0) == 0 && !vmas.empty() && vmas.back().flags.empty()) {
      vmas.back().flags = line;
    }
  }
  return vmas;
}

TEST(UnicornLink, TheTranslationBufferStartsInSmallPages) {
  if (!std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled")) {
    GTEST_SKIP() << "this kernel has no transparent huge pages (MADV_HUGEPAGE is refused)";
  }
  uc_engine* uc = nullptr;
  ASSERT_EQ(uc_open(UC_ARCH_X86, UC_MODE_64, &uc), UC_ERR_OK);
  ASSERT_EQ(uc_mem_map(uc, 0x1000, 0x1000, UC_PROT_ALL), UC_ERR_OK);  // sets the engine up
  // Unicorn's 1 GiB buffer, split where the huge-page advice begins: a first piece of at most
  // 2 MiB without it ("hg" absent), then the rest with it.
  bool found = false;
  const std::vector<Vma> vmas = AnonymousExecutableVmas();
  for (size_t i = 0; i + 1 < vmas.size(); ++i) {
    if (vmas[i].end != vmas[i + 1].start || vmas[i + 1].end - vmas[i].start < (512u << 20)) continue;
    found = true;
    EXPECT_LE(vmas[i].end - vmas[i].start, 2u << 20);
    EXPECT_EQ(vmas[i].flags.find(" hg"), std::string::npos) << vmas[i].flags;
    EXPECT_NE(vmas[i + 1].flags.find(" hg"), std::string::npos) << vmas[i + 1].flags;
  }
  EXPECT_TRUE(found) << "no translation buffer split in two among " << vmas.size() << " executable mappings";
  uc_close(uc);
}

}  // namespace
