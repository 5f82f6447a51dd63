#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

#include "components/net/mac_address.h"
#include "components/net/tap.h"
#include "components/net/token_bucket.h"
#include "components/net/virtio_net_header.h"

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

// Queues of one tap: several made multi-queue, detached and attached again; a tap that exists
// single-queue gives one however many are asked, and a multi-queue one gives a queue to Open.
TEST(TapTest, QueuesAreOpenedAsTheTapAllows) {
  if (geteuid() != 0) GTEST_SKIP() << "making a tap needs root";
  if (unshare(CLONE_NEWNET) != 0) GTEST_SKIP() << "no network namespace of its own (unshare: " << strerror(errno) << ")";
  if (access("/dev/net/tun", F_OK) != 0) GTEST_SKIP() << "no /dev/net/tun";
  absl::StatusOr<std::vector<Tap>> queues = Tap::OpenQueues("xkmq0", 3);
  ASSERT_TRUE(queues.ok()) << queues.status();
  ASSERT_EQ(queues->size(), 3u);
  for (const Tap& queue : *queues) {
    EXPECT_TRUE(queue.multi_queue());
    EXPECT_EQ(queue.name(), "xkmq0");
  }
  EXPECT_TRUE((*queues)[2].SetQueueAttached(false).ok());
  EXPECT_TRUE((*queues)[2].SetQueueAttached(true).ok());
  absl::StatusOr<Tap> one_more = Tap::Open("xkmq0");
  ASSERT_TRUE(one_more.ok()) << one_more.status();
  EXPECT_TRUE(one_more->multi_queue());

  absl::StatusOr<Tap> single = Tap::Open("xksq0");
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_FALSE(single->multi_queue());
  EXPECT_EQ(single->SetQueueAttached(false).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_EQ(std::system("ip tuntap add dev xksq1 mode tap"), 0);  // persistent, single-queue
  absl::StatusOr<std::vector<Tap>> fallen_back = Tap::OpenQueues("xksq1", 4);
  ASSERT_TRUE(fallen_back.ok()) << fallen_back.status();
  EXPECT_EQ(fallen_back->size(), 1u);
  EXPECT_EQ(Tap::OpenQueues("xksq1", 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(VirtioNetHeaderTest, RoundTripsAndNamesWhatXenCannotCarry) {
  FrameOffload offload;
  offload.segmentation = FrameOffload::Segmentation::kTcpV6;
  offload.segment_size = 1428;
  offload.partial_checksum = true;
  offload.checksum_start = 54;
  offload.checksum_offset = 16;
  const std::array<uint8_t, kVirtioNetHeaderSize> header = EncodeVirtioNetHeader(offload);
  EXPECT_EQ(header[0], 1);  // VIRTIO_NET_HDR_F_NEEDS_CSUM
  EXPECT_EQ(header[1], 4);  // VIRTIO_NET_HDR_GSO_TCPV6
  const FrameOffload back = DecodeVirtioNetHeader(header);
  EXPECT_EQ(back.segmentation, FrameOffload::Segmentation::kTcpV6);
  EXPECT_EQ(back.segment_size, 1428);
  EXPECT_TRUE(back.partial_checksum);
  EXPECT_EQ(back.checksum_start, 54);
  EXPECT_EQ(back.checksum_offset, 16);
  std::array<uint8_t, kVirtioNetHeaderSize> ecn_v4{0, 0x81, 0, 0, 0xa8, 0x05};
  EXPECT_EQ(DecodeVirtioNetHeader(ecn_v4).segmentation, FrameOffload::Segmentation::kTcpV4);
  EXPECT_EQ(DecodeVirtioNetHeader(ecn_v4).segment_size, 1448);
  std::array<uint8_t, kVirtioNetHeaderSize> udp{2, 3};  // data valid, UDP fragmentation offload
  EXPECT_EQ(DecodeVirtioNetHeader(udp).segmentation, FrameOffload::Segmentation::kUnsupported);
  EXPECT_TRUE(DecodeVirtioNetHeader(udp).checksum_verified);
}

// The host's own UDP datagram leaves through a tap that takes partial checksums with the header
// saying so, and a frame written with a partial checksum is taken by the host's stack: the
// virtio_net_hdr in both directions, against the kernel. In a network namespace of the test's own.
TEST(TapTest, OffloadsTravelInTheVirtioNetHeader) {
  if (geteuid() != 0) GTEST_SKIP() << "making a tap needs root";
  if (unshare(CLONE_NEWNET) != 0) GTEST_SKIP() << "no network namespace of its own (unshare: " << strerror(errno) << ")";
  if (access("/dev/net/tun", F_OK) != 0) GTEST_SKIP() << "no /dev/net/tun";
  absl::StatusOr<Tap> tap = Tap::Open("xkvnet0");
  ASSERT_TRUE(tap.ok()) << tap.status();
  ASSERT_TRUE(tap->offloads());
  ASSERT_TRUE(tap->AcceptOffloads(/*partial_checksum=*/true, /*tcpv4=*/true, /*tcpv6=*/true).ok());
  ASSERT_TRUE(tap->BringUp(1500).ok());
  ASSERT_EQ(std::system("ip addr add 10.9.0.1/24 dev xkvnet0 && "
                        "ip neigh add 10.9.0.2 lladdr 02:00:00:00:00:02 dev xkvnet0"),
            0);

  const int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(udp, 0);
  sockaddr_in local{AF_INET, htons(7777), {htonl(0x0a090001)}, {}};
  ASSERT_EQ(bind(udp, reinterpret_cast<sockaddr*>(&local), sizeof(local)), 0);
  sockaddr_in peer{AF_INET, htons(9), {htonl(0x0a090002)}, {}};
  ASSERT_EQ(sendto(udp, "offloaded", 9, 0, reinterpret_cast<sockaddr*>(&peer), sizeof(peer)), 9);
  std::vector<uint8_t> frame(2048);
  FrameOffload offload;
  size_t size = 0;
  for (int tries = 0; tries < 50; ++tries) {  // IPv6's own traffic may come first
    pollfd readable{tap->fd(), POLLIN, 0};
    ASSERT_EQ(poll(&readable, 1, 2000), 1);
    absl::StatusOr<size_t> got = tap->Read(frame, offload);
    ASSERT_TRUE(got.ok()) << got.status();
    size = *got;
    if (size >= 42 && frame[12] == 0x08 && frame[13] == 0x00 && frame[23] == 17) break;
    size = 0;
  }
  ASSERT_EQ(size, 14u + 20 + 8 + 9);
  EXPECT_TRUE(offload.partial_checksum);
  EXPECT_EQ(offload.checksum_start, 34);
  EXPECT_EQ(offload.checksum_offset, 6);
  EXPECT_EQ(offload.segmentation, FrameOffload::Segmentation::kNone);

  // The same datagram turned round (to 10.9.0.1:7777 from 10.9.0.2:9), its checksum left partial.
  std::vector<uint8_t> reply(frame.begin(), frame.begin() + static_cast<ptrdiff_t>(size));
  for (int i = 0; i < 6; ++i) std::swap(reply[i], reply[6 + i]);
  for (int i = 0; i < 4; ++i) std::swap(reply[26 + i], reply[30 + i]);
  std::swap(reply[34], reply[36]);
  std::swap(reply[35], reply[37]);
  ASSERT_TRUE(tap->Write(reply, offload).ok());
  pollfd readable{udp, POLLIN, 0};
  ASSERT_EQ(poll(&readable, 1, 2000), 1);
  char received[16] = {};
  EXPECT_EQ(recv(udp, received, sizeof(received), 0), 9);
  EXPECT_STREQ(received, "offloaded");
  close(udp);
}

}  // namespace
}  // namespace xenkvm::net
