// The guest-physical layout xenkvm gives a PVH guest: where RAM, the MMIO hole, the reserved Xen
// pages and the boot information live, and the E820 map that describes it to the guest.
#ifndef XENKVM_COMPONENTS_LOADER_LAYOUT_H_
#define XENKVM_COMPONENTS_LOADER_LAYOUT_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::loader {

inline constexpr uint64_t kPageSize = 4096;
inline constexpr uint64_t kMiB = 1 << 20;

// hvm_start_info, then the module list and the memory map, in one page.
inline constexpr uint64_t kBootInfoAddress = 0x6000;
inline constexpr uint64_t kBootInfoSize = kPageSize;
// The kernel command line (NUL-terminated), at most kCommandLineMax bytes with the NUL.
inline constexpr uint64_t kCommandLineAddress = 0x20000;
inline constexpr uint64_t kCommandLineMax = 4096;
// The legacy VGA/BIOS hole: backed by RAM but reported reserved, as on a PC.
inline constexpr uint64_t kLegacyHoleStart = 0xa0000;
inline constexpr uint64_t kLegacyHoleEnd = 0x100000;
// The ACPI tables (components/acpi), where a PC's firmware keeps them: in the hole's BIOS area.
inline constexpr uint64_t kAcpiTablesAddress = 0xe0000;
inline constexpr uint64_t kAcpiTablesMax = 0x10000;
// RAM below 4 GiB ends here; the MMIO hole (PCI BARs, IOAPIC, LAPIC) fills the rest.
inline constexpr uint64_t kMmioHoleStart = 0xc0000000;
inline constexpr uint64_t kFourGiB = uint64_t{1} << 32;
// Four pages QEMU also reserves for Xen guests: the console ring (pfn 0xfeff8), the XenStore ring
// (pfn 0xfeff9) and two spare. RAM in the MMIO hole, reported reserved.
inline constexpr uint64_t kXenReservedBase = 0xfeff8000;
inline constexpr uint64_t kXenReservedSize = 4 * kPageSize;

// The smallest guest xenkvm builds: room for the boot information and a small kernel at 1 MiB.
inline constexpr uint64_t kMinimumRamBytes = 2 * kMiB;

// The RAM regions for `ram_bytes` of guest RAM: below the MMIO hole, the rest from 4 GiB, plus the
// reserved Xen pages. kInvalidArgument when `ram_bytes` is not a multiple of 1 MiB or is below
// kMinimumRamBytes.
absl::StatusOr<std::vector<memory::RegionSpec>> RamRegions(uint64_t ram_bytes);

// A guest-physical range the kernel image must not overlap.
struct ReservedRange {
  uint64_t start = 0;
  uint64_t end = 0;  // exclusive
  const char* what = "";
};
// The boot information page, the command line, the legacy hole and the Xen pages.
std::vector<ReservedRange> ReservedRanges();

struct E820Entry {
  uint64_t address = 0;
  uint64_t size = 0;
  uint32_t type = 0;  // XEN_HVM_MEMMAP_TYPE_* (the E820 numbering)
};
// RAM as RAM, except the legacy hole and the Xen pages, which are reserved; sorted by address.
std::vector<E820Entry> BuildE820(const memory::GuestMemory& memory);

}  // namespace xenkvm::loader

#endif  // XENKVM_COMPONENTS_LOADER_LAYOUT_H_
