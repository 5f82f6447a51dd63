#include "api/image_dirs.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace xenkvm::api {

absl::StatusOr<ImageDirs> ImageDirs::Create(const std::vector<std::string>& dirs) {
  ImageDirs confinement;
  for (const std::string& dir : dirs) {
    std::error_code error;
    const std::filesystem::path canonical = std::filesystem::canonical(dir, error);
    if (error || !std::filesystem::is_directory(canonical)) {
      return absl::InvalidArgumentError(absl::StrCat("--image-dir ", dir, ": not a directory", error ? ": " : "",
                                                     error ? error.message() : ""));
    }
    confinement.dirs_.push_back(canonical.string());
  }
  return confinement;
}

absl::Status ImageDirs::Check(absl::string_view what, const std::string& path) const {
  if (dirs_.empty()) return absl::OkStatus();
  std::error_code error;
  const std::string resolved = std::filesystem::canonical(path, error).string();
  if (error) return absl::NotFoundError(absl::StrCat(what, ": ", path, ": ", error.message()));
  for (const std::string& dir : dirs_) {
    if (resolved == dir || absl::StartsWith(resolved, dir == "/" ? dir : dir + "/")) return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat(what, ": ", path,
                                                  resolved == path ? "" : absl::StrCat(" (", resolved, ")"),
                                                  " is outside the directories this daemon serves images from (",
                                                  absl::StrJoin(dirs_, ", "), "; xenkvmd --image-dir)"));
}

}  // namespace xenkvm::api
