#include "components/xenbus/blkif.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace xenkvm::xenbus::blkif {
namespace {

template <typename T>
T Load(std::span<const uint8_t> bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

// Field offsets of the two ABIs (the 32-bit one aligns 64-bit fields to 4 bytes).
struct Layout {
  size_t id, sector, segments;          // read/write
  size_t discard_sectors;               // discard: nr_sectors
  size_t indirect_grefs;                // indirect
};
constexpr Layout kLayout64{8, 16, 24, 24, 28};
constexpr Layout kLayout32{4, 12, 20, 20, 24};

const Layout& LayoutOf(Abi abi) { return abi == Abi::k64 ? kLayout64 : kLayout32; }

Segment LoadSegment(std::span<const uint8_t> bytes, size_t offset) {
  return Segment{Load<uint32_t>(bytes, offset), Load<uint8_t>(bytes, offset + 4), Load<uint8_t>(bytes, offset + 5)};
}

// Checks segments and the extent they cover from `request.sector`.
int16_t CheckData(const DiskLimits& limits, const Request& request) {
  uint64_t sectors = 0;
  for (const Segment& segment : request.segments) {
    if (segment.first_sector > segment.last_sector || segment.last_sector >= kSectorsPerPage) return kStatusError;
    sectors += segment.sectors();
  }
  if (request.sector > limits.sectors || sectors > limits.sectors - request.sector) return kStatusError;
  if (request.data_operation == kOpWrite && limits.read_only) return kStatusError;
  return kStatusOkay;
}

}  // namespace

absl::StatusOr<Abi> ParseProtocol(std::string_view protocol) {
  if (protocol.empty() || protocol == "x86_64-abi") return Abi::k64;
  if (protocol == "x86_32-abi") return Abi::k32;
  return absl::InvalidArgumentError(
      absl::StrCat("blkif: the frontend's protocol \"", std::string(protocol), "\" is not x86_64-abi or x86_32-abi"));
}

size_t RequestSize(Abi abi) { return abi == Abi::k64 ? kMaxRequestSize : 108; }
size_t ResponseSize(Abi abi) { return abi == Abi::k64 ? 16 : 12; }

uint32_t RingSlots(Abi abi, uint32_t pages) {
  const uint64_t fit = (uint64_t{pages} * 4096 - kRingHeaderSize) / RequestSize(abi);
  uint32_t slots = 1;
  while (uint64_t{slots} * 2 <= fit) slots *= 2;
  return slots;
}

Decoded DecodeRequest(Abi abi, std::span<const uint8_t> slot, const DiskLimits& limits) {
  const Layout& layout = LayoutOf(abi);
  Decoded decoded;
  Request& request = decoded.request;
  request.operation = Load<uint8_t>(slot, 0);
  request.data_operation = request.operation;
  request.id = Load<uint64_t>(slot, layout.id);
  request.sector = Load<uint64_t>(slot, layout.sector);
  switch (request.operation) {
    case kOpRead:
    case kOpWrite: {
      const uint8_t count = Load<uint8_t>(slot, 1);
      if (count == 0 || count > kMaxSegments) {
        decoded.status = kStatusError;
        return decoded;
      }
      for (uint8_t i = 0; i < count; ++i) request.segments.push_back(LoadSegment(slot, layout.segments + 8u * i));
      decoded.status = CheckData(limits, request);
      return decoded;
    }
    case kOpFlush:
      return decoded;  // no segments needed; any given are ignored
    case kOpDiscard: {
      if (!limits.discard || limits.read_only) {
        decoded.status = limits.discard ? kStatusError : kStatusNotSupported;
        return decoded;
      }
      request.secure_discard = (Load<uint8_t>(slot, 1) & 1) != 0;
      request.discard_sectors = Load<uint64_t>(slot, layout.discard_sectors);
      if (request.sector > limits.sectors || request.discard_sectors > limits.sectors - request.sector ||
          request.secure_discard) {
        decoded.status = kStatusError;  // beyond the disk, or a secure discard never offered
      }
      return decoded;
    }
    case kOpIndirect: {
      if (limits.max_indirect_segments == 0) {
        decoded.status = kStatusNotSupported;
        return decoded;
      }
      request.data_operation = Load<uint8_t>(slot, 1);
      request.indirect_segments = Load<uint16_t>(slot, 2);
      if ((request.data_operation != kOpRead && request.data_operation != kOpWrite) ||
          request.indirect_segments == 0 || request.indirect_segments > limits.max_indirect_segments) {
        decoded.status = kStatusError;
        return decoded;
      }
      const uint32_t pages = (request.indirect_segments + kSegmentsPerIndirectPage - 1) / kSegmentsPerIndirectPage;
      if (pages > kMaxIndirectPages) {
        decoded.status = kStatusError;
        return decoded;
      }
      for (uint32_t i = 0; i < pages; ++i) request.indirect_grefs.push_back(Load<uint32_t>(slot, layout.indirect_grefs + 4 * i));
      return decoded;
    }
    default:
      decoded.status = kStatusNotSupported;  // WRITE_BARRIER (never offered) and unknown operations
      return decoded;
  }
}

int16_t DecodeIndirectSegments(std::span<const uint8_t> pages, const DiskLimits& limits, Request& request) {
  if (pages.size() < uint64_t{request.indirect_segments} * 8) return kStatusError;
  request.segments.clear();
  for (uint32_t i = 0; i < request.indirect_segments; ++i) request.segments.push_back(LoadSegment(pages, 8u * i));
  return CheckData(limits, request);
}

ResponseSlot EncodeResponse(Abi abi, uint64_t id, uint8_t operation, int16_t status) {
  ResponseSlot slot;
  slot.size = ResponseSize(abi);
  std::memcpy(slot.bytes.data(), &id, sizeof(id));
  slot.bytes[8] = operation;
  std::memcpy(slot.bytes.data() + 10, &status, sizeof(status));
  return slot;
}

}  // namespace xenkvm::xenbus::blkif
