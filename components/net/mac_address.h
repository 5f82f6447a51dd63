// Ethernet MAC addresses as xl.cfg, the API and the CLI write them ("00:16:3e:12:34:56"), and the
// addresses a vif gets when none is given: Xen's OUI 00:16:3e with three random bytes, as xl does.
#ifndef XENKVM_COMPONENTS_NET_MAC_ADDRESS_H_
#define XENKVM_COMPONENTS_NET_MAC_ADDRESS_H_

#include <array>
#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace xenkvm::net {

using MacAddress = std::array<uint8_t, 6>;

// Six two-digit hex bytes separated by ':'; a multicast address (bit 0 of the first byte) is
// refused, since no interface may have one.
absl::StatusOr<MacAddress> ParseMac(absl::string_view text);
std::string FormatMac(const MacAddress& mac);
// 00:16:3e:xx:xx:xx, random.
MacAddress GenerateXenMac();

}  // namespace xenkvm::net

#endif  // XENKVM_COMPONENTS_NET_MAC_ADDRESS_H_
