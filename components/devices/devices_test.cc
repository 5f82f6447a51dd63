#include <cstring>
#include <string>
#include <vector>

#include "components/devices/bus.h"
#include "components/devices/ioapic.h"
#include "components/devices/legacy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::devices {
namespace {

using ::testing::HasSubstr;

// Records accesses.
class Recorder final : public Device {
 public:
  void Read(uint64_t offset, std::span<uint8_t> data) override {
    reads.push_back(offset);
    StoreLittleEndian(0x1122334455667788, data);
  }
  void Write(uint64_t offset, std::span<const uint8_t> data) override {
    writes.push_back({offset, LoadLittleEndian(data)});
  }
  std::vector<uint64_t> reads;
  std::vector<std::pair<uint64_t, uint64_t>> writes;
};

uint8_t ReadByte(Bus& bus, uint64_t address) {
  uint8_t value = 0;
  EXPECT_TRUE(bus.Read(address, std::span(&value, 1)));
  return value;
}
void WriteByte(Bus& bus, uint64_t address, uint8_t value) {
  EXPECT_TRUE(bus.Write(address, std::span<const uint8_t>(&value, 1)));
}

TEST(BusTest, RoutesByRangeAndRefusesOverlaps) {
  Bus bus("MMIO");
  auto a = std::make_shared<Recorder>();
  auto b = std::make_shared<Recorder>();
  ASSERT_TRUE(bus.Register(0x1000, 0x100, a, "a").ok());
  ASSERT_TRUE(bus.Register(0x1100, 0x10, b, "b").ok());  // adjacent is fine
  absl::Status overlap = bus.Register(0x10ff, 2, b, "c");
  EXPECT_EQ(overlap.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(overlap.message(), HasSubstr("overlaps a at 0x1000..0x10ff"));
  EXPECT_EQ(bus.Register(0x0, 0, a, "empty").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bus.Register(~uint64_t{0} - 1, 4, a, "wrap").code(), absl::StatusCode::kInvalidArgument);

  uint8_t word[4] = {1, 2, 3, 4};
  EXPECT_TRUE(bus.Write(0x1010, word));
  ASSERT_EQ(a->writes.size(), 1u);
  EXPECT_EQ(a->writes[0], (std::pair<uint64_t, uint64_t>{0x10, 0x04030201}));
  uint8_t read[2];
  EXPECT_TRUE(bus.Read(0x1104, read));
  EXPECT_EQ(b->reads, std::vector<uint64_t>{4});
  EXPECT_EQ(read[0], 0x88);
  EXPECT_FALSE(bus.Read(0x2000, read));             // nobody there
  EXPECT_FALSE(bus.Read(0x110f, read));             // straddles b's end
  EXPECT_TRUE(bus.Unregister(0x1100).ok());
  EXPECT_FALSE(bus.Read(0x1104, read));
  EXPECT_EQ(bus.Unregister(0x1100).code(), absl::StatusCode::kNotFound);
}

class SerialTest : public ::testing::Test {
 protected:
  SerialTest() {
    serial_ = std::make_shared<Serial>([this](uint8_t byte) { output_ += static_cast<char>(byte); },
                                       [this](bool level) { lines_.push_back(level); });
    EXPECT_TRUE(bus_.Register(kCom1Base, kCom1Size, serial_, "COM1").ok());
  }
  Bus bus_{"port I/O"};
  std::shared_ptr<Serial> serial_;
  std::string output_;
  std::vector<bool> lines_;
};

TEST_F(SerialTest, TransmitsAndKeepsTheDivisorLatchApart) {
  WriteByte(bus_, kCom1Base + 3, 0x80);  // DLAB
  WriteByte(bus_, kCom1Base + 0, 0x01);  // divisor low: not output
  WriteByte(bus_, kCom1Base + 1, 0x00);
  EXPECT_EQ(ReadByte(bus_, kCom1Base + 0), 0x01);
  WriteByte(bus_, kCom1Base + 3, 0x03);  // 8N1
  for (char c : std::string("hi\n")) WriteByte(bus_, kCom1Base, static_cast<uint8_t>(c));
  EXPECT_EQ(output_, "hi\n");
  EXPECT_EQ(ReadByte(bus_, kCom1Base + 5) & 0x60, 0x60);  // THRE and TEMT: always ready
  EXPECT_EQ(ReadByte(bus_, kCom1Base + 3), 0x03);
  WriteByte(bus_, kCom1Base + 7, 0x5a);
  EXPECT_EQ(ReadByte(bus_, kCom1Base + 7), 0x5a);
}

TEST_F(SerialTest, ReceivesWithInterruptsAndLoopback) {
  EXPECT_EQ(ReadByte(bus_, kCom1Base + 2) & 0x0f, 0x01);  // no interrupt pending
  WriteByte(bus_, kCom1Base + 1, 0x01);                    // receive interrupts
  const uint8_t input[] = {'o', 'k'};
  serial_->Enqueue(input);
  EXPECT_EQ(lines_, std::vector<bool>{true});
  EXPECT_EQ(ReadByte(bus_, kCom1Base + 5) & 0x01, 0x01);  // data ready
  EXPECT_EQ(ReadByte(bus_, kCom1Base + 2) & 0x0f, 0x04);
  EXPECT_EQ(ReadByte(bus_, kCom1Base), 'o');
  EXPECT_EQ(ReadByte(bus_, kCom1Base), 'k');
  EXPECT_EQ(lines_, (std::vector<bool>{true, false}));
  EXPECT_EQ(ReadByte(bus_, kCom1Base + 5) & 0x01, 0x00);

  WriteByte(bus_, kCom1Base + 1, 0x03);  // + transmitter-empty: raised at once
  EXPECT_EQ(ReadByte(bus_, kCom1Base + 2) & 0x0f, 0x02);  // reading it acknowledges it
  EXPECT_EQ(ReadByte(bus_, kCom1Base + 2) & 0x0f, 0x01);

  WriteByte(bus_, kCom1Base + 4, 0x10 | 0x0b);  // loopback, OUT2, RTS, DTR
  WriteByte(bus_, kCom1Base, 'x');
  EXPECT_EQ(output_, "");  // looped back, not transmitted
  EXPECT_EQ(ReadByte(bus_, kCom1Base), 'x');
  EXPECT_EQ(ReadByte(bus_, kCom1Base + 6) & 0xb0, 0xb0);  // DCD, DSR, CTS from OUT2, DTR, RTS
}

TEST_F(SerialTest, InputIsBounded) {
  std::vector<uint8_t> flood(Serial::kInputLimit + 10, 'a');
  serial_->Enqueue(flood);
  EXPECT_EQ(serial_->dropped_input(), 10u);
}

TEST(LegacyDevicesTest, DebugPortI8042ResetAndExitPort) {
  Bus bus("port I/O");
  std::string console;
  int resets = 0;
  std::vector<uint32_t> exits;
  ASSERT_TRUE(bus.Register(kDebugPort, 1, std::make_shared<DebugPort>([&](uint8_t b) { console += b; }), "debugcon").ok());
  ASSERT_TRUE(bus.Register(kI8042DataPort, 5, std::make_shared<I8042>([&] { ++resets; }), "i8042").ok());
  ASSERT_TRUE(bus.Register(kExitPort, 4, std::make_shared<ExitPort>([&](uint32_t v) { exits.push_back(v); }), "exit").ok());
  WriteByte(bus, kDebugPort, 'A');
  EXPECT_EQ(console, "A");
  EXPECT_EQ(ReadByte(bus, kDebugPort), 0xe9);
  EXPECT_EQ(ReadByte(bus, kI8042CommandPort), 0);  // no data waiting
  WriteByte(bus, kI8042CommandPort, 0xaa);          // other commands: nothing
  EXPECT_EQ(resets, 0);
  WriteByte(bus, kI8042DataPort, 0xfe);             // 0xfe on the data port is not the command
  EXPECT_EQ(resets, 0);
  WriteByte(bus, kI8042CommandPort, 0xfe);
  EXPECT_EQ(resets, 1);
  const uint8_t status[4] = {0x2a, 0, 0, 0};
  EXPECT_TRUE(bus.Write(kExitPort, status));
  EXPECT_EQ(exits, std::vector<uint32_t>{42});
}

TEST(LegacyDevicesTest, AcpiSleepControlPowersOffAndResetRegisterResets) {
  Bus bus("port I/O");
  int power_offs = 0, resets = 0;
  ASSERT_TRUE(bus.Register(0x600, 3, std::make_shared<AcpiSleepAndReset>([&] { ++power_offs; }, [&] { ++resets; }),
                           "ACPI").ok());
  WriteByte(bus, 0x600, 5 << 2);  // SLP_TYP 5 without SLP_EN: nothing yet
  WriteByte(bus, 0x600, (3 << 2) | (1 << 5));  // S3 is not offered: ignored
  EXPECT_EQ(power_offs, 0);
  EXPECT_EQ(ReadByte(bus, 0x601), 0);
  WriteByte(bus, 0x602, 2);  // not the reset value
  EXPECT_EQ(resets, 0);
  WriteByte(bus, 0x600, (5 << 2) | (1 << 5));
  EXPECT_EQ(power_offs, 1);
  WriteByte(bus, 0x602, 1);
  EXPECT_EQ(resets, 1);
}

}  // namespace
}  // namespace xenkvm::devices

namespace xenkvm::devices {
namespace {

class IoapicTest : public ::testing::Test {
 protected:
  void Build(bool eoi_tracking) {
    ioapic_ = std::make_shared<Ioapic>(
        [this](uint8_t destination, uint8_t vector, bool level) {
          delivered_.push_back({destination, vector});
          levels_.push_back(level);
          return accepting_;
        },
        eoi_tracking);
    bus_ = std::make_unique<Bus>("MMIO");
    ASSERT_TRUE(bus_->Register(kIoapicBase, kIoapicSize, ioapic_, "IOAPIC").ok());
  }
  void SetUp() override { Build(true); }
  void WriteRegister(uint32_t index, uint32_t value) {
    uint8_t select[4], window[4];
    StoreLittleEndian(index, select);
    StoreLittleEndian(value, window);
    ASSERT_TRUE(bus_->Write(kIoapicBase, select));
    ASSERT_TRUE(bus_->Write(kIoapicBase + 0x10, window));
  }
  uint32_t ReadRegister(uint32_t index) {
    uint8_t select[4], window[4];
    StoreLittleEndian(index, select);
    EXPECT_TRUE(bus_->Write(kIoapicBase, select));
    EXPECT_TRUE(bus_->Read(kIoapicBase + 0x10, window));
    return static_cast<uint32_t>(LoadLittleEndian(window));
  }
  // Pin `pin` to `vector` at APIC `destination`; level-triggered unless `edge`.
  void Route(uint32_t pin, uint8_t vector, uint8_t destination, bool edge = false, bool masked = false) {
    WriteRegister(0x11 + 2 * pin, uint32_t{destination} << 24);
    WriteRegister(0x10 + 2 * pin, vector | (edge ? 0 : 1 << 15) | (masked ? 1 << 16 : 0));
  }
  std::shared_ptr<Ioapic> ioapic_;
  std::unique_ptr<Bus> bus_;
  std::vector<std::pair<uint8_t, uint8_t>> delivered_;
  std::vector<bool> levels_;
  bool accepting_ = true;  // what the destination answers
};

TEST_F(IoapicTest, RegistersAndRedirectionTable) {
  EXPECT_EQ(ReadRegister(1), 0x00170020u);  // 24 entries, version 0x20
  Route(9, 0xf1, 1);
  EXPECT_EQ(ReadRegister(0x10 + 18) & 0xff, 0xf1u);
  EXPECT_EQ(ReadRegister(0x11 + 18) >> 24, 1u);
  EXPECT_EQ(ReadRegister(0x10 + 18) & (1 << 16), 0u);
  // Read-only bits (remote IRR) cannot be written.
  WriteRegister(0x10 + 18, 0xf1 | (1 << 15) | (1 << 14));
  EXPECT_EQ(ReadRegister(0x10 + 18) & (1 << 14), 0u);
}

// The reset state, even over memory that held something else: every pin masked, nothing in service
// (an uninitialised table once left a pin with remote IRR set, and its first interrupt never came).
TEST(IoapicResetTest, StartsWithEveryPinMaskedAndIdle) {
  alignas(Ioapic) unsigned char storage[sizeof(Ioapic)];
  std::memset(storage, 0xff, sizeof(storage));
  int delivered = 0;
  auto* ioapic = new (storage) Ioapic([&](uint8_t, uint8_t, bool) { return ++delivered > 0; }, /*eoi_tracking=*/true);
  for (uint32_t pin = 0; pin < kIoapicPins; ++pin) {
    EXPECT_EQ(ioapic->redirection(pin), uint64_t{1} << 16) << "pin " << pin;
  }
  ioapic->~Ioapic();
  EXPECT_EQ(delivered, 0);
}

TEST_F(IoapicTest, LevelPinsWaitForTheEoiAndFireAgainIfStillAsserted) {
  Route(9, 0xf1, 1);
  ioapic_->SetLevel(9, true);
  ioapic_->SetLevel(9, true);  // still in service: nothing new
  EXPECT_EQ(delivered_, (std::vector<std::pair<uint8_t, uint8_t>>{{1, 0xf1}}));
  EXPECT_NE(ioapic_->redirection(9) & (1 << 14), 0u);  // remote IRR
  ioapic_->EndOfInterrupt(0xf1);
  EXPECT_EQ(delivered_.size(), 2u);  // the line is still high
  ioapic_->SetLevel(9, false);
  ioapic_->EndOfInterrupt(0x33);  // another vector's EOI changes nothing
  EXPECT_EQ(delivered_.size(), 2u);
  EXPECT_EQ(levels_, (std::vector<bool>{true, true}));
}

// A LAPIC that refuses the interrupt (not enabled yet) sends no EOI: the pin must not stay in
// service, or it would never fire again.
TEST_F(IoapicTest, ARefusedLevelInterruptHoldsNoRemoteIrr) {
  accepting_ = false;
  Route(9, 0xf1, 0);
  ioapic_->SetLevel(9, true);
  EXPECT_EQ(ioapic_->redirection(9) & (1 << 14), 0u);
  accepting_ = true;
  ioapic_->SetLevel(9, true);  // asserted again: delivered now
  EXPECT_EQ(delivered_.size(), 2u);
  EXPECT_NE(ioapic_->redirection(9) & (1 << 14), 0u);
}

TEST_F(IoapicTest, MaskedPinsFireWhenUnmaskedEdgesOnlyOnRising) {
  Route(4, 0x30, 0, /*edge=*/false, /*masked=*/true);
  ioapic_->SetLevel(4, true);
  EXPECT_TRUE(delivered_.empty());
  Route(4, 0x30, 0);  // unmasked with the line high
  EXPECT_EQ(delivered_.size(), 1u);
  Route(5, 0x31, 2, /*edge=*/true);
  ioapic_->SetLevel(5, true);
  ioapic_->SetLevel(5, true);
  EXPECT_EQ(delivered_.size(), 2u);  // one edge
  ioapic_->SetLevel(5, false);
  ioapic_->SetLevel(5, true);
  EXPECT_EQ(delivered_.size(), 3u);
  ioapic_->SetLevel(99, true);  // beyond the table: ignored
}

TEST_F(IoapicTest, WithoutEoiReportsEachAssertionDelivers) {
  Build(/*eoi_tracking=*/false);
  Route(9, 0xf1, 0);
  ioapic_->SetLevel(9, true);
  ioapic_->SetLevel(9, false);
  ioapic_->SetLevel(9, true);
  EXPECT_EQ(delivered_.size(), 2u);
}

}  // namespace
}  // namespace xenkvm::devices
