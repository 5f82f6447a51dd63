// xenkvmd's optional allow-list of directories (--image-dir, repeatable): kernels, initrds and
// disk images must resolve (symlinks followed) to a file under one of them. Empty: no confinement,
// for a daemon whose socket only root can reach.
#ifndef XENKVM_API_IMAGE_DIRS_H_
#define XENKVM_API_IMAGE_DIRS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace xenkvm::api {

class ImageDirs {
 public:
  // Each directory must exist; kept as its canonical path. kInvalidArgument otherwise.
  static absl::StatusOr<ImageDirs> Create(const std::vector<std::string>& dirs);
  ImageDirs() = default;

  bool confining() const { return !dirs_.empty(); }
  // Whether `path` (for `what`: "kernel", "disk.path"...) lies under an allowed directory:
  // kPermissionDenied naming the directories when it does not; kNotFound when it cannot be resolved.
  absl::Status Check(absl::string_view what, const std::string& path) const;

 private:
  std::vector<std::string> dirs_;
};

}  // namespace xenkvm::api

#endif  // XENKVM_API_IMAGE_DIRS_H_
