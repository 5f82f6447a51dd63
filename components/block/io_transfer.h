// What both I/O engines share: one request's progress through short transfers.
#ifndef XENKVM_COMPONENTS_BLOCK_IO_TRANSFER_H_
#define XENKVM_COMPONENTS_BLOCK_IO_TRANSFER_H_

#include <sys/uio.h>

#include <cstdint>
#include <vector>

#include "components/block/io_engine.h"

namespace xenkvm::block {

struct IoTransfer {
  IoRequest request;
  size_t first = 0;  // the iovec the next transfer starts in (earlier ones are done)

  // After `bytes` more moved: false when everything has. The iovec in progress is trimmed and
  // `request.offset` moved on, so the rest can be issued as a request of its own.
  bool Advance(size_t bytes) {
    request.offset += bytes;
    while (first < request.buffers.size() && bytes >= request.buffers[first].iov_len) {
      bytes -= request.buffers[first].iov_len;
      ++first;
    }
    if (first == request.buffers.size()) return false;
    request.buffers[first].iov_base = static_cast<char*>(request.buffers[first].iov_base) + bytes;
    request.buffers[first].iov_len -= bytes;
    return true;
  }
  const iovec* vectors() const { return request.buffers.data() + first; }
  int vector_count() const { return static_cast<int>(request.buffers.size() - first); }
};

}  // namespace xenkvm::block

#endif  // XENKVM_COMPONENTS_BLOCK_IO_TRANSFER_H_
