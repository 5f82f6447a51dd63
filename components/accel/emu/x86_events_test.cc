#include "components/accel/emu/x86_events.h"

#include <array>

#include "components/accel/emu/trampolines.h"
#include "gtest/gtest.h"

namespace xenkvm::accel::emu {
namespace {

TEST(X86EventsTest, ErrorCodeVectors) {
  for (uint32_t vector : {8u, 10u, 11u, 12u, 13u, 14u, 17u, 21u, 29u, 30u}) EXPECT_TRUE(HasErrorCode(vector)) << vector;
  for (uint32_t vector : {0u, 1u, 2u, 3u, 6u, 7u, 9u, 16u, 18u, 19u, 32u, 0x80u}) EXPECT_FALSE(HasErrorCode(vector)) << vector;
}

TEST(X86EventsTest, EscalationFollowsTheSdmTable) {
  EXPECT_EQ(Escalate(13, 13), Escalation::kDoubleFault);   // contributory, contributory
  EXPECT_EQ(Escalate(0, 11), Escalation::kDoubleFault);
  EXPECT_EQ(Escalate(14, 14), Escalation::kDoubleFault);   // page fault, page fault
  EXPECT_EQ(Escalate(14, 13), Escalation::kDoubleFault);   // page fault, contributory
  EXPECT_EQ(Escalate(13, 14), Escalation::kDeliverSecond); // contributory, page fault
  EXPECT_EQ(Escalate(6, 13), Escalation::kDeliverSecond);  // benign first
  EXPECT_EQ(Escalate(0x30, 14), Escalation::kDeliverSecond);
  EXPECT_EQ(Escalate(8, 13), Escalation::kTripleFault);
  EXPECT_EQ(Escalate(8, 14), Escalation::kTripleFault);
  EXPECT_EQ(Escalate(8, 1), Escalation::kDeliverSecond);
  EXPECT_EQ(IdtErrorCode(0x81, false), (0x81u << 3) | 2);
  EXPECT_EQ(IdtErrorCode(6, true), (6u << 3) | 3);
}

TEST(X86EventsTest, GatesAndDescriptorsDecode) {
  // A 64-bit interrupt gate, DPL 3, IST 2, selector 0x10, offset 0xffffffff81234567.
  const std::array<uint8_t, 16> gate64 = {0x67, 0x45, 0x10, 0x00, 0x02, 0xee, 0x23, 0x81,
                                          0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0};
  Gate gate = DecodeGate(gate64, true);
  EXPECT_TRUE(gate.present);
  EXPECT_EQ(gate.type, 0xe);
  EXPECT_EQ(gate.dpl, 3);
  EXPECT_EQ(gate.ist, 2);
  EXPECT_EQ(gate.selector, 0x10);
  EXPECT_EQ(gate.offset, 0xffffffff81234567ull);
  // The same first 8 bytes as a 32-bit gate: no IST, 32-bit offset.
  gate = DecodeGate(std::span(gate64).first(8), false);
  EXPECT_EQ(gate.ist, 0);
  EXPECT_EQ(gate.offset, 0x81234567u);

  SegmentDescriptor code = DecodeSegment(kFlatCode64Descriptor);
  EXPECT_TRUE(code.present && code.code && code.long_mode && !code.system && !code.conforming);
  EXPECT_EQ(code.dpl, 0);
  SegmentDescriptor user_data = DecodeSegment(0x00cff3000000ffffull);
  EXPECT_TRUE(user_data.writable && !user_data.code);
  EXPECT_EQ(user_data.dpl, 3);
  EXPECT_EQ(user_data.limit, 0xffffffffu);
  SegmentDescriptor tss = DecodeSegment(0x0000891000000067ull);
  EXPECT_TRUE(tss.system);
  EXPECT_EQ(tss.base, 0x100000u);
}

TEST(X86EventsTest, PageFaultErrorCodes) {
  const PageWalk missing{};  // not present
  PageWalk read_only{true, 0x1000, /*writable=*/false, /*user=*/true, /*executable=*/true};
  PageWalk kernel_only{true, 0x1000, true, /*user=*/false, true};
  PageWalk no_execute{true, 0x1000, true, true, /*executable=*/false};
  PageWalk reserved{true, 0x1000, true, true, true, /*reserved_bit=*/true};
  PageWalk permitted{true, 0x1000, true, true, true};
  const FaultingAccess kernel_data{false, false, /*write_protect=*/true, /*report_fetch=*/true};
  const FaultingAccess user_data{false, /*user=*/true, true, true};
  const FaultingAccess kernel_fetch{/*fetch=*/true, false, true, true};

  EXPECT_EQ(PageFaultErrorCode(missing, kernel_data), 0u);             // reported as a read
  EXPECT_EQ(PageFaultErrorCode(missing, user_data), kPfUser);
  EXPECT_EQ(PageFaultErrorCode(missing, kernel_fetch), kPfFetch);
  EXPECT_EQ(PageFaultErrorCode(read_only, kernel_data), kPfPresent | kPfWrite);  // CR0.WP
  EXPECT_EQ(PageFaultErrorCode(read_only, FaultingAccess{false, false, false, true}), kPfPresent);
  EXPECT_EQ(PageFaultErrorCode(read_only, user_data), kPfPresent | kPfWrite | kPfUser);
  EXPECT_EQ(PageFaultErrorCode(kernel_only, user_data), kPfPresent | kPfUser);
  EXPECT_EQ(PageFaultErrorCode(no_execute, kernel_fetch), kPfPresent | kPfFetch);
  EXPECT_EQ(PageFaultErrorCode(no_execute, FaultingAccess{true, false, true, /*report_fetch=*/false}), kPfPresent);
  EXPECT_EQ(PageFaultErrorCode(reserved, user_data), kPfPresent | kPfReserved | kPfUser);
  EXPECT_EQ(PageFaultErrorCode(permitted, kernel_data), kPfPresent | kPfWrite);  // a stale translation
}

uint64_t Read64(const std::vector<uint8_t>& bytes, size_t at) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[at + i];
  return value;
}

const WindowPiece* PieceAt(const std::vector<WindowPiece>& pieces, uint64_t address) {
  for (const WindowPiece& piece : pieces) {
    if (piece.address == address) return &piece;
  }
  return nullptr;
}

TEST(TrampolinesTest, RingChangeBuildsAGateToTheGuestsCodeSegmentAndAPrivateTss) {
  RingChange change{/*long_mode=*/true, /*cs_selector=*/0x10, kFlatCode64Descriptor};
  absl::StatusOr<RingChangeTrampoline> t = BuildRingChangeTrampoline(change);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_GE(t->start, kWindowBase);
  EXPECT_LT(t->landing, kWindowBase + kWindowSize);
  const WindowPiece* gdt = PieceAt(t->pieces, t->gdt_base);
  ASSERT_NE(gdt, nullptr);
  EXPECT_EQ(Read64(gdt->bytes, 0x10), kFlatCode64Descriptor);  // the guest's CS, at its own selector
  // The far pointer names a call gate (present, DPL 3, type 0xc) to selector 0x10 at the landing.
  const WindowPiece* code = PieceAt(t->pieces, t->start);
  ASSERT_NE(code, nullptr);
  const size_t pointer = t->far_pointer - t->start;
  const uint16_t gate_selector = static_cast<uint16_t>(code->bytes[pointer + 4] | (code->bytes[pointer + 5] << 8));
  EXPECT_EQ(gate_selector & 3, 3);
  const uint64_t gate = Read64(gdt->bytes, gate_selector & ~7);
  EXPECT_EQ((gate >> 40) & 0xff, 0xecu);
  EXPECT_EQ((gate >> 16) & 0xffff, 0x10u);
  EXPECT_EQ((gate & 0xffff) | (((gate >> 48) & 0xffff) << 16), t->landing);
  EXPECT_NE(gate_selector & ~7, 0x10);
  EXPECT_NE(t->tr_selector, 0x10);

  // Refused: a DPL-3 code segment, a selector beyond the private GDT, a 32-bit change without SS.
  change.cs_descriptor = 0x00affb000000ffffull;
  EXPECT_FALSE(BuildRingChangeTrampoline(change).ok());
  change.cs_descriptor = kFlatCode64Descriptor;
  change.cs_selector = 0xfff8;
  EXPECT_FALSE(BuildRingChangeTrampoline(change).ok());
  EXPECT_FALSE(BuildRingChangeTrampoline(RingChange{false, 0x08, kFlatCode32Descriptor, 0, 0}).ok());
  EXPECT_TRUE(BuildRingChangeTrampoline(RingChange{false, 0x08, kFlatCode32Descriptor, 0x10, kFlatDataDescriptor}).ok());
}

TEST(TrampolinesTest, HypercallPageStubs) {
  std::vector<uint8_t> page = EmuHypercallPage(0x7a5e0000);
  ASSERT_EQ(page.size(), 4096u);
  // Stub 3: mov $(magic | 3), %eax; cpuid; ret.
  EXPECT_EQ(page[3 * 32], 0xb8);
  EXPECT_EQ(page[3 * 32 + 1], 3);
  EXPECT_EQ(page[3 * 32 + 3], 0x5e);
  EXPECT_EQ(page[3 * 32 + 4], 0x7a);
  EXPECT_EQ(page[3 * 32 + 5], 0x0f);
  EXPECT_EQ(page[3 * 32 + 6], 0xa2);
  EXPECT_EQ(page[3 * 32 + 7], 0xc3);
}

}  // namespace
}  // namespace xenkvm::accel::emu
