// Fd: the one owner of a file descriptor.
#ifndef XENKVM_COMPONENTS_BASE_FD_H_
#define XENKVM_COMPONENTS_BASE_FD_H_

#include "absl/status/statusor.h"

namespace xenkvm::base {

// Move-only; closes the descriptor when destroyed. A default-constructed Fd holds nothing (-1).
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { Reset(); }

  Fd(Fd&& other) noexcept : fd_(other.Release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) Reset(other.Release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

  // Gives up ownership without closing.
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

  // Closes the held descriptor (if any) and takes `fd`.
  void Reset(int fd = -1);

  // A new descriptor for the same open file, close-on-exec.
  absl::StatusOr<Fd> Duplicate() const;

 private:
  int fd_ = -1;
};

}  // namespace xenkvm::base

#endif  // XENKVM_COMPONENTS_BASE_FD_H_
