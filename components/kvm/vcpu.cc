#include "components/kvm/vcpu.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "components/base/status.h"
#include "components/kvm/flex_array.h"
#include "components/kvm/ioctl.h"
#include "components/kvm/xen_abi.h"

namespace xenkvm::kvm {

Vcpu::Vcpu(Vcpu&& other) noexcept
    : id_(other.id_),
      fd_(std::move(other.fd_)),
      run_(other.run_),
      mmap_size_(other.mmap_size_),
      xen_(other.xen_),
      last_exit_reason_(other.last_exit_reason_) {
  other.run_ = nullptr;
}

Vcpu::~Vcpu() {
  if (run_ != nullptr) ::munmap(run_, mmap_size_);
}

void Vcpu::RequestImmediateExit(bool enabled) {
  // A plain byte the kernel reads on entry; written from another thread for a kick.
  __atomic_store_n(&run_->immediate_exit, enabled ? 1 : 0, __ATOMIC_RELEASE);
}

absl::StatusOr<VcpuExit> Vcpu::Run() {
  last_exit_reason_ = KVM_EXIT_UNKNOWN;
  synced_valid_ = false;
  if (::ioctl(fd_.get(), KVM_RUN, 0) < 0) {
    if (errno == EINTR || errno == EAGAIN) {
      synced_valid_ = true;  // KVM stores the synced sets on its way out, interrupted too
      last_exit_reason_ = KVM_EXIT_INTR;
      return InterruptedExit{};
    }
    return base::ErrnoStatus(absl::StrCat("ioctl(KVM_RUN) on vCPU ", id_));
  }
  synced_valid_ = true;
  last_exit_reason_ = run_->exit_reason;
  return Decode();
}

namespace {

std::vector<uint64_t> Words(const __u64* data, uint32_t count, size_t capacity) {
  return std::vector<uint64_t>(data, data + std::min<size_t>(count, capacity));
}

}  // namespace

absl::StatusOr<VcpuExit> Vcpu::Decode() {
  auto* base = reinterpret_cast<uint8_t*>(run_);
  switch (run_->exit_reason) {
    case KVM_EXIT_IO: {
      uint64_t length = uint64_t{run_->io.size} * run_->io.count;
      if (run_->io.data_offset > mmap_size_ || length > mmap_size_ - run_->io.data_offset) {
        return absl::InternalError(absl::StrCat("KVM_EXIT_IO on vCPU ", id_, ": data (offset ",
                                                run_->io.data_offset, ", ", length,
                                                " bytes) lies outside kvm_run"));
      }
      IoExit exit;
      exit.is_write = run_->io.direction == KVM_EXIT_IO_OUT;
      exit.port = run_->io.port;
      exit.size = run_->io.size;
      exit.count = run_->io.count;
      exit.data = std::span<uint8_t>(base + run_->io.data_offset, length);
      return exit;
    }
    case KVM_EXIT_MMIO: {
      MmioExit exit;
      exit.is_write = run_->mmio.is_write != 0;
      exit.address = run_->mmio.phys_addr;
      exit.data = std::span<uint8_t>(run_->mmio.data, std::min<uint32_t>(run_->mmio.len, 8));
      return exit;
    }
    case KVM_EXIT_XEN: {
      if (run_->xen.type != KVM_EXIT_XEN_HCALL) {
        return UnknownExit{KVM_EXIT_XEN, run_->xen.type};
      }
      XenHypercallExit exit;
      exit.long_mode = run_->xen.u.hcall.longmode != 0;
      exit.cpl = run_->xen.u.hcall.cpl;
      exit.input = run_->xen.u.hcall.input;
      std::copy(std::begin(run_->xen.u.hcall.params), std::end(run_->xen.u.hcall.params),
                exit.params.begin());
      return exit;
    }
    case KVM_EXIT_X86_RDMSR:
    case KVM_EXIT_X86_WRMSR: {
      MsrExit exit;
      exit.is_write = run_->exit_reason == KVM_EXIT_X86_WRMSR;
      exit.index = run_->msr.index;
      exit.reason = run_->msr.reason;
      exit.data = run_->msr.data;
      return exit;
    }
    case KVM_EXIT_HLT:
      return HltExit{};
    case KVM_EXIT_SHUTDOWN:
      return ShutdownExit{};
    case KVM_EXIT_INTR:
      return InterruptedExit{};
    case KVM_EXIT_FAIL_ENTRY:
      return FailEntryExit{run_->fail_entry.hardware_entry_failure_reason, run_->fail_entry.cpu};
    case KVM_EXIT_INTERNAL_ERROR:
      return InternalErrorExit{run_->internal.suberror,
                               Words(run_->internal.data, run_->internal.ndata, 16)};
    case KVM_EXIT_SYSTEM_EVENT:
      return SystemEventExit{run_->system_event.type,
                             Words(run_->system_event.data, run_->system_event.ndata, 16)};
    case KVM_EXIT_IOAPIC_EOI:
      return IoapicEoiExit{run_->eoi.vector};
    case KVM_EXIT_DEBUG:
      return DebugExit{run_->debug.arch.exception, run_->debug.arch.pc};
    default:
      return UnknownExit{run_->exit_reason, run_->hw.hardware_exit_reason};
  }
}

absl::Status Vcpu::CompleteXenHypercall(uint64_t result) {
  if (last_exit_reason_ != KVM_EXIT_XEN) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CompleteXenHypercall on vCPU ", id_, ": the last exit was not a Xen hypercall (reason ",
        last_exit_reason_, ")"));
  }
  run_->xen.u.hcall.result = result;
  return absl::OkStatus();
}

absl::Status Vcpu::CompleteMsr(bool inject_gp, uint64_t data) {
  if (last_exit_reason_ != KVM_EXIT_X86_RDMSR && last_exit_reason_ != KVM_EXIT_X86_WRMSR) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CompleteMsr on vCPU ", id_, ": the last exit was not an MSR access (reason ",
        last_exit_reason_, ")"));
  }
  run_->msr.error = inject_gp ? 1 : 0;
  if (last_exit_reason_ == KVM_EXIT_X86_RDMSR) run_->msr.data = data;
  return absl::OkStatus();
}

// ---- State

namespace {

template <typename T>
absl::StatusOr<T> GetState(int fd, unsigned long request, const char* name) {
  T value{};
  XENKVM_RETURN_IF_ERROR(internal::Ioctl(fd, request, name, &value).status());
  return value;
}

template <typename T>
absl::Status SetState(int fd, unsigned long request, const char* name, const T& value) {
  T copy = value;
  return internal::Ioctl(fd, request, name, &copy).status();
}

}  // namespace

absl::StatusOr<kvm_regs> Vcpu::GetRegs() const {
  return GetState<kvm_regs>(fd(), KVM_GET_REGS, "KVM_GET_REGS");
}
absl::Status Vcpu::SetRegs(const kvm_regs& regs) {
  // The ioctl's values win: a dirty synced copy would overwrite them at the next KVM_RUN.
  run_->kvm_dirty_regs &= ~static_cast<__u64>(KVM_SYNC_X86_REGS);
  synced_valid_ = false;
  return SetState(fd(), KVM_SET_REGS, "KVM_SET_REGS", regs);
}
absl::StatusOr<kvm_sregs> Vcpu::GetSregs() const {
  return GetState<kvm_sregs>(fd(), KVM_GET_SREGS, "KVM_GET_SREGS");
}
absl::Status Vcpu::SetSregs(const kvm_sregs& sregs) {
  run_->kvm_dirty_regs &= ~static_cast<__u64>(KVM_SYNC_X86_SREGS);
  synced_valid_ = false;
  return SetState(fd(), KVM_SET_SREGS, "KVM_SET_SREGS", sregs);
}
absl::StatusOr<kvm_fpu> Vcpu::GetFpu() const {
  return GetState<kvm_fpu>(fd(), KVM_GET_FPU, "KVM_GET_FPU");
}
absl::Status Vcpu::SetFpu(const kvm_fpu& fpu) { return SetState(fd(), KVM_SET_FPU, "KVM_SET_FPU", fpu); }
absl::StatusOr<kvm_xcrs> Vcpu::GetXcrs() const {
  return GetState<kvm_xcrs>(fd(), KVM_GET_XCRS, "KVM_GET_XCRS");
}
absl::Status Vcpu::SetXcrs(const kvm_xcrs& xcrs) {
  return SetState(fd(), KVM_SET_XCRS, "KVM_SET_XCRS", xcrs);
}
absl::StatusOr<kvm_lapic_state> Vcpu::GetLapic() const {
  return GetState<kvm_lapic_state>(fd(), KVM_GET_LAPIC, "KVM_GET_LAPIC");
}
absl::Status Vcpu::SetLapic(const kvm_lapic_state& lapic) {
  return SetState(fd(), KVM_SET_LAPIC, "KVM_SET_LAPIC", lapic);
}
absl::StatusOr<kvm_vcpu_events> Vcpu::GetEvents() const {
  return GetState<kvm_vcpu_events>(fd(), KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS");
}
absl::Status Vcpu::SetEvents(const kvm_vcpu_events& events) {
  return SetState(fd(), KVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", events);
}

absl::StatusOr<uint32_t> Vcpu::GetMpState() const {
  kvm_mp_state state{};
  XENKVM_RETURN_IF_ERROR(XENKVM_KVM_IOCTL(fd(), KVM_GET_MP_STATE, &state).status());
  return state.mp_state;
}

absl::Status Vcpu::SetMpState(uint32_t state) {
  kvm_mp_state value{state};
  return XENKVM_KVM_IOCTL(fd(), KVM_SET_MP_STATE, &value).status();
}

absl::StatusOr<uint32_t> Vcpu::GetTscKhz() const {
  XENKVM_ASSIGN_OR_RETURN(int khz, XENKVM_KVM_IOCTL(fd(), KVM_GET_TSC_KHZ, 0));
  return static_cast<uint32_t>(khz);
}

absl::Status Vcpu::SetTscKhz(uint32_t khz) {
  return XENKVM_KVM_IOCTL(fd(), KVM_SET_TSC_KHZ, static_cast<unsigned long>(khz)).status();
}

absl::StatusOr<std::vector<kvm_msr_entry>> Vcpu::GetMsrs(std::span<const uint32_t> indices) const {
  if (indices.empty()) return std::vector<kvm_msr_entry>();
  internal::FlexArrayBuffer<kvm_msr_entry> msrs(internal::kMsrsEntriesOffset, indices.size());
  msrs.count() = static_cast<uint32_t>(indices.size());
  for (size_t i = 0; i < indices.size(); ++i) msrs.entries()[i].index = indices[i];
  XENKVM_ASSIGN_OR_RETURN(int read, internal::Ioctl(fd(), internal::kKvmGetMsrs, "KVM_GET_MSRS", msrs.data()));
  if (static_cast<size_t>(read) < indices.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "KVM_GET_MSRS on vCPU %u: KVM cannot read MSR %#x", id_, indices[read]));
  }
  return std::vector<kvm_msr_entry>(msrs.entries(), msrs.entries() + indices.size());
}

absl::Status Vcpu::SetMsrs(std::span<const kvm_msr_entry> entries) {
  if (entries.empty()) return absl::OkStatus();
  internal::FlexArrayBuffer<kvm_msr_entry> msrs(internal::kMsrsEntriesOffset, entries.size());
  msrs.count() = static_cast<uint32_t>(entries.size());
  std::memcpy(msrs.entries(), entries.data(), entries.size_bytes());
  XENKVM_ASSIGN_OR_RETURN(int written, internal::Ioctl(fd(), internal::kKvmSetMsrs, "KVM_SET_MSRS", msrs.data()));
  if (static_cast<size_t>(written) < entries.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "KVM_SET_MSRS on vCPU %u: KVM refused MSR %#x = %#x", id_, entries[written].index,
        entries[written].data));
  }
  return absl::OkStatus();
}

absl::Status Vcpu::SetCpuid(std::span<const kvm_cpuid_entry2> entries) {
  internal::FlexArrayBuffer<kvm_cpuid_entry2> cpuid(internal::kCpuid2EntriesOffset, entries.size());
  cpuid.count() = static_cast<uint32_t>(entries.size());
  if (!entries.empty()) std::memcpy(cpuid.entries(), entries.data(), entries.size_bytes());
  return internal::Ioctl(fd(), internal::kKvmSetCpuid2, "KVM_SET_CPUID2", cpuid.data()).status();
}

absl::StatusOr<std::vector<kvm_cpuid_entry2>> Vcpu::GetCpuid() const {
  for (uint32_t capacity = 64; capacity <= 4096; capacity *= 2) {
    internal::FlexArrayBuffer<kvm_cpuid_entry2> cpuid(internal::kCpuid2EntriesOffset, capacity);
    cpuid.count() = capacity;
    if (::ioctl(fd(), internal::kKvmGetCpuid2, cpuid.data()) < 0) {
      if (errno == E2BIG) continue;
      return base::ErrnoStatus("ioctl(KVM_GET_CPUID2)");
    }
    return std::vector<kvm_cpuid_entry2>(cpuid.entries(), cpuid.entries() + cpuid.count());
  }
  return absl::ResourceExhaustedError("KVM_GET_CPUID2: more than 4096 entries");
}

// ---- Xen

absl::Status Vcpu::SetAttr(kvm_xen_vcpu_attr& attr, XenCapability needed, const char* what) {
  XENKVM_RETURN_IF_ERROR(xen_.Require(needed, what));
  return base::Annotate(XENKVM_KVM_IOCTL(fd(), KVM_XEN_VCPU_SET_ATTR, &attr).status(),
                        absl::StrCat(what, " on vCPU ", id_));
}

absl::StatusOr<kvm_xen_vcpu_attr> Vcpu::GetAttr(uint16_t type, XenCapability needed,
                                                const char* what) const {
  XENKVM_RETURN_IF_ERROR(xen_.Require(needed, what));
  kvm_xen_vcpu_attr attr{};
  attr.type = type;
  XENKVM_RETURN_IF_ERROR(base::Annotate(XENKVM_KVM_IOCTL(fd(), KVM_XEN_VCPU_GET_ATTR, &attr).status(),
                                        absl::StrCat(what, " on vCPU ", id_)));
  return attr;
}

absl::Status Vcpu::SetGpaAttr(uint16_t type, XenCapability needed, const char* what, uint64_t gpa) {
  kvm_xen_vcpu_attr attr{};
  attr.type = type;
  attr.u.gpa = gpa;
  return SetAttr(attr, needed, what);
}

absl::StatusOr<uint64_t> Vcpu::GetGpaAttr(uint16_t type, XenCapability needed,
                                          const char* what) const {
  XENKVM_ASSIGN_OR_RETURN(kvm_xen_vcpu_attr attr, GetAttr(type, needed, what));
  return attr.u.gpa;
}

absl::Status Vcpu::SetXenVcpuInfo(uint64_t gpa) {
  return SetGpaAttr(KVM_XEN_VCPU_ATTR_TYPE_VCPU_INFO, XenCapability::kSharedInfo,
                    "Xen vCPU attribute VCPU_INFO", gpa);
}
absl::StatusOr<uint64_t> Vcpu::GetXenVcpuInfo() const {
  return GetGpaAttr(KVM_XEN_VCPU_ATTR_TYPE_VCPU_INFO, XenCapability::kSharedInfo,
                    "Xen vCPU attribute VCPU_INFO");
}
// VCPU_INFO_HVA (6.9) keeps the address where the GPA goes.
absl::Status Vcpu::SetXenVcpuInfoHva(uint64_t hva) {
  return SetGpaAttr(kXenVcpuAttrVcpuInfoHva, XenCapability::kSharedInfoHva,
                    "Xen vCPU attribute VCPU_INFO_HVA", hva);
}
absl::StatusOr<uint64_t> Vcpu::GetXenVcpuInfoHva() const {
  return GetGpaAttr(kXenVcpuAttrVcpuInfoHva, XenCapability::kSharedInfoHva,
                    "Xen vCPU attribute VCPU_INFO_HVA");
}
absl::Status Vcpu::SetXenVcpuTimeInfo(uint64_t gpa) {
  return SetGpaAttr(KVM_XEN_VCPU_ATTR_TYPE_VCPU_TIME_INFO, XenCapability::kSharedInfo,
                    "Xen vCPU attribute VCPU_TIME_INFO", gpa);
}
absl::StatusOr<uint64_t> Vcpu::GetXenVcpuTimeInfo() const {
  return GetGpaAttr(KVM_XEN_VCPU_ATTR_TYPE_VCPU_TIME_INFO, XenCapability::kSharedInfo,
                    "Xen vCPU attribute VCPU_TIME_INFO");
}
absl::Status Vcpu::SetXenRunstateAddress(uint64_t gpa) {
  return SetGpaAttr(KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_ADDR, XenCapability::kRunstate,
                    "Xen vCPU attribute RUNSTATE_ADDR", gpa);
}
absl::StatusOr<uint64_t> Vcpu::GetXenRunstateAddress() const {
  return GetGpaAttr(KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_ADDR, XenCapability::kRunstate,
                    "Xen vCPU attribute RUNSTATE_ADDR");
}

absl::Status Vcpu::SetXenRunstateCurrent(uint64_t state) {
  if (state > 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Xen runstate ", state, " is not running(0), runnable(1), blocked(2) or offline(3)"));
  }
  kvm_xen_vcpu_attr attr{};
  attr.type = KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_CURRENT;
  attr.u.runstate.state = state;
  return SetAttr(attr, XenCapability::kRunstate, "Xen vCPU attribute RUNSTATE_CURRENT");
}

absl::StatusOr<uint64_t> Vcpu::GetXenRunstateCurrent() const {
  XENKVM_ASSIGN_OR_RETURN(kvm_xen_vcpu_attr attr,
                          GetAttr(KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_CURRENT, XenCapability::kRunstate,
                                  "Xen vCPU attribute RUNSTATE_CURRENT"));
  return attr.u.runstate.state;
}

namespace {

void ToAttr(const XenRunstate& runstate, kvm_xen_vcpu_attr& attr) {
  attr.u.runstate.state = runstate.state;
  attr.u.runstate.state_entry_time = runstate.state_entry_time;
  attr.u.runstate.time_running = runstate.time_running;
  attr.u.runstate.time_runnable = runstate.time_runnable;
  attr.u.runstate.time_blocked = runstate.time_blocked;
  attr.u.runstate.time_offline = runstate.time_offline;
}

}  // namespace

absl::Status Vcpu::SetXenRunstateData(const XenRunstate& runstate) {
  kvm_xen_vcpu_attr attr{};
  attr.type = KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_DATA;
  ToAttr(runstate, attr);
  return SetAttr(attr, XenCapability::kRunstate, "Xen vCPU attribute RUNSTATE_DATA");
}

absl::StatusOr<XenRunstate> Vcpu::GetXenRunstateData() const {
  XENKVM_ASSIGN_OR_RETURN(kvm_xen_vcpu_attr attr,
                          GetAttr(KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_DATA, XenCapability::kRunstate,
                                  "Xen vCPU attribute RUNSTATE_DATA"));
  return XenRunstate{attr.u.runstate.state,        attr.u.runstate.state_entry_time,
                     attr.u.runstate.time_running, attr.u.runstate.time_runnable,
                     attr.u.runstate.time_blocked, attr.u.runstate.time_offline};
}

absl::Status Vcpu::AdjustXenRunstate(const XenRunstate& delta) {
  kvm_xen_vcpu_attr attr{};
  attr.type = KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_ADJUST;
  ToAttr(delta, attr);
  return SetAttr(attr, XenCapability::kRunstate, "Xen vCPU attribute RUNSTATE_ADJUST");
}

absl::Status Vcpu::SetXenVcpuId(uint32_t xen_vcpu_id) {
  kvm_xen_vcpu_attr attr{};
  attr.type = KVM_XEN_VCPU_ATTR_TYPE_VCPU_ID;
  attr.u.vcpu_id = xen_vcpu_id;
  return SetAttr(attr, XenCapability::kEvtchnSend, "Xen vCPU attribute VCPU_ID");
}

absl::StatusOr<uint32_t> Vcpu::GetXenVcpuId() const {
  XENKVM_ASSIGN_OR_RETURN(kvm_xen_vcpu_attr attr,
                          GetAttr(KVM_XEN_VCPU_ATTR_TYPE_VCPU_ID, XenCapability::kEvtchnSend,
                                  "Xen vCPU attribute VCPU_ID"));
  return attr.u.vcpu_id;
}

absl::Status Vcpu::SetXenTimer(const XenTimer& timer) {
  kvm_xen_vcpu_attr attr{};
  attr.type = KVM_XEN_VCPU_ATTR_TYPE_TIMER;
  attr.u.timer.port = timer.port;
  attr.u.timer.priority = timer.priority;
  attr.u.timer.expires_ns = timer.expires_ns;
  return SetAttr(attr, XenCapability::kEvtchnSend, "Xen vCPU attribute TIMER");
}

absl::StatusOr<XenTimer> Vcpu::GetXenTimer() const {
  XENKVM_ASSIGN_OR_RETURN(kvm_xen_vcpu_attr attr,
                          GetAttr(KVM_XEN_VCPU_ATTR_TYPE_TIMER, XenCapability::kEvtchnSend,
                                  "Xen vCPU attribute TIMER"));
  return XenTimer{attr.u.timer.port, attr.u.timer.priority, attr.u.timer.expires_ns};
}

absl::Status Vcpu::SetXenUpcallVector(uint8_t vector) {
  if (vector != 0 && vector < 0x10) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Xen upcall vector %#x is an exception vector; use 0 (off) or 0x10..0xff", vector));
  }
  kvm_xen_vcpu_attr attr{};
  attr.type = KVM_XEN_VCPU_ATTR_TYPE_UPCALL_VECTOR;
  attr.u.vector = vector;
  return SetAttr(attr, XenCapability::kEvtchnSend, "Xen vCPU attribute UPCALL_VECTOR");
}

absl::StatusOr<uint8_t> Vcpu::GetXenUpcallVector() const {
  XENKVM_ASSIGN_OR_RETURN(kvm_xen_vcpu_attr attr,
                          GetAttr(KVM_XEN_VCPU_ATTR_TYPE_UPCALL_VECTOR, XenCapability::kEvtchnSend,
                                  "Xen vCPU attribute UPCALL_VECTOR"));
  return attr.u.vector;
}

}  // namespace xenkvm::kvm
