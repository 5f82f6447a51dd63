// ScopedHugePages: 2 MiB huge pages free in the host's pool for the length of a test.
#ifndef XENKVM_TESTS_TESTING_HUGE_PAGES_H_
#define XENKVM_TESTS_TESTING_HUGE_PAGES_H_

#include <cstdint>
#include <string>

namespace xenkvm::testing {

// Makes `count` huge pages available (free and unreserved) when the pool has fewer, by raising
// /proc/sys/vm/nr_hugepages (root only), and puts the pool back as it found it when destroyed
// (unless someone changed it meanwhile). A machine's pool is usually empty.
class ScopedHugePages {
 public:
  explicit ScopedHugePages(uint64_t count);
  ~ScopedHugePages();
  ScopedHugePages(const ScopedHugePages&) = delete;
  ScopedHugePages& operator=(const ScopedHugePages&) = delete;

  // Empty when the pages are there; otherwise why not, for GTEST_SKIP.
  const std::string& unavailable() const { return unavailable_; }

  // Free and not reserved huge pages in the pool now (HugePages_Free - HugePages_Rsvd), or -1.
  static int64_t Available();

 private:
  int64_t original_ = -1;  // nr_hugepages before, when this raised it
  int64_t raised_to_ = -1;
  std::string unavailable_;
};

}  // namespace xenkvm::testing

#endif  // XENKVM_TESTS_TESTING_HUGE_PAGES_H_
