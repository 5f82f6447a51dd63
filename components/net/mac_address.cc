#include "components/net/mac_address.h"

#include <random>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace xenkvm::net {

absl::StatusOr<MacAddress> ParseMac(absl::string_view text) {
  auto refuse = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("MAC address '", text, "': ", why, " (write six hex bytes, e.g. 00:16:3e:12:34:56)"));
  };
  std::vector<absl::string_view> parts = absl::StrSplit(text, ':');
  if (parts.size() != 6) return refuse("not six bytes");
  MacAddress mac{};
  for (size_t i = 0; i < 6; ++i) {
    int value = 0;
    if (parts[i].size() != 2 || !absl::SimpleHexAtoi(parts[i], &value)) return refuse("a byte is not two hex digits");
    mac[i] = static_cast<uint8_t>(value);
  }
  if (mac[0] & 1) return refuse("a multicast address");
  return mac;
}

std::string FormatMac(const MacAddress& mac) {
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
}

MacAddress GenerateXenMac() {
  std::random_device random;
  const uint32_t bits = random();
  return {0x00, 0x16, 0x3e, static_cast<uint8_t>(bits & 0x7f), static_cast<uint8_t>(bits >> 8),
          static_cast<uint8_t>(bits >> 16)};
}

}  // namespace xenkvm::net
