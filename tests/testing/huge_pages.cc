#include "tests/testing/huge_pages.h"

#include <algorithm>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::testing {
namespace {

constexpr char kPoolSize[] = "/proc/sys/vm/nr_hugepages";

int64_t PoolSize() {
  std::ifstream file(kPoolSize);
  int64_t value = -1;
  file >> value;
  return file ? value : -1;
}

bool SetPoolSize(int64_t value) {
  std::ofstream file(kPoolSize);
  file << value << "\n";
  file.flush();
  return static_cast<bool>(file);
}

}  // namespace

ScopedHugePages::ScopedHugePages(uint64_t count) {
  const int64_t wanted = static_cast<int64_t>(count);
  if (memory::AvailableHugePages() < 0) {
    unavailable_ = "this kernel reports no huge pages (no HugePages_Free in /proc/meminfo)";
    return;
  }
  // The kernel may find fewer free 2 MiB blocks than asked: what it added is what goes later.
  if (const int64_t pool = PoolSize(); pool >= 0 && SetPoolSize(pool + wanted)) added_ = std::max<int64_t>(0, PoolSize() - pool);
  if (memory::AvailableHugePages() < wanted) {
    unavailable_ = absl::StrCat("the host's pool has ", memory::AvailableHugePages(), " free 2 MiB huge pages and ", wanted,
                                " are needed", added_ > 0 ? " (after growing it: memory too fragmented?)"
                                                          : absl::StrCat(" (", kPoolSize, " cannot be grown: not root?)"));
  }
}

ScopedHugePages::~ScopedHugePages() {
  // Pages still in use by others become surplus and go when released.
  if (const int64_t pool = PoolSize(); added_ > 0 && pool >= 0) (void)SetPoolSize(std::max<int64_t>(0, pool - added_));
}

}  // namespace xenkvm::testing
