// Fuzz target: a hostile netfront's transmit requests. The input is a stream of 12-byte ring
// slots handed to the packet parser as a frontend would have produced them (all of them, then
// fewer: an incomplete packet must wait, never read past what was produced); each verdict must
// account for the slots it takes; receive requests and responses are decoded and encoded; the
// same bytes are a frame whose blank checksum is filled in. Nothing may crash or read out of
// bounds.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "components/xenbus/netif.h"

namespace {

using namespace xenkvm::xenbus::netif;
using Slot = std::array<uint8_t, kTxSlotSize>;

void Check(bool condition) {
  if (!condition) std::abort();
}

void ParseAll(const std::vector<Slot>& slots, uint32_t produced) {
  uint32_t consumer = 0;
  while (consumer < produced) {
    TxPacket packet = ParseTxPacket([&](uint32_t i) -> std::optional<Slot> {
      Check(i <= kFatalDataSlots + kExtraTypeLimit);  // the parser looks no further than a packet can reach
      if (consumer + i >= produced) return std::nullopt;
      return slots[consumer + i];
    });
    if (packet.verdict == TxVerdict::kIncomplete || packet.verdict == TxVerdict::kFatal) return;
    Check(packet.slots >= 1 && packet.slots == packet.requests.size() && consumer + packet.slots <= produced);
    if (packet.verdict == TxVerdict::kSend) {
      uint32_t total = 0;
      for (const TxPacket::Piece& piece : packet.pieces) {
        Check(piece.offset + piece.length <= kPageSize);
        total += piece.length;
      }
      Check(total == packet.size && packet.size >= kMinPacketSize);
    }
    for (const auto& request : packet.requests) {
      if (request) (void)EncodeTxResponse(request->id, kRspOkay);
    }
    consumer += packet.slots;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<Slot> slots(size / kTxSlotSize);
  for (size_t i = 0; i < slots.size(); ++i) std::memcpy(slots[i].data(), data + i * kTxSlotSize, kTxSlotSize);
  const uint32_t count = static_cast<uint32_t>(slots.size());
  ParseAll(slots, count);
  if (count > 1) ParseAll(slots, count / 2);
  for (size_t at = 0; at + kRxSlotSize <= size; at += kRxSlotSize) {
    const RxRequest request = DecodeRxRequest(std::span<const uint8_t, kRxSlotSize>(data + at, kRxSlotSize));
    (void)EncodeRxResponse(request.id, 0, kRxMoreData, 100);
  }
  std::vector<uint8_t> frame(data, data + size);
  (void)CompleteChecksum(frame);
  if (std::optional<ChecksumPlace> place = PreparePartialChecksum(frame)) {
    Check(place->start <= place->end && place->end <= frame.size() && place->start + place->offset + 2 <= place->end);
  }
  // A partial checksum's place as a tap's header gives it: any two numbers.
  if (size >= 4) (void)CompletePartialChecksum(frame, data[0] | (data[1] << 8), data[2] | (data[3] << 8));
  return 0;
}
