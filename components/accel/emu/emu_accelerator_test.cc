// The emu accelerator running real guest code (assembled from testdata/guests.S).
#include "components/accel/emu/emu_accelerator.h"

#include <atomic>
#include <thread>

#include "absl/time/clock.h"
#include "components/accel/testdata/guest_test.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::accel {
namespace {

using memory::GuestAddress;
using ::testing::HasSubstr;

using testing::kLoadAddress;
using testing::kStartInfo;

class EmuTest : public testing::GuestTest {
 protected:
  absl::StatusOr<std::unique_ptr<Accelerator>> CreateAccelerator(
      const memory::GuestMemory& memory) override {
    return CreateEmuAccelerator(memory);
  }
};

TEST_F(EmuTest, StartsInThePvhEntryState) {
  auto vcpu = Start(emu_test_guests::k_pvh_state);
  ASSERT_NE(vcpu, nullptr);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, kStartInfo);  // EBX
  uint32_t cr0 = Next<PortIoExit>(*vcpu).value;
  EXPECT_EQ(cr0 & 1, 1u);                 // protected mode
  EXPECT_EQ(cr0 & 0x80000000u, 0u);       // paging off
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value & 0xffff, 0x08u);  // a flat code segment
  Next<HaltExit>(*vcpu);
  absl::StatusOr<ControlRegisters> control = vcpu->GetControlRegisters();
  ASSERT_TRUE(control.ok());
  EXPECT_EQ(control->efer, 0u);
  EXPECT_FALSE(control->long_mode);
  EXPECT_EQ(control->cpl, 0);
}

TEST_F(EmuTest, PortIoExitsAndCompletion) {
  auto vcpu = Start(emu_test_guests::k_port_io);
  ASSERT_NE(vcpu, nullptr);
  PortIoExit out = Next<PortIoExit>(*vcpu);
  EXPECT_TRUE(out.is_write);
  EXPECT_EQ(out.port, 0x10);
  EXPECT_EQ(out.size, 1);
  EXPECT_EQ(out.value, 0x42u);
  PortIoExit wide = Next<PortIoExit>(*vcpu);
  EXPECT_EQ(wide.port, 0x1234);
  EXPECT_EQ(wide.size, 4);
  EXPECT_EQ(wide.value, 0xdeadbeefu);

  PortIoExit in = Next<PortIoExit>(*vcpu);
  EXPECT_FALSE(in.is_write);
  EXPECT_EQ(in.port, 0x11);
  EXPECT_EQ(vcpu->Run().status().code(), absl::StatusCode::kFailedPrecondition);  // unanswered
  ASSERT_TRUE(vcpu->Complete(0x1a5).ok());  // only AL is taken
  PortIoExit echo = Next<PortIoExit>(*vcpu);
  EXPECT_EQ(echo.port, 0x12);
  EXPECT_EQ(echo.value & 0xff, 0xa5u);

  PortIoExit in32 = Next<PortIoExit>(*vcpu);
  EXPECT_EQ(in32.size, 4);
  ASSERT_TRUE(vcpu->Complete(0x87654321).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0x87654321u);

  Next<HaltExit>(*vcpu);
  EXPECT_EQ(vcpu->Complete(1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x13);  // running again resumes after the HLT
}

TEST_F(EmuTest, HypercallsInlineAndThroughCpuid) {
  auto vcpu = Start(emu_test_guests::k_hypercalls);
  ASSERT_NE(vcpu, nullptr);
  HypercallExit vmcall = Next<HypercallExit>(*vcpu);
  EXPECT_EQ(vmcall.number, 17u);
  EXPECT_FALSE(vmcall.long_mode);
  EXPECT_EQ(vmcall.cpl, 0);
  EXPECT_EQ(vmcall.args, (std::array<uint64_t, 6>{1, 2, 3, 4, 5, 6}));
  ASSERT_TRUE(vcpu->Complete(static_cast<uint64_t>(-38)).ok());  // -ENOSYS
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, static_cast<uint32_t>(-38));

  HypercallExit vmmcall = Next<HypercallExit>(*vcpu);
  EXPECT_EQ(vmmcall.number, 18u);
  ASSERT_TRUE(vcpu->Complete(5).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 5u);

  HypercallExit by_cpuid = Next<HypercallExit>(*vcpu);
  EXPECT_EQ(by_cpuid.number, 0x20u);
  EXPECT_EQ(by_cpuid.args[0], 7u);
  ASSERT_TRUE(vcpu->Complete(0).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0u);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 7u);  // EBX survived
  Next<HaltExit>(*vcpu);
}

TEST_F(EmuTest, CpuidLeavesComeFromTheCaller) {
  auto vcpu = Start(emu_test_guests::k_cpuid_leaves);
  ASSERT_NE(vcpu, nullptr);
  ASSERT_TRUE(vcpu->SetCpuid({{0x40000000, std::nullopt, 0x40000004, 0x566e6558, 0x65584d4d, 0x4d4d566e},
                              {0x40000004, 0, 0xaaaa, 0, 0, 0},
                              {0x40000004, 1, 0xbbbb, 0, 0, 0}})
                  .ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0x566e6558u);  // "XenV"
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0xbbbbu);      // sub-leaf 1
  EXPECT_GT(Next<PortIoExit>(*vcpu).value, 0u);           // the CPU model's leaf 0
  EXPECT_EQ(vcpu->SetCpuid({{kEmuHypercallCpuidMagic | 3, std::nullopt, 0, 0, 0, 0}}).code(),
            absl::StatusCode::kInvalidArgument);
}

// A CPU template narrows the model's extensions; what it does not manage passes through.
TEST_F(EmuTest, CpuTemplatesNarrowTheModelsFeatures) {
  auto features = [this](CpuTemplate cpu_template) {
    EXPECT_TRUE(accelerator_->RestrictCpuid(cpu_template).ok());
    auto vcpu = Start(emu_test_guests::k_cpuid_features);
    std::array<uint32_t, 3> values{};
    if (vcpu == nullptr) return values;
    for (uint32_t& value : values) value = Next<PortIoExit>(*vcpu).value;
    return values;
  };
  const std::array<uint32_t, 3> host = features(CpuTemplate::kHost);
  const std::array<uint32_t, 3> v1 = features(CpuTemplate::kX86_64V1);
  const std::array<uint32_t, 3> v2 = features(CpuTemplate::kX86_64V2);
  EXPECT_NE(host[0] & 1, 0u);           // the model has SSE3 ...
  EXPECT_EQ(v1[0] & 1, 0u);             // ... which the baseline does not
  EXPECT_EQ(v1[0] & (1u << 13), 0u);    // nor CMPXCHG16B
  EXPECT_EQ(v2[0] & 1, host[0] & 1);    // v2 keeps it
  EXPECT_NE(v1[0] & (1u << 31), 0u);    // the hypervisor bit is not an extension
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(v1[i] & ~host[i], 0u) << i;  // a template only removes
    EXPECT_EQ(v2[i] & ~host[i], 0u) << i;
  }
}

TEST_F(EmuTest, MmioOutsideRamExits) {
  auto vcpu = Start(emu_test_guests::k_mmio);
  ASSERT_NE(vcpu, nullptr);
  MmioExit store = Next<MmioExit>(*vcpu);
  EXPECT_TRUE(store.is_write);
  EXPECT_EQ(store.address, 0xfebf0000u);
  EXPECT_EQ(store.size, 4);
  EXPECT_EQ(store.value, 0xcafef00du);
  MmioExit load = Next<MmioExit>(*vcpu);
  EXPECT_FALSE(load.is_write);
  EXPECT_EQ(load.address, 0xfebf0008u);
  ASSERT_TRUE(vcpu->Complete(0x11223344).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0x11223344u);
}

TEST_F(EmuTest, TopOfFourGibIsMmioToo) {
  auto vcpu = Start(emu_test_guests::k_top_of_4g);
  ASSERT_NE(vcpu, nullptr);
  MmioExit load = Next<MmioExit>(*vcpu);
  EXPECT_FALSE(load.is_write);
  EXPECT_EQ(load.address, 0xfffffffcu);
  ASSERT_TRUE(vcpu->Complete(0xffffffff).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0xffffffffu);
}

TEST_F(EmuTest, ExtraPageShownDuringAHypercallIsMappedForTheNextInstruction) {
  auto vcpu = Start(emu_test_guests::k_extra_page_after_hypercall);
  ASSERT_NE(vcpu, nullptr);
  EXPECT_EQ(Next<HypercallExit>(*vcpu).number, 0x21u);
  alignas(4096) static uint8_t page[4096] = {};
  page[0x10] = 0x5a;
  ASSERT_TRUE(accelerator_->ShowExtraPage(0x30000000, page).ok());
  ASSERT_TRUE(vcpu->Complete(0).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0x5au);  // not an MMIO exit
  ASSERT_TRUE(accelerator_->HideExtraPage(0x30000000).ok());
}

TEST_F(EmuTest, KickStopsASpinningGuest) {
  auto vcpu = Start(emu_test_guests::k_spin);
  ASSERT_NE(vcpu, nullptr);
  std::thread kicker([&] {
    absl::SleepFor(absl::Milliseconds(50));
    vcpu->Kick();
  });
  Next<KickedExit>(*vcpu);
  kicker.join();
  vcpu->Kick();  // before Run(): the next Run() returns at once
  Next<KickedExit>(*vcpu);
}

TEST_F(EmuTest, UndeliverableExceptionEscalatesToATripleFault) {
  auto vcpu = Start(emu_test_guests::k_invalid);  // UD2 with no IDT: #UD, then #GP, #DF, shutdown
  ASSERT_NE(vcpu, nullptr);
  ShutdownExit shutdown = Next<ShutdownExit>(*vcpu);
  EXPECT_THAT(shutdown.reason, HasSubstr("triple fault"));
  EXPECT_THAT(shutdown.reason, HasSubstr("vector 6, then vector 13 (error code 0x33)"));
  EXPECT_THAT(shutdown.reason, HasSubstr("a double fault, then vector 13 (error code 0x43)"));
  EXPECT_THAT(Next<ShutdownExit>(*vcpu).reason, HasSubstr("triple fault"));  // it stays down
}

// User mode in 32-bit protected mode with 32-bit paging and with PAE: the ring change runs with
// paging off there, the stack comes from the TSS's SS0:ESP0, SYSENTER is carried out by the backend.
TEST_F(EmuTest, UserModeIn32BitAndPaePaging) {
  for (bool pae : {false, true}) {
    SCOPED_TRACE(pae ? "PAE" : "32-bit paging");
    ASSERT_TRUE(memory_->WriteObject<uint32_t>(memory::GuestAddress(kLoadAddress + emu_test_guests::k_guest_options),
                                               pae ? 8 : 0).ok());
    auto vcpu = Start(emu_test_guests::k_user32);
    ASSERT_NE(vcpu, nullptr);
    auto expect = [&](uint16_t port, uint32_t value) {
      PortIoExit exit = Next<PortIoExit>(*vcpu);
      EXPECT_EQ(exit.port, port);
      EXPECT_EQ(exit.value, value) << "port " << std::hex << port;
    };
    expect(0x10, 0x1b);  // INT 0x80 from CPL 3: the frame holds the user's CS and SS
    expect(0x11, 0x23);
    PortIoExit stack = Next<PortIoExit>(*vcpu);  // on the TSS's ESP0 stack: five words below its top
    EXPECT_EQ(stack.port, 0x12);
    EXPECT_EQ(stack.value, kLoadAddress + emu_test_guests::k_kstack32_top - 5 * 4);
    expect(0x13, 0x08);
    expect(0x14, 0x4);  // #PF from CPL 3, not present, a read
    expect(0x15, 0x40000000);
    expect(0x18, 0x08);  // SYSENTER: CPL 0 on SYSENTER_ESP
    expect(0x19, kLoadAddress + emu_test_guests::k_kstack32_top);
    expect(0x16, 0);  // HLT at CPL 3 (back there by SYSEXIT): #GP(0), a fault at the HLT
    expect(0x17, kLoadAddress + emu_test_guests::k_user32_hlt);
    Next<HaltExit>(*vcpu);
    vcpu.reset();
    accelerator_.reset();
    SetUp();  // fresh memory (the guest wrote its tables) and accelerator for the next mode
  }
}

TEST_F(EmuTest, ExceptionsWithoutErrorCodeGoThroughTheGuestIdt) {
  auto vcpu = Start(emu_test_guests::k_interrupts32);
  ASSERT_NE(vcpu, nullptr);
  PortIoExit ud = Next<PortIoExit>(*vcpu);  // #UD is a fault: the frame holds the UD2's address
  EXPECT_EQ(ud.port, 0x19);
  EXPECT_EQ(ud.value, kLoadAddress + emu_test_guests::k_ud_instruction32);
  PortIoExit de = Next<PortIoExit>(*vcpu);
  EXPECT_EQ(de.port, 0x1a);
  EXPECT_EQ(de.value, kLoadAddress + emu_test_guests::k_de_instruction32);
  PortIoExit de_again = Next<PortIoExit>(*vcpu);  // a second #DE is not taken for a double fault
  EXPECT_EQ(de_again.port, 0x1a);
  EXPECT_EQ(de_again.value, kLoadAddress + emu_test_guests::k_de_instruction32_again);
  PortIoExit bp = Next<PortIoExit>(*vcpu);  // #BP is a trap: the frame holds the next instruction
  EXPECT_EQ(bp.port, 0x1b);
  EXPECT_EQ(bp.value, kLoadAddress + emu_test_guests::k_after_int3_32);
}

TEST_F(EmuTest, InterruptsReachAHaltedAndARunningGuest) {
  auto vcpu = Start(emu_test_guests::k_interrupts32);
  ASSERT_NE(vcpu, nullptr);
  for (int i = 0; i < 4; ++i) Next<PortIoExit>(*vcpu);  // the exceptions
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x10);  // about to HLT with IF=1
  // HLT with interrupts on waits inside Run() until the interrupt arrives.
  Exit woken = RunAndInject(*vcpu, 0x30);
  ASSERT_TRUE(std::holds_alternative<PortIoExit>(woken));
  PortIoExit handler = std::get<PortIoExit>(woken);
  EXPECT_EQ(handler.port, 0x18);
  // The frame (EIP, CS, EFLAGS) and the handler's push sit below the stack top.
  EXPECT_EQ(handler.value, kLoadAddress + emu_test_guests::k_stack_top - 16);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x11);  // the IRET returned past the HLT
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x12);  // now spinning, no exits
  Exit spun = RunAndInject(*vcpu, 0x31);
  ASSERT_TRUE(std::holds_alternative<PortIoExit>(spun));
  EXPECT_EQ(std::get<PortIoExit>(spun).port, 0x18);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x13);

  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x14);  // CLI: an interrupt now has to wait
  ASSERT_TRUE(vcpu->InjectInterrupt(0x30).ok());
  PortIoExit masked = Next<PortIoExit>(*vcpu);
  EXPECT_EQ(masked.port, 0x15);
  EXPECT_EQ(masked.value, 0u);  // not taken while IF=0
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x18);  // taken once STI opened the window
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x16);
  Next<HaltExit>(*vcpu);  // CLI; HLT: only the VMM can do something about it
  EXPECT_EQ(vcpu->InjectInterrupt(0x0e).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(EmuTest, LongModeGuestHypercallsAndInterrupts) {
  auto vcpu = Start(emu_test_guests::k_long_mode);
  ASSERT_NE(vcpu, nullptr);
  HypercallExit call = Next<HypercallExit>(*vcpu);
  EXPECT_TRUE(call.long_mode);
  EXPECT_EQ(call.number, 0x18u);
  EXPECT_EQ(call.args, (std::array<uint64_t, 6>{0x100000001, 2, 3, 4, 5, 0x600000000}));
  ASSERT_TRUE(vcpu->Complete(0xabcdef0012345678).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0x12345678u);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0xabcdef00u);  // all 64 bits of RAX
  absl::StatusOr<ControlRegisters> control = vcpu->GetControlRegisters();
  ASSERT_TRUE(control.ok());
  EXPECT_TRUE(control->long_mode);
  EXPECT_NE(control->cr0 & 0x80000000, 0u);
  // The guest's tables identity-map the first 1 GiB and nothing else.
  EXPECT_EQ(*vcpu->TranslateLinear(0x123456), 0x123456u);
  EXPECT_EQ(vcpu->TranslateLinear(uint64_t{1} << 31).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*vcpu->TscOffset(), 0);
  EXPECT_GT(accelerator_->tsc_khz(), 100'000u);

  PortIoExit ud = Next<PortIoExit>(*vcpu);
  EXPECT_EQ(ud.port, 0x19);
  EXPECT_EQ(ud.value, kLoadAddress + emu_test_guests::k_ud_instruction64);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x12);
  Exit woken = RunAndInject(*vcpu, 0x30);
  ASSERT_TRUE(std::holds_alternative<PortIoExit>(woken));
  // 64-bit frame: SS, RSP, RFLAGS, CS, RIP from a 16-byte aligned stack, then the handler's push.
  EXPECT_EQ(std::get<PortIoExit>(woken).value, kLoadAddress + emu_test_guests::k_stack_top - 48);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0x18u);  // saved CS: the 64-bit code segment
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x13);
}

TEST_F(EmuTest, HypercallPageFilledOnTheMsrWrite) {
  constexpr uint32_t kMsr = 0x40000000;
  ASSERT_TRUE(accelerator_->EnableHypercallPage(kMsr).ok());
  for (unsigned entry : {emu_test_guests::k_hypercall_page_adjacent, emu_test_guests::k_hypercall_page_later}) {
    auto vcpu = Start(entry);
    ASSERT_NE(vcpu, nullptr);
    ASSERT_TRUE(vcpu->SetCpuid({{0x40000002, std::nullopt, 1, kMsr, 0, 0}}).ok());
    HypercallExit call = Next<HypercallExit>(*vcpu);
    EXPECT_EQ(call.number, 17u);
    EXPECT_EQ(call.args, (std::array<uint64_t, 6>{1, 2, 3, 4, 5, 6}));
    ASSERT_TRUE(vcpu->Complete(99).ok());
    EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 99u);
    absl::StatusOr<uint8_t> first = memory_->ReadObject<uint8_t>(
        GuestAddress(kLoadAddress + emu_test_guests::k_hcall_page + 17 * 32));
    ASSERT_TRUE(first.ok());
    EXPECT_EQ(*first, 0xb8);  // mov $imm32, %eax
    ASSERT_TRUE(memory_->Write(GuestAddress(kLoadAddress + emu_test_guests::k_hcall_page),
                               std::vector<uint8_t>(4096, 0)).ok());
  }
}

TEST_F(EmuTest, HypercallPageFilledWhenEnabledAfterTheVcpuStarted) {
  constexpr uint32_t kMsr = 0x40000200;
  auto vcpu = Start(emu_test_guests::k_hypercall_page_later);
  ASSERT_NE(vcpu, nullptr);
  ASSERT_TRUE(accelerator_->EnableHypercallPage(kMsr).ok());
  ASSERT_TRUE(vcpu->SetCpuid({{0x40000002, std::nullopt, 1, kMsr, 0, 0}}).ok());
  EXPECT_EQ(Next<HypercallExit>(*vcpu).number, 17u);
  EXPECT_EQ(accelerator_->EnableHypercallPage(0).code(), absl::StatusCode::kInvalidArgument);
}

// Another vCPU's code patch (Linux's text_poke_bp takes its INT3 out again) can leave this
// engine's translation stale until its deferred flush: an INT3 that is no longer in memory is
// run again from the current bytes, not delivered.
TEST_F(EmuTest, AStaleInt3RunsTheCurrentBytes) {
  auto vcpu = Start(emu_test_guests::k_stale_int3);
  ASSERT_NE(vcpu, nullptr);
  ASSERT_EQ(Next<PortIoExit>(*vcpu).port, 0x10);
  ASSERT_TRUE(memory_->Write(GuestAddress(kLoadAddress + emu_test_guests::k_stale_int3_site),
                             std::vector<uint8_t>{0x90}).ok());  // nop
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x11);
  Next<HaltExit>(*vcpu);
}

// CMPXCHG16B after a flags-setting instruction in the same translation block: Unicorn's helper
// used to turn the CMP's operand (0x4700) into RFLAGS (TF, NT and reserved bits); emu/cmpxchg_flags.cc.
TEST_F(EmuTest, Cmpxchg16bLeavesNoStaleBitsInRflagsAndFaultsAtItsOwnRip) {
  constexpr uint32_t kCmpxchg16bOption = 16;
  constexpr uint32_t kArithmeticFlags = 0x8d5, kReservedOne = 0x2, kZf = 0x40, kCf = 0x1;
  ASSERT_TRUE(memory_->WriteObject<uint32_t>(GuestAddress(kLoadAddress + emu_test_guests::k_guest_options),
                                             kCmpxchg16bOption).ok());
  auto vcpu = Start(emu_test_guests::k_long_mode);
  ASSERT_NE(vcpu, nullptr);
  PortIoExit failed = Next<PortIoExit>(*vcpu);
  ASSERT_EQ(failed.port, 0x10);
  EXPECT_EQ(failed.value & ~kArithmeticFlags, kReservedOne) << std::hex << failed.value;
  EXPECT_EQ(failed.value & kZf, 0u);
  PortIoExit stored = Next<PortIoExit>(*vcpu);
  ASSERT_EQ(stored.port, 0x11);
  EXPECT_EQ(stored.value & ~kArithmeticFlags, kReservedOne) << std::hex << stored.value;
  EXPECT_EQ(stored.value & kZf, kZf);
  // The #GP of a misaligned operand, raised inside the wrapped helper, still reports the
  // instruction's own RIP and the CMP's flags (0x1000 - 0x4700: CF, PF, SF).
  PortIoExit rip = Next<PortIoExit>(*vcpu);
  ASSERT_EQ(rip.port, 0x12);
  EXPECT_EQ(rip.value, kLoadAddress + emu_test_guests::k_cmpxchg16b_unaligned);
  PortIoExit frame_flags = Next<PortIoExit>(*vcpu);
  ASSERT_EQ(frame_flags.port, 0x13);
  EXPECT_EQ(frame_flags.value & 0xffff, kReservedOne | 0x87u) << std::hex << frame_flags.value;
  PortIoExit carry = Next<PortIoExit>(*vcpu);
  ASSERT_EQ(carry.port, 0x14);
  EXPECT_EQ(carry.value & 0xff, kCf);
  Next<HaltExit>(*vcpu);
}

// Unicorn reads IA32_APIC_BASE as 0 by itself; the backend answers it (instruction_intercept.h).
TEST_F(EmuTest, ApicBaseMsrMarksTheBootVcpuAndKeepsTheEnableFlag) {
  auto vcpu = Start(emu_test_guests::k_apic_base);
  ASSERT_NE(vcpu, nullptr);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0xfee00900u);  // enabled, BSP, the xAPIC page
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0u);           // EDX: the page is below 4 GiB
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0xfee00100u);  // the enable flag follows the write
  Next<HaltExit>(*vcpu);
}

TEST_F(EmuTest, SecondaryVcpuWaitsForStartThenRunsBesideTheFirst) {
  absl::StatusOr<std::unique_ptr<Vcpu>> created = accelerator_->CreateVcpu(1, std::nullopt);
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<Vcpu> ap = std::move(created).value();
  ap->Kick();
  Next<KickedExit>(*ap);  // an unstarted vCPU can still be kicked out of Run()

  auto bsp = Start(emu_test_guests::k_bsp_wait);  // spins until the AP writes the flag
  ASSERT_NE(bsp, nullptr);
  absl::StatusOr<Exit> bsp_exit;
  std::thread bsp_runner([&] { bsp_exit = bsp->Run(); });
  std::atomic<bool> ap_returned{false};
  absl::StatusOr<Exit> ap_exit;
  std::thread ap_runner([&] {
    ap_exit = ap->Run();
    ap_returned = true;
  });
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(ap_returned.load());  // blocked until started
  ASSERT_TRUE(ap->Start(PvhEntry{kLoadAddress + emu_test_guests::k_ap_entry, 0}).ok());
  ap_runner.join();
  bsp_runner.join();
  ASSERT_TRUE(ap_exit.ok());
  ASSERT_TRUE(std::holds_alternative<PortIoExit>(*ap_exit));
  EXPECT_EQ(std::get<PortIoExit>(*ap_exit).port, 0x1c);
  EXPECT_EQ(std::get<PortIoExit>(*ap_exit).value, 0xfee00800u);  // enabled, not the BSP
  ASSERT_TRUE(bsp_exit.ok());
  ASSERT_TRUE(std::holds_alternative<PortIoExit>(*bsp_exit));
  EXPECT_EQ(std::get<PortIoExit>(*bsp_exit).port, 0x10);
  EXPECT_EQ(ap->id(), 1u);
  EXPECT_EQ(ap->Start(PvhEntry{kLoadAddress, 0}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(accelerator_->capabilities().name, "emu");
}

TEST_F(EmuTest, LocalApicTimerOneShotThenPeriodic) {
  const absl::Time start = absl::Now();
  auto vcpu = Start(emu_test_guests::k_lapic_timer);
  ASSERT_NE(vcpu, nullptr);
  const uint32_t counting = Next<PortIoExit>(*vcpu).value;
  EXPECT_GT(counting, 0u);
  EXPECT_LE(counting, 2'000'000u);
  PortIoExit fired = Next<PortIoExit>(*vcpu);  // woken from HLT by the timer alone
  EXPECT_EQ(fired.port, 0x11);
  EXPECT_EQ(fired.value, 0u);  // a one-shot timer stays at 0
  PortIoExit ticks = Next<PortIoExit>(*vcpu);
  EXPECT_EQ(ticks.port, 0x12);
  EXPECT_EQ(ticks.value, 4u);
  EXPECT_GE(absl::Now() - start, absl::Microseconds(2000 + 3 * 5000));  // the timer never fires early
  Next<HaltExit>(*vcpu);
}

// The way Linux starts its other CPUs: INIT and start-up IPIs through the local APIC, the
// application processor in real mode at the vector's page; then a fixed IPI between the two.
TEST_F(EmuTest, StartupIpiStartsTheSecondVcpuInRealModeAndIpisFlowBack) {
  absl::StatusOr<std::unique_ptr<Vcpu>> created = accelerator_->CreateVcpu(1, std::nullopt);
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<Vcpu> ap = std::move(created).value();
  auto bsp = Start(emu_test_guests::k_smp_bsp);
  ASSERT_NE(bsp, nullptr);
  std::vector<PortIoExit> ap_exits;
  std::thread ap_runner([&] {
    for (int i = 0; i < 3; ++i) ap_exits.push_back(Next<PortIoExit>(*ap));
  });
  PortIoExit bsp_exit = Next<PortIoExit>(*bsp);
  ap_runner.join();
  EXPECT_EQ(bsp_exit.port, 0x10);  // the AP's IPI reached the BSP's handler
  ASSERT_EQ(ap_exits.size(), 3u);
  EXPECT_EQ(ap_exits[0].port, 0x1d);  // INT 0x31 through the real-mode IVT, and IRET back
  EXPECT_EQ(ap_exits[1].port, 0x1e);
  EXPECT_EQ(ap_exits[1].size, 2);
  EXPECT_EQ(ap_exits[1].value, 0x0800u);  // CS = vector << 8, in real mode
  EXPECT_EQ(ap_exits[2].port, 0x1c);
  Next<HaltExit>(*ap);
  Next<HaltExit>(*bsp);
  // Started by the IPI, the AP takes no PVH start any more.
  EXPECT_EQ(ap->Start(PvhEntry{kLoadAddress, 0}).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(EmuTest, NmiIsTakenWithInterruptsOff) {
  auto vcpu = Start(emu_test_guests::k_nmi_self);
  ASSERT_NE(vcpu, nullptr);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x10);
  Next<HaltExit>(*vcpu);
}

TEST_F(EmuTest, StringPortIoBecomesOneExitPerItem) {
  auto vcpu = Start(emu_test_guests::k_string_io);
  ASSERT_NE(vcpu, nullptr);
  ExpectStringPortIo(*vcpu);
}

// A waiting interrupt is taken as soon as the guest sets IF (not at some later poll): a guest that
// checks a flag with interrupts on and then runs STI; HLT relies on it.
TEST_F(EmuTest, AWaitingInterruptIsTakenRightAfterStiAndPopf) {
  auto vcpu = Start(emu_test_guests::k_interrupt_window);
  ASSERT_NE(vcpu, nullptr);
  for (uint32_t round = 1; round <= 2; ++round) {
    EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x10);
    ASSERT_TRUE(vcpu->InjectInterrupt(0x30).ok());
    PortIoExit seen = Next<PortIoExit>(*vcpu);
    EXPECT_EQ(seen.port, 0x11);
    EXPECT_EQ(seen.value, round);
  }
  Next<HaltExit>(*vcpu);
}

// A stop sent from another thread while a block runs makes Unicorn skip its own hooks for the
// rest of that block (instruction_intercept.h): under a stream of kicks, every CPUID hypercall must
// still reach the VMM, whose answer the guest then sends out.
TEST_F(EmuTest, KicksNeverLetTheCpuModelAnswerAHypercall) {
  auto vcpu = Start(emu_test_guests::k_hypercall_stress_loop);
  ASSERT_NE(vcpu, nullptr);
  std::atomic<bool> done{false};
  std::thread kicker([&] {
    while (!done) {
      vcpu->Kick();
      absl::SleepFor(absl::Microseconds(23));
    }
  });
  uint32_t answer = 0;
  int kicks = 0;
  for (int i = 0; i < 40000; ++i) {
    absl::StatusOr<Exit> exit = vcpu->Run();
    ASSERT_TRUE(exit.ok());
    if (std::holds_alternative<KickedExit>(*exit)) {
      ++kicks;
      continue;
    }
    if (std::holds_alternative<HypercallExit>(*exit)) {
      ASSERT_TRUE(vcpu->Complete(++answer).ok());
      continue;
    }
    ASSERT_TRUE(std::holds_alternative<PortIoExit>(*exit));
    ASSERT_EQ(std::get<PortIoExit>(*exit).value, answer) << "after " << kicks << " kicks";
  }
  done = true;
  kicker.join();
  EXPECT_GT(kicks, 0);
}

// Unicorn resumes at a stale RIP when stopped the wrong way (see README): under a stream of
// interrupts and kicks, a loop that reports an incrementing counter must never repeat or skip.
TEST_F(EmuTest, StopsAndInterruptsNeverRepeatAnInstruction) {
  auto vcpu = Start(emu_test_guests::k_stress_loop);
  ASSERT_NE(vcpu, nullptr);
  std::atomic<bool> done{false};
  std::thread injector([&] {
    for (int i = 0; !done; ++i) {
      if (i % 4 == 0) {
        vcpu->Kick();
      } else {
        (void)vcpu->InjectInterrupt(0x30);
      }
      absl::SleepFor(absl::Microseconds(37));
    }
  });
  uint32_t expected = 1;
  int kicks = 0;
  for (int i = 0; i < 50000; ++i) {
    absl::StatusOr<Exit> exit = vcpu->Run();
    ASSERT_TRUE(exit.ok());
    if (std::holds_alternative<KickedExit>(*exit)) {
      ++kicks;
      continue;
    }
    ASSERT_TRUE(std::holds_alternative<PortIoExit>(*exit));
    ASSERT_EQ(std::get<PortIoExit>(*exit).value, expected) << "after " << kicks << " kicks";
    ++expected;
  }
  done = true;
  injector.join();
  EXPECT_GT(kicks, 0);
}

TEST_F(EmuTest, RegistersRoundTrip) {
  auto vcpu = Start(emu_test_guests::k_port_io);
  ASSERT_NE(vcpu, nullptr);
  absl::StatusOr<Registers> registers = vcpu->GetRegisters();
  ASSERT_TRUE(registers.ok());
  EXPECT_EQ(registers->rip, kLoadAddress + emu_test_guests::k_port_io);
  EXPECT_EQ(registers->rbx, kStartInfo);
  registers->rip = kLoadAddress + emu_test_guests::k_pvh_state;
  registers->rbx = 0x777;
  ASSERT_TRUE(vcpu->SetRegisters(*registers).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0x777u);
}

}  // namespace
}  // namespace xenkvm::accel
