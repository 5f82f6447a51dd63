// Replaces Unicorn 2.1.1's qemu_madvise (weakened in the archive: ../BUILD.bazel).
//
// Unicorn asks for transparent huge pages over each engine's whole translation buffer (1 GiB of
// address space), so the first translation an engine makes, at the VMM's start, faults in a 2 MiB
// huge page: most of the VMM's memory beyond guest RAM while the guest is small. The huge page
// holding the buffer's start is left in 4 KiB pages, so the translations of a guest's first
// moments cost what they fill; a guest that translates more (a Linux kernel: tens of MiB) gets
// huge pages from the second 2 MiB on, where its translations keep the iTLB's reach.
// Unicorn calls it only for that buffer.
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>

namespace {
constexpr uintptr_t kHugePage = 2u << 20;
}  // namespace

extern "C" int qemu_madvise(void* address, size_t length, int advice) {
  auto start = reinterpret_cast<uintptr_t>(address);
  if (advice == MADV_HUGEPAGE) {
    const uintptr_t second_huge_page = (start + kHugePage) & ~(kHugePage - 1);
    if (second_huge_page - start >= length) return 0;  // all of it within the first huge page
    length -= second_huge_page - start;
    start = second_huge_page;
  }
  return madvise(reinterpret_cast<void*>(start), length, advice);
}
