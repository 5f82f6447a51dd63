// One emu vCPU: a Unicorn engine on its own emulation thread. Split by concept across
// emu_vcpu.cc (engine setup, hooks, the run loop and the hand-off to Run()) and emu_delivery.cc
// (interrupts, exceptions and fast system calls as the architecture delivers them).
#ifndef XENKVM_COMPONENTS_ACCEL_EMU_EMU_VCPU_H_
#define XENKVM_COMPONENTS_ACCEL_EMU_EMU_VCPU_H_

#include <unicorn/unicorn.h>

#include <atomic>
#include <bitset>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "components/accel/accelerator.h"
#include "components/accel/emu/exception_record.h"
#include "components/accel/emu/trampolines.h"
#include "components/accel/page_walk.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::accel::emu {

// What every vCPU of one emu VM shares.
struct EmuVmState {
  explicit EmuVmState(const memory::GuestMemory& memory) : memory(memory) {}
  const memory::GuestMemory& memory;
  std::atomic<uint32_t> hypercall_msr{0};  // 0: no hypercall page
  // Extra pages shown to the guest (Accelerator::ShowExtraPage): each vCPU applies the set to its
  // engine before it next enters the guest, when the generation has moved on.
  absl::Mutex extra_mutex;
  std::map<uint64_t, uint8_t*> extra_pages ABSL_GUARDED_BY(extra_mutex);
  std::atomic<uint64_t> extra_generation{0};
};

class EmuVcpu;

// A Unicorn call's failure as a Status naming the call.
absl::Status UcError(uc_err err, absl::string_view call);

// One MMIO window (a hole between RAM regions below 4 GiB) as Unicorn sees it.
struct MmioWindow {
  EmuVcpu* vcpu;
  uint64_t base;
  uint64_t end;  // exclusive
};

// An exception, interrupt or INT n waiting to be delivered through the guest's IDT.
struct PendingEvent {
  uint32_t vector = 0;
  std::optional<uint32_t> error_code;  // pushed when the vector has one
  std::optional<uint64_t> cr2;         // #PF: the faulting address, for CR2
  bool software = false;               // INT n, INT3, INTO: the gate's DPL is checked
  uint8_t instruction_length = 0;      // software: RIP is past it; a fault in delivery points back
  bool external = false;               // an injected interrupt (EXT in error codes; skips a HLT)
};

// A fault raised while delivering an event: it escalates (#DF, triple fault) from there.
struct DeliveryFault {
  uint32_t vector;
  uint32_t error_code;
  std::optional<uint64_t> cr2;
};

// SYSCALL and SYSENTER, which Unicorn only reports to a hook and skips.
enum class FastSystemCall { kSyscall, kSysenter };

class EmuVcpu final : public Vcpu {
 public:
  static absl::StatusOr<std::unique_ptr<EmuVcpu>> Create(uint32_t id, EmuVmState& vm,
                                                         std::optional<PvhEntry> boot);
  ~EmuVcpu() override;

  uint32_t id() const override { return id_; }
  absl::StatusOr<Exit> Run() override;
  absl::Status Complete(uint64_t value) override;
  absl::StatusOr<Registers> GetRegisters() override;
  absl::Status SetRegisters(const Registers& registers) override;
  absl::StatusOr<ControlRegisters> GetControlRegisters() override;
  absl::StatusOr<uint64_t> TranslateLinear(uint64_t linear) override;
  absl::StatusOr<int64_t> TscOffset() override { return 0; }  // RDTSC is the host's
  absl::Status SetCpuid(std::vector<CpuidLeaf> leaves) override;
  absl::Status Start(const PvhEntry& boot) override;
  absl::Status InjectInterrupt(uint8_t vector) override;
  void Kick() override;

 private:
  EmuVcpu(uint32_t id, EmuVmState& vm) : id_(id), vm_(vm), memory_(vm.memory) {}

  // ---- Setup (emu_vcpu.cc)
  absl::Status Open();
  absl::Status ProbeModel();
  absl::Status Boot(const PvhEntry& boot);
  absl::Status MapMmioWindows();
  absl::Status MapMmio(uint64_t start, uint64_t end);
  // Applies the VM's extra pages to this engine (emu_extra_pages.cc); on the emulation thread.
  absl::Status SyncExtraPages();
  absl::Status ShowPage(uint64_t address, uint8_t* host);
  absl::Status HidePage(uint64_t address);
  absl::Status InstallHooks();
  absl::Status AddTraceHook(uint64_t instruction_budget);
  void RemoveTraceHook();
  absl::Status MapWindow(const std::vector<WindowPiece>& pieces);
  void UnmapWindow();
  // Runs private code in the window from `start` until RIP reaches `until` (kicks may stop it
  // between blocks: it carries on). kInternal if it ends anywhere else.
  absl::Status RunPrivate(uint64_t start, uint64_t until, absl::string_view what);

  // ---- The emulation thread (emu_vcpu.cc)
  void EmulationLoop();
  void RunGuest(bool interrupt_waiting);
  bool DeliverPendingWork();
  void RepairBlockStop();
  bool Exiting();
  bool TakeKick();
  uint64_t Deliver(Exit exit, bool wants_value);
  void Fatal(std::string reason);

  // ---- Delivery (emu_delivery.cc)
  // Delivers `event` through the IDT, escalating faults raised on the way as the CPU does; a
  // triple fault ends the vCPU with a ShutdownExit.
  void DeliverEvent(PendingEvent event);
  // One delivery attempt: a fault it raises comes back for DeliverEvent to escalate; kFailedPrecondition
  // for what the emu cannot do (real mode, task gates, ...).
  absl::StatusOr<std::optional<DeliveryFault>> TryDeliver(const PendingEvent& event);
  // CPL 3 -> CPL 0 with these segments (see trampolines.h), RSP/RIP/RFLAGS left for the caller.
  absl::Status RaisePrivilege(const RingChange& change);
  void CarryOutFastSystemCall(FastSystemCall call);
  std::optional<PendingEvent> EventFromHook(uint32_t vector);
  absl::StatusOr<uint64_t> ReadDescriptor(uint16_t selector);
  PendingEvent PageFaultEvent(uint64_t cr2);

  // ---- Hooks (emu_vcpu.cc; on the emulation thread)
  static uint32_t OnIn(uc_engine*, uint32_t port, int size, void* user);
  static void OnOut(uc_engine*, uint32_t port, int size, uint32_t value, void* user);
  static int OnCpuid(uc_engine* uc, void* user);
  static void OnTraceInstruction(uc_engine* uc, uint64_t address, uint32_t size, void* user);
  static void OnSyscall(uc_engine* uc, void* user);
  static void OnSysenter(uc_engine* uc, void* user);
  static void OnBlock(uc_engine* uc, uint64_t address, uint32_t, void* user);
  static void OnInterrupt(uc_engine* uc, uint32_t vector, void* user);
  static bool OnUnmapped(uc_engine*, uc_mem_type type, uint64_t address, int size, int64_t, void* user);
  static uint64_t OnMmioRead(uc_engine*, uint64_t offset, unsigned size, void* user);
  static void OnMmioWrite(uc_engine*, uint64_t offset, unsigned size, uint64_t value, void* user);
  bool HandleInlineHypercall();
  bool HandleSerialize();

  // ---- Registers and guest-linear memory
  uint64_t ReadRegister(int reg);
  void WriteRegister(int reg, uint64_t value);
  void RestoreCr2();
  uint64_t ReadMsr(uint32_t index);
  void WriteMsr(uint32_t index, uint64_t value);
  bool LongMode();
  uint8_t Cpl();
  HypercallExit HypercallFromRegisters(uint64_t number);
  void WriteHypercallResult(uint64_t result, bool long_mode);
  PagingState Paging();
  template <typename Access>
  absl::Status ForEachPage(uint64_t linear, size_t length, Access access);
  absl::Status ReadLinear(uint64_t linear, std::span<uint8_t> bytes);
  absl::Status WriteLinear(uint64_t linear, std::span<const uint8_t> bytes);
  absl::Status FetchCode(uint64_t rip, std::span<uint8_t> bytes);

  const uint32_t id_;
  EmuVmState& vm_;
  const memory::GuestMemory& memory_;
  uc_engine* uc_ = nullptr;
  std::optional<ExceptionRecord> exception_record_;
  std::vector<std::unique_ptr<MmioWindow>> mmio_windows_;
  uint64_t cr2_ = 0;  // the architectural CR2 (see RestoreCr2)
  std::map<uint64_t, uint8_t*> extra_shown_;  // what this engine maps, and at which generation
  uint64_t extra_generation_ = 0;
  std::thread thread_;

  absl::Mutex mutex_;
  bool caller_turn_ ABSL_GUARDED_BY(mutex_) = true;
  bool exiting_ ABSL_GUARDED_BY(mutex_) = false;
  bool kick_ ABSL_GUARDED_BY(mutex_) = false;
  std::optional<Exit> exit_ ABSL_GUARDED_BY(mutex_);
  bool awaiting_value_ ABSL_GUARDED_BY(mutex_) = false;
  std::optional<uint64_t> value_ ABSL_GUARDED_BY(mutex_);
  std::bitset<256> pending_interrupts_ ABSL_GUARDED_BY(mutex_);
  std::optional<PvhEntry> start_request_ ABSL_GUARDED_BY(mutex_);
  bool started_ ABSL_GUARDED_BY(mutex_) = false;

  absl::Mutex cpuid_mutex_;
  CpuidLeaf model_leaf1_;  // set before the emulation thread starts
  CpuidLeaf model_leaf7_;  // subleaf 0, with SERIALIZE
  bool flush_translations_ = false;  // SERIALIZE ran: drop translated code before a next run
  absl::Time last_flush_ = absl::InfinitePast();
  std::vector<CpuidLeaf> cpuid_ ABSL_GUARDED_BY(cpuid_mutex_);

  // Other threads ask for a stop; OnBlock carries it out between translation blocks.
  std::atomic<bool> stop_wanted_{false};
  // An interrupt waits for RFLAGS.IF: OnBlock stops the engine once the guest sets it.
  std::atomic<bool> interrupt_window_wanted_{false};
  // Emulation thread only (read by the Await conditions, which run under mutex_ on any thread, only
  // while the emulation thread itself waits).
  bool halted_ = false;
  struct BlockStop {
    uint64_t address;
    uint64_t rsp;
  };
  std::optional<BlockStop> block_stop_;  // the block hook's stop, for RepairBlockStop
  bool stop_requested_ = false;  // the engine was stopped on purpose (not by HLT)
  uint32_t private_blocks_ = 0;  // blocks run by the current private run, plus one; 0: none
  bool dead_ = false;            // a triple fault or fatal error: the vCPU never runs again
  std::optional<std::string> fatal_error_;
  std::optional<std::string> shutdown_reason_;
  std::optional<PendingEvent> pending_event_;
  std::optional<FastSystemCall> pending_fast_call_;
  std::optional<uint64_t> unmapped_access_;
  std::optional<uc_hook> trace_hook_;
  uint64_t trace_budget_ = 0;
  bool trace_remove_requested_ = false;
};

}  // namespace xenkvm::accel::emu

#endif  // XENKVM_COMPONENTS_ACCEL_EMU_EMU_VCPU_H_
