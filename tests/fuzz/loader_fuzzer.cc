// Fuzz target: the kernel-image reader (ELF, bzImage, compressed payloads), the PVH ELF loader and
// the start_info writer with an arbitrary kernel file.
#include <cstddef>
#include <cstdint>

#include "components/loader/kernel_image.h"
#include "components/loader/layout.h"
#include "components/loader/pvh_loader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace xenkvm;
  static memory::GuestMemory* memory = [] {
    auto regions = loader::RamRegions(8 * loader::kMiB);
    return new memory::GuestMemory(std::move(memory::GuestMemory::Create(*regions)).value());
  }();
  static const std::vector<loader::ReservedRange> reserved = loader::ReservedRanges();
  absl::StatusOr<loader::KernelImage> image = loader::ExtractElfKernel(std::vector<uint8_t>(data, data + size));
  if (!image.ok()) return 0;
  absl::StatusOr<loader::LoadedKernel> kernel = loader::LoadPvhKernel(image->elf, *memory, reserved);
  if (kernel.ok()) {
    // Every accepted image lies inside RAM and clear of the reserved ranges.
    if (kernel->end <= kernel->start || !memory->IsValidRange(memory::GuestAddress(kernel->start), kernel->end - kernel->start)) {
      __builtin_trap();
    }
    (void)loader::WriteStartInfo(*memory, *kernel, "console=hvc0", {});
  }
  return 0;
}
