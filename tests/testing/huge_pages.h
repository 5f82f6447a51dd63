// ScopedHugePages: 2 MiB huge pages free in the host's pool for the length of a test.
#ifndef XENKVM_TESTS_TESTING_HUGE_PAGES_H_
#define XENKVM_TESTS_TESTING_HUGE_PAGES_H_

#include <cstdint>
#include <string>

namespace xenkvm::testing {

// Makes `count` huge pages available (free and unreserved): as root it grows the pool
// (/proc/sys/vm/nr_hugepages) by `count` and shrinks it by as much when destroyed, so tests
// running at once each add their own; otherwise it takes what the pool has free. A machine's
// pool is usually empty.
class ScopedHugePages {
 public:
  explicit ScopedHugePages(uint64_t count);
  ~ScopedHugePages();
  ScopedHugePages(const ScopedHugePages&) = delete;
  ScopedHugePages& operator=(const ScopedHugePages&) = delete;

  // Empty when the pages are there; otherwise why not, for GTEST_SKIP.
  const std::string& unavailable() const { return unavailable_; }

 private:
  int64_t added_ = 0;  // to nr_hugepages
  std::string unavailable_;
};

}  // namespace xenkvm::testing

#endif  // XENKVM_TESTS_TESTING_HUGE_PAGES_H_
