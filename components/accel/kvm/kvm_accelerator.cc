#include "components/accel/kvm/kvm_accelerator.h"

#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <x86intrin.h>

#include <atomic>
#include <cstring>
#include <map>
#include <set>
#include <thread>
#include <mutex>
#include <optional>
#include <span>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "components/accel/kvm/instruction_probe.h"
#include "components/accel/kvm/probe_cache.h"
#include "components/accel/page_walk.h"
#include "components/base/status.h"
#include "components/kvm/kvm.h"
#include "spdlog/spdlog.h"

namespace xenkvm::accel {
namespace {

constexpr uint64_t kEferLma = 1 << 10;
constexpr uint64_t kMsiAddressBase = 0xfee00000;
using memory::kPageSize;
// Guest RAM takes slots 0..2 (below the MMIO hole, the Xen pages, above 4 GiB); extra pages
// (grant-table and shared-info frames outside RAM) one slot each from here, within the 509 slots
// every KVM offers.
constexpr uint32_t kFirstExtraPageSlot = 16;
constexpr uint32_t kMaxExtraPageSlots = 480;

// Kicks interrupt KVM_RUN with this signal; its handler does nothing, so the ioctl returns EINTR.
int KickSignal() { return SIGRTMIN; }

void InstallKickHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action{};
    action.sa_handler = [](int) {};
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return
    sigaction(KickSignal(), &action, nullptr);
  });
}

std::vector<uint8_t> PortHypercallPage() {
  std::vector<uint8_t> page(kHypercallPageSize, 0xcc);
  for (uint32_t number = 0; number < kHypercallPageSize / kHypercallStubSize; ++number) {
    uint8_t* stub = page.data() + number * kHypercallStubSize;
    stub[0] = 0xb8;  // mov $number, %eax
    std::memcpy(stub + 1, &number, 4);
    stub[5] = 0xe7;  // out %eax, $port
    stub[6] = kKvmHypercallPort;
    stub[7] = 0xc3;  // ret
  }
  return page;
}

kvm_segment FlatSegment(uint16_t selector, uint8_t type) {
  kvm_segment segment{};
  segment.base = 0;
  segment.limit = 0xffffffff;
  segment.selector = selector;
  segment.type = type;
  segment.present = 1;
  segment.dpl = 0;
  segment.db = 1;
  segment.s = 1;
  segment.g = 1;
  return segment;
}

// What every vCPU of one kvm VM shares.
class KvmVcpu;

struct KvmVmState {
  kvm::Kvm system;
  kvm::Vm vm;
  const memory::GuestMemory& memory;
  std::vector<kvm_cpuid_entry2> host_cpuid;  // less what the instruction probes found unrunnable
  std::vector<std::string> hidden_cpuid_features;
  bool user_space_msr = false;
  std::atomic<uint32_t> port_hypercall_msr{0};  // the fallback: the MSR the guest writes
  absl::Mutex vcpus_mutex;
  std::map<uint32_t, KvmVcpu*> vcpus ABSL_GUARDED_BY(vcpus_mutex);  // for per-vCPU Xen attributes
  // Extra pages, one memory slot each, from kFirstExtraPageSlot up.
  absl::Mutex extra_mutex;
  std::map<uint64_t, uint32_t> extra_slots ABSL_GUARDED_BY(extra_mutex);  // address -> slot
};

class KvmVcpu final : public Vcpu {
 public:
  KvmVcpu(KvmVmState& vm, kvm::Vcpu vcpu) : vm_(vm), vcpu_(std::move(vcpu)) {
    // Registers through kvm_run where the kernel offers it: a hypercall exit then reads and
    // answers them without KVM_GET_REGS, KVM_GET_SREGS and KVM_SET_REGS.
    constexpr int kSets = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
    absl::StatusOr<int> offered = vm_.system.CheckExtension(KVM_CAP_SYNC_REGS);
    if (offered.ok() && (*offered & kSets) == kSets) vcpu_.SyncRegsAtExit(kSets);
    absl::MutexLock lock(&vm_.vcpus_mutex);
    vm_.vcpus[vcpu_.id()] = this;
  }
  ~KvmVcpu() override {
    absl::MutexLock lock(&vm_.vcpus_mutex);
    vm_.vcpus.erase(vcpu_.id());
  }

  uint32_t id() const override { return vcpu_.id(); }
  // Per-vCPU Xen attributes, set from the shim's thread (KVM serialises them with KVM_RUN).
  kvm::Vcpu& kvm_vcpu() { return vcpu_; }

  absl::Status Boot(const PvhEntry& boot) {
    XENKVM_ASSIGN_OR_RETURN(kvm_sregs sregs, vcpu_.GetSregs());
    // The selectors the emu trampoline leaves too (PVH leaves them unspecified).
    sregs.cs = FlatSegment(0x08, 0xb);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = FlatSegment(0x10, 0x3);
    // PVH: a 32-bit TSS in TR (VMX needs a usable one), GDTR/IDTR left for the guest to load.
    sregs.tr = FlatSegment(0x18, 0xb);
    sregs.tr.s = 0;
    sregs.tr.limit = 0x67;
    sregs.tr.g = 0;
    sregs.tr.db = 0;
    sregs.cr0 = 0x11;  // PE, ET
    sregs.cr3 = sregs.cr4 = sregs.efer = 0;
    XENKVM_RETURN_IF_ERROR(vcpu_.SetSregs(sregs));
    kvm_regs regs{};
    regs.rip = boot.entry;
    regs.rbx = boot.start_info;
    regs.rsp = boot.stack_pointer;
    regs.rflags = 2;
    XENKVM_RETURN_IF_ERROR(vcpu_.SetRegs(regs));
    XENKVM_RETURN_IF_ERROR(vcpu_.SetMpState(KVM_MP_STATE_RUNNABLE));
    absl::MutexLock lock(&mutex_);
    started_ = true;
    return absl::OkStatus();
  }

  absl::StatusOr<Exit> Run() override {
    if (answer_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "kvm vCPU ", id(), ": the last exit asks for a value; answer it with Complete() first"));
    }
    if (!queued_io_.empty()) return NextQueuedIo();
    if (!std::exchange(thread_named_, true)) NameVcpuThread(id());  // KVM_RUN runs the guest here
    RunThreadScope scope(*this);
    while (true) {
      if (TakeKick()) return KickedExit{};
      XENKVM_RETURN_IF_ERROR(StartIfRequested());
      if (!Started()) {
        // An AP before its start waits here (KVM itself would wait for an INIT/SIPI).
        absl::MutexLock lock(&mutex_);
        mutex_.Await(absl::Condition(
            +[](KvmVcpu* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mutex_) {
              return self->kick_ || self->start_request_.has_value();
            },
            this));
        continue;
      }
      XENKVM_ASSIGN_OR_RETURN(kvm::VcpuExit exit, vcpu_.Run());
      exit_thread_.store(std::this_thread::get_id());
      XENKVM_ASSIGN_OR_RETURN(std::optional<Exit> translated, Translate(exit));
      if (translated) return std::move(*translated);
    }
  }

  absl::Status Complete(uint64_t value) override {
    if (!answer_) {
      return absl::FailedPreconditionError(
          absl::StrCat("kvm vCPU ", id(), ": Complete() but the last exit asked for no value"));
    }
    auto answer = std::exchange(answer_, std::nullopt);
    return (*answer)(value);
  }

  absl::StatusOr<Registers> GetRegisters() override {
    XENKVM_ASSIGN_OR_RETURN(kvm_regs regs, vcpu_.GetRegs());
    Registers r;
    r.rax = regs.rax, r.rbx = regs.rbx, r.rcx = regs.rcx, r.rdx = regs.rdx;
    r.rsi = regs.rsi, r.rdi = regs.rdi, r.rsp = regs.rsp, r.rbp = regs.rbp;
    r.r8 = regs.r8, r.r9 = regs.r9, r.r10 = regs.r10, r.r11 = regs.r11;
    r.r12 = regs.r12, r.r13 = regs.r13, r.r14 = regs.r14, r.r15 = regs.r15;
    r.rip = regs.rip, r.rflags = regs.rflags;
    return r;
  }

  absl::Status SetRegisters(const Registers& r) override {
    kvm_regs regs{};
    regs.rax = r.rax, regs.rbx = r.rbx, regs.rcx = r.rcx, regs.rdx = r.rdx;
    regs.rsi = r.rsi, regs.rdi = r.rdi, regs.rsp = r.rsp, regs.rbp = r.rbp;
    regs.r8 = r.r8, regs.r9 = r.r9, regs.r10 = r.r10, regs.r11 = r.r11;
    regs.r12 = r.r12, regs.r13 = r.r13, regs.r14 = r.r14, regs.r15 = r.r15;
    regs.rip = r.rip, regs.rflags = r.rflags;
    return vcpu_.SetRegs(regs);
  }

  absl::StatusOr<ControlRegisters> GetControlRegisters() override {
    XENKVM_ASSIGN_OR_RETURN(kvm_sregs sregs, Sregs());
    ControlRegisters c;
    c.cr0 = sregs.cr0, c.cr2 = sregs.cr2, c.cr3 = sregs.cr3, c.cr4 = sregs.cr4, c.efer = sregs.efer;
    c.cs_selector = sregs.cs.selector;
    c.cpl = sregs.cs.dpl;
    c.long_mode = (sregs.efer & kEferLma) != 0;
    return c;
  }

  absl::StatusOr<uint64_t> TranslateLinear(uint64_t linear) override {
    XENKVM_ASSIGN_OR_RETURN(kvm_sregs sregs, Sregs());
    return accel::TranslateLinear(vm_.memory, PagingState{sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer}, linear);
  }

  absl::StatusOr<int64_t> TscOffset() override {
    // The guest's TSC was read at some moment between `before` and `after`: the smallest offset
    // it allows never puts a pvclock's tsc_timestamp ahead of the guest's own TSC (a guest's
    // delta from it is unsigned: ahead, its clock would leap by centuries), at the price of a
    // clock up to the window ahead. The narrowest of a few windows is kept.
    constexpr uint32_t kMsrTsc = 0x10;
    int64_t offset = 0;
    uint64_t narrowest = UINT64_MAX;
    for (int attempt = 0; attempt < 3; ++attempt) {
      const uint64_t before = __rdtsc();
      XENKVM_ASSIGN_OR_RETURN(std::vector<kvm_msr_entry> tsc, vcpu_.GetMsrs(std::span(&kMsrTsc, 1)));
      const uint64_t after = __rdtsc();
      if (after - before < narrowest) {
        narrowest = after - before;
        offset = static_cast<int64_t>(tsc[0].data - after);
      }
    }
    return offset;
  }

  // The host's CPUID with the caller's leaves in place of the host's (and of KVM's own hypervisor
  // leaves, when the caller supplies any 0x4000xxxx leaf), and this vCPU's APIC ID.
  absl::Status SetCpuid(std::vector<CpuidLeaf> leaves) override {
    bool caller_hypervisor_leaves = false;
    for (const CpuidLeaf& leaf : leaves) {
      if ((leaf.function & 0xf0000000) == 0x40000000) caller_hypervisor_leaves = true;
    }
    std::vector<kvm_cpuid_entry2> entries;
    for (kvm_cpuid_entry2 entry : vm_.host_cpuid) {
      if (caller_hypervisor_leaves && (entry.function & 0xf0000000) == 0x40000000) continue;
      bool replaced = false;
      for (const CpuidLeaf& leaf : leaves) {
        if (leaf.function == entry.function && (!leaf.index || *leaf.index == entry.index)) replaced = true;
      }
      if (replaced) continue;
      if (entry.function == 1) entry.ebx = (entry.ebx & 0x00ffffff) | (id() << 24);
      if (entry.function == 0xb || entry.function == 0x1f) entry.edx = id();
      entries.push_back(entry);
    }
    for (const CpuidLeaf& leaf : leaves) {
      kvm_cpuid_entry2 entry{};
      entry.function = leaf.function;
      entry.index = leaf.index.value_or(0);
      entry.flags = leaf.index ? KVM_CPUID_FLAG_SIGNIFCANT_INDEX : 0;
      entry.eax = leaf.eax, entry.ebx = leaf.ebx, entry.ecx = leaf.ecx, entry.edx = leaf.edx;
      entries.push_back(entry);
    }
    return vcpu_.SetCpuid(entries);
  }

  absl::Status Start(const PvhEntry& boot) override {
    {
      absl::MutexLock lock(&mutex_);
      if (started_ || start_request_) {
        return absl::FailedPreconditionError(absl::StrCat("kvm vCPU ", id(), " is already started"));
      }
      start_request_ = boot;
    }
    return absl::OkStatus();
  }

  // A fixed-mode MSI to this vCPU's LAPIC (physical destination = the vCPU id).
  absl::Status InjectInterrupt(uint8_t vector) override {
    XENKVM_RETURN_IF_ERROR(CheckExternalVector(vector));
    XENKVM_ASSIGN_OR_RETURN(bool delivered,
                            vm_.vm.SignalMsi(kMsiAddressBase | (uint64_t{id()} << 12), vector));
    if (!delivered) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "kvm vCPU %u: interrupt %#x not accepted: the guest has not enabled its local APIC", id(), vector));
    }
    return absl::OkStatus();
  }

  void Kick() override {
    absl::MutexLock lock(&mutex_);
    kick_ = true;
    vcpu_.RequestImmediateExit(true);
    if (has_run_thread_) pthread_kill(run_thread_, KickSignal());
  }

 private:
  bool thread_named_ = false;
  // Makes the calling thread the one Kick() signals while Run() is in progress.
  class RunThreadScope {
   public:
    explicit RunThreadScope(KvmVcpu& vcpu) : vcpu_(vcpu) {
      absl::MutexLock lock(&vcpu_.mutex_);
      vcpu_.run_thread_ = pthread_self();
      vcpu_.has_run_thread_ = true;
    }
    ~RunThreadScope() {
      absl::MutexLock lock(&vcpu_.mutex_);
      vcpu_.has_run_thread_ = false;
    }

   private:
    KvmVcpu& vcpu_;
  };

  bool Started() {
    absl::MutexLock lock(&mutex_);
    return started_;
  }

  bool TakeKick() {
    absl::MutexLock lock(&mutex_);
    if (!kick_) return false;
    kick_ = false;
    vcpu_.RequestImmediateExit(false);
    return true;
  }

  absl::Status StartIfRequested() {
    std::optional<PvhEntry> start;
    {
      absl::MutexLock lock(&mutex_);
      start = std::exchange(start_request_, std::nullopt);
    }
    return start ? Boot(*start) : absl::OkStatus();
  }

  Exit NextQueuedIo() {
    QueuedIo io = queued_io_.front();
    queued_io_.erase(queued_io_.begin());
    PortIoExit exit{io.is_write, io.port, io.size, 0};
    if (io.is_write) {
      std::memcpy(&exit.value, io.data, io.size);
    } else {
      answer_ = [data = io.data, size = io.size](uint64_t value) {
        std::memcpy(data, &value, size);
        return absl::OkStatus();
      };
    }
    return exit;
  }

  // KVM's exit as the interface's, or nullopt for an exit handled here (run again).
  absl::StatusOr<std::optional<Exit>> Translate(kvm::VcpuExit& exit) {
    if (auto* io = std::get_if<kvm::IoExit>(&exit)) {
      if (io->port == kKvmHypercallPort && io->is_write && io->size == 4 && io->count == 1 &&
          vm_.port_hypercall_msr.load() != 0) {
        return std::optional<Exit>(PortHypercall(Value32(io->data)));
      }
      for (uint32_t i = 0; i < io->count; ++i) {
        queued_io_.push_back(QueuedIo{io->is_write, io->port, io->size, io->data.data() + i * io->size});
      }
      return std::optional<Exit>(NextQueuedIo());
    }
    if (auto* mmio = std::get_if<kvm::MmioExit>(&exit)) {
      MmioExit out{mmio->is_write, mmio->address, static_cast<uint8_t>(mmio->data.size()), 0};
      if (mmio->is_write) {
        std::memcpy(&out.value, mmio->data.data(), std::min<size_t>(8, mmio->data.size()));
      } else {
        answer_ = [data = mmio->data](uint64_t value) {
          std::memcpy(data.data(), &value, std::min<size_t>(8, data.size()));
          return absl::OkStatus();
        };
      }
      return std::optional<Exit>(out);
    }
    if (auto* call = std::get_if<kvm::XenHypercallExit>(&exit)) {
      HypercallExit out{call->input, call->params, call->long_mode, static_cast<uint8_t>(call->cpl)};
      answer_ = [this](uint64_t value) { return vcpu_.CompleteXenHypercall(value); };
      return std::optional<Exit>(out);
    }
    if (auto* msr = std::get_if<kvm::MsrExit>(&exit)) {
      uint32_t page_msr = vm_.port_hypercall_msr.load();
      if (msr->is_write && page_msr != 0 && msr->index == page_msr) {
        // Low 12 bits: the page index within the hypercall area; xenkvm has one page. A page that
        // is not RAM is ignored, as KVM does.
        if ((msr->data & 0xfff) == 0) {
          static const std::vector<uint8_t> page = PortHypercallPage();
          (void)vm_.memory.Write(memory::GuestAddress(msr->data), page);
        }
        XENKVM_RETURN_IF_ERROR(vcpu_.CompleteMsr(false));
      } else {
        XENKVM_RETURN_IF_ERROR(vcpu_.CompleteMsr(true));  // what KVM does with an MSR it lacks: #GP
      }
      return std::optional<Exit>();
    }
    if (std::holds_alternative<kvm::HltExit>(exit)) return std::optional<Exit>(HaltExit{});
    if (std::holds_alternative<kvm::ShutdownExit>(exit)) {
      return std::optional<Exit>(ShutdownExit{"triple fault"});
    }
    if (auto* event = std::get_if<kvm::SystemEventExit>(&exit)) {
      return std::optional<Exit>(ShutdownExit{absl::StrCat("KVM system event ", event->type)});
    }
    if (std::holds_alternative<kvm::InterruptedExit>(exit)) {
      if (TakeKick()) return std::optional<Exit>(KickedExit{});
      return std::optional<Exit>();  // a signal that was not our kick
    }
    if (std::holds_alternative<kvm::IoapicEoiExit>(exit)) return std::optional<Exit>();
    if (auto* fail = std::get_if<kvm::FailEntryExit>(&exit)) {
      return std::optional<Exit>(GuestErrorExit{absl::StrFormat(
          "kvm vCPU %u: VM entry failed, hardware reason %#x", id(), fail->hardware_entry_failure_reason)});
    }
    if (auto* internal = std::get_if<kvm::InternalErrorExit>(&exit)) {
      absl::StatusOr<kvm_regs> regs = vcpu_.GetRegs();
      return std::optional<Exit>(GuestErrorExit{absl::StrFormat(
          "kvm vCPU %u: KVM internal error, suberror %u%s, at RIP %#x", id(), internal->suberror,
          internal->suberror == KVM_INTERNAL_ERROR_EMULATION ? " (instruction emulation failed)" : "",
          regs.ok() ? regs->rip : 0)});
    }
    if (auto* unknown = std::get_if<kvm::UnknownExit>(&exit)) {
      return std::optional<Exit>(GuestErrorExit{absl::StrFormat(
          "kvm vCPU %u: unexpected exit reason %u (hardware %#x)", id(), unknown->reason,
          unknown->hardware_exit_reason)});
    }
    return std::optional<Exit>(GuestErrorExit{absl::StrFormat("kvm vCPU %u: unexpected debug exit", id())});
  }

  // The fallback page's stub exited with the number in EAX; the arguments are in the registers.
  // KVM advances RIP past the OUT only when the vCPU next runs, so the saved registers (RIP at the
  // OUT) are written back with the result.
  Exit PortHypercall(uint32_t number) {
    absl::StatusOr<kvm_regs> regs = vcpu_.synced_regs() ? *vcpu_.synced_regs() : vcpu_.GetRegs();
    absl::StatusOr<kvm_sregs> sregs = Sregs();
    if (!regs.ok() || !sregs.ok()) {
      return GuestErrorExit{absl::StrCat("kvm vCPU ", id(), ": reading hypercall arguments: ",
                                         (regs.ok() ? sregs.status() : regs.status()).message())};
    }
    HypercallExit call;
    call.number = number;
    call.long_mode = (sregs->efer & kEferLma) != 0 && sregs->cs.l;
    call.cpl = sregs->cs.dpl;
    if (call.long_mode) {
      call.args = {regs->rdi, regs->rsi, regs->rdx, regs->r10, regs->r8, regs->r9};
    } else {
      call.args = {regs->rbx & 0xffffffff, regs->rcx & 0xffffffff, regs->rdx & 0xffffffff,
                   regs->rsi & 0xffffffff, regs->rdi & 0xffffffff, regs->rbp & 0xffffffff};
    }
    answer_ = [this, saved = *regs, long_mode = call.long_mode](uint64_t value) mutable {
      const uint64_t rax = long_mode ? value : (value & 0xffffffff);
      if (kvm_regs* synced = vcpu_.synced_regs()) {
        synced->rax = rax;  // the rest is as the exit left it (RIP at the OUT)
        vcpu_.MarkSyncedRegsDirty();
        return absl::OkStatus();
      }
      saved.rax = rax;
      return vcpu_.SetRegs(saved);
    };
    return call;
  }

  // The special registers: from kvm_run when synced and asked by the thread handling the vCPU's
  // exit (the vCPU is not running then), else KVM_GET_SREGS.
  absl::StatusOr<kvm_sregs> Sregs() const {
    const kvm_sregs* synced = vcpu_.synced_sregs();
    if (synced != nullptr && exit_thread_.load() == std::this_thread::get_id()) return *synced;
    return vcpu_.GetSregs();
  }

  static uint32_t Value32(std::span<const uint8_t> data) {
    uint32_t value = 0;
    std::memcpy(&value, data.data(), std::min<size_t>(4, data.size()));
    return value;
  }

  struct QueuedIo {
    bool is_write;
    uint16_t port;
    uint8_t size;
    uint8_t* data;  // inside kvm_run, valid until the next KVM_RUN
  };

  KvmVmState& vm_;
  kvm::Vcpu vcpu_;
  // Run-loop thread only.
  std::optional<std::function<absl::Status(uint64_t)>> answer_;
  std::vector<QueuedIo> queued_io_;  // the items of one string I/O exit, one PortIoExit each
  std::atomic<std::thread::id> exit_thread_{};  // the thread that ran the vCPU last

  absl::Mutex mutex_;
  bool kick_ ABSL_GUARDED_BY(mutex_) = false;
  bool started_ ABSL_GUARDED_BY(mutex_) = false;
  std::optional<PvhEntry> start_request_ ABSL_GUARDED_BY(mutex_);
  pthread_t run_thread_ ABSL_GUARDED_BY(mutex_){};
  bool has_run_thread_ ABSL_GUARDED_BY(mutex_) = false;
};

// KVM's Xen event delivery (Linux 5.19+: EVTCHN_SEND and the per-vCPU attributes).
class KvmXenEvents final : public KernelXenEvents {
 public:
  explicit KvmXenEvents(KvmVmState& vm) : vm_(vm) {}
  absl::Status SetLongMode(bool long_mode) override { return vm_.vm.SetXenLongMode(long_mode); }
  absl::Status SetSharedInfo(uint64_t gfn) override { return vm_.vm.SetXenSharedInfoGfn(gfn); }
  absl::Status SetVcpuInfo(uint32_t vcpu, uint64_t gpa) override {
    absl::MutexLock lock(&vm_.vcpus_mutex);
    auto it = vm_.vcpus.find(vcpu);
    if (it == vm_.vcpus.end()) return absl::NotFoundError(absl::StrCat("kvm: no vCPU ", vcpu));
    it->second->Kick();  // a vCPU ioctl waits while that vCPU is inside KVM_RUN
    XENKVM_RETURN_IF_ERROR(it->second->kvm_vcpu().SetXenVcpuId(vcpu));
    return it->second->kvm_vcpu().SetXenVcpuInfo(gpa);
  }
  absl::Status SetUpcallVector(std::optional<uint32_t> vcpu, uint8_t vector) override {
    if (!vcpu) return vm_.vm.SetXenUpcallVector(vector);
    absl::MutexLock lock(&vm_.vcpus_mutex);
    auto it = vm_.vcpus.find(*vcpu);
    if (it == vm_.vcpus.end()) return absl::NotFoundError(absl::StrCat("kvm: no vCPU ", *vcpu));
    it->second->Kick();
    return it->second->kvm_vcpu().SetXenUpcallVector(vector);
  }
  absl::Status Send(uint32_t port, uint32_t vcpu) override { return vm_.vm.XenEvtchnSend(port, vcpu); }

  absl::Status RouteSend(uint32_t send_port, bool ipi, uint32_t to_port, uint32_t to_vcpu) override {
    kvm::XenEvtchnRoute::ToPort to{};
    to.port = to_port;
    to.vcpu = to_vcpu;
    const kvm::XenEvtchnRoute route{
        send_port, ipi ? kvm::XenEvtchnRoute::Type::kIpi : kvm::XenEvtchnRoute::Type::kInterdomain, to};
    absl::MutexLock lock(&mutex_);
    if (routed_.contains(send_port)) return vm_.vm.UpdateXenEvtchn(route);
    XENKVM_RETURN_IF_ERROR(vm_.vm.AssignXenEvtchn(route));
    routed_.insert(send_port);
    return absl::OkStatus();
  }
  absl::Status Unroute(uint32_t send_port) override {
    absl::MutexLock lock(&mutex_);
    if (routed_.erase(send_port) == 0) return absl::OkStatus();
    return vm_.vm.DeassignXenEvtchn(send_port);
  }
  absl::Status ResetRoutes() override {
    absl::MutexLock lock(&mutex_);
    routed_.clear();
    return vm_.vm.ResetXenEvtchns();
  }
  absl::Status SetTimerPort(uint32_t vcpu, uint32_t port) override {
    absl::MutexLock lock(&vm_.vcpus_mutex);
    auto it = vm_.vcpus.find(vcpu);
    if (it == vm_.vcpus.end()) return absl::NotFoundError(absl::StrCat("kvm: no vCPU ", vcpu));
    it->second->Kick();
    kvm::XenTimer timer;
    timer.port = port;
    return it->second->kvm_vcpu().SetXenTimer(timer);
  }

 private:
  KvmVmState& vm_;
  absl::Mutex mutex_;
  std::set<uint32_t> routed_ ABSL_GUARDED_BY(mutex_);  // send ports the kernel handles
};

class KvmAccelerator final : public Accelerator {
 public:
  explicit KvmAccelerator(std::unique_ptr<KvmVmState> vm) : vm_(std::move(vm)) {
    const kvm::XenCapabilities& xen = vm_->vm.xen_capabilities();
    capabilities_.name = "kvm";
    capabilities_.kernel_delivers_event_channels = xen.Has(kvm::XenCapability::kEvtchnSend);
    capabilities_.hypercall_page_by_accelerator = true;
    capabilities_.inline_vmcall = xen.Has(kvm::XenCapability::kInterceptHypercall);
    capabilities_.hidden_cpuid_features = vm_->hidden_cpuid_features;
    if (xen.Has(kvm::XenCapability::kEvtchnSend)) xen_events_ = std::make_unique<KvmXenEvents>(*vm_);
    // KVM knows its vCPUs' TSC rate; asking costs no calibration (older kernels: measured).
    absl::StatusOr<int> tsc_control = vm_->vm.CheckExtension(KVM_CAP_VM_TSC_CONTROL);
    absl::StatusOr<uint32_t> khz = tsc_control.ok() && *tsc_control > 0 ? vm_->vm.GetTscKhz()
                                                                         : absl::UnavailableError("no KVM_CAP_VM_TSC_CONTROL");
    tsc_khz_ = khz.ok() && *khz > 0 ? *khz : HostTscKhz();
  }

  KernelXenEvents* kernel_xen_events() override { return xen_events_.get(); }

  absl::Status RestrictCpuid(CpuTemplate cpu_template) override {
    for (kvm_cpuid_entry2& entry : vm_->host_cpuid) {
      CpuidRegisters registers{entry.eax, entry.ebx, entry.ecx, entry.edx};
      ApplyCpuTemplate(cpu_template, entry.function, entry.index, registers);
      entry.ebx = registers.ebx, entry.ecx = registers.ecx, entry.edx = registers.edx;
    }
    return absl::OkStatus();
  }

  const Capabilities& capabilities() const override { return capabilities_; }
  uint64_t tsc_khz() const override { return tsc_khz_; }

  absl::Status EnableHypercallPage(uint32_t msr) override {
    if (msr == 0) return absl::InvalidArgumentError("the hypercall-page MSR must not be 0");
    if (vm_->vm.xen_capabilities().Has(kvm::XenCapability::kInterceptHypercall)) {
      return vm_->vm.ConfigureXenHypercalls(msr);
    }
    if (!vm_->user_space_msr) {
      return absl::FailedPreconditionError(
          "kvm accelerator: this kernel neither intercepts Xen hypercalls (CONFIG_KVM_XEN, Linux 5.12) "
          "nor hands MSR writes to userspace (KVM_CAP_X86_USER_SPACE_MSR, Linux 5.10); use --accel emu");
    }
    vm_->port_hypercall_msr.store(msr);
    return absl::OkStatus();
  }

  absl::Status ShowExtraPage(uint64_t address, uint8_t* host) override {
    absl::MutexLock lock(&vm_->extra_mutex);
    if (vm_->extra_slots.contains(address)) return absl::OkStatus();
    uint32_t slot = kFirstExtraPageSlot;
    for (const auto& [shown, used] : vm_->extra_slots) slot = std::max(slot, used + 1);
    if (slot >= kFirstExtraPageSlot + kMaxExtraPageSlots) {
      // Reuse a gap left by a page taken away.
      std::set<uint32_t> used;
      for (const auto& entry : vm_->extra_slots) used.insert(entry.second);
      for (slot = kFirstExtraPageSlot; used.contains(slot); ++slot) {
      }
      if (slot >= kFirstExtraPageSlot + kMaxExtraPageSlots) {
        return absl::ResourceExhaustedError(absl::StrFormat("kvm: no memory slot left for a page at %#x", address));
      }
    }
    XENKVM_RETURN_IF_ERROR(vm_->vm.SetUserMemoryRegion(slot, address, kPageSize, host));
    vm_->extra_slots[address] = slot;
    return absl::OkStatus();
  }

  absl::Status HideExtraPage(uint64_t address) override {
    absl::MutexLock lock(&vm_->extra_mutex);
    auto found = vm_->extra_slots.find(address);
    if (found == vm_->extra_slots.end()) return absl::NotFoundError(absl::StrFormat("kvm: no page shown at %#x", address));
    XENKVM_RETURN_IF_ERROR(vm_->vm.RemoveUserMemoryRegion(found->second));
    vm_->extra_slots.erase(found);
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Vcpu>> CreateVcpu(uint32_t id, std::optional<PvhEntry> boot) override {
    XENKVM_ASSIGN_OR_RETURN(kvm::Vcpu created, vm_->vm.CreateVcpu(id));
    auto vcpu = std::make_unique<KvmVcpu>(*vm_, std::move(created));
    XENKVM_RETURN_IF_ERROR(vcpu->SetCpuid({}));
    if (boot) XENKVM_RETURN_IF_ERROR(vcpu->Boot(*boot));
    return std::unique_ptr<Vcpu>(std::move(vcpu));
  }

 private:
  std::unique_ptr<KvmVmState> vm_;
  Capabilities capabilities_;
  uint64_t tsc_khz_ = 0;
  std::unique_ptr<KvmXenEvents> xen_events_;
};

// KVM_GET_SUPPORTED_CPUID less what the host cannot run for a guest (instruction_probe.h), said
// once in the log: on KVM-PVM that is most extensions, on hardware virtualisation nothing.
// The probes' result for `cpuid`: from the cache (probe_cache.h) when an earlier VMM on this host
// boot ran them, else run now and stored for the next one.
absl::StatusOr<ProbeResult> ProbeOrRecall(const kvm::Kvm& system, std::span<const kvm_cpuid_entry2> cpuid) {
  std::optional<std::string> path = DefaultProbeCachePath();
  const std::optional<std::string> key = ProbeCacheKey(cpuid);
  if (!key) path.reset();
  if (path) {
    if (std::optional<ProbeResult> recalled = LoadProbeResult(*path, *key)) return *recalled;
  }
  absl::StatusOr<ProbeResult> probed = ProbeInstructions(system, cpuid);
  if (probed.ok() && path) {
    if (absl::Status stored = StoreProbeResult(*path, *key, *probed); !stored.ok()) {
      spdlog::debug("kvm: instruction probe results not kept: {}", std::string(stored.message()));
    }
  }
  return probed;
}

std::vector<std::string> HideWhatTheHostCannotRun(const kvm::Kvm& system, std::vector<kvm_cpuid_entry2>& cpuid) {
  absl::StatusOr<ProbeResult> probed = ProbeOrRecall(system, cpuid);
  if (!probed.ok()) {
    // Not a reason to refuse the guest: it is offered what KVM reports, as before the probes.
    spdlog::warn("kvm: the instruction probes could not run ({}); the guest is offered all KVM reports",
                 std::string(probed.status().message()));
    return std::vector<std::string>();
  }
  std::vector<std::string> hidden = HideFeatures(probed->unrunnable, cpuid);
  static std::once_flag logged;
  std::call_once(logged, [&] {
    if (!hidden.empty()) {
      spdlog::warn("kvm: this host's KVM cannot run {} for a guest ({}); hidden from the guest's CPUID",
                   absl::StrJoin(hidden, " "), absl::StrJoin(probed->details, "; "));
    }
    if (!probed->baseline.empty()) {
      spdlog::warn("kvm: this host's KVM cannot run the x86-64 baseline's {} for a guest: 64-bit guests "
                   "stop at the first such instruction (run them with --accel emu)",
                   absl::StrJoin(probed->baseline, " "));
    }
  });
  return hidden;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Accelerator>> CreateKvmAccelerator(const memory::GuestMemory& memory,
                                                                  const std::string& device) {
  InstallKickHandler();
  XENKVM_ASSIGN_OR_RETURN(kvm::Kvm system, kvm::Kvm::Open(device));
  XENKVM_ASSIGN_OR_RETURN(kvm::Vm vm, system.CreateVm());
  XENKVM_ASSIGN_OR_RETURN(std::vector<kvm_cpuid_entry2> cpuid, system.SupportedCpuid());
  std::vector<std::string> hidden = HideWhatTheHostCannotRun(system, cpuid);
  XENKVM_RETURN_IF_ERROR(vm.MapGuestMemory(memory));
  XENKVM_RETURN_IF_ERROR(vm.EnableSplitIrqchip());
  auto state = std::unique_ptr<KvmVmState>(
      new KvmVmState{std::move(system), std::move(vm), memory, std::move(cpuid), std::move(hidden)});
  if (!state->vm.xen_capabilities().Has(kvm::XenCapability::kInterceptHypercall)) {
    absl::StatusOr<int> user_msr = state->vm.CheckExtension(KVM_CAP_X86_USER_SPACE_MSR);
    if (user_msr.ok() && *user_msr != 0) {
      XENKVM_RETURN_IF_ERROR(
          state->vm.EnableUserSpaceMsr(KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_INVAL));
      state->user_space_msr = true;
    }
  }
  return std::unique_ptr<Accelerator>(new KvmAccelerator(std::move(state)));
}

}  // namespace xenkvm::accel
