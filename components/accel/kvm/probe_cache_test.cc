// The instruction probes' cache: a round trip, and every way a file is not used (another key, a
// different CPUID, cut short, malformed, absent).
#include "components/accel/kvm/probe_cache.h"

#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::accel {
namespace {

using ::testing::ElementsAre;

class ProbeCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/probe_cache_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    directory_ = pattern;
    path_ = directory_ + "/probes";
  }
  void TearDown() override {
    unlink(path_.c_str());
    rmdir(directory_.c_str());
  }

  static ProbeResult Sample() {
    ProbeResult result;
    result.unrunnable = {"cx16", "avx"};
    result.baseline = {"sse"};
    result.details = {"cx16: instruction emulation failed", "sse: #UD at 0x1000"};
    return result;
  }

  std::string Contents() const {
    std::ifstream file(path_);
    return std::string(std::istreambuf_iterator<char>(file), {});
  }

  void Write(const std::string& text) const { std::ofstream(path_, std::ios::trunc) << text; }

  std::string directory_, path_;
};

TEST_F(ProbeCacheTest, AStoredResultIsRecalledUnderItsKey) {
  ASSERT_TRUE(StoreProbeResult(path_, "boot-1 kvm, 00ff", Sample()).ok());
  std::optional<ProbeResult> recalled = LoadProbeResult(path_, "boot-1 kvm, 00ff");
  ASSERT_TRUE(recalled.has_value());
  EXPECT_THAT(recalled->unrunnable, ElementsAre("cx16", "avx"));
  EXPECT_THAT(recalled->baseline, ElementsAre("sse"));
  EXPECT_THAT(recalled->details, ElementsAre("cx16: instruction emulation failed", "sse: #UD at 0x1000"));
  EXPECT_FALSE(LoadProbeResult(path_, "boot-2 kvm, 00ff").has_value());
  EXPECT_FALSE(LoadProbeResult(directory_ + "/absent", "boot-1 kvm, 00ff").has_value());
}

TEST_F(ProbeCacheTest, AnEmptyResultIsRecalledToo) {
  ASSERT_TRUE(StoreProbeResult(path_, "k", ProbeResult{}).ok());
  std::optional<ProbeResult> recalled = LoadProbeResult(path_, "k");
  ASSERT_TRUE(recalled.has_value());
  EXPECT_TRUE(recalled->unrunnable.empty() && recalled->baseline.empty() && recalled->details.empty());
}

TEST_F(ProbeCacheTest, AFileCutShortOrMalformedIsAMiss) {
  ASSERT_TRUE(StoreProbeResult(path_, "k", Sample()).ok());
  const std::string whole = Contents();
  Write(whole.substr(0, whole.rfind("end ok")));
  EXPECT_FALSE(LoadProbeResult(path_, "k").has_value());
  Write("xenkvm kvm instruction probes 0\nkey k\nend ok\n");
  EXPECT_FALSE(LoadProbeResult(path_, "k").has_value());
  Write("xenkvm kvm instruction probes 1\nkey k\nhidden cx16\nend ok\n");
  EXPECT_FALSE(LoadProbeResult(path_, "k").has_value());
  Write("xenkvm kvm instruction probes 1\nkey k\nunrunnable \nend ok\n");
  EXPECT_FALSE(LoadProbeResult(path_, "k").has_value());
  Write("xenkvm kvm instruction probes 1\nkey k\n" + std::string(70000, 'x') + "\nend ok\n");
  EXPECT_FALSE(LoadProbeResult(path_, "k").has_value());  // larger than any result: not read
  EXPECT_FALSE(LoadProbeResult(directory_, "k").has_value());  // not a regular file
}

TEST_F(ProbeCacheTest, AMultiLineEntryIsNotStored) {
  ProbeResult result = Sample();
  result.details.push_back("two\nlines");
  EXPECT_FALSE(StoreProbeResult(path_, "k", result).ok());
  EXPECT_FALSE(LoadProbeResult(path_, "k").has_value());
}

TEST(ProbeCacheKeyTest, TheKeyFollowsTheOfferedCpuid) {
  std::vector<kvm_cpuid_entry2> cpuid(2);
  cpuid[0].function = 1;
  cpuid[0].ecx = 1u << 13;  // cx16
  const std::optional<std::string> key = ProbeCacheKey(cpuid);
  ASSERT_TRUE(key.has_value());  // Linux always has a boot ID
  EXPECT_EQ(ProbeCacheKey(cpuid), key);
  cpuid[0].ebx = 1u << 24;  // another APIC ID: the same probes run
  EXPECT_EQ(ProbeCacheKey(cpuid), key);
  cpuid[0].ecx = 0;
  EXPECT_NE(ProbeCacheKey(cpuid), key);
}

}  // namespace
}  // namespace xenkvm::accel
