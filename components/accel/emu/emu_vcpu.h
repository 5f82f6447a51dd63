// One emu vCPU: a Unicorn engine whose run loop is a coroutine (coroutine.h) that Run() enters on
// its caller's thread and that switches back at each exit. Split by concept across
// emu_vcpu.cc (engine setup, the run loop and the hand-off to Run()), emu_hooks.cc (Unicorn's
// hooks), emu_delivery.cc
// (interrupts, exceptions and fast system calls as the architecture delivers them) and
// emu_lapic.cc (the vCPU's local APIC: its registers, IPIs, INIT and start-up, its timer).
#ifndef XENKVM_COMPONENTS_ACCEL_EMU_EMU_VCPU_H_
#define XENKVM_COMPONENTS_ACCEL_EMU_EMU_VCPU_H_

#include <unicorn/unicorn.h>

#include <atomic>
#include <chrono>
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
#include "components/accel/emu/coroutine.h"
#include "components/accel/emu/exception_record.h"
#include "components/accel/emu/local_apic.h"
#include "components/accel/emu/instruction_intercept.h"
#include "components/accel/emu/run_token.h"
#include "components/accel/emu/trampolines.h"
#include "components/accel/page_walk.h"
#include "components/base/spin_wait.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::accel::emu {

class EmuVcpu;

// Shared by emu_vcpu.cc, emu_stops.cc and emu_hooks.cc.
// The most blocks a private run (boot or ring-change trampoline) may take: they take a few.
inline constexpr uint32_t kMaxPrivateBlocks = 1000;
// How long a vCPU runs on while another waits for the run token.
inline constexpr std::chrono::milliseconds kRunSlice{1};
// A block entered this many times in a row while another vCPU waits is a spin-wait loop.
inline constexpr uint32_t kSpinRepeats = 64;
// While another vCPU waits, the slice's clock is read every this many blocks (a read cost as much
// as the blocks themselves: 6% of a two-vCPU Linux boot).
inline constexpr uint32_t kBlocksPerClockRead = 32;
// How long a run may outlive a stop sent to it before the stop is sent again (uc_emu_start drops
// a stop that lands in its first instructions), and how often a one-vCPU guest is stopped to look
// at RFLAGS.IF while an interrupt waits for it (a fallback: STI, POPF, IRET, SYSRET and SYSEXIT
// stop it at once).
inline constexpr absl::Duration kStopRetry = absl::Microseconds(200);
inline constexpr absl::Duration kStopRetryLongest = absl::Milliseconds(100);

// What every vCPU of one emu VM shares.
struct EmuVmState {
  explicit EmuVmState(const memory::GuestMemory& memory) : memory(memory) {}
  const memory::GuestMemory& memory;
  // One vCPU runs guest code at a time (run_token.h). Taken without any vCPU mutex held.
  RunToken run_token;
  // Every live vCPU, for IPIs. Lock order: vcpus_mutex, then a vCPU's own mutex.
  absl::Mutex vcpus_mutex;
  std::map<uint32_t, EmuVcpu*> vcpus ABSL_GUARDED_BY(vcpus_mutex);
  std::atomic<uint32_t> hypercall_msr{0};  // 0: no hypercall page
  CpuTemplate cpu_template = CpuTemplate::kHost;  // set before any vCPU exists
  // Extra pages shown to the guest (Accelerator::ShowExtraPage): each vCPU applies the set to its
  // engine before it next enters the guest, when the generation has moved on.
  absl::Mutex extra_mutex;
  std::map<uint64_t, uint8_t*> extra_pages ABSL_GUARDED_BY(extra_mutex);
  std::atomic<uint64_t> extra_generation{0};
  // vCPUs created so far: with more than one, each engine runs its block hook on every block
  // (slices and spin-waits, emu_stops.cc); with one, only in the private window.
  std::atomic<uint32_t> vcpus_created{0};

  // Stops every vCPU's guest run at its next block (emu_stops.cc); any thread.
  void StopEngines();
};

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

// How a vCPU that is not running starts: at a PVH entry (vCPU 0, VCPUOP_up) or as a start-up IPI
// starts an application processor, in real mode at sipi_vector:0000.
struct StartRequest {
  std::optional<PvhEntry> pvh;
  uint8_t sipi_vector = 0;
};

class EmuVcpu final : public Vcpu, private InstructionHandler {
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
  absl::Status InjectLevelInterrupt(uint8_t vector) override;
  absl::Status InjectXenCallback(uint8_t vector) override;
  void Kick() override;

  // ---- Stops (emu_stops.cc)
  // Ends the current guest run at its next block, from any thread, and has the run loop look
  // again before it starts the next (private runs are left alone). Exact: Unicorn only stops at a
  // block's start (third_party/unicorn/block_exits.cc).
  void RequestStop();

 private:
  EmuVcpu(uint32_t id, EmuVmState& vm)
      : id_(id), vm_(vm), memory_(vm.memory), lapic_(static_cast<uint8_t>(id)), apic_base_(InitialApicBase(id)) {}
  static uint64_t InitialApicBase(uint32_t id);

  // ---- Setup (emu_vcpu.cc)
  absl::Status Open();
  absl::Status ProbeModel();
  // Runs a boot or start-up trampoline to the guest's first instruction.
  absl::Status Boot(const BootTrampoline& trampoline);
  // Starts a vCPU that is not running; an engine that ran before is replaced by a fresh one
  // (INIT resets the CPU: the trampolines start from Unicorn's reset state).
  absl::Status StartFrom(const StartRequest& start);
  absl::Status ResetEngine();
  absl::Status MapMmioWindows();
  absl::Status MapMmio(uint64_t start, uint64_t end);
  // Applies the VM's extra pages to this engine (emu_extra_pages.cc); on the emulation thread.
  absl::Status SyncExtraPages();
  absl::Status ShowPage(uint64_t address, uint8_t* host);
  absl::Status HidePage(uint64_t address);
  absl::Status InstallHooks();
  // The private window holds the backend's code only while it runs; the rest of the time the
  // guest sees MMIO there, like any other address that is not RAM (GRUB reads 0xfffffffc).
  absl::Status MapWindow(const std::vector<WindowPiece>& pieces);
  void UnmapWindow();
  absl::Status ShowWindowAsMmio();
  // Runs private code in the window from `start` until it reaches linear address `until` (kicks may stop it
  // between blocks: it carries on). kInternal if it ends anywhere else.
  absl::Status RunPrivate(uint64_t start, uint64_t until, absl::string_view what);

  // ---- Stops (emu_stops.cc)
  // A guest run, bracketed so that other threads can stop it: false if a stop was asked for
  // after the run loop last looked (the run must not start).
  bool BeginGuestRun(bool interrupt_waiting);
  void EndGuestRun();
  void StartWatchdogLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(engine_mutex_);
  void StopWatchdogLoop();
  // STI, POPF, IRET, SYSRET or SYSEXIT is about to run (instruction_intercept.h): with an interrupt
  // waiting for RFLAGS.IF, the run stops right after it and the loop looks at IF.
  void BeforeInterruptFlagWrite() override;
  // HLT (or MWAIT) is about to end the run: it, not a stop, ends it (both can land together).
  void BeforeHalt() override;
  void BeforePause() override;
  // The block hook on every block (more than one vCPU) or on the private window's only.
  absl::Status InstallBlockHook();

  // ---- The emulation thread (emu_vcpu.cc)
  void EmulationLoop();
  // What ends the loop's wait: a start, an interrupt for a halted vCPU, a kick, an exit.
  bool ReadyToRunLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Halted: polls for ReadyToRunLocked up to halt_poll_'s window (base::PollWindow) before the
  // loop sleeps; true if it came.
  bool PollWhileHalted();
  void RunGuest(bool interrupt_waiting);
  bool DeliverPendingWork();
  void RepairBlockStop();
  bool Exiting();
  bool TakeKick();
  // Hands `exit` to the caller's Run() and waits for the next Run(); returns the Complete() value.
  // The run token is given up meanwhile.
  uint64_t Deliver(Exit exit, bool wants_value);
  uint64_t HandOff(Exit exit, bool wants_value);
  void TakeRunToken();
  void Fatal(std::string reason);

  // ---- The local APIC (emu_lapic.cc)
  uint64_t ApicRead(uint64_t offset, unsigned size);
  void ApicWrite(uint64_t offset, unsigned size, uint64_t value);
  absl::Status AcceptInterrupt(uint8_t vector, bool level_triggered);
  // Routes an ICR write to every destination vCPU (this one included).
  void SendIpi(const IpiRequest& ipi);
  // An IPI from APIC `sender`; true if this vCPU was a destination (and took it).
  bool ReceiveIpi(const IpiRequest& ipi, uint8_t sender);
  // The timer thread: fires the LAPIC timer at its deadlines.
  void TimerLoop();
  // An NMI, or the interrupt the vCPU takes now (RFLAGS.IF set): Xen's callback vector before the
  // LAPIC's, acknowledged. `waiting`: something waits for RFLAGS.IF.
  std::optional<PendingEvent> TakeInterrupt(bool interrupts_enabled, bool& waiting);
  bool InterruptReadyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // INIT, on the vCPU's thread: the engine stops running the guest (ReceiveIpi reset the APIC).
  void CarryOutInitLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // CS's base when it can be known (OnBlock's stops need it to repair RIP): 0 in long mode, the
  // descriptor's in protected mode; nullopt in real mode (the base may still be a protected-mode
  // one) and when the GDT does not hold CS (protection just turned on).
  std::optional<uint64_t> CodeSegmentBase();

  // ---- Delivery (emu_delivery.cc)
  // Delivers `event` through the IDT, escalating faults raised on the way as the CPU does; a
  // triple fault ends the vCPU with a ShutdownExit.
  void DeliverEvent(PendingEvent event);
  // One delivery attempt: a fault it raises comes back for DeliverEvent to escalate; kFailedPrecondition
  // for what the emu cannot do (real mode, task gates, ...).
  absl::StatusOr<std::optional<DeliveryFault>> TryDeliver(const PendingEvent& event);
  absl::StatusOr<std::optional<DeliveryFault>> TryDeliverRealMode(const PendingEvent& event);
  // CPL 3 -> CPL 0 with these segments (see trampolines.h), RSP/RIP/RFLAGS left for the caller.
  absl::Status RaisePrivilege(const RingChange& change);
  void CarryOutFastSystemCall(FastSystemCall call);
  std::optional<PendingEvent> EventFromHook(uint32_t vector);
  absl::StatusOr<uint64_t> ReadDescriptor(uint16_t selector);
  PendingEvent PageFaultEvent(uint64_t cr2);

  // ---- Hooks (emu_hooks.cc; on the emulation thread)
  static uint32_t OnIn(uc_engine*, uint32_t port, int size, void* user);
  static void OnOut(uc_engine*, uint32_t port, int size, uint32_t value, void* user);
  static void OnBlock(uc_engine* uc, uint64_t address, uint32_t, void* user);
  static void OnInterrupt(uc_engine* uc, uint32_t vector, void* user);
  static bool OnUnmapped(uc_engine*, uc_mem_type type, uint64_t address, int size, int64_t, void* user);
  static uint64_t OnMmioRead(uc_engine*, uint64_t offset, unsigned size, void* user);
  static void OnMmioWrite(uc_engine*, uint64_t offset, unsigned size, uint64_t value, void* user);
  bool HandleInlineHypercall();
  bool HandleSerialize();
  // RDMSR and WRMSR (IA32_APIC_BASE, and the hypercall MSR filling the page), CPUID (and the
  // hypercall CPUID), SYSCALL and SYSENTER, reached through instruction_intercept.h.
  std::optional<uint64_t> OnRdmsr(uint32_t index) override;
  bool OnWrmsr(uint32_t index, uint64_t value) override;
  bool OnCpuid() override;
  void OnSyscall() override;
  void OnSysenter() override;

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
  std::unique_ptr<MmioWindow> window_mmio_;  // set once the MMIO windows are mapped
  bool window_mmio_mapped_ = false;
  uint64_t cr2_ = 0;  // the architectural CR2 (see RestoreCr2)
  std::map<uint64_t, uint8_t*> extra_shown_;  // what this engine maps, and at which generation
  uint64_t extra_generation_ = 0;
  // The run loop (EmulationLoop), on a stack of its own; Run() resumes it, HandOff yields.
  Coroutine emulation_{[this] { EmulationLoop(); }};
  bool thread_named_ = false;  // Run()'s thread carries the vCPU's name
  // The exit being handed to Run()'s caller and its answer: only ever touched by the thread in
  // Run() or Complete() (the Vcpu's one user at a time) and the emulation it resumes, so unlocked.
  std::optional<Exit> exit_;
  bool awaiting_value_ = false;
  std::optional<uint64_t> value_;

  absl::Mutex mutex_;
  bool exiting_ ABSL_GUARDED_BY(mutex_) = false;
  bool kick_ ABSL_GUARDED_BY(mutex_) = false;

  LocalApic lapic_ ABSL_GUARDED_BY(mutex_);
  VectorBits xen_callbacks_ ABSL_GUARDED_BY(mutex_);  // InjectXenCallback: beside the LAPIC
  bool nmi_pending_ ABSL_GUARDED_BY(mutex_) = false;
  bool init_pending_ ABSL_GUARDED_BY(mutex_) = false;
  bool awaiting_sipi_ ABSL_GUARDED_BY(mutex_) = false;  // a start-up IPI would start it
  uint64_t timer_generation_ ABSL_GUARDED_BY(mutex_) = 0;  // the LAPIC timer was reprogrammed
  std::optional<StartRequest> start_request_ ABSL_GUARDED_BY(mutex_);
  bool started_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread timer_thread_;  // started by the first timer programming (emulation thread)

  absl::Mutex cpuid_mutex_;
  CpuidLeaf model_leaf1_;  // set before the emulation thread starts
  CpuidLeaf model_leaf7_;  // subleaf 0, with SERIALIZE
  CpuidLeaf model_ext1_;   // 0x80000001
  bool flush_translations_ = false;  // SERIALIZE ran: drop translated code before a next run
  std::optional<uint64_t> stale_code_at_;  // a stale INT3 ran here: flush at once and run it again
  std::chrono::steady_clock::time_point last_flush_{};
  std::vector<CpuidLeaf> cpuid_ ABSL_GUARDED_BY(cpuid_mutex_);

  // A stop was asked for since the run loop last looked (RequestStop).
  std::atomic<bool> stop_wanted_{false};
  std::atomic<bool> exit_requested_{false};  // the destructor's
  // An interrupt waits for RFLAGS.IF: the engine stops once the guest sets it (emu_stops.cc).
  std::atomic<bool> interrupt_window_wanted_{false};
  // What other threads need to stop the engine (RequestStop) and the watchdog that repeats a stop.
  absl::Mutex engine_mutex_;
  bool guest_running_ ABSL_GUARDED_BY(engine_mutex_) = false;  // inside RunGuest's uc_emu_start
  uint64_t run_serial_ ABSL_GUARDED_BY(engine_mutex_) = 0;     // guest runs begun
  uint64_t stopped_serial_ ABSL_GUARDED_BY(engine_mutex_) = 0; // the last run a stop was sent to
  bool poll_window_ ABSL_GUARDED_BY(engine_mutex_) = false;    // the watchdog looks at RFLAGS.IF
  bool watchdog_exit_ ABSL_GUARDED_BY(engine_mutex_) = false;
  std::thread watchdog_thread_;  // started by the first stop or polled window (under engine_mutex_)
  uc_hook block_hook_ = 0;
  bool block_hook_everywhere_ = false;
  // The emulation's only (read by the Await conditions, which run under mutex_ on any thread, only
  // while the emulation itself waits).
  bool halted_ = false;
  base::PollWindow halt_poll_;  // KVM's halt-polling rule
  bool engine_used_ = false;  // the engine left its reset state (StartFrom replaces it)
  bool holds_run_token_ = false;  // the engine runs guest code (RunGuest), save while in Deliver
  // When it last took the token: on the monotonic clock, read at every exit (absl::Now() took
  // ~70 ns here, against a port-I/O exit's ~140; steady_clock ~18).
  std::chrono::steady_clock::time_point slice_start_;
  uint64_t last_block_ = 0;       // OnBlock's spin detection (see kSpinRepeats)
  uint32_t block_repeats_ = 0;
  uint32_t contended_blocks_ = 0;  // blocks run while another vCPU waits (kBlocksPerClockRead)
  struct BlockStop {
    uint64_t rip;  // the block's offset in CS
    uint64_t rsp;
  };
  std::optional<BlockStop> block_stop_;  // the block hook's stop, for RepairBlockStop
  bool stop_requested_ = false;  // the block hook or an IF write stopped the engine
  bool halt_executed_ = false;   // the current guest run executed HLT (BeforeHalt)
  uint32_t private_blocks_ = 0;  // blocks run by the current private run, plus one; 0: none
  bool dead_ = false;            // a triple fault or fatal error: the vCPU never runs again
  std::optional<std::string> fatal_error_;
  std::optional<std::string> shutdown_reason_;
  std::optional<PendingEvent> pending_event_;
  std::optional<FastSystemCall> pending_fast_call_;
  std::optional<uint64_t> unmapped_access_;
  uint64_t apic_base_;  // IA32_APIC_BASE as the guest reads it (OnRdmsr)
  bool apic_base_warned_ = false;
};

}  // namespace xenkvm::accel::emu

#endif  // XENKVM_COMPONENTS_ACCEL_EMU_EMU_VCPU_H_
