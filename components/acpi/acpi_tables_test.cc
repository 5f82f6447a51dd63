#include "components/acpi/acpi_tables.h"

#include <cstring>
#include <map>
#include <numeric>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::acpi {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kBase = 0xe0000;

// Reads the tables back as a guest's ACPI code would: by address, from the RSDP, checking every
// signature, length and checksum on the way.
class Reader {
 public:
  explicit Reader(const AcpiTables& tables) : tables_(tables) {}

  template <typename T>
  T At(uint64_t address, size_t offset = 0) const {
    T value{};
    const uint64_t at = address - tables_.base + offset;
    EXPECT_LE(at + sizeof(T), tables_.bytes.size()) << "read past the tables at " << address;
    if (at + sizeof(T) <= tables_.bytes.size()) std::memcpy(&value, tables_.bytes.data() + at, sizeof(T));
    return value;
  }
  std::string Text(uint64_t address, size_t offset, size_t size) const {
    std::string text(size, '\0');
    for (size_t i = 0; i < size; ++i) text[i] = static_cast<char>(At<uint8_t>(address, offset + i));
    return text;
  }
  uint8_t Sum(uint64_t address, size_t size) const {
    uint8_t sum = 0;
    for (size_t i = 0; i < size; ++i) sum += At<uint8_t>(address, i);
    return sum;
  }
  // A table's address, checked: its signature, a length inside the blob, a zero checksum.
  void ExpectTable(uint64_t address, const std::string& signature) const {
    EXPECT_EQ(address % 8, 0u) << signature;
    EXPECT_EQ(Text(address, 0, 4), signature);
    const uint32_t length = At<uint32_t>(address, 4);
    ASSERT_GE(length, 36u) << signature;
    ASSERT_LE(address - tables_.base + length, tables_.bytes.size()) << signature;
    EXPECT_EQ(Sum(address, length), 0) << signature << " checksum";
    EXPECT_EQ(Text(address, 10, 6), "XENKVM") << signature;
  }
  // The XSDT's entries by signature.
  std::map<std::string, uint64_t> Tables() const {
    const uint64_t rsdp = tables_.rsdp_address;
    EXPECT_EQ(Text(rsdp, 0, 8), "RSD PTR ");
    EXPECT_EQ(Sum(rsdp, 20), 0) << "RSDP checksum";
    EXPECT_EQ(At<uint8_t>(rsdp, 15), 2) << "RSDP revision";
    EXPECT_EQ(At<uint32_t>(rsdp, 20), 36u);
    EXPECT_EQ(Sum(rsdp, 36), 0) << "RSDP extended checksum";
    const uint64_t xsdt = At<uint64_t>(rsdp, 24);
    ExpectTable(xsdt, "XSDT");
    std::map<std::string, uint64_t> found;
    const uint32_t entries = (At<uint32_t>(xsdt, 4) - 36) / 8;
    for (uint32_t i = 0; i < entries; ++i) {
      const uint64_t table = At<uint64_t>(xsdt, 36 + 8 * i);
      const std::string signature = Text(table, 0, 4);
      ExpectTable(table, signature);
      found[signature] = table;
    }
    return found;
  }

 private:
  const AcpiTables& tables_;
};

TEST(AcpiTablesTest, RsdpLeadsToAHardwareReducedFadtAndAMadt) {
  absl::StatusOr<AcpiTables> tables = BuildAcpiTables({.vcpus = 2}, kBase);
  ASSERT_TRUE(tables.ok()) << tables.status();
  EXPECT_EQ(tables->rsdp_address, kBase);
  Reader reader(*tables);
  std::map<std::string, uint64_t> found = reader.Tables();
  ASSERT_EQ(found.size(), 2u);
  ASSERT_TRUE(found.count("FACP") && found.count("APIC"));

  const uint64_t fadt = found["FACP"];
  EXPECT_EQ(reader.At<uint32_t>(fadt, 4), 276u);
  EXPECT_EQ(reader.At<uint8_t>(fadt, 8), 6) << "FADT revision";
  const uint32_t flags = reader.At<uint32_t>(fadt, 112);
  EXPECT_TRUE(flags & (1 << 20)) << "HW_REDUCED_ACPI";
  EXPECT_TRUE(flags & (1 << 10)) << "RESET_REG_SUP";
  EXPECT_EQ(reader.At<uint16_t>(fadt, 109) & 0x3, 0) << "no legacy devices, no 8042";
  EXPECT_EQ(reader.At<uint16_t>(fadt, 46), 0) << "no SCI";
  for (size_t block = 56; block < 88; block += 4) EXPECT_EQ(reader.At<uint32_t>(fadt, block), 0u) << "PM block " << block;
  // Reset and sleep registers: byte-wide I/O ports the VMM serves.
  EXPECT_EQ(reader.At<uint8_t>(fadt, 116), 1);
  EXPECT_EQ(reader.At<uint64_t>(fadt, 120), kResetPort);
  EXPECT_EQ(reader.At<uint8_t>(fadt, 128), kResetValue);
  EXPECT_EQ(reader.At<uint8_t>(fadt, 244), 1);
  EXPECT_EQ(reader.At<uint8_t>(fadt, 245), 8);
  EXPECT_EQ(reader.At<uint64_t>(fadt, 248), kSleepControlPort);
  EXPECT_EQ(reader.At<uint64_t>(fadt, 260), kSleepStatusPort);

  const uint64_t dsdt = reader.At<uint64_t>(fadt, 140);
  EXPECT_EQ(reader.At<uint32_t>(fadt, 40), dsdt) << "DSDT and X_DSDT agree";
  reader.ExpectTable(dsdt, "DSDT");
  // The DSDT's AML names \_S5 as a package whose first element is the sleep type the VMM expects.
  const uint32_t dsdt_length = reader.At<uint32_t>(dsdt, 4);
  const std::string aml = reader.Text(dsdt, 36, dsdt_length - 36);
  const size_t s5 = aml.find("_S5_");
  ASSERT_NE(s5, std::string::npos);
  EXPECT_EQ(static_cast<uint8_t>(aml[s5 - 1]), 0x08) << "NameOp";
  EXPECT_EQ(static_cast<uint8_t>(aml[s5 + 4]), 0x12) << "PackageOp";
  EXPECT_EQ(static_cast<uint8_t>(aml[s5 + 7]), 0x0a) << "BytePrefix";
  EXPECT_EQ(static_cast<uint8_t>(aml[s5 + 8]), kSleepTypeS5);
}

TEST(AcpiTablesTest, MadtHasOneEnabledLocalApicPerVcpu) {
  for (uint32_t vcpus : {1u, 2u, 32u, 255u}) {
    absl::StatusOr<AcpiTables> tables = BuildAcpiTables({.vcpus = vcpus}, kBase);
    ASSERT_TRUE(tables.ok()) << tables.status();
    Reader reader(*tables);
    const uint64_t madt = reader.Tables()["APIC"];
    EXPECT_EQ(reader.At<uint32_t>(madt, 36), 0xfee00000u) << "local APIC address";
    EXPECT_EQ(reader.At<uint32_t>(madt, 40) & 1, 0u) << "no 8259 pair";
    const uint32_t length = reader.At<uint32_t>(madt, 4);
    uint32_t apics = 0;
    for (uint32_t at = 44; at < length;) {
      const uint8_t type = reader.At<uint8_t>(madt, at);
      const uint8_t size = reader.At<uint8_t>(madt, at + 1);
      ASSERT_GE(size, 2) << "entry at " << at;
      ASSERT_LE(at + size, length);
      if (type == 0) {
        EXPECT_EQ(size, 8);
        EXPECT_EQ(reader.At<uint8_t>(madt, at + 2), apics) << "processor UID";
        EXPECT_EQ(reader.At<uint8_t>(madt, at + 3), apics) << "APIC ID";
        EXPECT_EQ(reader.At<uint32_t>(madt, at + 4), 1u) << "enabled";
        ++apics;
      }
      at += size;
    }
    EXPECT_EQ(apics, vcpus);
  }
}

TEST(AcpiTablesTest, RefusesWhatCannotBeDescribed) {
  EXPECT_THAT(BuildAcpiTables({.vcpus = 0}, kBase).status().message(), HasSubstr("0 vCPUs"));
  EXPECT_THAT(BuildAcpiTables({.vcpus = 256}, kBase).status().message(), HasSubstr("256 vCPUs"));
  EXPECT_THAT(BuildAcpiTables({.vcpus = 1}, kBase + 4).status().message(), HasSubstr("not 16-aligned"));
  EXPECT_THAT(BuildAcpiTables({.vcpus = 1}, uint64_t{1} << 32).status().message(), HasSubstr("below 4 GiB"));
}

TEST(AcpiTablesTest, TablesAreLaidOutFromTheBaseGiven) {
  absl::StatusOr<AcpiTables> low = BuildAcpiTables({.vcpus = 4}, kBase);
  absl::StatusOr<AcpiTables> high = BuildAcpiTables({.vcpus = 4}, 0xfc000000);
  ASSERT_TRUE(low.ok() && high.ok());
  EXPECT_EQ(high->rsdp_address, 0xfc000000u);
  Reader reader(*high);
  EXPECT_EQ(reader.Tables().size(), 2u);
  EXPECT_EQ(low->bytes.size(), high->bytes.size());
}

}  // namespace
}  // namespace xenkvm::acpi
