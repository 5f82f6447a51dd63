// The ACPI tables a PVH guest finds through hvm_start_info.rsdp_paddr, as Xen's toolstack provides
// them to PVH guests: RSDP (revision 2) -> XSDT -> a hardware-reduced FADT (no legacy PM blocks,
// no SCI) with its DSDT, and a MADT with one local APIC per vCPU. The DSDT holds only \_S5, so that
// a guest powers off through the FADT's sleep control register; the FADT's reset register reboots.
// Both are I/O ports the VMM serves (kSleepControlPort, kResetPort). Pure bytes: no guest memory.
#ifndef XENKVM_COMPONENTS_ACPI_ACPI_TABLES_H_
#define XENKVM_COMPONENTS_ACPI_ACPI_TABLES_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace xenkvm::acpi {

// Hardware-reduced ACPI's sleep and reset registers, in I/O space.
inline constexpr uint16_t kSleepControlPort = 0x600;
inline constexpr uint16_t kSleepStatusPort = 0x601;
inline constexpr uint16_t kResetPort = 0x602;
inline constexpr uint8_t kResetValue = 0x01;
// What a guest writes to the sleep control register: SLP_TYP (bits 2-4, \_S5's value) and SLP_EN.
inline constexpr uint8_t kSleepTypeS5 = 5;
inline constexpr uint8_t kSleepEnable = 1 << 5;

inline constexpr uint32_t kMaxVcpus = 255;  // processor local APIC entries carry 8-bit IDs

struct AcpiConfig {
  uint32_t vcpus = 1;                      // local APIC IDs 0..vcpus-1, as the vCPUs' CPUID reports
  uint64_t local_apic_address = 0xfee00000;
};

struct AcpiTables {
  uint64_t base = 0;             // guest-physical address of bytes[0]
  uint64_t rsdp_address = 0;     // for hvm_start_info.rsdp_paddr
  std::vector<uint8_t> bytes;    // every table, each 16-byte aligned, checksums set
};

// The tables laid out from guest-physical `base` (16-byte aligned, below 4 GiB, since the FADT's
// 32-bit DSDT field is filled too). kInvalidArgument for 0 or more than kMaxVcpus vCPUs.
absl::StatusOr<AcpiTables> BuildAcpiTables(const AcpiConfig& config, uint64_t base);

}  // namespace xenkvm::acpi

#endif  // XENKVM_COMPONENTS_ACPI_ACPI_TABLES_H_
