// The accelerator interface: one way to run guest vCPUs, whatever runs them (KVM, or the Unicorn
// software CPU). Everything above the CPU (the Xen shim, devices, the VMM) uses only this header.
//
// The run protocol: Vcpu::Run() runs the guest until an exit. Exits that ask for a value (a port or
// MMIO read, a hypercall) are answered with Vcpu::Complete(value) before the next Run(); the value
// then reaches the guest (the IN destination, the load, RAX).
#ifndef XENKVM_COMPONENTS_ACCEL_ACCELERATOR_H_
#define XENKVM_COMPONENTS_ACCEL_ACCELERATOR_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "components/accel/cpu_template.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::accel {

// ---- Exits

// IN or OUT of `size` (1, 2 or 4) bytes. For IN, answer with Complete(value).
struct PortIoExit {
  bool is_write = false;
  uint16_t port = 0;
  uint8_t size = 0;
  uint32_t value = 0;  // the value written (OUT)
};

// A load or store at a guest-physical address that is not RAM. For a load, Complete(value).
struct MmioExit {
  bool is_write = false;
  uint64_t address = 0;
  uint8_t size = 0;
  uint64_t value = 0;  // the value stored
};

// A Xen hypercall. Answer with Complete(result), which the guest reads in RAX/EAX.
struct HypercallExit {
  uint64_t number = 0;
  // 64-bit ABI: rdi, rsi, rdx, r10, r8, r9; 32-bit ABI: ebx, ecx, edx, esi, edi, ebp.
  std::array<uint64_t, 6> args{};
  bool long_mode = false;
  uint8_t cpl = 0;
};

// The guest executed HLT with interrupts disabled: nothing but the VMM can wake it. (HLT with
// interrupts enabled waits inside Run() for an interrupt or a kick, as KVM's in-kernel LAPIC does.)
struct HaltExit {};
// Triple fault or a reset request from the CPU itself.
struct ShutdownExit {
  std::string reason;
};
// Kick() from another thread (or an interrupt was queued): nothing to do but run again.
struct KickedExit {};
// The guest's local APIC ended a level-triggered interrupt (InjectLevelInterrupt): the IOAPIC
// drops that vector's remote IRR and delivers again if the line is still asserted. Only from
// backends whose capabilities().reports_eoi (KVM_EXIT_IOAPIC_EOI's role in a split irqchip).
struct EoiExit {
  uint8_t vector = 0;
};
// The guest did something the accelerator cannot carry out; the VM cannot continue.
struct GuestErrorExit {
  std::string reason;
};

using Exit = std::variant<PortIoExit, MmioExit, HypercallExit, HaltExit, ShutdownExit, KickedExit,
                          GuestErrorExit, EoiExit>;

// ---- State

struct Registers {
  uint64_t rax = 0, rbx = 0, rcx = 0, rdx = 0, rsi = 0, rdi = 0, rsp = 0, rbp = 0;
  uint64_t r8 = 0, r9 = 0, r10 = 0, r11 = 0, r12 = 0, r13 = 0, r14 = 0, r15 = 0;
  uint64_t rip = 0, rflags = 0;
};

struct ControlRegisters {
  uint64_t cr0 = 0, cr2 = 0, cr3 = 0, cr4 = 0, efer = 0;
  uint16_t cs_selector = 0;
  uint8_t cpl = 0;
  bool long_mode = false;  // EFER.LMA and a 64-bit code segment
};

// One CPUID answer the caller supplies (the Xen shim owns the hypervisor leaves 0x40000000+).
struct CpuidLeaf {
  uint32_t function = 0;
  std::optional<uint32_t> index;  // only for leaves whose ECX selects a sub-leaf
  uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

// Where a vCPU starts: the PVH entry state (32-bit protected mode, flat segments, paging off,
// EBX = the hvm_start_info address).
struct PvhEntry {
  uint32_t entry = 0;
  uint32_t start_info = 0;
  uint32_t stack_pointer = 0;  // ESP (PVH leaves it undefined; a secondary vCPU's start may set it)
};

// What a backend offers beyond the interface's guarantees.
struct Capabilities {
  std::string name;                        // "kvm" or "emu"
  // Level-triggered EOIs come back as EoiExits (emu). Without it (kvm: the LAPIC is in the kernel
  // and says nothing), the IOAPIC cannot hold a remote IRR for level-triggered pins.
  bool reports_eoi = false;
  bool kernel_delivers_event_channels = false;
  bool hypercall_page_by_accelerator = true;  // the guest's MSR write fills the page
  bool inline_vmcall = true;               // VMCALL/VMMCALL outside the page reach the VMM
  // CPUID features the host offers but cannot run for a guest (kvm's instruction probes), kept
  // from every vCPU's CPUID; names as /proc/cpuinfo spells them.
  std::vector<std::string> hidden_cpuid_features;
};

// kInvalidArgument for an exception vector (below 0x10), which InjectInterrupt refuses.
absl::Status CheckExternalVector(uint8_t vector);

// This host's TSC frequency (both backends run guests at it): as CPUID reports it (leaf 0x15, or
// a hypervisor's 0x40000010), else measured once against CLOCK_MONOTONIC_RAW over the time since
// the program loaded (waiting for what is left of 5 ms). kvm asks KVM first (KVM_GET_TSC_KHZ).
uint64_t HostTscKhz();

// Names the calling thread "vcpu<id>": each backend calls it on the thread that runs the vCPU's
// guest code, so that the VM's CPU time can be told apart per vCPU (/proc/PID/task/*/comm).
void NameVcpuThread(uint32_t id);

// Each hypercall-page stub is 32 bytes: hypercall n is at page + 32 * n (Xen's layout).
inline constexpr uint32_t kHypercallStubSize = 32;
inline constexpr uint32_t kHypercallPageSize = 4096;

class Vcpu {
 public:
  virtual ~Vcpu() = default;
  virtual uint32_t id() const = 0;

  // Runs until the next exit. Not reentrant: one run-loop thread per vCPU.
  virtual absl::StatusOr<Exit> Run() = 0;
  // Answers the last exit (IN, MMIO load, hypercall), on the run-loop thread, before the next
  // Run(). kFailedPrecondition if it asked for nothing.
  virtual absl::Status Complete(uint64_t value) = 0;

  virtual absl::StatusOr<Registers> GetRegisters() = 0;
  virtual absl::Status SetRegisters(const Registers& registers) = 0;
  virtual absl::StatusOr<ControlRegisters> GetControlRegisters() = 0;
  // Guest-linear -> guest-physical through the vCPU's current paging mode (flat segments, as PVH
  // and Linux use). Call from the vCPU's run-loop thread between Run()s: the Xen shim translates
  // hypercall arguments, which HVM guests pass as linear addresses. kNotFound if not mapped.
  virtual absl::StatusOr<uint64_t> TranslateLinear(uint64_t linear) = 0;
  // The guest's TSC minus this host's RDTSC: what pvclock needs to turn guest TSC into time.
  virtual absl::StatusOr<int64_t> TscOffset() = 0;

  // Replaces every caller-supplied CPUID leaf; other leaves come from the backend's CPU model.
  virtual absl::Status SetCpuid(std::vector<CpuidLeaf> leaves) = 0;

  // Starts a vCPU created without a boot state (a secondary vCPU, which until then blocks in Run()
  // as an AP waiting for its start-up does). kFailedPrecondition if it already runs.
  virtual absl::Status Start(const PvhEntry& boot) = 0;

  // Queues external interrupt `vector` (>= 0x10), edge-triggered, fixed mode, at this vCPU's local
  // APIC, which the guest must have software-enabled (kFailedPrecondition otherwise, the interrupt
  // lost as on hardware); safe from any thread. The LAPIC's priority rules and the guest's EOI
  // apply. A guest halted with interrupts enabled wakes; a running one takes it when RFLAGS.IF
  // allows. (kvm: a fixed-mode MSI to this vCPU's LAPIC.)
  virtual absl::Status InjectInterrupt(uint8_t vector) = 0;
  // The same, level-triggered (an IOAPIC pin): where capabilities().reports_eoi, its EOI comes back
  // as an EoiExit. The default is the edge-triggered injection (a backend that cannot tell).
  virtual absl::Status InjectLevelInterrupt(uint8_t vector) { return InjectInterrupt(vector); }
  // Xen's HVM-wide event-channel callback vector (HVM_PARAM_CALLBACK_IRQ, vector type), which Xen
  // delivers beside the local APIC: no IRR or ISR bit, no EOI from the guest (Linux sends none),
  // taken whenever RFLAGS.IF allows. The default goes through the LAPIC (a backend that cannot
  // inject beside it).
  virtual absl::Status InjectXenCallback(uint8_t vector) { return InjectInterrupt(vector); }
  // Makes a Run() in progress return KickedExit soon; a kick before Run() makes the next one return
  // at once. Safe from any thread.
  virtual void Kick() = 0;
};

// The kernel's own Xen event delivery (kvm, when KVM_CAP_XEN_HVM has EVTCHN_SEND): the Xen shim
// tells it where shared_info and each vcpu_info live and how upcalls arrive, then raises ports
// through it; the kernel sets the pending bits and injects the upcall (re-injecting the HVM-wide
// vector while upcall_pending stays set, as Xen does).
class KernelXenEvents {
 public:
  virtual ~KernelXenEvents() = default;
  virtual absl::Status SetLongMode(bool long_mode) = 0;
  virtual absl::Status SetSharedInfo(uint64_t gfn) = 0;
  virtual absl::Status SetVcpuInfo(uint32_t vcpu, uint64_t gpa) = 0;
  // `vcpu`: a per-vCPU upcall vector (HVMOP_set_evtchn_upcall_vector); nullopt: the HVM-wide one.
  virtual absl::Status SetUpcallVector(std::optional<uint32_t> vcpu, uint8_t vector) = 0;
  virtual absl::Status Send(uint32_t port, uint32_t vcpu) = 0;
  // The guest's EVTCHNOP_send on `send_port` handled in the kernel: it raises `to_port` on
  // `to_vcpu` without leaving the guest (an IPI: to_port == send_port). Assigns or updates.
  virtual absl::Status RouteSend(uint32_t send_port, bool ipi, uint32_t to_port, uint32_t to_vcpu) = 0;
  virtual absl::Status Unroute(uint32_t send_port) = 0;
  virtual absl::Status ResetRoutes() = 0;
  // The vCPU's singleshot timer (VCPUOP_set_singleshot_timer, set_timer_op) handled in the kernel,
  // raising `port` (its VIRQ_TIMER port); 0 gives the timer back to the VMM.
  virtual absl::Status SetTimerPort(uint32_t vcpu, uint32_t port) = 0;
};

// Held while the host read-modify-writes guest memory that the guest itself updates with atomic
// instructions (event-channel bitmaps): see Accelerator::ExcludeGuestAtomics.
class GuestAtomicsExclusion {
 public:
  virtual ~GuestAtomicsExclusion() = default;
};

class Accelerator {
 public:
  virtual ~Accelerator() = default;
  // While the returned object lives, no guest instruction is half done: emu runs LOCK-prefixed
  // instructions and XCHG as plain loads and stores (run_token.h), so a host thread's atomic OR
  // into a word the guest is exchanging would be lost; emu stops its vCPUs between instructions.
  // Real CPUs' atomics need nothing (nullptr). Never call from a vCPU's own emulation.
  virtual std::unique_ptr<GuestAtomicsExclusion> ExcludeGuestAtomics() { return nullptr; }
  virtual const Capabilities& capabilities() const = 0;
  // The guest TSC's frequency.
  virtual uint64_t tsc_khz() const = 0;
  // From now on, the guest's write of a page's guest-physical address to MSR `msr` (the one CPUID
  // leaf 0x40000x02 names) fills that page with hypercall stubs that reach the VMM as
  // HypercallExits, as Xen and KVM do. Repeatable; a write whose page is not RAM is ignored.
  virtual absl::Status EnableHypercallPage(uint32_t msr) = 0;
  // The kernel's Xen event delivery, or nullptr where there is none (emu; kvm without EVTCHN_SEND).
  virtual KernelXenEvents* kernel_xen_events() { return nullptr; }
  // Shows the guest one page of host memory at guest-physical `address` (page-aligned, outside
  // RAM): a GuestMemory extra page (grant-table and shared-info frames at unpopulated addresses).
  // `host` stays mapped while shown. Every vCPU sees it before it next enters the guest.
  virtual absl::Status ShowExtraPage(uint64_t address, uint8_t* host) = 0;
  // Takes such a page away again; the address is what it was before (MMIO, or nothing).
  virtual absl::Status HideExtraPage(uint64_t address) = 0;
  // Narrows the CPUID of vCPUs created from now on to `cpu_template` (cpu_template.h), on top of
  // what the backend can run at all (kvm: KVM_GET_SUPPORTED_CPUID; emu: Unicorn's CPU model).
  virtual absl::Status RestrictCpuid(CpuTemplate cpu_template) = 0;
  // A vCPU starting at `boot` (vCPU 0), or halted until the VMM starts it (no boot state).
  virtual absl::StatusOr<std::unique_ptr<Vcpu>> CreateVcpu(uint32_t id,
                                                           std::optional<PvhEntry> boot) = 0;
};

}  // namespace xenkvm::accel

#endif  // XENKVM_COMPONENTS_ACCEL_ACCELERATOR_H_
