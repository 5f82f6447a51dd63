// console_io: the guest's writes to Xen's own console.
#include <algorithm>
#include <vector>

#include "components/xen/dispatcher.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {
namespace {

constexpr uint64_t kMaxConsoleWrite = 64 * 1024;  // per CONSOLEIO_write call

}  // namespace

int64_t Dispatcher::ConsoleIo(HypercallCaller& caller, uint64_t command, uint64_t count, uint64_t buffer) {
  switch (command) {
    case CONSOLEIO_write: {
      const uint64_t length = std::min<uint64_t>(count & 0xffffffff, kMaxConsoleWrite);
      std::vector<uint8_t> bytes(length);
      if (length > 0 && !caller.access.Read(buffer, bytes)) return XenError(XEN_EFAULT);
      if (console_) {
        for (uint8_t byte : bytes) console_(byte);
      }
      return 0;
    }
    case CONSOLEIO_read:
      return 0;  // no console input yet
    default:
      return XenError(XEN_EINVAL);
  }
}

}  // namespace xenkvm::xen
