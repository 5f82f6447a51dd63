#include "components/xenbus/vdev.h"

#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace xenkvm::xenbus {
namespace {

// "a" -> 0, "z" -> 25, "aa" -> 26...; nullopt unless lowercase letters.
std::optional<uint32_t> LetterIndex(const std::string& letters) {
  if (letters.empty() || letters.size() > 3) return std::nullopt;
  uint32_t index = 0;
  for (char c : letters) {
    if (c < 'a' || c > 'z') return std::nullopt;
    index = index * 26 + static_cast<uint32_t>(c - 'a' + 1);
  }
  return index - 1;
}

}  // namespace

absl::StatusOr<uint32_t> ParseVirtualDevice(const std::string& vdev) {
  auto refuse = [&vdev] {
    return absl::InvalidArgumentError(absl::StrCat("vdev \"", vdev,
                                                   "\": use xvd<letters> (xvda...), hd<a-d>, sd<letters>, d<N> or a "
                                                   "device number"));
  };
  uint32_t number = 0;
  if (absl::SimpleAtoi(vdev, &number) && number > 0) return number;
  if (vdev.size() > 1 && vdev[0] == 'd' && absl::SimpleAtoi(vdev.substr(1), &number)) {
    if (number > 0xfffff) return refuse();
    return (1u << 28) | (number << 8);  // the extended form
  }
  if (vdev.rfind("xvd", 0) == 0) {
    std::optional<uint32_t> index = LetterIndex(vdev.substr(3));
    if (!index) return refuse();
    return *index < 16 ? (202u << 8) | (*index << 4) : (1u << 28) | (*index << 8);
  }
  if (vdev.rfind("hd", 0) == 0) {
    std::optional<uint32_t> index = LetterIndex(vdev.substr(2));
    if (!index || *index > 3) return refuse();
    return ((*index < 2 ? 3u : 22u) << 8) | ((*index % 2) << 6);
  }
  if (vdev.rfind("sd", 0) == 0) {
    std::optional<uint32_t> index = LetterIndex(vdev.substr(2));
    if (!index || *index > 15) return refuse();
    return (8u << 8) | (*index << 4);
  }
  return refuse();
}

}  // namespace xenkvm::xenbus
