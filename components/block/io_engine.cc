#include "components/block/io_engine.h"

#include <mutex>
#include <string>

#include "spdlog/spdlog.h"

namespace xenkvm::block {

absl::StatusOr<std::unique_ptr<IoEngine>> NewIoEngine(int fd, uint32_t depth, EngineChoice choice) {
  if (choice != EngineChoice::kThreads) {
    absl::StatusOr<std::unique_ptr<IoEngine>> uring = NewUringEngine(fd, depth);
    if (uring.ok() || choice == EngineChoice::kUring) return uring;
    static std::once_flag logged;
    std::call_once(logged, [&] {
      spdlog::warn("block I/O: io_uring is not available ({}); using a thread pool, with fewer requests overlapped",
                   std::string(uring.status().message()));
    });
  }
  // Four workers overlap enough I/O for a page-cache image or one SSD queue without a thread per slot.
  return NewThreadPoolEngine(fd, depth, 4);
}

}  // namespace xenkvm::block
