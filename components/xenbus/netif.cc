#include "components/xenbus/netif.h"

#include <algorithm>

#include <cstring>

#include "absl/strings/str_format.h"

namespace xenkvm::xenbus::netif {
namespace {

uint16_t Le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t Le32(const uint8_t* p) { return Le16(p) | (static_cast<uint32_t>(Le16(p + 2)) << 16); }
void PutLe16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
uint16_t Be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }

TxPacket Verdict(TxPacket packet, TxVerdict verdict, std::string reason) {
  packet.verdict = verdict;
  packet.reason = std::move(reason);
  return packet;
}

// One's-complement sum of `bytes` as big-endian 16-bit words (a last odd byte padded with zero).
uint32_t SumWords(const uint8_t* bytes, size_t length, uint32_t sum) {
  for (size_t i = 0; i + 1 < length; i += 2) sum += Be16(bytes + i);
  if (length % 2 != 0) sum += static_cast<uint32_t>(bytes[length - 1]) << 8;
  return sum;
}

uint16_t Fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

}  // namespace

TxRequest DecodeTxRequest(std::span<const uint8_t, kTxSlotSize> slot) {
  const uint8_t* p = slot.data();
  return TxRequest{Le32(p), Le16(p + 4), Le16(p + 6), Le16(p + 8), Le16(p + 10)};
}

ExtraInfo DecodeExtraInfo(std::span<const uint8_t, kTxSlotSize> slot) {
  const uint8_t* p = slot.data();
  ExtraInfo extra{p[0], p[1], Le16(p + 2), p[4], {}};
  std::copy(p + 2, p + 8, extra.mcast_address.begin());  // the union's other member
  return extra;
}

TxPacket ParseTxPacket(const SlotReader& slot) {
  TxPacket packet;
  uint32_t index = 0;
  std::optional<std::array<uint8_t, kTxSlotSize>> bytes = slot(index++);
  if (!bytes) return packet;
  const TxRequest first = DecodeTxRequest(*bytes);
  packet.requests.push_back(first);
  packet.flags = first.flags;
  if (first.flags & kTxExtraInfo) {
    for (uint32_t extras = 0;; ++extras) {
      if (extras == kExtraTypeLimit - 1) {
        return Verdict(std::move(packet), TxVerdict::kFatal, "more extra-info slots than there are types");
      }
      if (!(bytes = slot(index++))) return packet;
      const ExtraInfo extra = DecodeExtraInfo(*bytes);
      packet.requests.push_back(std::nullopt);
      if (extra.type == 0 || extra.type >= kExtraTypeLimit) {
        return Verdict(std::move(packet), TxVerdict::kFatal, absl::StrFormat("extra-info type %u", extra.type));
      }
      if (extra.type == kExtraGso) {
        // As netback: a GSO packet the backend cannot segment is a broken frontend.
        if (extra.gso_size == 0 || (extra.gso_type != kGsoTcpV4 && extra.gso_type != kGsoTcpV6)) {
          return Verdict(std::move(packet), TxVerdict::kFatal,
                         absl::StrFormat("GSO type %u with segments of %u bytes", extra.gso_type, extra.gso_size));
        }
        packet.gso = extra;
      }
      if (extra.type == kExtraMcastAdd || extra.type == kExtraMcastDel) packet.multicast = extra;
      if (!(extra.flags & kExtraFlagMore)) break;
    }
  }
  // As netback: a multicast-control request is its first slot and extras alone, whatever its
  // size says; it carries no data.
  if (packet.multicast) {
    packet.slots = index;
    packet.verdict = TxVerdict::kControl;
    return packet;
  }
  std::vector<TxRequest> data = {first};
  for (uint16_t flags = first.flags; flags & kTxMoreData; flags = data.back().flags) {
    if (data.size() == kFatalDataSlots) {
      return Verdict(std::move(packet), TxVerdict::kFatal, absl::StrFormat("more than %u slots", kFatalDataSlots));
    }
    if (!(bytes = slot(index++))) return packet;
    data.push_back(DecodeTxRequest(*bytes));
    packet.requests.push_back(data.back());
  }
  packet.slots = index;
  uint32_t rest = 0;
  for (size_t i = 1; i < data.size(); ++i) {
    if (data[i].offset + data[i].size > kPageSize) {
      return Verdict(std::move(packet), TxVerdict::kFatal,
                     absl::StrFormat("slot %u crosses its page (offset %u, size %u)", i, data[i].offset, data[i].size));
    }
    rest += data[i].size;
  }
  if (rest > first.size) {
    return Verdict(std::move(packet), TxVerdict::kDrop,
                   absl::StrFormat("the slots hold %u bytes past the first, the packet is %u", rest, first.size));
  }
  const uint16_t first_length = static_cast<uint16_t>(first.size - rest);
  if (first.offset + first_length > kPageSize) {
    return Verdict(std::move(packet), TxVerdict::kFatal,
                   absl::StrFormat("the first slot crosses its page (offset %u, %u bytes)", first.offset, first_length));
  }
  if (data.size() > kMaxDataSlots) {
    return Verdict(std::move(packet), TxVerdict::kDrop, absl::StrFormat("%u slots (at most %u)", data.size(), kMaxDataSlots));
  }
  if (first.size < kMinPacketSize) {
    return Verdict(std::move(packet), TxVerdict::kDrop, absl::StrFormat("a %u-byte packet", first.size));
  }
  packet.pieces.push_back({first.gref, first.offset, first_length});
  for (size_t i = 1; i < data.size(); ++i) packet.pieces.push_back({data[i].gref, data[i].offset, data[i].size});
  packet.size = first.size;
  packet.verdict = TxVerdict::kSend;
  return packet;
}

std::array<uint8_t, kTxSlotSize> EncodeTxResponse(uint16_t id, int16_t status) {
  std::array<uint8_t, kTxSlotSize> slot{};  // the rest of the slot zeroed: nothing of ours leaks
  PutLe16(slot.data(), id);
  PutLe16(slot.data() + 2, static_cast<uint16_t>(status));
  return slot;
}

RxRequest DecodeRxRequest(std::span<const uint8_t, kRxSlotSize> slot) {
  return RxRequest{Le16(slot.data()), Le32(slot.data() + 4)};
}

std::array<uint8_t, kRxSlotSize> EncodeRxResponse(uint16_t id, uint16_t offset, uint16_t flags, int16_t status) {
  std::array<uint8_t, kRxSlotSize> slot{};
  PutLe16(slot.data(), id);
  PutLe16(slot.data() + 2, offset);
  PutLe16(slot.data() + 4, flags);
  PutLe16(slot.data() + 6, static_cast<uint16_t>(status));
  return slot;
}

std::optional<ChecksumPlace> PreparePartialChecksum(std::span<uint8_t> frame) {
  uint8_t* f = frame.data();
  size_t l3 = 14;
  if (frame.size() < l3) return std::nullopt;
  uint16_t ethertype = Be16(f + 12);
  if (ethertype == 0x8100) {  // one VLAN tag
    l3 = 18;
    if (frame.size() < l3) return std::nullopt;
    ethertype = Be16(f + 16);
  }
  ChecksumPlace place;
  uint8_t protocol = 0;
  uint32_t sum = 0;
  if (ethertype == 0x0800) {
    if (frame.size() < l3 + 20 || (f[l3] >> 4) != 4) return std::nullopt;
    const size_t header = (f[l3] & 0xf) * 4u;
    const size_t total = Be16(f + l3 + 2);
    if (header < 20 || total < header || l3 + total > frame.size()) return std::nullopt;
    if ((Be16(f + l3 + 6) & 0x3fff) != 0) return std::nullopt;  // a fragment
    protocol = f[l3 + 9];
    place.start = l3 + header;
    place.end = l3 + total;
    sum = SumWords(f + l3 + 12, 8, 0);  // source and destination addresses
  } else if (ethertype == 0x86dd) {
    if (frame.size() < l3 + 40) return std::nullopt;
    place.end = l3 + 40 + Be16(f + l3 + 4);
    if (place.end > frame.size()) return std::nullopt;
    protocol = f[l3 + 6];
    place.start = l3 + 40;
    place.ipv6 = true;
    // Hop-by-hop and destination options may come first; a routing or fragment header changes
    // what is summed, so those packets are left as they are.
    for (int skipped = 0; protocol == 0 || protocol == 60; ++skipped) {
      if (skipped == 8 || place.start + 8 > place.end) return std::nullopt;
      protocol = f[place.start];
      place.start += (f[place.start + 1] + 1u) * 8;
    }
    if (place.start > place.end) return std::nullopt;
    sum = SumWords(f + l3 + 8, 32, 0);
  } else {
    return std::nullopt;
  }
  const size_t l4_length = place.end - place.start;
  if (protocol == 6 && l4_length >= 20) {
    place.offset = 16;
  } else if (protocol == 17 && l4_length >= 8) {
    place.offset = 6;
  } else {
    return std::nullopt;
  }
  place.protocol = protocol;
  sum += protocol + static_cast<uint32_t>(l4_length & 0xffff) + static_cast<uint32_t>(l4_length >> 16);
  const uint16_t pseudo = Fold(sum);
  f[place.start + place.offset] = static_cast<uint8_t>(pseudo >> 8);
  f[place.start + place.offset + 1] = static_cast<uint8_t>(pseudo);
  return place;
}

bool CompletePartialChecksum(std::span<uint8_t> frame, size_t start, size_t offset) {
  if (start > frame.size() || offset + 2 > frame.size() - start) return false;
  uint8_t* field = frame.data() + start + offset;
  // 0 and 0xffff are the same sum; 0 in UDP means "none", so 0xffff is sent (as Linux does).
  uint16_t checksum = static_cast<uint16_t>(~Fold(SumWords(frame.data() + start, frame.size() - start, 0)));
  if (checksum == 0) checksum = 0xffff;
  field[0] = static_cast<uint8_t>(checksum >> 8);
  field[1] = static_cast<uint8_t>(checksum);
  return true;
}

bool CompleteChecksum(std::span<uint8_t> frame) {
  std::optional<ChecksumPlace> place = PreparePartialChecksum(frame);
  return place && CompletePartialChecksum(frame.first(place->end), place->start, place->offset);
}

std::array<uint8_t, kRxSlotSize> EncodeRxGsoExtra(uint8_t gso_type, uint16_t gso_size) {
  std::array<uint8_t, kRxSlotSize> slot{};  // flags, pad and features zero
  slot[0] = kExtraGso;
  PutLe16(slot.data() + 2, gso_size);
  slot[4] = gso_type;
  return slot;
}

}  // namespace xenkvm::xenbus::netif
