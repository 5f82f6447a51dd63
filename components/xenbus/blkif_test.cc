#include "components/xenbus/blkif.h"

#include <cstring>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "third_party/xen_public.h"
#include "xen/io/blkif.h"

namespace xenkvm::xenbus::blkif {
namespace {

const DiskLimits kDisk{/*sectors=*/1000, /*read_only=*/false, /*discard=*/true, /*max_indirect_segments=*/256};

std::vector<uint8_t> Slot64(const blkif_request& request) {
  std::vector<uint8_t> slot(RequestSize(Abi::k64));
  std::memcpy(slot.data(), &request, sizeof(request));
  return slot;
}

blkif_request ReadWrite(uint8_t op, uint8_t count, uint64_t sector) {
  blkif_request request{};
  request.operation = op;
  request.nr_segments = count;
  request.id = 0x1122334455667788ull;
  request.sector_number = sector;
  for (uint8_t i = 0; i < count && i < BLKIF_MAX_SEGMENTS_PER_REQUEST; ++i) {
    request.seg[i] = {static_cast<grant_ref_t>(100 + i), 0, 7};
  }
  return request;
}

TEST(BlkifTest, SizesMatchXensHeaders) {
  EXPECT_EQ(RequestSize(Abi::k64), sizeof(blkif_request));
  EXPECT_EQ(ResponseSize(Abi::k64), sizeof(blkif_response));
  EXPECT_EQ(RingSlots(Abi::k64, 1), 32u);
  EXPECT_EQ(RingSlots(Abi::k32, 1), 32u);
  EXPECT_EQ(RingSlots(Abi::k64, 4), 128u);
  EXPECT_EQ(*ParseProtocol(""), Abi::k64);
  EXPECT_EQ(*ParseProtocol("x86_32-abi"), Abi::k32);
  EXPECT_FALSE(ParseProtocol("arm-abi").ok());
}

TEST(BlkifTest, DecodesReadsAndWritesOfBothAbis) {
  Decoded decoded = DecodeRequest(Abi::k64, Slot64(ReadWrite(kOpWrite, 3, 10)), kDisk);
  EXPECT_EQ(decoded.status, kStatusOkay);
  EXPECT_EQ(decoded.request.id, 0x1122334455667788ull);
  EXPECT_EQ(decoded.request.sector, 10u);
  ASSERT_EQ(decoded.request.segments.size(), 3u);
  EXPECT_EQ(decoded.request.segments[2].gref, 102u);
  EXPECT_EQ(decoded.request.segments[2].sectors(), 8u);
  // The 32-bit layout: id at 4, sector at 12, segments at 20.
  std::vector<uint8_t> slot(RequestSize(Abi::k32), 0);
  slot[0] = kOpRead;
  slot[1] = 1;
  uint64_t id = 42, sector = 999;
  std::memcpy(slot.data() + 4, &id, 8);
  std::memcpy(slot.data() + 12, &sector, 8);
  uint32_t gref = 77;
  std::memcpy(slot.data() + 20, &gref, 4);
  slot[24] = 7;
  slot[25] = 7;
  decoded = DecodeRequest(Abi::k32, slot, kDisk);
  EXPECT_EQ(decoded.status, kStatusOkay);
  EXPECT_EQ(decoded.request.id, 42u);
  EXPECT_EQ(decoded.request.sector, 999u);
  EXPECT_EQ(decoded.request.segments[0].gref, 77u);
  EXPECT_EQ(decoded.request.segments[0].sectors(), 1u);
}

TEST(BlkifTest, RefusesBadSegmentsAndExtents) {
  EXPECT_EQ(DecodeRequest(Abi::k64, Slot64(ReadWrite(kOpRead, 0, 0)), kDisk).status, kStatusError);
  EXPECT_EQ(DecodeRequest(Abi::k64, Slot64(ReadWrite(kOpRead, 12, 0)), kDisk).status, kStatusError);
  blkif_request bad = ReadWrite(kOpRead, 1, 0);
  bad.seg[0] = {1, 5, 4};  // first > last
  EXPECT_EQ(DecodeRequest(Abi::k64, Slot64(bad), kDisk).status, kStatusError);
  bad.seg[0] = {1, 0, 8};  // last beyond the page
  EXPECT_EQ(DecodeRequest(Abi::k64, Slot64(bad), kDisk).status, kStatusError);
  EXPECT_EQ(DecodeRequest(Abi::k64, Slot64(ReadWrite(kOpRead, 1, 993)), kDisk).status, kStatusError);  // past the end
  EXPECT_EQ(DecodeRequest(Abi::k64, Slot64(ReadWrite(kOpRead, 1, 992)), kDisk).status, kStatusOkay);   // the last 8
  EXPECT_EQ(DecodeRequest(Abi::k64, Slot64(ReadWrite(kOpRead, 1, ~uint64_t{0} - 2)), kDisk).status,
            kStatusError);  // an extent that wraps
  DiskLimits read_only = kDisk;
  read_only.read_only = true;
  EXPECT_EQ(DecodeRequest(Abi::k64, Slot64(ReadWrite(kOpWrite, 1, 0)), read_only).status, kStatusError);
  EXPECT_EQ(DecodeRequest(Abi::k64, Slot64(ReadWrite(kOpRead, 1, 0)), read_only).status, kStatusOkay);
  EXPECT_EQ(DecodeRequest(Abi::k64, Slot64(ReadWrite(kOpWriteBarrier, 1, 0)), kDisk).status, kStatusNotSupported);
  EXPECT_EQ(DecodeRequest(Abi::k64, Slot64(ReadWrite(99, 1, 0)), kDisk).status, kStatusNotSupported);
  EXPECT_EQ(DecodeRequest(Abi::k64, Slot64(ReadWrite(kOpFlush, 0, 0)), kDisk).status, kStatusOkay);
}

TEST(BlkifTest, DiscardAndIndirect) {
  blkif_request_discard discard{};
  discard.operation = kOpDiscard;
  discard.id = 5;
  discard.sector_number = 100;
  discard.nr_sectors = 900;
  std::vector<uint8_t> slot(RequestSize(Abi::k64));
  std::memcpy(slot.data(), &discard, sizeof(discard));
  Decoded decoded = DecodeRequest(Abi::k64, slot, kDisk);
  EXPECT_EQ(decoded.status, kStatusOkay);
  EXPECT_EQ(decoded.request.discard_sectors, 900u);
  discard.nr_sectors = 901;
  std::memcpy(slot.data(), &discard, sizeof(discard));
  EXPECT_EQ(DecodeRequest(Abi::k64, slot, kDisk).status, kStatusError);
  DiskLimits no_discard = kDisk;
  no_discard.discard = false;
  EXPECT_EQ(DecodeRequest(Abi::k64, slot, no_discard).status, kStatusNotSupported);

  blkif_request_indirect indirect{};
  indirect.operation = kOpIndirect;
  indirect.indirect_op = kOpWrite;
  indirect.nr_segments = 200;
  indirect.id = 9;
  indirect.sector_number = 0;
  indirect.indirect_grefs[0] = 300;
  std::memcpy(slot.data(), &indirect, sizeof(indirect));
  decoded = DecodeRequest(Abi::k64, slot, kDisk);
  ASSERT_EQ(decoded.status, kStatusOkay);
  EXPECT_EQ(decoded.request.data_operation, kOpWrite);
  EXPECT_THAT(decoded.request.indirect_grefs, ::testing::ElementsAre(300u));
  // The page: 200 segments of 8 sectors would be 1600 sectors, beyond the 1000-sector disk.
  std::vector<uint8_t> page(4096, 0);
  for (int i = 0; i < 200; ++i) {
    blkif_request_segment segment{static_cast<grant_ref_t>(i), 0, 7};
    std::memcpy(page.data() + 8 * i, &segment, 8);
  }
  EXPECT_EQ(DecodeIndirectSegments(page, kDisk, decoded.request), kStatusError);
  for (int i = 0; i < 200; ++i) page[8 * i + 5] = 0;  // one sector each: 200 sectors
  EXPECT_EQ(DecodeIndirectSegments(page, kDisk, decoded.request), kStatusOkay);
  EXPECT_EQ(decoded.request.segments.size(), 200u);
  indirect.nr_segments = 257;  // beyond what was offered
  std::memcpy(slot.data(), &indirect, sizeof(indirect));
  EXPECT_EQ(DecodeRequest(Abi::k64, slot, kDisk).status, kStatusError);
  indirect.nr_segments = 1;
  indirect.indirect_op = kOpFlush;  // only reads and writes go indirect
  std::memcpy(slot.data(), &indirect, sizeof(indirect));
  EXPECT_EQ(DecodeRequest(Abi::k64, slot, kDisk).status, kStatusError);
}

TEST(BlkifTest, ResponsesHaveTheirPaddingZeroed) {  // XSA-216
  const ResponseSlot slot = EncodeResponse(Abi::k64, 0xabcdef, kOpRead, kStatusError);
  ASSERT_EQ(slot.size, sizeof(blkif_response));
  const std::array<uint8_t, 16>& bytes = slot.bytes;
  blkif_response response;
  std::memcpy(&response, bytes.data(), sizeof(response));
  EXPECT_EQ(response.id, 0xabcdefu);
  EXPECT_EQ(response.operation, kOpRead);
  EXPECT_EQ(response.status, kStatusError);
  EXPECT_EQ(bytes[9], 0);
  EXPECT_EQ(bytes[12] | bytes[13] | bytes[14] | bytes[15], 0);
  EXPECT_EQ(EncodeResponse(Abi::k32, 1, kOpWrite, kStatusOkay).size, 12u);
}

}  // namespace
}  // namespace xenkvm::xenbus::blkif
