#include "components/xen/shim.h"

#include <sched.h>
#include <x86intrin.h>

#include <algorithm>
#include <cstring>
#include <ctime>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_format.h"
#include "components/base/status.h"
#include "components/xen/guest_access.h"
#include "spdlog/spdlog.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {
namespace {

constexpr uint64_t kOwedUpcallRetryNs = 1000000;

const char* HypercallName(uint64_t number) {
  static constexpr const char* kNames[] = {
      "set_trap_table", "mmu_update", "set_gdt", "stack_switch", "set_callbacks", "fpu_taskswitch",
      "sched_op_compat", "platform_op", "set_debugreg", "get_debugreg", "update_descriptor", "11",
      "memory_op", "multicall", "update_va_mapping", "set_timer_op", "event_channel_op_compat",
      "xen_version", "console_io", "physdev_op_compat", "grant_table_op", "vm_assist",
      "update_va_mapping_otherdomain", "iret", "vcpu_op", "set_segment_base", "mmuext_op", "xsm_op",
      "nmi_op", "sched_op", "callback_op", "xenoprof_op", "event_channel_op", "physdev_op", "hvm_op",
      "sysctl", "domctl", "kexec_op", "tmem_op", "argo_op", "xenpmu_op", "dm_op", "hypfs_op"};
  return number < std::size(kNames) ? kNames[number] : "an unknown hypercall";
}

constexpr int64_t Error(xen_errno error) { return -static_cast<int64_t>(error); }
constexpr uint32_t kNrVirqs = 24;
constexpr uint32_t kMaxPollPorts = 128;
constexpr uint64_t kMaxConsoleWrite = 64 * 1024;  // per CONSOLEIO_write call
constexpr uint64_t kNsPerMs = 1'000'000;
constexpr uint16_t kBackendDomain = 0;

uint64_t MonotonicNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

bool PerVcpuVirq(uint32_t virq) {
  return virq == VIRQ_TIMER || virq == VIRQ_DEBUG || virq == VIRQ_XENOPROF || virq == VIRQ_XENPMU;
}

// Copies a NUL-padded string into a fixed-size guest buffer.
template <size_t N>
std::array<char, N> FixedString(const char* text) {
  std::array<char, N> out{};
  std::strncpy(out.data(), text, N - 1);
  return out;
}

}  // namespace

const char* ShutdownReasonName(ShutdownReason reason) {
  switch (reason) {
    case ShutdownReason::kPoweroff:
      return "poweroff";
    case ShutdownReason::kReboot:
      return "reboot";
    case ShutdownReason::kCrash:
      return "crash";
    case ShutdownReason::kWatchdog:
      return "watchdog";
    case ShutdownReason::kSoftReset:
      return "soft_reset";
  }
  return "?";
}

const char* PortTypeName(PortType type) {
  switch (type) {
    case PortType::kClosed:
      return "closed";
    case PortType::kUnbound:
      return "unbound";
    case PortType::kInterdomain:
      return "interdomain";
    case PortType::kPirq:
      return "pirq";
    case PortType::kVirq:
      return "virq";
    case PortType::kIpi:
      return "ipi";
  }
  return "?";
}

// The calling vCPU of one hypercall and how it reads its arguments.
struct Shim::Caller {
  uint32_t vcpu;
  bool long_mode;
  accel::Vcpu& accel_vcpu;
  GuestAccess access;

  size_t word_size() const { return long_mode ? 8 : 4; }
  // A guest handle or xen_ulong_t field of the caller's ABI at `linear`.
  std::optional<uint64_t> ReadWord(uint64_t linear) {
    if (long_mode) return access.ReadObject<uint64_t>(linear);
    std::optional<uint32_t> word = access.ReadObject<uint32_t>(linear);
    if (!word) return std::nullopt;
    return *word;
  }
};

absl::StatusOr<std::unique_ptr<Shim>> Shim::Create(const XenConfig& config, memory::GuestMemory& memory,
                                                   accel::Accelerator& accelerator, Callbacks callbacks,
                                                   base::EventLoop* backend_loop) {
  XENKVM_RETURN_IF_ERROR(Validate(config));
  auto shim = std::unique_ptr<Shim>(new Shim(config, memory, accelerator, std::move(callbacks), backend_loop));
  shim->timer_thread_ = std::thread([raw = shim.get()] { raw->TimerLoop(); });
  return shim;
}

Shim::Shim(const XenConfig& config, memory::GuestMemory& memory, accel::Accelerator& accelerator,
           Callbacks callbacks, base::EventLoop* backend_loop)
    : config_(config),
      memory_(memory),
      accelerator_(accelerator),
      callbacks_(std::move(callbacks)),
      backend_loop_(backend_loop),
      kernel_(accelerator.kernel_xen_events()),
      start_monotonic_ns_(MonotonicNs()),
      tsc_khz_(accelerator.tsc_khz()),
      time_scale_(TimeScale(accelerator.tsc_khz())),
      grant_table_(memory, config.gnttab_max_frames),
      extra_frames_(memory, accelerator) {
  grant_table_.SynchronizeWith(accelerator);
  absl::MutexLock lock(&mutex_);
  vcpus_.resize(config.vcpus);
  ports_.resize(kMaxPorts64);
  // Wallclock at system time 0: now, less the time since the start.
  timespec real{};
  clock_gettime(CLOCK_REALTIME, &real);
  shared_info_.WriteWallclock(static_cast<uint64_t>(real.tv_sec), static_cast<uint32_t>(real.tv_nsec));
}

Shim::~Shim() {
  Stop();
  if (timer_thread_.joinable()) timer_thread_.join();
}

uint64_t Shim::SystemTimeNs() const { return MonotonicNs() - start_monotonic_ns_; }

absl::Status Shim::AttachVcpu(accel::Vcpu& vcpu) {
  const uint32_t id = vcpu.id();
  XENKVM_ASSIGN_OR_RETURN(int64_t tsc_offset, vcpu.TscOffset());
  XENKVM_RETURN_IF_ERROR(vcpu.SetCpuid(CpuidLeaves(config_, id, tsc_khz_)));
  absl::MutexLock lock(&mutex_);
  if (id >= vcpus_.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Xen shim: vCPU %u is beyond the configured %u vCPUs", id, vcpus_.size()));
  }
  if (vcpus_[id].vcpu != nullptr) return absl::AlreadyExistsError(absl::StrFormat("Xen shim: vCPU %u attached twice", id));
  vcpus_[id].vcpu = &vcpu;
  vcpus_[id].tsc_offset = tsc_offset;
  vcpus_[id].started = id == 0;
  UpdateTimeLocked(id);
  return absl::OkStatus();
}

absl::Status Shim::EnableHypercallPage() { return accelerator_.EnableHypercallPage(HypercallMsr(config_)); }

void Shim::RefreshCallbackGsi() {
  absl::MutexLock lock(&mutex_);
  if ((callback_via_ >> 56) != HVM_PARAM_CALLBACK_TYPE_GSI || callback_via_ == 0 || !callbacks_.set_gsi) return;
  std::optional<VcpuInfo> info = VcpuInfoLocked(0);
  callbacks_.set_gsi(static_cast<uint32_t>(callback_via_ & 0xffffffff), info && info->upcall_pending());
}

void Shim::Stop() {
  absl::MutexLock lock(&mutex_);
  stopping_ = true;
}

// ---- Dispatch

uint64_t Shim::Hypercall(accel::Vcpu& vcpu, const accel::HypercallExit& call) {
  {
    absl::MutexLock lock(&mutex_);
    if (call.cpl != 0) {
      ++refused_cpl_;
      return static_cast<uint64_t>(Error(XEN_EPERM));
    }
    if (call.number < hypercall_counts_.size()) ++hypercall_counts_[call.number];
    if (!long_mode_latched_) LatchLongModeLocked(call.long_mode);
    if (vcpu.id() < vcpus_.size()) RetryOwedUpcallLocked(vcpu.id());
  }
  Caller caller{vcpu.id(), call.long_mode, vcpu, GuestAccess(memory_, vcpu)};
  int64_t result = Dispatch(caller, call.number, call.args);
  if (result == Error(XEN_ENOSYS)) {
    absl::MutexLock lock(&mutex_);
    ++unknown_hypercalls_;
    if (call.number < unknown_logged_.size() && !unknown_logged_[call.number]) {
      unknown_logged_[call.number] = true;
      spdlog::info("Xen shim: the guest called {} (hypercall {}, sub-op or first argument {:#x}): -ENOSYS, as Xen without it",
                   HypercallName(call.number), call.number, call.args[0]);
    }
  }
  // A 32-bit guest reads EAX: the error survives truncation (sign bits).
  return static_cast<uint64_t>(result);
}

int64_t Shim::Dispatch(Caller& caller, uint64_t number, const std::array<uint64_t, 6>& args) {
  switch (number) {
    case __HYPERVISOR_set_timer_op:
      // 32-bit guests pass the 64-bit timeout in two registers (low, high).
      return SetTimerOp(caller, caller.long_mode ? args[0] : (args[0] | (args[1] << 32)));
    case __HYPERVISOR_memory_op:
      return MemoryOp(caller, args[0], args[1]);
    case __HYPERVISOR_xen_version:
      return XenVersion(caller, args[0], args[1]);
    case __HYPERVISOR_console_io:
      return ConsoleIo(caller, args[0], args[1], args[2]);
    case __HYPERVISOR_vcpu_op:
      return VcpuOp(caller, args[0], args[1], args[2]);
    case __HYPERVISOR_sched_op:
      return SchedOp(caller, args[0], args[1]);
    case __HYPERVISOR_event_channel_op:
      return EventChannelOp(caller, args[0], args[1]);
    case __HYPERVISOR_hvm_op:
      return HvmOp(caller, args[0], args[1]);
    case __HYPERVISOR_grant_table_op:
      return GrantTableOp(caller, args[0], args[1], args[2]);
    case __HYPERVISOR_vm_assist:
      return VmAssist(args[0], args[1]);
    default:
      return Error(XEN_ENOSYS);
  }
}

// ---- vm_assist: of the assists, Xen offers HVM guests only the runstate update flag.

int64_t Shim::VmAssist(uint64_t command, uint64_t type) {
  if (command != VMASST_CMD_enable && command != VMASST_CMD_disable) return Error(XEN_ENOSYS);
  if (type != VMASST_TYPE_runstate_update_flag) return Error(XEN_EINVAL);
  absl::MutexLock lock(&mutex_);
  if (command == VMASST_CMD_enable) {
    vm_assist_ |= uint64_t{1} << type;
  } else {
    vm_assist_ &= ~(uint64_t{1} << type);
  }
  return 0;
}

// ---- xen_version

int64_t Shim::XenVersion(Caller& caller, uint64_t command, uint64_t arg) {
  switch (command) {
    case XENVER_version:
      return config_.version;
    case XENVER_extraversion: {
      auto extra = FixedString<XEN_EXTRAVERSION_LEN>(".0-xenkvm");
      return caller.access.WriteObject(arg, extra) ? 0 : Error(XEN_EFAULT);
    }
    case XENVER_compile_info: {
      xen_compile_info_t info{};
      std::strncpy(info.compiler, "xenkvm (Xen interface emulated on KVM)", sizeof(info.compiler) - 1);
      std::strncpy(info.compile_by, "xenkvm", sizeof(info.compile_by) - 1);
      std::strncpy(info.compile_domain, "xenkvm", sizeof(info.compile_domain) - 1);
      std::strncpy(info.compile_date, __DATE__, sizeof(info.compile_date) - 1);
      return caller.access.WriteObject(arg, info) ? 0 : Error(XEN_EFAULT);
    }
    case XENVER_capabilities: {
      auto capabilities = FixedString<XEN_CAPABILITIES_INFO_LEN>("hvm-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p");
      return caller.access.WriteObject(arg, capabilities) ? 0 : Error(XEN_EFAULT);
    }
    case XENVER_changeset: {
      auto changeset = FixedString<XEN_CHANGESET_INFO_LEN>("xenkvm");
      return caller.access.WriteObject(arg, changeset) ? 0 : Error(XEN_EFAULT);
    }
    case XENVER_platform_parameters: {
      // virt_start: where Xen would sit in a PV guest's address space; HVM guests own it all.
      uint64_t virt_start = caller.long_mode ? 0xffff800000000000ull : 0xf5800000ull;
      if (caller.long_mode) return caller.access.WriteObject(arg, virt_start) ? 0 : Error(XEN_EFAULT);
      return caller.access.WriteObject(arg, static_cast<uint32_t>(virt_start)) ? 0 : Error(XEN_EFAULT);
    }
    case XENVER_get_features: {
      std::optional<xen_feature_info_t> info = caller.access.ReadObject<xen_feature_info_t>(arg);
      if (!info) return Error(XEN_EFAULT);
      info->submap = 0;
      if (info->submap_idx == 0) {
        info->submap = (1u << XENFEAT_writable_page_tables) | (1u << XENFEAT_writable_descriptor_tables) |
                       (1u << XENFEAT_auto_translated_physmap) | (1u << XENFEAT_hvm_callback_vector) |
                       (1u << XENFEAT_hvm_safe_pvclock);
      }
      return caller.access.WriteObject(arg, *info) ? 0 : Error(XEN_EFAULT);
    }
    case XENVER_pagesize:
      return kPageSize;
    case XENVER_guest_handle: {
      std::array<uint8_t, 16> handle{};  // the domain's UUID; xenkvm gives each VM the domid in it
      handle[15] = static_cast<uint8_t>(config_.domid);
      handle[14] = static_cast<uint8_t>(config_.domid >> 8);
      return caller.access.WriteObject(arg, handle) ? 0 : Error(XEN_EFAULT);
    }
    case XENVER_commandline:
    case XENVER_build_id:
      return Error(XEN_EPERM);  // Xen's own command line and build id are for dom0
    default:
      return Error(XEN_ENOSYS);
  }
}

// ---- memory_op

// Extra pages that neither the shared info nor a grant-table frame occupies any more go away.
void Shim::ReleaseUnusedFrames() {
  std::optional<uint64_t> shared_info_gpa;
  {
    absl::MutexLock lock(&mutex_);
    shared_info_gpa = shared_info_.gpa();
  }
  extra_frames_.ReleaseUnused([&](uint64_t gfn) {
    return (shared_info_gpa && *shared_info_gpa >> 12 == gfn) || grant_table_.HoldsFrameAt(gfn);
  });
}

int64_t Shim::AddToPhysmap(Caller& caller, uint16_t domid, uint32_t space, uint64_t index, uint64_t gpfn) {
  if (domid != DOMID_SELF && domid != config_.domid) return Error(XEN_ESRCH);
  switch (space) {
    case XENMAPSPACE_shared_info: {
      if (index != 0) return Error(XEN_EINVAL);
      absl::MutexLock placing(&physmap_mutex_);
      if (int64_t backed = extra_frames_.Back(gpfn); backed != 0) return backed;
      absl::StatusOr<uint8_t*> host = memory_.HostAddress(memory::GuestAddress(gpfn << 12), kPageSize);
      if (!host.ok()) return Error(XEN_EINVAL);
      absl::Cleanup release = [this] { ReleaseUnusedFrames(); };
      absl::MutexLock lock(&mutex_);
      LatchLongModeLocked(caller.long_mode);
      shared_info_.MapAt(*host, gpfn << 12);
      if (kernel_ != nullptr) {
        if (absl::Status set = kernel_->SetSharedInfo(gpfn); !set.ok()) {
          spdlog::warn("Xen shim: kernel SHARED_INFO: {}", std::string(set.message()));
        }
      }
      for (uint32_t v = 0; v < vcpus_.size(); ++v) {
        KernelSetVcpuInfoLocked(v);
        UpdateTimeLocked(v);
      }
      return 0;
    }
    case XENMAPSPACE_grant_table:
      if (index & XENMAPIDX_grant_table_status) return Error(XEN_EINVAL);  // v1 has no status frames
      if (index >= config_.gnttab_max_frames) return Error(XEN_EINVAL);
      {
        absl::MutexLock placing(&physmap_mutex_);
        if (int64_t backed = extra_frames_.Back(gpfn); backed != 0) return backed;
        const int64_t mapped = grant_table_.MapFrame(static_cast<uint32_t>(index), gpfn);
        ReleaseUnusedFrames();
        return mapped;
      }
    case XENMAPSPACE_gmfn:
    case XENMAPSPACE_gmfn_range:
      return Error(XEN_EOPNOTSUPP);
    case XENMAPSPACE_gmfn_foreign:
    case XENMAPSPACE_dev_mmio:
      return Error(XEN_EPERM);
    default:
      return Error(XEN_EINVAL);
  }
}

int64_t Shim::MemoryOp(Caller& caller, uint64_t command, uint64_t arg) {
  switch (command) {
    case XENMEM_add_to_physmap: {
      // 64-bit: domid@0 size@2 space@4 idx@8 gpfn@16; 32-bit: idx@8 gpfn@12.
      std::optional<uint16_t> domid = caller.access.ReadObject<uint16_t>(arg);
      std::optional<uint32_t> space = caller.access.ReadObject<uint32_t>(arg + 4);
      std::optional<uint64_t> index = caller.ReadWord(arg + 8);
      std::optional<uint64_t> gpfn = caller.ReadWord(arg + 8 + caller.word_size());
      if (!domid || !space || !index || !gpfn) return Error(XEN_EFAULT);
      return AddToPhysmap(caller, *domid, *space, *index, *gpfn);
    }
    case XENMEM_add_to_physmap_batch: {
      // domid@0 space@2 size@4 u@6, then three handles: idxs, gpfns, errs.
      struct Header {
        uint16_t domid, space, size, extra;
      };
      std::optional<Header> header = caller.access.ReadObject<Header>(arg);
      std::optional<uint64_t> idxs = caller.ReadWord(arg + 8);
      std::optional<uint64_t> gpfns = caller.ReadWord(arg + 8 + caller.word_size());
      std::optional<uint64_t> errs = caller.ReadWord(arg + 8 + 2 * caller.word_size());
      if (!header || !idxs || !gpfns || !errs) return Error(XEN_EFAULT);
      if (header->extra != 0) return Error(XEN_EINVAL);
      for (uint16_t i = 0; i < header->size; ++i) {
        std::optional<uint64_t> index = caller.ReadWord(*idxs + i * caller.word_size());
        std::optional<uint64_t> gpfn = caller.ReadWord(*gpfns + i * caller.word_size());
        if (!index || !gpfn) return Error(XEN_EFAULT);
        int32_t result = static_cast<int32_t>(AddToPhysmap(caller, header->domid, header->space, *index, *gpfn));
        if (!caller.access.WriteObject(*errs + i * sizeof(int32_t), result)) return Error(XEN_EFAULT);
      }
      return 0;
    }
    case XENMEM_memory_map:
      return MemoryMap(caller, arg);
    default:
      return Error(XEN_ENOSYS);
  }
}

// Xen copies min(asked, held) entries and says how many; a domain without a map gets -ENOSYS.
int64_t Shim::MemoryMap(Caller& caller, uint64_t arg) {
  // struct xen_memory_map: nr_entries@0 (uint32), buffer handle at the next word.
  std::optional<uint32_t> asked = caller.access.ReadObject<uint32_t>(arg);
  std::optional<uint64_t> buffer = caller.ReadWord(arg + caller.word_size());
  if (!asked || !buffer) return Error(XEN_EFAULT);
  if (config_.memory_map.empty()) return Error(XEN_ENOSYS);
  struct __attribute__((packed)) E820Entry {
    uint64_t address;
    uint64_t size;
    uint32_t type;
  };
  static_assert(sizeof(E820Entry) == 20, "Xen's struct e820entry is packed");
  const uint32_t count = std::min<uint32_t>(*asked, static_cast<uint32_t>(config_.memory_map.size()));
  for (uint32_t i = 0; i < count; ++i) {
    const MemoryMapEntry& entry = config_.memory_map[i];
    if (!caller.access.WriteObject(*buffer + i * sizeof(E820Entry), E820Entry{entry.address, entry.size, entry.type})) {
      return Error(XEN_EFAULT);
    }
  }
  return caller.access.WriteObject(arg, count) ? 0 : Error(XEN_EFAULT);
}

// ---- grant_table_op (version 1; the guest's own table: mapping and copying grants is the
// backends' business, through GrantTable)

int64_t Shim::GrantTableOp(Caller& caller, uint64_t command, uint64_t arg, uint64_t count) {
  auto own_domain = [this](uint16_t domid) { return domid == DOMID_SELF || domid == config_.domid; };
  switch (command) {
    case GNTTABOP_query_size: {
      if (count != 1) return Error(XEN_EINVAL);
      std::optional<gnttab_query_size_t> op = caller.access.ReadObject<gnttab_query_size_t>(arg);
      if (!op) return Error(XEN_EFAULT);
      if (!own_domain(op->dom)) {
        op->status = GNTST_bad_domain;
      } else {
        op->nr_frames = grant_table_.frames();
        op->max_nr_frames = grant_table_.max_frames();
        op->status = GNTST_okay;
      }
      return caller.access.WriteObject(arg, *op) ? 0 : Error(XEN_EFAULT);
    }
    case GNTTABOP_setup_table: {
      // {domid_t dom; uint32_t nr_frames; int16_t status; handle frame_list}: the handle and the
      // frame numbers are the caller's word size.
      const uint64_t size = caller.long_mode ? 24 : 16;
      if (count > 16) return Error(XEN_EINVAL);
      for (uint64_t i = 0; i < count; ++i) {
        const uint64_t at = arg + i * size;
        std::optional<uint16_t> dom = caller.access.ReadObject<uint16_t>(at);
        std::optional<uint32_t> nr_frames = caller.access.ReadObject<uint32_t>(at + 4);
        std::optional<uint64_t> frame_list = caller.ReadWord(at + (caller.long_mode ? 16 : 12));
        if (!dom || !nr_frames || !frame_list) return Error(XEN_EFAULT);
        int16_t status = GNTST_bad_domain;
        if (own_domain(*dom)) {
          std::vector<uint64_t> gfns;
          status = grant_table_.Setup(*nr_frames, &gfns);
          for (size_t f = 0; status == GNTST_okay && f < gfns.size(); ++f) {
            const uint64_t where = *frame_list + f * caller.word_size();
            const bool written = caller.long_mode ? caller.access.WriteObject<uint64_t>(where, gfns[f])
                                                  : caller.access.WriteObject<uint32_t>(where, static_cast<uint32_t>(gfns[f]));
            if (!written) return Error(XEN_EFAULT);
          }
        }
        if (!caller.access.WriteObject<int16_t>(at + 8, status)) return Error(XEN_EFAULT);
      }
      return 0;
    }
    case GNTTABOP_set_version: {
      if (count != 1) return Error(XEN_EINVAL);
      std::optional<gnttab_set_version_t> op = caller.access.ReadObject<gnttab_set_version_t>(arg);
      if (!op) return Error(XEN_EFAULT);
      const uint32_t asked = op->version;
      op->version = 1;  // what is in use, either way
      if (!caller.access.WriteObject(arg, *op)) return Error(XEN_EFAULT);
      return asked == 1 ? 0 : Error(XEN_EOPNOTSUPP);  // version 2 is not offered
    }
    case GNTTABOP_get_version: {
      if (count != 1) return Error(XEN_EINVAL);
      std::optional<gnttab_get_version_t> op = caller.access.ReadObject<gnttab_get_version_t>(arg);
      if (!op) return Error(XEN_EFAULT);
      if (!own_domain(op->dom)) return Error(XEN_ESRCH);
      op->version = 1;
      return caller.access.WriteObject(arg, *op) ? 0 : Error(XEN_EFAULT);
    }
    case GNTTABOP_get_status_frames:
      return Error(XEN_EINVAL);  // version 1 has no status frames
    default:
      return Error(XEN_ENOSYS);  // map/unmap/copy/transfer of other domains' grants: a guest has none to use
  }
}

// ---- hvm_op

int64_t Shim::HvmOp(Caller& caller, uint64_t command, uint64_t arg) {
  switch (command) {
    case HVMOP_set_param:
    case HVMOP_get_param: {
      std::optional<xen_hvm_param_t> param = caller.access.ReadObject<xen_hvm_param_t>(arg);
      if (!param) return Error(XEN_EFAULT);
      if (param->domid != DOMID_SELF && param->domid != config_.domid) return Error(XEN_ESRCH);
      absl::MutexLock lock(&mutex_);
      if (command == HVMOP_set_param) {
        if (param->index != HVM_PARAM_CALLBACK_IRQ) return Error(XEN_EPERM);  // the rest are the toolstack's
        const uint64_t type = param->value >> 56;
        if (type == HVM_PARAM_CALLBACK_TYPE_VECTOR && (param->value & 0xff) < 0x10) return Error(XEN_EINVAL);
        if (type > HVM_PARAM_CALLBACK_TYPE_VECTOR) return Error(XEN_EINVAL);
        if (type == HVM_PARAM_CALLBACK_TYPE_GSI && param->value != 0 && (!callbacks_.set_gsi || param->value >= 24)) {
          return Error(XEN_EINVAL);  // no such GSI (the IOAPIC has 24)
        }
        callback_via_ = param->value;
        LatchLongModeLocked(caller.long_mode);
        KernelSetUpcallRouteLocked();
        RaisePendingUpcallsLocked();
        return 0;
      }
      switch (param->index) {
        case HVM_PARAM_CALLBACK_IRQ:
          param->value = callback_via_;
          break;
        case HVM_PARAM_STORE_PFN:
        case HVM_PARAM_STORE_EVTCHN:
        case HVM_PARAM_CONSOLE_PFN:
        case HVM_PARAM_CONSOLE_EVTCHN: {
          auto it = hvm_params_.find(param->index);
          param->value = it == hvm_params_.end() ? 0 : it->second;
          break;
        }
        default:
          return Error(XEN_EINVAL);
      }
      return caller.access.WriteObject(arg, *param) ? 0 : Error(XEN_EFAULT);
    }
    case HVMOP_set_evtchn_upcall_vector: {
      std::optional<xen_hvm_evtchn_upcall_vector_t> upcall =
          caller.access.ReadObject<xen_hvm_evtchn_upcall_vector_t>(arg);
      if (!upcall) return Error(XEN_EFAULT);
      if (upcall->vector < 0x10) return Error(XEN_EINVAL);
      absl::MutexLock lock(&mutex_);
      if (upcall->vcpu >= vcpus_.size()) return Error(XEN_ENOENT);
      vcpus_[upcall->vcpu].upcall_vector = upcall->vector;
      if (kernel_ != nullptr) {
        if (absl::Status set = kernel_->SetUpcallVector(upcall->vcpu, upcall->vector); !set.ok()) {
          spdlog::warn("Xen shim: kernel per-vCPU UPCALL_VECTOR: {}", std::string(set.message()));
        }
      }
      RaisePendingUpcallsLocked();
      return 0;
    }
    case HVMOP_pagetable_dying:
      return Error(XEN_ENOSYS);
    default:
      return Error(XEN_ENOSYS);
  }
}

// ---- vcpu_op

int64_t Shim::VcpuOp(Caller& caller, uint64_t command, uint64_t vcpu_id, uint64_t arg) {
  absl::MutexLock lock(&mutex_);
  if (vcpu_id >= vcpus_.size() || vcpus_[vcpu_id].vcpu == nullptr) return Error(XEN_ENOENT);
  const uint32_t target = static_cast<uint32_t>(vcpu_id);
  VcpuState& state = vcpus_[target];
  switch (command) {
    case VCPUOP_register_vcpu_info: {
      std::optional<vcpu_register_vcpu_info_t> info = caller.access.ReadObject<vcpu_register_vcpu_info_t>(arg);
      if (!info) return Error(XEN_EFAULT);
      if (state.vcpu_info != nullptr) return Error(XEN_EINVAL);  // once per vCPU, as Xen
      if (info->offset > kPageSize - kVcpuInfoSize || info->offset % 8 != 0) return Error(XEN_EINVAL);
      if (info->mfn > (~uint64_t{0} >> 12)) return Error(XEN_EINVAL);
      absl::StatusOr<uint8_t*> host =
          memory_.HostAddress(memory::GuestAddress((info->mfn << 12) + info->offset), kVcpuInfoSize);
      if (!host.ok()) return Error(XEN_EINVAL);
      // Carry the current contents over, then make the guest rescan everything, as Xen does.
      if (uint8_t* old = shared_info_.DefaultVcpuInfo(target); old != nullptr) std::memcpy(*host, old, kVcpuInfoSize);
      state.vcpu_info = *host;
      state.vcpu_info_gpa = (info->mfn << 12) + info->offset;
      VcpuInfo moved(state.vcpu_info, shared_info_.long_mode());
      for (uint32_t word = 0; word < (shared_info_.long_mode() ? 64u : 32u); ++word) moved.TestAndSetPendingSelector(word);
      moved.TestAndSetUpcallPending();
      KernelSetVcpuInfoLocked(target);
      RaiseUpcallLocked(target);
      UpdateTimeLocked(target);
      return 0;
    }
    case VCPUOP_register_runstate_memory_area: {
      std::optional<uint64_t> address = caller.access.ReadObject<uint64_t>(arg);
      if (!address) return Error(XEN_EFAULT);
      if (*address == 0) {
        state.runstate_gpa.reset();
        return 0;
      }
      std::optional<uint64_t> gpa = caller.access.Translate(*address);
      const uint64_t size = shared_info_.long_mode() ? 48 : 44;
      if (!gpa || !memory_.IsValidRange(memory::GuestAddress(*gpa), size) || (*gpa & 0xfff) + size > kPageSize) {
        return Error(XEN_EFAULT);
      }
      state.runstate_gpa = *gpa;
      WriteRunstateLocked(target);
      return 0;
    }
    case VCPUOP_register_vcpu_time_memory_area: {
      std::optional<uint64_t> address = caller.access.ReadObject<uint64_t>(arg);
      if (!address) return Error(XEN_EFAULT);
      if (*address == 0) {
        state.time_area_gpa.reset();
        return 0;
      }
      std::optional<uint64_t> gpa = caller.access.Translate(*address);
      if (!gpa || !memory_.IsValidRange(memory::GuestAddress(*gpa), 32) || (*gpa & 0xfff) + 32 > kPageSize) {
        return Error(XEN_EFAULT);
      }
      state.time_area_gpa = *gpa;
      UpdateTimeLocked(target);
      return 0;
    }
    case VCPUOP_set_singleshot_timer: {
      if (target != caller.vcpu) return Error(XEN_EINVAL);  // only one's own, as Xen
      std::optional<uint64_t> timeout = caller.access.ReadObject<uint64_t>(arg);
      std::optional<uint32_t> flags = caller.access.ReadObject<uint32_t>(arg + 8);
      if (!timeout || !flags) return Error(XEN_EFAULT);
      if ((*flags & VCPU_SSHOTTMR_future) && *timeout < SystemTimeNs()) return Error(XEN_ETIME);
      spdlog::trace("Xen shim: vCPU {} singleshot timer at {} ns (now {} ns)", target, *timeout, SystemTimeNs());
      state.singleshot_ns = *timeout;
      timers_changed_ = true;
      return 0;
    }
    case VCPUOP_stop_singleshot_timer:
      if (target != caller.vcpu) return Error(XEN_EINVAL);
      state.singleshot_ns.reset();
      timers_changed_ = true;
      return 0;
    case VCPUOP_set_periodic_timer: {
      if (target != caller.vcpu) return Error(XEN_EINVAL);
      std::optional<uint64_t> period = caller.access.ReadObject<uint64_t>(arg);
      if (!period) return Error(XEN_EFAULT);
      if (*period < kNsPerMs) return Error(XEN_EINVAL);  // Xen's minimum
      state.periodic_ns = *period;
      state.periodic_next_ns = SystemTimeNs() + *period;
      timers_changed_ = true;
      return 0;
    }
    case VCPUOP_stop_periodic_timer:
      if (target != caller.vcpu) return Error(XEN_EINVAL);
      state.periodic_ns = 0;
      timers_changed_ = true;
      return 0;
    case VCPUOP_is_up:
      return state.started ? 1 : 0;
    case VCPUOP_initialise: {
      if (state.started) return Error(XEN_EEXIST);
      std::optional<vcpu_hvm_context_t> context = caller.access.ReadObject<vcpu_hvm_context_t>(arg);
      if (!context) return Error(XEN_EFAULT);
      // What the accelerators start a vCPU in: 32-bit protected mode, flat segments, paging off.
      const vcpu_hvm_x86_32& regs = context->cpu_regs.x86_32;
      if (context->mode != VCPU_HVM_MODE_32B || (regs.cr0 & 0x80000001) != 1 || regs.cr4 != 0 || regs.efer != 0 ||
          regs.cs_base != 0 || regs.ds_base != 0 || regs.ss_base != 0) {
        return Error(XEN_EINVAL);
      }
      state.start_context = accel::PvhEntry{regs.eip, regs.ebx, regs.esp};
      return 0;
    }
    case VCPUOP_up: {
      if (state.started) return 0;
      if (!state.start_context) return Error(XEN_EINVAL);
      if (!state.vcpu->Start(*state.start_context).ok()) return Error(XEN_EINVAL);
      state.started = true;
      return 0;
    }
    default:
      return Error(XEN_ENOSYS);
  }
}

// ---- sched_op, set_timer_op, console_io

int64_t Shim::SchedOp(Caller& caller, uint64_t command, uint64_t arg) {
  switch (command) {
    case SCHEDOP_yield:
      sched_yield();
      return 0;
    case SCHEDOP_block:
      return WaitForEvents(caller, {}, std::nullopt);
    case SCHEDOP_shutdown: {
      std::optional<uint32_t> reason = caller.access.ReadObject<uint32_t>(arg);
      if (!reason) return Error(XEN_EFAULT);
      ShutdownReason why;
      switch (*reason) {
        case SHUTDOWN_poweroff:
          why = ShutdownReason::kPoweroff;
          break;
        case SHUTDOWN_reboot:
          why = ShutdownReason::kReboot;
          break;
        case SHUTDOWN_crash:
          why = ShutdownReason::kCrash;
          break;
        case SHUTDOWN_watchdog:
          why = ShutdownReason::kWatchdog;
          break;
        case SHUTDOWN_soft_reset:
          why = ShutdownReason::kSoftReset;
          break;
        default:  // SHUTDOWN_suspend needs save/restore, which xenkvm does not have
          return Error(XEN_EINVAL);
      }
      if (callbacks_.shutdown) callbacks_.shutdown(why);
      return 0;
    }
    case SCHEDOP_poll: {
      // ports handle, nr_ports, timeout (64-bit: @0 @8 @16; 32-bit: @0 @4 @8).
      std::optional<uint64_t> ports_handle = caller.ReadWord(arg);
      std::optional<uint32_t> count = caller.access.ReadObject<uint32_t>(arg + caller.word_size());
      std::optional<uint64_t> timeout = caller.access.ReadObject<uint64_t>(arg + (caller.long_mode ? 16 : 8));
      if (!ports_handle || !count || !timeout) return Error(XEN_EFAULT);
      if (*count > kMaxPollPorts) return Error(XEN_EINVAL);
      std::vector<uint32_t> ports(*count);
      if (*count > 0 && !caller.access.Read(*ports_handle, std::span(reinterpret_cast<uint8_t*>(ports.data()),
                                                                     ports.size() * sizeof(uint32_t)))) {
        return Error(XEN_EFAULT);
      }
      {
        absl::MutexLock lock(&mutex_);
        for (uint32_t port : ports) {
          if (!ValidPortLocked(port)) return Error(XEN_EINVAL);
        }
      }
      return WaitForEvents(caller, ports, *timeout == 0 ? std::nullopt : std::optional<uint64_t>(*timeout));
    }
    default:
      return Error(XEN_ENOSYS);
  }
}

// Blocks the calling vCPU until one of `ports` is pending (none: any event for this vCPU, i.e.
// its upcall_pending), an event for it can be taken (RFLAGS.IF set), the deadline (system time)
// passes, or the VM stops.
int64_t Shim::WaitForEvents(Caller& caller, const std::vector<uint32_t>& ports, std::optional<uint64_t> deadline_ns) {
  // Xen ends SCHEDOP_poll early too when the vCPU has an event it can take now
  // (local_events_need_delivery: upcall_pending, RFLAGS.IF set): a vCPU polling its spinlock's port
  // must still answer the IPIs of the CPU that holds the lock, or both wait for ever.
  absl::StatusOr<accel::Registers> registers = caller.accel_vcpu.GetRegisters();
  const bool interrupts_enabled = registers.ok() && (registers->rflags & (uint64_t{1} << 9)) != 0;
  absl::MutexLock lock(&mutex_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (stopping_) return true;
    std::optional<VcpuInfo> info = VcpuInfoLocked(caller.vcpu);
    if (info && info->upcall_pending() && (ports.empty() || interrupts_enabled)) return true;
    if (ports.empty()) return false;
    for (uint32_t port : ports) {
      if (shared_info_.IsPending(port)) return true;
    }
    return false;
  };
  VcpuState& state = vcpus_[caller.vcpu];
  state.blocked = true;
  state.blocked_since_ns = SystemTimeNs();
  WriteRunstateLocked(caller.vcpu);
  while (!ready()) {
    const uint64_t generation = event_generation_;
    auto changed = [this, generation]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return event_generation_ != generation || stopping_;
    };
    if (deadline_ns) {
      const uint64_t now = SystemTimeNs();
      if (now >= *deadline_ns) break;
      mutex_.AwaitWithTimeout(absl::Condition(&changed), absl::Nanoseconds(*deadline_ns - now));
    } else {
      mutex_.Await(absl::Condition(&changed));
    }
  }
  state.time_blocked_ns += SystemTimeNs() - state.blocked_since_ns;
  state.blocked = false;
  WriteRunstateLocked(caller.vcpu);
  return 0;
}

int64_t Shim::SetTimerOp(Caller& caller, uint64_t timeout_ns) {
  absl::MutexLock lock(&mutex_);
  VcpuState& state = vcpus_[caller.vcpu];
  if (timeout_ns == 0) {
    state.singleshot_ns.reset();
  } else if (static_cast<int64_t>(timeout_ns) < 0 || timeout_ns >= (uint64_t{1} << 50)) {
    // Linux once passed garbage here; Xen (and QEMU) then fire in 100 ms rather than never.
    state.singleshot_ns = SystemTimeNs() + 100 * kNsPerMs;
  } else {
    state.singleshot_ns = timeout_ns;
  }
  timers_changed_ = true;
  return 0;
}

int64_t Shim::ConsoleIo(Caller& caller, uint64_t command, uint64_t count, uint64_t buffer) {
  switch (command) {
    case CONSOLEIO_write: {
      const uint64_t length = std::min<uint64_t>(count & 0xffffffff, kMaxConsoleWrite);
      std::vector<uint8_t> bytes(length);
      if (length > 0 && !caller.access.Read(buffer, bytes)) return Error(XEN_EFAULT);
      if (callbacks_.console) {
        for (uint8_t byte : bytes) callbacks_.console(byte);
      }
      return 0;
    }
    case CONSOLEIO_read:
      return 0;  // no console input yet
    default:
      return Error(XEN_EINVAL);
  }
}

// ---- Event channels

uint32_t Shim::PortLimitLocked() const { return std::min(config_.max_event_channels, shared_info_.port_limit()); }

bool Shim::ValidPortLocked(uint32_t port) const { return port != 0 && port < PortLimitLocked(); }

std::optional<uint32_t> Shim::AllocatePortLocked() {
  for (uint32_t port = 1; port < PortLimitLocked(); ++port) {
    if (ports_[port].type == PortType::kClosed) {
      ports_[port] = Port{};
      // A reused port starts clean: not pending, not masked (Xen resets both on allocation).
      const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion = accelerator_.ExcludeGuestAtomics();
      shared_info_.TestAndClearPending(port);
      shared_info_.TestAndClearMask(port);
      return port;
    }
  }
  return std::nullopt;
}

void Shim::LatchLongModeLocked(bool long_mode) {
  long_mode_latched_ = true;
  if (kernel_ != nullptr) {
    if (absl::Status set = kernel_->SetLongMode(long_mode); !set.ok()) {
      spdlog::warn("Xen shim: kernel LONG_MODE: {}", std::string(set.message()));
    }
  }
  if (shared_info_.long_mode() == long_mode) return;
  // The layout changes (Xen latches it the same way); ports the other layout cannot hold are closed.
  shared_info_.set_long_mode(long_mode);
  for (uint32_t port = PortLimitLocked(); port < ports_.size(); ++port) {
    if (ports_[port].type != PortType::kClosed) ClosePortLocked(port);
  }
}

std::optional<VcpuInfo> Shim::VcpuInfoLocked(uint32_t vcpu) {
  if (vcpu >= vcpus_.size()) return std::nullopt;
  uint8_t* host = vcpus_[vcpu].vcpu_info != nullptr ? vcpus_[vcpu].vcpu_info : shared_info_.DefaultVcpuInfo(vcpu);
  if (host == nullptr) return std::nullopt;
  return VcpuInfo(host, shared_info_.long_mode());
}

void Shim::SetPendingLocked(uint32_t port) {
  Port& p = ports_[port];
  ++event_generation_;
  if (KernelSendLocked(port)) return;
  // The guest clears these bits with XCHG and LOCK BTR, which emu runs as loads and stores: an
  // event set in between would be lost (seen: a disk completion never seen, the guest's I/O hung).
  const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion = accelerator_.ExcludeGuestAtomics();
  if (shared_info_.TestAndSetPending(port)) return;  // already pending: nothing new to tell
  ++p.counters.deliveries;
  if (shared_info_.IsMasked(port)) {
    ++p.counters.masked;
    return;
  }
  MarkVcpuPendingLocked(p.vcpu, port);
}

void Shim::MarkVcpuPendingLocked(uint32_t vcpu, uint32_t port) {
  std::optional<VcpuInfo> info = VcpuInfoLocked(vcpu);
  if (!info) return;
  const uint32_t word = port / (shared_info_.long_mode() ? 64 : 32);
  if (info->TestAndSetPendingSelector(word)) return;
  if (info->TestAndSetUpcallPending()) return;
  ++ports_[port].counters.upcalls;
  RaiseUpcallLocked(vcpu);
}

// Xen's callback is level-triggered (re-injected while upcall_pending is set); xenkvm injects on
// edges, so when the way upcalls arrive changes, vCPUs whose upcall is already pending get one.
void Shim::RaisePendingUpcallsLocked() {
  for (uint32_t v = 0; v < vcpus_.size(); ++v) {
    std::optional<VcpuInfo> info = VcpuInfoLocked(v);
    if (info && info->upcall_pending()) RaiseUpcallLocked(v);
  }
}

bool Shim::KernelSendLocked(uint32_t port) {
  if (kernel_ == nullptr || !shared_info_.gpa()) return false;
  Port& p = ports_[port];
  // The kernel sets pending, selector and upcall_pending and injects the upcall; the shim can
  // still count what it sees before and after (the upcall itself is the kernel's).
  const bool was_pending = shared_info_.IsPending(port);
  if (absl::Status sent = kernel_->Send(port, p.vcpu); !sent.ok()) {
    spdlog::debug("Xen shim: kernel EVTCHN_SEND of port {}: {}; delivering in userspace", port,
                  std::string(sent.message()));
    return false;
  }
  if (!was_pending) {
    ++p.counters.deliveries;
    if (shared_info_.IsMasked(port)) ++p.counters.masked;
  }
  // A GSI callback is the VMM's line, not the kernel's.
  if ((callback_via_ >> 56) == HVM_PARAM_CALLBACK_TYPE_GSI && callback_via_ != 0 && p.vcpu == 0) {
    std::optional<VcpuInfo> info = VcpuInfoLocked(0);
    if (info && info->upcall_pending() && callbacks_.set_gsi) {
      callbacks_.set_gsi(static_cast<uint32_t>(callback_via_ & 0xffffffff), true);
    }
  }
  return true;
}

void Shim::KernelRouteLocked(uint32_t port) {
  if (kernel_ == nullptr || port == 0 || port >= ports_.size()) return;
  const Port& p = ports_[port];
  absl::Status routed;
  if (p.type == PortType::kIpi) {
    routed = kernel_->RouteSend(port, /*ipi=*/true, port, p.vcpu);
  } else if (p.type == PortType::kInterdomain && !p.backend) {
    routed = kernel_->RouteSend(port, /*ipi=*/false, p.remote_port, ports_[p.remote_port].vcpu);
  } else {
    routed = kernel_->Unroute(port);  // closed, unbound, VIRQ, backend: the shim's
  }
  if (!routed.ok()) spdlog::warn("Xen shim: kernel route for port {}: {}", port, std::string(routed.message()));
}

void Shim::KernelSetVcpuInfoLocked(uint32_t vcpu) {
  if (kernel_ == nullptr || vcpus_[vcpu].vcpu == nullptr || !shared_info_.gpa()) return;
  uint64_t gpa = 0;
  if (vcpus_[vcpu].vcpu_info != nullptr) {
    gpa = vcpus_[vcpu].vcpu_info_gpa;
  } else if (vcpu < kMaxLegacyVcpus) {
    gpa = *shared_info_.gpa() + vcpu * kVcpuInfoSize;
  } else {
    return;
  }
  if (absl::Status set = kernel_->SetVcpuInfo(vcpu, gpa); !set.ok()) {
    spdlog::warn("Xen shim: kernel VCPU_INFO for vCPU {}: {}", vcpu, std::string(set.message()));
  }
}

void Shim::KernelSetUpcallRouteLocked() {
  if (kernel_ == nullptr) return;
  const bool vector = (callback_via_ >> 56) == HVM_PARAM_CALLBACK_TYPE_VECTOR;
  if (absl::Status set = kernel_->SetUpcallVector(std::nullopt, vector ? callback_via_ & 0xff : 0); !set.ok()) {
    spdlog::warn("Xen shim: kernel UPCALL_VECTOR: {}", std::string(set.message()));
  }
}

void Shim::RaiseUpcallLocked(uint32_t vcpu) {
  VcpuState& state = vcpus_[vcpu];
  if (state.vcpu == nullptr) return;
  // With the kernel's HVM-wide vector, the kernel injects while upcall_pending is set, at the
  // vCPU's next entry: make it enter. (A per-vCPU vector is a LAPIC interrupt either way.)
  if (kernel_ != nullptr && state.upcall_vector == 0 && (callback_via_ >> 56) == HVM_PARAM_CALLBACK_TYPE_VECTOR &&
      callback_via_ != 0) {
    state.vcpu->Kick();
    return;
  }
  uint8_t vector = state.upcall_vector;
  if (vector == 0) {
    const uint64_t type = callback_via_ >> 56;
    if (callback_via_ == 0) return;  // no upcall configured: the guest polls
    if (type == HVM_PARAM_CALLBACK_TYPE_GSI) {
      // The line follows vCPU 0's upcall_pending; other vCPUs' events wait for vCPU 0 (as Xen).
      if (vcpu == 0 && callbacks_.set_gsi) callbacks_.set_gsi(static_cast<uint32_t>(callback_via_ & 0xffffffff), true);
      return;
    }
    if (type != HVM_PARAM_CALLBACK_TYPE_VECTOR) {
      if (!gsi_callback_warned_) {
        spdlog::warn("Xen shim: the guest asked for a PCI INTx event callback ({:#x}); xenkvm has no PCI "
                     "bus yet, so this guest gets no upcalls",
                     callback_via_);
        gsi_callback_warned_ = true;
      }
      return;
    }
    vector = static_cast<uint8_t>(callback_via_ & 0xff);
  }
  // The per-vCPU vector is a LAPIC interrupt the guest EOIs; the HVM-wide one bypasses the LAPIC.
  absl::Status injected = state.upcall_vector != 0 ? state.vcpu->InjectInterrupt(vector)
                                                   : state.vcpu->InjectXenCallback(vector);
  if (!injected.ok() && !state.upcall_owed) {
    spdlog::debug("Xen shim: upcall vector {:#x} to vCPU {} not injected ({}); retried while upcall_pending is set",
                  vector, vcpu, std::string(injected.message()));
  }
  if (!injected.ok() && !state.upcall_owed) timers_changed_ = true;  // the timer thread retries it
  state.upcall_owed = !injected.ok();
}

bool Shim::RetryOwedUpcallLocked(uint32_t vcpu) {
  VcpuState& state = vcpus_[vcpu];
  if (!state.upcall_owed) return false;
  std::optional<VcpuInfo> info = VcpuInfoLocked(vcpu);
  if (!info || !info->upcall_pending()) {
    state.upcall_owed = false;  // the guest saw its events another way
    return false;
  }
  RaiseUpcallLocked(vcpu);
  return state.upcall_owed;
}

void Shim::RunBackendHandler(const std::shared_ptr<EventHandler>& handler) {
  if (!handler) return;
  if (backend_loop_ == nullptr) {
    (*handler)();
    return;
  }
  (void)backend_loop_->Post([handler] { (*handler)(); });
}

int64_t Shim::SendLocked(uint32_t port) {
  Port& p = ports_[port];
  switch (p.type) {
    case PortType::kInterdomain:
      ++p.counters.sends;
      if (p.backend) {
        RunBackendHandler(p.handler);
      } else {
        SetPendingLocked(p.remote_port);
      }
      return 0;
    case PortType::kIpi:
      ++p.counters.sends;
      SetPendingLocked(port);
      return 0;
    case PortType::kUnbound:
      ++p.counters.sends;  // nobody listens yet: dropped, as Xen does
      return 0;
    default:
      return Error(XEN_EINVAL);
  }
}

void Shim::ClosePortLocked(uint32_t port) {
  Port& p = ports_[port];
  uint32_t peer = 0;
  switch (p.type) {
    case PortType::kVirq: {
      const uint32_t owner = PerVcpuVirq(p.virq) ? p.vcpu : 0;
      if (owner < vcpus_.size() && vcpus_[owner].virq_ports[p.virq] == port) vcpus_[owner].virq_ports[p.virq] = 0;
      if (kernel_ != nullptr && p.virq == VIRQ_TIMER) (void)kernel_->SetTimerPort(p.vcpu, 0);
      break;
    }
    case PortType::kInterdomain:
      if (!p.backend && p.remote_port < ports_.size() && ports_[p.remote_port].type == PortType::kInterdomain) {
        // The loopback peer goes back to waiting for a binding from this domain.
        Port& other = ports_[p.remote_port];
        other.type = PortType::kUnbound;
        other.remote_domain = config_.domid;
        other.remote_port = 0;
        peer = p.remote_port;
      }
      break;
    default:
      break;
  }
  p = Port{};
  KernelRouteLocked(port);
  if (peer != 0) KernelRouteLocked(peer);
}

void Shim::SendVirqLocked(uint32_t vcpu, uint32_t virq) {
  const uint32_t owner = PerVcpuVirq(virq) ? vcpu : 0;
  if (owner >= vcpus_.size()) return;
  const uint32_t port = vcpus_[owner].virq_ports[virq];
  if (port != 0) SetPendingLocked(port);
}

int64_t Shim::EventChannelOp(Caller& caller, uint64_t command, uint64_t arg) {
  auto self = [this](uint16_t domid) { return domid == DOMID_SELF || domid == config_.domid; };
  switch (command) {
    case EVTCHNOP_alloc_unbound: {
      std::optional<evtchn_alloc_unbound_t> op = caller.access.ReadObject<evtchn_alloc_unbound_t>(arg);
      if (!op) return Error(XEN_EFAULT);
      if (!self(op->dom)) return Error(XEN_ESRCH);
      if (!self(op->remote_dom) && op->remote_dom != kBackendDomain) return Error(XEN_ESRCH);
      absl::MutexLock lock(&mutex_);
      std::optional<uint32_t> port = AllocatePortLocked();
      if (!port) return Error(XEN_ENOSPC);
      ports_[*port].type = PortType::kUnbound;
      ports_[*port].remote_domain = self(op->remote_dom) ? config_.domid : kBackendDomain;
      op->port = *port;
      if (!caller.access.WriteObject(arg, *op)) {
        ClosePortLocked(*port);
        return Error(XEN_EFAULT);
      }
      return 0;
    }
    case EVTCHNOP_bind_interdomain: {
      std::optional<evtchn_bind_interdomain_t> op = caller.access.ReadObject<evtchn_bind_interdomain_t>(arg);
      if (!op) return Error(XEN_EFAULT);
      // Loopback within this domain only: backends bind from their side (BindBackend).
      if (!self(op->remote_dom)) return Error(XEN_EINVAL);
      absl::MutexLock lock(&mutex_);
      const uint32_t remote = op->remote_port;
      if (!ValidPortLocked(remote) || ports_[remote].type != PortType::kUnbound ||
          ports_[remote].remote_domain != config_.domid) {
        return Error(XEN_EINVAL);
      }
      std::optional<uint32_t> port = AllocatePortLocked();
      if (!port) return Error(XEN_ENOSPC);
      ports_[*port].type = PortType::kInterdomain;
      ports_[*port].remote_domain = config_.domid;
      ports_[*port].remote_port = remote;
      ports_[*port].vcpu = 0;
      ports_[remote].type = PortType::kInterdomain;
      ports_[remote].remote_port = *port;
      op->local_port = *port;
      if (!caller.access.WriteObject(arg, *op)) {
        ClosePortLocked(*port);
        return Error(XEN_EFAULT);
      }
      KernelRouteLocked(*port);
      KernelRouteLocked(remote);
      // Xen raises the new local port, so that events sent before the bind are not lost.
      SetPendingLocked(*port);
      return 0;
    }
    case EVTCHNOP_bind_virq: {
      std::optional<evtchn_bind_virq_t> op = caller.access.ReadObject<evtchn_bind_virq_t>(arg);
      if (!op) return Error(XEN_EFAULT);
      if (op->virq >= kNrVirqs) return Error(XEN_EINVAL);
      absl::MutexLock lock(&mutex_);
      if (op->vcpu >= vcpus_.size() || vcpus_[op->vcpu].vcpu == nullptr) return Error(XEN_ENOENT);
      if (!PerVcpuVirq(op->virq) && op->vcpu != 0) return Error(XEN_EINVAL);  // global VIRQs: vCPU 0
      uint32_t& slot = vcpus_[op->vcpu].virq_ports[op->virq];
      if (slot != 0) return Error(XEN_EEXIST);
      std::optional<uint32_t> port = AllocatePortLocked();
      if (!port) return Error(XEN_ENOSPC);
      ports_[*port].type = PortType::kVirq;
      ports_[*port].virq = op->virq;
      ports_[*port].vcpu = op->vcpu;
      slot = *port;
      op->port = *port;
      if (!caller.access.WriteObject(arg, *op)) {
        ClosePortLocked(*port);
        return Error(XEN_EFAULT);
      }
      if (kernel_ != nullptr && op->virq == VIRQ_TIMER) {
        if (absl::Status set = kernel_->SetTimerPort(op->vcpu, *port); !set.ok()) {
          spdlog::warn("Xen shim: kernel TIMER for vCPU {}: {}", op->vcpu, std::string(set.message()));
        }
      }
      return 0;
    }
    case EVTCHNOP_bind_ipi: {
      std::optional<evtchn_bind_ipi_t> op = caller.access.ReadObject<evtchn_bind_ipi_t>(arg);
      if (!op) return Error(XEN_EFAULT);
      absl::MutexLock lock(&mutex_);
      if (op->vcpu >= vcpus_.size() || vcpus_[op->vcpu].vcpu == nullptr) return Error(XEN_ENOENT);
      std::optional<uint32_t> port = AllocatePortLocked();
      if (!port) return Error(XEN_ENOSPC);
      ports_[*port].type = PortType::kIpi;
      ports_[*port].vcpu = op->vcpu;
      op->port = *port;
      if (!caller.access.WriteObject(arg, *op)) {
        ClosePortLocked(*port);
        return Error(XEN_EFAULT);
      }
      KernelRouteLocked(*port);
      return 0;
    }
    case EVTCHNOP_close: {
      std::optional<evtchn_close_t> op = caller.access.ReadObject<evtchn_close_t>(arg);
      if (!op) return Error(XEN_EFAULT);
      absl::MutexLock lock(&mutex_);
      if (!ValidPortLocked(op->port) || ports_[op->port].type == PortType::kClosed) return Error(XEN_EINVAL);
      ClosePortLocked(op->port);
      return 0;
    }
    case EVTCHNOP_send: {
      std::optional<evtchn_send_t> op = caller.access.ReadObject<evtchn_send_t>(arg);
      if (!op) return Error(XEN_EFAULT);
      absl::MutexLock lock(&mutex_);
      if (!ValidPortLocked(op->port)) return Error(XEN_EINVAL);
      return SendLocked(op->port);
    }
    case EVTCHNOP_status: {
      std::optional<evtchn_status_t> op = caller.access.ReadObject<evtchn_status_t>(arg);
      if (!op) return Error(XEN_EFAULT);
      if (!self(op->dom)) return Error(XEN_ESRCH);
      absl::MutexLock lock(&mutex_);
      if (!ValidPortLocked(op->port)) return Error(XEN_EINVAL);
      const Port& p = ports_[op->port];
      op->status = static_cast<uint32_t>(p.type);
      op->vcpu = p.vcpu;
      std::memset(&op->u, 0, sizeof(op->u));
      switch (p.type) {
        case PortType::kUnbound:
          op->u.unbound.dom = p.remote_domain;
          break;
        case PortType::kInterdomain:
          op->u.interdomain.dom = p.backend ? kBackendDomain : p.remote_domain;
          op->u.interdomain.port = p.backend ? 0 : p.remote_port;
          break;
        case PortType::kVirq:
          op->u.virq = p.virq;
          break;
        default:
          break;
      }
      return caller.access.WriteObject(arg, *op) ? 0 : Error(XEN_EFAULT);
    }
    case EVTCHNOP_bind_vcpu: {
      std::optional<evtchn_bind_vcpu_t> op = caller.access.ReadObject<evtchn_bind_vcpu_t>(arg);
      if (!op) return Error(XEN_EFAULT);
      absl::MutexLock lock(&mutex_);
      if (!ValidPortLocked(op->port)) return Error(XEN_EINVAL);
      if (op->vcpu >= vcpus_.size() || vcpus_[op->vcpu].vcpu == nullptr) return Error(XEN_ENOENT);
      Port& p = ports_[op->port];
      if (p.type == PortType::kClosed || p.type == PortType::kIpi ||
          (p.type == PortType::kVirq && PerVcpuVirq(p.virq))) {
        return Error(XEN_EINVAL);
      }
      p.vcpu = op->vcpu;
      if (p.type == PortType::kInterdomain && !p.backend) KernelRouteLocked(p.remote_port);  // delivers here
      return 0;
    }
    case EVTCHNOP_unmask: {
      std::optional<evtchn_unmask_t> op = caller.access.ReadObject<evtchn_unmask_t>(arg);
      if (!op) return Error(XEN_EFAULT);
      absl::MutexLock lock(&mutex_);
      if (!ValidPortLocked(op->port)) return Error(XEN_EINVAL);
      const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion = accelerator_.ExcludeGuestAtomics();
      // An event that arrived while masked is delivered now (through the kernel: cleared and sent
      // again, since the kernel raises nothing for a port already pending).
      if (shared_info_.TestAndClearMask(op->port) && shared_info_.IsPending(op->port)) {
        ++event_generation_;
        if (kernel_ != nullptr && shared_info_.gpa()) {
          shared_info_.TestAndClearPending(op->port);
          if (KernelSendLocked(op->port)) return 0;
          shared_info_.TestAndSetPending(op->port);
        }
        MarkVcpuPendingLocked(ports_[op->port].vcpu, op->port);
      }
      return 0;
    }
    case EVTCHNOP_reset: {
      std::optional<evtchn_reset_t> op = caller.access.ReadObject<evtchn_reset_t>(arg);
      if (!op) return Error(XEN_EFAULT);
      if (!self(op->dom)) return Error(XEN_ESRCH);
      absl::MutexLock lock(&mutex_);
      for (uint32_t port = 1; port < ports_.size(); ++port) {
        if (ports_[port].type != PortType::kClosed && !ports_[port].backend) ClosePortLocked(port);
      }
      if (kernel_ != nullptr) (void)kernel_->ResetRoutes();
      return 0;
    }
    default:
      // bind_pirq, FIFO (init_control, expand_array, set_priority), reset_cont: not yet.
      return Error(XEN_ENOSYS);
  }
}

// ---- Backend side

absl::StatusOr<uint32_t> Shim::AllocateBackendPort(EventHandler handler) {
  absl::MutexLock lock(&mutex_);
  std::optional<uint32_t> port = AllocatePortLocked();
  if (!port) return absl::ResourceExhaustedError("Xen shim: no free event channel for a backend");
  ports_[*port].type = PortType::kInterdomain;
  ports_[*port].backend = true;
  ports_[*port].remote_domain = kBackendDomain;
  ports_[*port].handler = std::make_shared<EventHandler>(std::move(handler));
  return *port;
}

absl::Status Shim::BindBackend(uint32_t guest_port, EventHandler handler) {
  absl::MutexLock lock(&mutex_);
  if (!ValidPortLocked(guest_port) || ports_[guest_port].type != PortType::kUnbound ||
      ports_[guest_port].remote_domain != kBackendDomain) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "Xen shim: guest port %u is not waiting for a backend (alloc_unbound with remote domain 0)", guest_port));
  }
  Port& p = ports_[guest_port];
  p.type = PortType::kInterdomain;
  p.backend = true;
  p.handler = std::make_shared<EventHandler>(std::move(handler));
  return absl::OkStatus();
}

absl::Status Shim::UnbindBackend(uint32_t guest_port) {
  absl::MutexLock lock(&mutex_);
  if (!ValidPortLocked(guest_port) || !ports_[guest_port].backend) {
    return absl::NotFoundError(absl::StrFormat("Xen shim: guest port %u is not bound to a backend", guest_port));
  }
  Port& p = ports_[guest_port];
  p.type = PortType::kUnbound;
  p.backend = false;
  p.handler.reset();
  return absl::OkStatus();
}

absl::Status Shim::NotifyGuest(uint32_t guest_port) {
  absl::MutexLock lock(&mutex_);
  if (!ValidPortLocked(guest_port) || !ports_[guest_port].backend) {
    return absl::FailedPreconditionError(
        absl::StrFormat("Xen shim: guest port %u is not bound to a backend (closed by the guest?)", guest_port));
  }
  ++ports_[guest_port].counters.sends;
  SetPendingLocked(guest_port);
  return absl::OkStatus();
}

void Shim::SetHvmParam(uint32_t index, uint64_t value) {
  absl::MutexLock lock(&mutex_);
  hvm_params_[index] = value;
}

// ---- Statistics

ShimStatistics Shim::Statistics() const {
  absl::MutexLock lock(&mutex_);
  ShimStatistics stats;
  stats.hypercalls = hypercall_counts_;
  stats.unknown_hypercalls = unknown_hypercalls_;
  stats.refused_cpl = refused_cpl_;
  for (uint32_t port = 1; port < ports_.size(); ++port) {
    const Port& p = ports_[port];
    if (p.type == PortType::kClosed) continue;
    PortSnapshot snapshot;
    snapshot.port = port;
    snapshot.type = p.type;
    snapshot.vcpu = p.vcpu;
    snapshot.remote_domain = p.remote_domain;
    if (p.type == PortType::kInterdomain) snapshot.remote = p.backend ? "backend" : "loopback";
    snapshot.target = p.type == PortType::kVirq ? p.virq : p.remote_port;
    snapshot.pending = shared_info_.IsPending(port);
    snapshot.masked = shared_info_.IsMasked(port);
    snapshot.counters = p.counters;
    stats.ports.push_back(snapshot);
  }
  return stats;
}

absl::Status Shim::InjectEvent(uint32_t port) {
  absl::MutexLock lock(&mutex_);
  if (!ValidPortLocked(port)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("port %u is outside 1..%u, the guest's event channel range", port, PortLimitLocked() - 1));
  }
  if (ports_[port].type == PortType::kClosed) return absl::NotFoundError(absl::StrFormat("port %u is closed", port));
  ++ports_[port].counters.sends;
  SetPendingLocked(port);
  return absl::OkStatus();
}

// ---- Time

void Shim::UpdateTimeLocked(uint32_t vcpu) {
  VcpuState& state = vcpus_[vcpu];
  if (state.vcpu == nullptr) return;
  TimeInfo time = time_scale_;
  time.system_time_ns = SystemTimeNs();
  time.tsc_timestamp = __rdtsc() + state.tsc_offset;
  if (std::optional<VcpuInfo> info = VcpuInfoLocked(vcpu)) info->WriteTime(time);
  if (state.time_area_gpa) {
    if (absl::StatusOr<uint8_t*> host = memory_.HostAddress(memory::GuestAddress(*state.time_area_gpa), 32); host.ok()) {
      VcpuInfo::WriteTimeAt(*host, time);
    }
  }
}

void Shim::WriteRunstateLocked(uint32_t vcpu) {
  VcpuState& state = vcpus_[vcpu];
  if (!state.runstate_gpa) return;
  const uint64_t now = SystemTimeNs();
  const uint64_t blocked = state.time_blocked_ns + (state.blocked ? now - state.blocked_since_ns : 0);
  // vcpu_runstate_info: state, state_entry_time, time[running, runnable, blocked, offline].
  const uint64_t times[4] = {now - blocked, 0, blocked, 0};
  const uint32_t run_state = state.blocked ? RUNSTATE_blocked : RUNSTATE_running;
  const uint64_t entry = state.blocked ? state.blocked_since_ns : now;
  std::vector<uint8_t> bytes;
  auto put = [&bytes](const void* data, size_t size) {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    bytes.insert(bytes.end(), p, p + size);
  };
  put(&run_state, 4);
  if (shared_info_.long_mode()) bytes.resize(8);  // 64-bit: state_entry_time is 8-aligned
  const size_t entry_at = bytes.size();
  put(&entry, 8);
  put(times, sizeof(times));
  const memory::GuestAddress area(*state.runstate_gpa);
  const memory::GuestAddress entry_word = area.Unchecked(entry_at);
  absl::StatusOr<uint64_t> old_entry = memory_.AtomicLoad<uint64_t>(entry_word);  // fails unaligned
  if (!(vm_assist_ & (uint64_t{1} << VMASST_TYPE_runstate_update_flag)) || !old_entry.ok()) {
    (void)memory_.Write(area, bytes);
    return;
  }
  // The guest may read the area while it changes: XEN_RUNSTATE_UPDATE in state_entry_time says so,
  // set before the update and cleared after it, as Xen does.
  (void)memory_.AtomicStore<uint64_t>(entry_word, *old_entry | XEN_RUNSTATE_UPDATE);
  const uint64_t flagged = entry | XEN_RUNSTATE_UPDATE;
  std::memcpy(bytes.data() + entry_at, &flagged, 8);
  (void)memory_.Write(area, bytes);
  (void)memory_.AtomicStore<uint64_t>(entry_word, entry);
}

void Shim::TimerLoop() {
  absl::MutexLock lock(&mutex_);
  while (!stopping_) {
    std::optional<uint64_t> next;
    for (const VcpuState& state : vcpus_) {
      if (state.singleshot_ns) next = std::min(next.value_or(~uint64_t{0}), *state.singleshot_ns);
      if (state.periodic_ns) next = std::min(next.value_or(~uint64_t{0}), state.periodic_next_ns);
    }
    timers_changed_ = false;
    auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return timers_changed_ || stopping_; };
    const uint64_t now = SystemTimeNs();
    // Owed upcalls are retried every millisecond until taken (or no longer pending).
    for (uint32_t v = 0; v < vcpus_.size(); ++v) {
      if (RetryOwedUpcallLocked(v)) next = std::min(next.value_or(~uint64_t{0}), now + kOwedUpcallRetryNs);
    }
    if (!next) {
      mutex_.Await(absl::Condition(&wake));
      continue;
    }
    if (*next > now) {
      mutex_.AwaitWithTimeout(absl::Condition(&wake), absl::Nanoseconds(*next - now));
      continue;
    }
    for (uint32_t v = 0; v < vcpus_.size(); ++v) {
      VcpuState& state = vcpus_[v];
      bool fire = false;
      if (state.singleshot_ns && *state.singleshot_ns <= now) {
        state.singleshot_ns.reset();
        fire = true;
      }
      if (state.periodic_ns && state.periodic_next_ns <= now) {
        // Skip missed periods rather than firing a burst.
        state.periodic_next_ns += ((now - state.periodic_next_ns) / state.periodic_ns + 1) * state.periodic_ns;
        fire = true;
      }
      if (fire) {
        spdlog::trace("Xen shim: vCPU {} timer fires at {} ns", v, now);
        UpdateTimeLocked(v);
        SendVirqLocked(v, VIRQ_TIMER);
      }
    }
  }
}

}  // namespace xenkvm::xen
