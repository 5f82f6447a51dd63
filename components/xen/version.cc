#include "components/xen/version.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace xenkvm::xen {

absl::Status CheckXenVersion(uint32_t version) {
  if (version == 0 || ((version >> 16) >= 3 && (version >> 16) <= 0xff)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "%#x is not a Xen version: major << 16 | minor with a major from 3 to 255 (0x40011 is 4.17)", version));
}

absl::StatusOr<uint32_t> ParseXenVersion(absl::string_view text) {
  if (text == "off") return 0;
  uint32_t value = 0;
  if (absl::StartsWith(text, "0x") && absl::SimpleHexAtoi(text, &value) && value != 0 && CheckXenVersion(value).ok()) {
    return value;
  }
  std::vector<std::string> parts = absl::StrSplit(text, '.');
  uint32_t major = 0, minor = 0;
  if (parts.size() == 2 && absl::SimpleAtoi(parts[0], &major) && absl::SimpleAtoi(parts[1], &minor) && major >= 3 &&
      major <= 0xff && minor <= 0xffff) {
    return major << 16 | minor;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "\"", text, "\" is not a Xen version like \"4.17\" or \"0x40011\" (major 3 to 255), or \"off\""));
}

}  // namespace xenkvm::xen
