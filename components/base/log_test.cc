#include "components/base/log.h"

#include <cstdlib>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::base {
namespace {

TEST(LogTest, ParsesEveryLevel) {
  EXPECT_EQ(*ParseLogLevel("trace"), spdlog::level::trace);
  EXPECT_EQ(*ParseLogLevel("warn"), spdlog::level::warn);
  EXPECT_EQ(*ParseLogLevel("error"), spdlog::level::err);
  EXPECT_EQ(*ParseLogLevel("off"), spdlog::level::off);
}

TEST(LogTest, UnknownLevelListsTheValidOnes) {
  absl::StatusOr<spdlog::level::level_enum> level = ParseLogLevel("loud");
  EXPECT_EQ(level.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(level.status().message(), ::testing::HasSubstr("trace, debug, info"));
}

TEST(LogTest, FlagWinsOverEnvironment) {
  ::setenv(kLogLevelEnv, "error", 1);
  ASSERT_TRUE(InitLogging("debug").ok());
  EXPECT_EQ(spdlog::get_level(), spdlog::level::debug);
  ASSERT_TRUE(InitLogging("").ok());
  EXPECT_EQ(spdlog::get_level(), spdlog::level::err);
  ::setenv(kLogLevelEnv, "nonsense", 1);
  absl::Status status = InitLogging("");
  EXPECT_THAT(status.message(), ::testing::HasSubstr(kLogLevelEnv));
  EXPECT_EQ(spdlog::get_level(), spdlog::level::err);  // unchanged by the bad value
  ::unsetenv(kLogLevelEnv);
  ASSERT_TRUE(InitLogging("").ok());
  EXPECT_EQ(spdlog::get_level(), spdlog::level::info);
}

}  // namespace
}  // namespace xenkvm::base
