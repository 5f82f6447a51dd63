#include "components/xen/version.h"

#include "gtest/gtest.h"

namespace xenkvm::xen {
namespace {

TEST(XenVersionTest, ParsesEveryFormAndOneRuleForAll) {
  EXPECT_EQ(*ParseXenVersion("4.17"), 0x40011u);
  EXPECT_EQ(*ParseXenVersion("0x4000a"), 0x4000au);
  EXPECT_EQ(*ParseXenVersion("255.65535"), 0xffffffu);
  EXPECT_EQ(*ParseXenVersion("off"), 0u);
  for (const char* bad : {"2.0", "4", "0xffffffff0", "0x20000", "0x1000000", "0x0", "256.0", "4.65536", "", "4.17.1"}) {
    EXPECT_FALSE(ParseXenVersion(bad).ok()) << bad;
  }
  EXPECT_EQ(std::string(ParseXenVersion("0x1000000").status().message()),
            "\"0x1000000\" is not a Xen version like \"4.17\" or \"0x40011\" (major 3 to 255), or \"off\"");
  EXPECT_TRUE(CheckXenVersion(0).ok());
  EXPECT_TRUE(CheckXenVersion(0x40011).ok());
  EXPECT_FALSE(CheckXenVersion(0x20000).ok());
  EXPECT_FALSE(CheckXenVersion(0x1000000).ok());
}

}  // namespace
}  // namespace xenkvm::xen
