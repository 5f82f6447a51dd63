// Test helper: the client side of the XenStore wire format — builds request messages and splits
// a byte stream of replies and watch events back into messages.
#ifndef XENKVM_COMPONENTS_XEN_XENSTORE_WIRE_CLIENT_H_
#define XENKVM_COMPONENTS_XEN_XENSTORE_WIRE_CLIENT_H_

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xen/io/xs_wire.h"

namespace xenkvm::xen::xenstore::testing {

struct Message {
  uint32_t type = 0;
  uint32_t request_id = 0;
  uint32_t transaction = 0;
  std::string payload;

  // The NUL-separated strings of the payload (a trailing NUL ends the last one).
  std::vector<std::string> Strings() const {
    std::vector<std::string> out;
    size_t start = 0;
    while (start < payload.size()) {
      size_t end = payload.find('\0', start);
      if (end == std::string::npos) end = payload.size();
      out.push_back(payload.substr(start, end - start));
      start = end + 1;
    }
    return out;
  }
};

// `strings` joined with NULs; `terminate` adds one after the last (XS_WRITE's value has none).
inline std::string Payload(std::initializer_list<std::string_view> strings, bool terminate = true) {
  std::string out;
  for (std::string_view s : strings) out.append(s).push_back('\0');
  if (!terminate && !out.empty()) out.pop_back();
  return out;
}

inline std::string Encode(uint32_t type, std::string_view payload, uint32_t request_id = 0, uint32_t transaction = 0,
                          std::optional<uint32_t> length = std::nullopt) {
  xsd_sockmsg header{type, request_id, transaction, length.value_or(static_cast<uint32_t>(payload.size()))};
  std::string out(reinterpret_cast<const char*>(&header), sizeof(header));
  out.append(payload);
  return out;
}

// Takes whole messages off the front of `stream`.
inline std::vector<Message> Decode(std::string& stream) {
  std::vector<Message> messages;
  while (stream.size() >= sizeof(xsd_sockmsg)) {
    xsd_sockmsg header;
    std::memcpy(&header, stream.data(), sizeof(header));
    if (stream.size() < sizeof(header) + header.len) break;
    messages.push_back({header.type, header.req_id, header.tx_id, stream.substr(sizeof(header), header.len)});
    stream.erase(0, sizeof(header) + header.len);
  }
  return messages;
}

}  // namespace xenkvm::xen::xenstore::testing

#endif  // XENKVM_COMPONENTS_XEN_XENSTORE_WIRE_CLIENT_H_
