// Loads an ELF kernel by its PVH entry point (the XEN_ELFNOTE_PHYS32_ENTRY note) and writes the
// hvm_start_info a PVH guest finds in EBX: the command line, the modules and the memory map.
// Every value in the file is treated as hostile: headers, offsets and sizes are checked before use.
#ifndef XENKVM_COMPONENTS_LOADER_PVH_LOADER_H_
#define XENKVM_COMPONENTS_LOADER_PVH_LOADER_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "components/loader/layout.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::loader {

struct LoadedKernel {
  uint32_t entry = 0;      // the PVH entry (guest-physical, 32-bit protected mode)
  uint64_t start = 0;      // lowest loaded byte
  uint64_t end = 0;        // one past the highest loaded byte (memsz included)
  bool elf64 = false;      // ELFCLASS64 (an ELFCLASS32 file may still be an x86-64 kernel)
};

// Loads each PT_LOAD segment at its physical address (p_paddr), zeroing memsz beyond filesz.
// Refuses, saying why: files that are not little-endian x86 ELF, truncated headers, sizes or
// offsets that overflow or point past the file, segments outside guest RAM or overlapping each
// other or `reserved`, a missing PVH note, an entry outside the loaded image.
absl::StatusOr<LoadedKernel> LoadPvhKernel(std::span<const uint8_t> file, const memory::GuestMemory& memory,
                                           std::span<const ReservedRange> reserved);

struct BootModule {
  std::vector<uint8_t> data;
  std::string cmdline;
};

// Writes the command line, the modules (page-aligned, from the first page above the kernel) and the
// hvm_start_info (version 1, with the E820 map and `rsdp_address`, 0 for no ACPI) at
// kBootInfoAddress. Returns that address.
absl::StatusOr<uint32_t> WriteStartInfo(const memory::GuestMemory& memory, const LoadedKernel& kernel,
                                        const std::string& cmdline, std::span<const BootModule> modules,
                                        uint64_t rsdp_address = 0);

}  // namespace xenkvm::loader

#endif  // XENKVM_COMPONENTS_LOADER_PVH_LOADER_H_
