#include "components/acpi/acpi_tables.h"

#include <cstring>
#include <numeric>
#include <string_view>

#include "absl/strings/str_format.h"

namespace xenkvm::acpi {
namespace {

constexpr size_t kHeaderSize = 36;
constexpr size_t kRsdpSize = 36;
constexpr size_t kFadtSize = 276;  // revision 6
constexpr size_t kGasSize = 12;

// Field offsets in the FADT (ACPI 6.x, "Fixed ACPI Description Table").
constexpr size_t kFadtDsdt = 40;
constexpr size_t kFadtBootArch = 109;
constexpr size_t kFadtFlags = 112;
constexpr size_t kFadtResetRegister = 116;
constexpr size_t kFadtResetValue = 128;
constexpr size_t kFadtMinorVersion = 131;
constexpr size_t kFadtXDsdt = 140;
constexpr size_t kFadtSleepControl = 244;
constexpr size_t kFadtSleepStatus = 256;
constexpr size_t kFadtHypervisorVendor = 268;

constexpr uint32_t kFlagWbinvd = 1 << 0;
constexpr uint32_t kFlagPowerButtonIsControlMethod = 1 << 4;
constexpr uint32_t kFlagSleepButtonIsControlMethod = 1 << 5;
constexpr uint32_t kFlagResetRegisterSupported = 1 << 10;
constexpr uint32_t kFlagHardwareReduced = 1 << 20;
// IAPC_BOOT_ARCH: no VGA, no CMOS RTC; the 8042 and legacy-device bits clear (there are none).
constexpr uint16_t kBootArchNoVga = 1 << 2;
constexpr uint16_t kBootArchNoCmosRtc = 1 << 5;

constexpr uint8_t kMadtLocalApic = 0;
constexpr uint32_t kMadtLocalApicEnabled = 1;

// \_S5: Name (_S5, Package () { 5, 5, 0, 0 }) in AML (NameOp, PackageOp with its length and count).
constexpr uint8_t kS5Aml[] = {0x08, '_', 'S', '5', '_', 0x12, 0x08, 0x04,
                              0x0a, kSleepTypeS5, 0x0a, kSleepTypeS5, 0x00, 0x00};

class Bytes {
 public:
  explicit Bytes(size_t size) : bytes_(size, 0) {}
  template <typename T>
  void Put(size_t at, T value) {
    std::memcpy(bytes_.data() + at, &value, sizeof(T));
  }
  void PutText(size_t at, std::string_view text) { std::memcpy(bytes_.data() + at, text.data(), text.size()); }
  void Append(const uint8_t* data, size_t size) { bytes_.insert(bytes_.end(), data, data + size); }
  // A Generic Address Structure for a byte-wide I/O port.
  void PutIoPort(size_t at, uint16_t port) {
    Put<uint8_t>(at, 1);      // system I/O space
    Put<uint8_t>(at + 1, 8);  // register bit width
    Put<uint8_t>(at + 2, 0);  // bit offset
    Put<uint8_t>(at + 3, 1);  // byte access
    Put<uint64_t>(at + 4, port);
  }
  std::vector<uint8_t>& vector() { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

uint8_t Checksum(const uint8_t* data, size_t size) {
  return static_cast<uint8_t>(-std::accumulate(data, data + size, 0u));
}

// The common header; the length and checksum are set by Finish().
void PutHeader(Bytes& table, std::string_view signature, uint8_t revision) {
  table.PutText(0, signature);
  table.Put<uint8_t>(8, revision);
  table.PutText(10, "XENKVM");
  table.PutText(16, "XENKVM  ");
  table.Put<uint32_t>(24, 1);
  table.PutText(28, "XKVM");
  table.Put<uint32_t>(32, 1);
}

std::vector<uint8_t> Finish(Bytes& table) {
  std::vector<uint8_t>& bytes = table.vector();
  table.Put<uint32_t>(4, static_cast<uint32_t>(bytes.size()));
  table.Put<uint8_t>(9, 0);
  table.Put<uint8_t>(9, Checksum(bytes.data(), bytes.size()));
  return bytes;
}

std::vector<uint8_t> Dsdt() {
  Bytes table(kHeaderSize);
  PutHeader(table, "DSDT", 2);
  table.Append(kS5Aml, sizeof(kS5Aml));
  return Finish(table);
}

std::vector<uint8_t> Fadt(uint64_t dsdt_address) {
  Bytes table(kFadtSize);
  PutHeader(table, "FACP", 6);
  table.Put<uint32_t>(kFadtDsdt, static_cast<uint32_t>(dsdt_address));
  table.Put<uint16_t>(kFadtBootArch, kBootArchNoVga | kBootArchNoCmosRtc);
  table.Put<uint32_t>(kFadtFlags, kFlagWbinvd | kFlagPowerButtonIsControlMethod | kFlagSleepButtonIsControlMethod |
                                      kFlagResetRegisterSupported | kFlagHardwareReduced);
  table.PutIoPort(kFadtResetRegister, kResetPort);
  table.Put<uint8_t>(kFadtResetValue, kResetValue);
  table.Put<uint8_t>(kFadtMinorVersion, 0);
  table.Put<uint64_t>(kFadtXDsdt, dsdt_address);
  table.PutIoPort(kFadtSleepControl, kSleepControlPort);
  table.PutIoPort(kFadtSleepStatus, kSleepStatusPort);
  table.PutText(kFadtHypervisorVendor, "XenKVM\0\0");
  return Finish(table);
}

std::vector<uint8_t> Madt(const AcpiConfig& config) {
  Bytes table(kHeaderSize + 8 + 8 * config.vcpus);
  PutHeader(table, "APIC", 4);
  table.Put<uint32_t>(kHeaderSize, static_cast<uint32_t>(config.local_apic_address));
  table.Put<uint32_t>(kHeaderSize + 4, 0);  // no dual 8259 (PCAT_COMPAT clear)
  for (uint32_t id = 0; id < config.vcpus; ++id) {
    const size_t at = kHeaderSize + 8 + 8 * id;
    table.Put<uint8_t>(at, kMadtLocalApic);
    table.Put<uint8_t>(at + 1, 8);
    table.Put<uint8_t>(at + 2, static_cast<uint8_t>(id));  // ACPI processor UID
    table.Put<uint8_t>(at + 3, static_cast<uint8_t>(id));  // local APIC ID
    table.Put<uint32_t>(at + 4, kMadtLocalApicEnabled);
  }
  return Finish(table);
}

std::vector<uint8_t> Xsdt(const std::vector<uint64_t>& entries) {
  Bytes table(kHeaderSize + 8 * entries.size());
  PutHeader(table, "XSDT", 1);
  for (size_t i = 0; i < entries.size(); ++i) table.Put<uint64_t>(kHeaderSize + 8 * i, entries[i]);
  return Finish(table);
}

std::vector<uint8_t> Rsdp(uint64_t xsdt_address) {
  Bytes rsdp(kRsdpSize);
  rsdp.PutText(0, "RSD PTR ");
  rsdp.PutText(9, "XENKVM");
  rsdp.Put<uint8_t>(15, 2);  // revision: ACPI 2.0+, with the XSDT
  rsdp.Put<uint32_t>(20, kRsdpSize);
  rsdp.Put<uint64_t>(24, xsdt_address);
  std::vector<uint8_t>& bytes = rsdp.vector();
  bytes[8] = Checksum(bytes.data(), 20);
  bytes[32] = Checksum(bytes.data(), kRsdpSize);
  return bytes;
}

size_t Align16(size_t value) { return (value + 15) & ~size_t{15}; }

}  // namespace

absl::StatusOr<AcpiTables> BuildAcpiTables(const AcpiConfig& config, uint64_t base) {
  if (config.vcpus == 0 || config.vcpus > kMaxVcpus) {
    return absl::InvalidArgumentError(
        absl::StrFormat("ACPI tables: %u vCPUs (1 to %u fit in the MADT)", config.vcpus, kMaxVcpus));
  }
  if (base % 16 != 0 || base >= (uint64_t{1} << 32)) {
    return absl::InvalidArgumentError(absl::StrFormat("ACPI tables: base %#x is not 16-aligned below 4 GiB", base));
  }
  // Layout: RSDP, XSDT (two entries), FADT, MADT, DSDT; addresses are known before the bytes.
  const std::vector<uint8_t> madt = Madt(config);
  const std::vector<uint8_t> dsdt = Dsdt();
  const size_t xsdt_at = Align16(kRsdpSize);
  const size_t fadt_at = Align16(xsdt_at + kHeaderSize + 2 * 8);
  const size_t madt_at = Align16(fadt_at + kFadtSize);
  const size_t dsdt_at = Align16(madt_at + madt.size());
  const std::vector<uint8_t> fadt = Fadt(base + dsdt_at);
  const std::vector<uint8_t> xsdt = Xsdt({base + fadt_at, base + madt_at});

  AcpiTables tables;
  tables.base = base;
  tables.rsdp_address = base;
  tables.bytes.resize(dsdt_at + dsdt.size(), 0);
  auto place = [&](size_t at, const std::vector<uint8_t>& table) {
    std::memcpy(tables.bytes.data() + at, table.data(), table.size());
  };
  place(0, Rsdp(base + xsdt_at));
  place(xsdt_at, xsdt);
  place(fadt_at, fadt);
  place(madt_at, madt);
  place(dsdt_at, dsdt);
  return tables;
}

}  // namespace xenkvm::acpi
