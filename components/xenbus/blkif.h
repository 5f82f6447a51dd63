// The blkif shared ring as the two x86 ABIs lay it out (requests and responses differ in size and
// alignment between 32- and 64-bit frontends), decoded into one form and checked. Facts from
// xen/include/public/io/blkif.h; the code is ours.
//
// A request is decoded from a private copy of its ring slot (copied once); every field is
// checked here, before any I/O: operation, segment count, sector bounds within each 4 KiB page,
// the disk's size, and read-only disks.
#ifndef XENKVM_COMPONENTS_XENBUS_BLKIF_H_
#define XENKVM_COMPONENTS_XENBUS_BLKIF_H_

#include <array>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace xenkvm::xenbus::blkif {

enum class Abi { k64, k32 };
// The frontend's "protocol" node: "x86_64-abi", "x86_32-abi", or absent (empty: native, 64-bit).
absl::StatusOr<Abi> ParseProtocol(std::string_view protocol);

// Operations (BLKIF_OP_*) and response statuses (BLKIF_RSP_*).
inline constexpr uint8_t kOpRead = 0, kOpWrite = 1, kOpWriteBarrier = 2, kOpFlush = 3, kOpDiscard = 5,
                         kOpIndirect = 6;
inline constexpr int16_t kStatusOkay = 0, kStatusError = -1, kStatusNotSupported = -2;

inline constexpr uint32_t kMaxSegments = 11;               // per direct request
inline constexpr uint32_t kMaxIndirectPages = 8;           // indirect_grefs per request
inline constexpr uint32_t kSegmentsPerIndirectPage = 512;  // 8-byte segments in a 4 KiB page
inline constexpr uint32_t kSectorsPerPage = 8;             // 512-byte sectors in a 4 KiB page
inline constexpr uint64_t kRingHeaderSize = 64;            // {req_prod, req_event, rsp_prod, rsp_event, pad}

inline constexpr size_t kMaxRequestSize = 112;  // the 64-bit ABI's slot
size_t RequestSize(Abi abi);                      // 112 / 108
size_t ResponseSize(Abi abi);  // 16 / 12
// Slots in a ring of `pages` pages: the largest power of two that fits (32 for one page).
uint32_t RingSlots(Abi abi, uint32_t pages);

struct Segment {
  uint32_t gref = 0;
  uint8_t first_sector = 0;  // within the page, 0..7
  uint8_t last_sector = 0;   // first_sector..7
  uint32_t sectors() const { return last_sector - first_sector + 1u; }
};

struct Request {
  uint8_t operation = 0;  // as the frontend sent it
  // READ or WRITE for indirect requests, else `operation`. The response carries this one, as
  // blkback's does (Linux's blkfront refuses an indirect response that says INDIRECT).
  uint8_t data_operation = 0;
  uint64_t id = 0;
  uint64_t sector = 0;
  uint64_t discard_sectors = 0;  // DISCARD
  bool secure_discard = false;
  std::vector<Segment> segments;  // direct ones; for INDIRECT, filled by DecodeIndirectPages
  uint32_t indirect_segments = 0;  // INDIRECT: how many segments its pages hold
  std::vector<uint32_t> indirect_grefs;
};

// What the decoder needs to know about the disk.
struct DiskLimits {
  uint64_t sectors = 0;
  bool read_only = false;
  bool discard = false;
  uint32_t max_indirect_segments = 0;  // 0: INDIRECT not offered
};

struct Decoded {
  Request request;
  // BLKIF_RSP_OKAY when the request may proceed, else the status to answer with at once.
  int16_t status = kStatusOkay;
};

// Decodes one ring slot (RequestSize(abi) bytes).
Decoded DecodeRequest(Abi abi, std::span<const uint8_t> slot, const DiskLimits& limits);
// INDIRECT: takes the segments out of the (copied) indirect pages and checks them and the
// request's extent; BLKIF_RSP_* as DecodeRequest.
int16_t DecodeIndirectSegments(std::span<const uint8_t> pages, const DiskLimits& limits, Request& request);

// A response slot's bytes: the first ResponseSize(abi) of `bytes`, padding zeroed (XSA-216).
struct ResponseSlot {
  std::array<uint8_t, 16> bytes{};
  size_t size = 0;
  std::span<const uint8_t> span() const { return {bytes.data(), size}; }
};
ResponseSlot EncodeResponse(Abi abi, uint64_t id, uint8_t operation, int16_t status);

}  // namespace xenkvm::xenbus::blkif

#endif  // XENKVM_COMPONENTS_XENBUS_BLKIF_H_
