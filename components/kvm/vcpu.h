// Vcpu: one KVM vCPU. Owns the vCPU descriptor and its kvm_run mapping; runs the guest and decodes
// each exit; reads and writes the vCPU's state; holds the per-vCPU Xen attributes.
//
// Thread-safety: a Vcpu is used by one thread (its run loop). The one exception is
// RequestImmediateExit(), which another thread may call to make the next (or current, together
// with a signal) KVM_RUN return at once.
#ifndef XENKVM_COMPONENTS_KVM_VCPU_H_
#define XENKVM_COMPONENTS_KVM_VCPU_H_

#include <linux/kvm.h>

#include <array>
#include <cstdint>
#include <span>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "components/base/fd.h"
#include "components/kvm/xen_capabilities.h"

namespace xenkvm::kvm {

// ---- Exits. Spans point into kvm_run and are valid only until the next Run().

// IN/OUT (also INS/OUTS: `count` items of `size` bytes). For IN, fill `data` before running again.
struct IoExit {
  bool is_write = false;
  uint16_t port = 0;
  uint8_t size = 0;
  uint32_t count = 0;
  std::span<uint8_t> data;
};

// A guest access to an address no memory slot covers. For a read, fill `data` before running again.
struct MmioExit {
  bool is_write = false;
  uint64_t address = 0;
  std::span<uint8_t> data;
};

// A Xen hypercall intercepted by KVM (needs ConfigureXenHypercalls). Answer with
// Vcpu::CompleteXenHypercall(result), then run again.
struct XenHypercallExit {
  bool long_mode = false;
  uint32_t cpl = 0;
  uint64_t input = 0;  // the hypercall number
  std::array<uint64_t, 6> params{};
};

// RDMSR/WRMSR handed to userspace (Vm::EnableUserSpaceMsr). Answer with Vcpu::CompleteMsr.
struct MsrExit {
  bool is_write = false;
  uint32_t index = 0;
  uint32_t reason = 0;  // KVM_MSR_EXIT_REASON_*
  uint64_t data = 0;    // the value written
};

struct HltExit {};
struct ShutdownExit {};  // triple fault
// KVM_RUN returned EINTR (a signal) or honoured immediate_exit: nothing happened in the guest.
struct InterruptedExit {};
struct FailEntryExit {
  uint64_t hardware_entry_failure_reason = 0;
  uint32_t cpu = 0;
};
struct InternalErrorExit {
  uint32_t suberror = 0;
  std::vector<uint64_t> data;
};
struct SystemEventExit {
  uint32_t type = 0;  // KVM_SYSTEM_EVENT_SHUTDOWN, _RESET, _CRASH...
  std::vector<uint64_t> data;
};
// Level-triggered interrupt EOI (split irqchip): the userspace IOAPIC re-checks the pin.
struct IoapicEoiExit {
  uint8_t vector = 0;
};
struct DebugExit {
  uint32_t exception = 0;
  uint64_t pc = 0;
};
struct UnknownExit {
  uint32_t reason = 0;
  uint64_t hardware_exit_reason = 0;
};

using VcpuExit = std::variant<IoExit, MmioExit, XenHypercallExit, MsrExit, HltExit, ShutdownExit,
                              InterruptedExit, FailEntryExit, InternalErrorExit, SystemEventExit,
                              IoapicEoiExit, DebugExit, UnknownExit>;

// Runstate accounting, as Xen's vcpu_runstate_info (KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_DATA/ADJUST).
struct XenRunstate {
  uint64_t state = 0;  // RUNSTATE_running(0), runnable(1), blocked(2), offline(3)
  uint64_t state_entry_time = 0;
  uint64_t time_running = 0;
  uint64_t time_runnable = 0;
  uint64_t time_blocked = 0;
  uint64_t time_offline = 0;
};

// The in-kernel Xen timer (KVM_XEN_VCPU_ATTR_TYPE_TIMER): fires VIRQ_TIMER's `port` at
// `expires_ns` (guest Xen system time); expires_ns 0 means stopped.
struct XenTimer {
  uint32_t port = 0;
  uint32_t priority = KVM_IRQ_ROUTING_XEN_EVTCHN_PRIO_2LEVEL;
  uint64_t expires_ns = 0;
};

class Vcpu {
 public:
  Vcpu(Vcpu&& other) noexcept;
  Vcpu& operator=(Vcpu&&) = delete;
  Vcpu(const Vcpu&) = delete;
  ~Vcpu();

  uint32_t id() const { return id_; }
  int fd() const { return fd_.get(); }

  // KVM_RUN until the next exit, decoded.
  absl::StatusOr<VcpuExit> Run();
  // Sets kvm_run.immediate_exit: KVM_RUN returns InterruptedExit without entering the guest (used
  // for kicks and to flush pending exits before saving state).
  void RequestImmediateExit(bool enabled);

  // Answers the Xen hypercall of the last exit; the next Run() returns it to the guest in RAX.
  absl::Status CompleteXenHypercall(uint64_t result);
  // Answers the RDMSR/WRMSR of the last exit: `inject_gp` raises #GP in the guest, `data` is the
  // value an RDMSR reads.
  absl::Status CompleteMsr(bool inject_gp, uint64_t data = 0);

  // KVM_CAP_SYNC_REGS: from the next exit on, the register sets in `sets` (KVM_SYNC_X86_REGS,
  // KVM_SYNC_X86_SREGS; only what the kernel offers) come back in kvm_run, sparing KVM_GET_REGS
  // and KVM_GET_SREGS on the exits that read them.
  void SyncRegsAtExit(uint64_t sets) { run_->kvm_valid_regs = sets; }
  // The last exit's registers, or nullptr when they were not synced (or were set by ioctl since).
  // Writes through synced_regs() reach the vCPU at the next Run() after MarkSyncedRegsDirty().
  kvm_regs* synced_regs() { return synced_valid_ && (run_->kvm_valid_regs & KVM_SYNC_X86_REGS) ? &run_->s.regs.regs : nullptr; }
  const kvm_sregs* synced_sregs() const {
    return synced_valid_ && (run_->kvm_valid_regs & KVM_SYNC_X86_SREGS) ? &run_->s.regs.sregs : nullptr;
  }
  void MarkSyncedRegsDirty() { run_->kvm_dirty_regs |= KVM_SYNC_X86_REGS; }

  // ---- State
  absl::StatusOr<kvm_regs> GetRegs() const;
  absl::Status SetRegs(const kvm_regs& regs);
  absl::StatusOr<kvm_sregs> GetSregs() const;
  absl::Status SetSregs(const kvm_sregs& sregs);
  absl::StatusOr<kvm_fpu> GetFpu() const;
  absl::Status SetFpu(const kvm_fpu& fpu);
  absl::StatusOr<kvm_xcrs> GetXcrs() const;
  absl::Status SetXcrs(const kvm_xcrs& xcrs);
  // Reads the MSRs named; an MSR KVM cannot read is an error that names it.
  absl::StatusOr<std::vector<kvm_msr_entry>> GetMsrs(std::span<const uint32_t> indices) const;
  absl::Status SetMsrs(std::span<const kvm_msr_entry> entries);
  absl::Status SetCpuid(std::span<const kvm_cpuid_entry2> entries);
  absl::StatusOr<std::vector<kvm_cpuid_entry2>> GetCpuid() const;
  absl::StatusOr<kvm_lapic_state> GetLapic() const;
  absl::Status SetLapic(const kvm_lapic_state& lapic);
  // KVM_MP_STATE_RUNNABLE, _UNINITIALIZED (an AP waiting for INIT/SIPI), _HALTED...
  absl::StatusOr<uint32_t> GetMpState() const;
  absl::Status SetMpState(uint32_t state);
  absl::StatusOr<kvm_vcpu_events> GetEvents() const;
  absl::Status SetEvents(const kvm_vcpu_events& events);
  absl::StatusOr<uint32_t> GetTscKhz() const;
  absl::Status SetTscKhz(uint32_t khz);

  // ---- Xen (each call checks the probed capability first)
  // Required for every vCPU of a Xen guest using the kernel's event delivery.
  absl::Status SetXenVcpuInfo(uint64_t gpa);
  absl::StatusOr<uint64_t> GetXenVcpuInfo() const;
  absl::Status SetXenVcpuInfoHva(uint64_t hva);
  absl::StatusOr<uint64_t> GetXenVcpuInfoHva() const;
  absl::Status SetXenVcpuTimeInfo(uint64_t gpa);
  absl::StatusOr<uint64_t> GetXenVcpuTimeInfo() const;
  absl::Status SetXenRunstateAddress(uint64_t gpa);
  absl::StatusOr<uint64_t> GetXenRunstateAddress() const;
  absl::Status SetXenRunstateCurrent(uint64_t state);
  absl::StatusOr<uint64_t> GetXenRunstateCurrent() const;
  absl::Status SetXenRunstateData(const XenRunstate& runstate);
  absl::StatusOr<XenRunstate> GetXenRunstateData() const;
  // Adds the given times to the accounting; state_entry_time/state must be as documented by KVM.
  absl::Status AdjustXenRunstate(const XenRunstate& delta);
  absl::Status SetXenVcpuId(uint32_t xen_vcpu_id);
  absl::StatusOr<uint32_t> GetXenVcpuId() const;
  absl::Status SetXenTimer(const XenTimer& timer);
  absl::StatusOr<XenTimer> GetXenTimer() const;
  // The per-vCPU LAPIC upcall vector (HVMOP_set_evtchn_upcall_vector); 0 disables.
  absl::Status SetXenUpcallVector(uint8_t vector);
  absl::StatusOr<uint8_t> GetXenUpcallVector() const;

 private:
  friend class Vm;
  Vcpu(uint32_t id, base::Fd fd, kvm_run* run, size_t mmap_size, XenCapabilities xen)
      : id_(id), fd_(std::move(fd)), run_(run), mmap_size_(mmap_size), xen_(xen) {}

  absl::StatusOr<VcpuExit> Decode();
  absl::Status SetAttr(kvm_xen_vcpu_attr& attr, XenCapability needed, const char* what);
  absl::StatusOr<kvm_xen_vcpu_attr> GetAttr(uint16_t type, XenCapability needed,
                                            const char* what) const;
  absl::Status SetGpaAttr(uint16_t type, XenCapability needed, const char* what, uint64_t gpa);
  absl::StatusOr<uint64_t> GetGpaAttr(uint16_t type, XenCapability needed, const char* what) const;

  uint32_t id_;
  base::Fd fd_;
  kvm_run* run_;
  size_t mmap_size_;
  XenCapabilities xen_;
  uint32_t last_exit_reason_ = KVM_EXIT_UNKNOWN;
  bool synced_valid_ = false;  // kvm_run's register copy is the vCPU's (an exit since any ioctl set)
};

}  // namespace xenkvm::kvm

#endif  // XENKVM_COMPONENTS_KVM_VCPU_H_
