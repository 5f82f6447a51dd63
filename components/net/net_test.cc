#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include "components/net/mac_address.h"
#include "components/net/tap.h"
#include "components/net/token_bucket.h"

namespace xenkvm::net {
namespace {

TEST(TokenBucketTest, StartsFullThenRefillsAtTheRate) {
  const absl::Time start = absl::UnixEpoch();
  TokenBucket bucket(1000, 500, start);  // 1000 a second, at most 500
  EXPECT_TRUE(bucket.TryTake(300, start));
  EXPECT_TRUE(bucket.TryTake(200, start));
  EXPECT_FALSE(bucket.TryTake(1, start));
  EXPECT_EQ(bucket.TimeUntil(100, start), absl::Milliseconds(100));
  EXPECT_FALSE(bucket.TryTake(100, start + absl::Milliseconds(99)));
  EXPECT_TRUE(bucket.TryTake(100, start + absl::Milliseconds(100)));
  // Never more than the burst, however long it waited.
  EXPECT_TRUE(bucket.TryTake(500, start + absl::Seconds(60)));
  EXPECT_FALSE(bucket.TryTake(1, start + absl::Seconds(60)));
  // More than a burst passes once the bucket is full, emptying it.
  EXPECT_FALSE(bucket.TryTake(5000, start + absl::Seconds(60) + absl::Milliseconds(400)));
  EXPECT_TRUE(bucket.TryTake(5000, start + absl::Seconds(60) + absl::Milliseconds(500)));
  EXPECT_FALSE(bucket.TryTake(1, start + absl::Seconds(60) + absl::Milliseconds(500)));
}

TEST(MacAddressTest, ParsesFormatsAndGenerates) {
  absl::StatusOr<MacAddress> mac = ParseMac("00:16:3E:0a:0b:ff");
  ASSERT_TRUE(mac.ok()) << mac.status();
  EXPECT_EQ(FormatMac(*mac), "00:16:3e:0a:0b:ff");
  EXPECT_THAT(ParseMac("00:16:3e:0a:0b").status().message(), ::testing::HasSubstr("not six bytes"));
  EXPECT_THAT(ParseMac("00:16:3e:0a:0b:zz").status().message(), ::testing::HasSubstr("two hex digits"));
  EXPECT_THAT(ParseMac("01:00:5e:00:00:01").status().message(), ::testing::HasSubstr("multicast"));
  const MacAddress generated = GenerateXenMac();
  EXPECT_EQ(FormatMac(generated).substr(0, 9), "00:16:3e:");
  EXPECT_EQ(generated[3] & 0x80, 0);
}

// A tap opened in one place and adopted from a copy of its descriptor (as a VMM adopts the one
// xenkvmd hands over): the kernel names it, and nothing else is taken for a tap. In a network
// namespace of the test's own.
TEST(TapTest, AnOpenedTapIsAdoptedAndOtherFilesAreNot) {
  if (geteuid() != 0) GTEST_SKIP() << "making a tap needs root";
  if (unshare(CLONE_NEWNET) != 0) GTEST_SKIP() << "no network namespace of its own (unshare: " << strerror(errno) << ")";
  absl::StatusOr<Tap> opened = Tap::Open("xkadopt0");
  if (!opened.ok() && access("/dev/net/tun", F_OK) != 0) GTEST_SKIP() << "no /dev/net/tun";
  ASSERT_TRUE(opened.ok()) << opened.status();
  ASSERT_TRUE(opened->BringUp(1400).ok());
  absl::StatusOr<Tap> adopted = Tap::Adopt(base::Fd(dup(opened->fd())));
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  EXPECT_EQ(adopted->name(), "xkadopt0");
  EXPECT_NE(fcntl(adopted->fd(), F_GETFL) & O_NONBLOCK, 0);
  absl::StatusOr<Tap> not_a_tap = Tap::Adopt(base::Fd(open("/dev/null", O_RDWR | O_CLOEXEC)));
  EXPECT_EQ(not_a_tap.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xenkvm::net
