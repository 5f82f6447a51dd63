#include "components/xen/vcpus.h"

#include <x86intrin.h>

#include <cstring>

#include "absl/strings/str_format.h"

namespace xenkvm::xen {
namespace {

constexpr uint64_t kNsPerMs = 1'000'000;
constexpr uint64_t kTimeAreaSize = 32;  // struct vcpu_time_info

}  // namespace

Vcpus::Vcpus(uint32_t count, uint64_t tsc_khz, memory::GuestMemory& memory, const SystemClock& clock,
             SharedPages& pages, Upcalls& upcalls, EventDelivery& delivery, Timers& timers)
    : count_(count),
      time_scale_(TimeScale(tsc_khz)),
      memory_(memory),
      clock_(clock),
      pages_(pages),
      upcalls_(upcalls),
      delivery_(delivery),
      timers_(timers),
      vcpus_(count) {}

absl::Status Vcpus::Attach(accel::Vcpu& vcpu, int64_t tsc_offset) {
  const uint32_t id = vcpu.id();
  absl::MutexLock lock(&mutex_);
  if (id >= vcpus_.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Xen shim: vCPU %u is beyond the configured %u vCPUs", id, vcpus_.size()));
  }
  if (vcpus_[id].vcpu != nullptr) return absl::AlreadyExistsError(absl::StrFormat("Xen shim: vCPU %u attached twice", id));
  vcpus_[id].vcpu = &vcpu;
  vcpus_[id].tsc_offset = tsc_offset;
  vcpus_[id].started = id == 0;
  upcalls_.Attach(id, &vcpu);
  UpdateTimeLocked(id);
  return absl::OkStatus();
}

bool Vcpus::Attached(uint32_t vcpu) const {
  absl::MutexLock lock(&mutex_);
  return vcpu < vcpus_.size() && vcpus_[vcpu].vcpu != nullptr;
}

int64_t Vcpus::Op(HypercallCaller& caller, uint64_t command, uint64_t vcpu_id, uint64_t arg) {
  {
    absl::MutexLock lock(&mutex_);
    if (vcpu_id >= vcpus_.size() || vcpus_[vcpu_id].vcpu == nullptr) return XenError(XEN_ENOENT);
  }
  const uint32_t target = static_cast<uint32_t>(vcpu_id);
  switch (command) {
    case VCPUOP_set_singleshot_timer:
    case VCPUOP_stop_singleshot_timer:
    case VCPUOP_set_periodic_timer:
    case VCPUOP_stop_periodic_timer:
      return TimerOp(caller, command, target, arg);
    default:
      break;
  }
  absl::MutexLock lock(&mutex_);
  State& state = vcpus_[target];
  switch (command) {
    case VCPUOP_register_vcpu_info:
      return RegisterVcpuInfo(caller, target, arg);
    case VCPUOP_register_runstate_memory_area:
      return RegisterArea(caller, target, arg, /*runstate=*/true);
    case VCPUOP_register_vcpu_time_memory_area:
      return RegisterArea(caller, target, arg, /*runstate=*/false);
    case VCPUOP_is_up:
      return state.started ? 1 : 0;
    case VCPUOP_initialise:
      return Initialise(caller, state, arg);
    case VCPUOP_up:
      if (state.started) return 0;
      if (!state.start_context) return XenError(XEN_EINVAL);
      if (!state.vcpu->Start(*state.start_context).ok()) return XenError(XEN_EINVAL);
      state.started = true;
      return 0;
    default:
      return XenError(XEN_ENOSYS);
  }
}

int64_t Vcpus::RegisterVcpuInfo(HypercallCaller& caller, uint32_t target, uint64_t arg) {
  std::optional<vcpu_register_vcpu_info_t> info = caller.access.ReadObject<vcpu_register_vcpu_info_t>(arg);
  if (!info) return XenError(XEN_EFAULT);
  if (vcpus_[target].vcpu_info_registered) return XenError(XEN_EINVAL);  // once per vCPU, as Xen
  if (info->offset > kPageSize - kVcpuInfoSize || info->offset % 8 != 0) return XenError(XEN_EINVAL);
  if (info->mfn > (~uint64_t{0} >> 12)) return XenError(XEN_EINVAL);
  const uint64_t gpa = (info->mfn << 12) + info->offset;
  absl::StatusOr<uint8_t*> host = memory_.HostAddress(memory::GuestAddress(gpa), kVcpuInfoSize);
  if (!host.ok()) return XenError(XEN_EINVAL);
  // The contents move along and the guest is made to rescan everything, as Xen does.
  if (!pages_.PlaceVcpuInfo(target, *host, gpa)) return XenError(XEN_EINVAL);
  vcpus_[target].vcpu_info_registered = true;
  delivery_.VcpuInfoPlaced(target);
  upcalls_.Raise(target);
  UpdateTimeLocked(target);
  return 0;
}

// VCPUOP_register_runstate_memory_area and _vcpu_time_memory_area: a guest-linear address,
// translated now; 0 unregisters.
int64_t Vcpus::RegisterArea(HypercallCaller& caller, uint32_t target, uint64_t arg, bool runstate) {
  State& state = vcpus_[target];
  std::optional<uint64_t>& area = runstate ? state.runstate_gpa : state.time_area_gpa;
  std::optional<uint64_t> address = caller.access.ReadObject<uint64_t>(arg);
  if (!address) return XenError(XEN_EFAULT);
  if (*address == 0) {
    area.reset();
    return 0;
  }
  std::optional<uint64_t> gpa = caller.access.Translate(*address);
  const uint64_t size = runstate ? (pages_.long_mode() ? 48 : 44) : kTimeAreaSize;
  if (!gpa || !memory_.IsValidRange(memory::GuestAddress(*gpa), size) || (*gpa & 0xfff) + size > kPageSize) {
    return XenError(XEN_EFAULT);
  }
  area = *gpa;
  if (runstate) {
    WriteRunstateLocked(target);
  } else {
    UpdateTimeLocked(target);
  }
  return 0;
}

// Timers are the caller's own only, as Xen.
int64_t Vcpus::TimerOp(HypercallCaller& caller, uint64_t command, uint32_t target, uint64_t arg) {
  if (target != caller.vcpu) return XenError(XEN_EINVAL);
  switch (command) {
    case VCPUOP_set_singleshot_timer: {
      std::optional<uint64_t> timeout = caller.access.ReadObject<uint64_t>(arg);
      std::optional<uint32_t> flags = caller.access.ReadObject<uint32_t>(arg + 8);
      if (!timeout || !flags) return XenError(XEN_EFAULT);
      if ((*flags & VCPU_SSHOTTMR_future) && *timeout < clock_.NowNs()) return XenError(XEN_ETIME);
      timers_.SetSingleshot(target, *timeout);
      return 0;
    }
    case VCPUOP_stop_singleshot_timer:
      timers_.SetSingleshot(target, std::nullopt);
      return 0;
    case VCPUOP_set_periodic_timer: {
      std::optional<uint64_t> period = caller.access.ReadObject<uint64_t>(arg);
      if (!period) return XenError(XEN_EFAULT);
      if (*period < kNsPerMs) return XenError(XEN_EINVAL);  // Xen's minimum
      timers_.SetPeriodic(target, *period);
      return 0;
    }
    case VCPUOP_stop_periodic_timer:
      timers_.SetPeriodic(target, 0);
      return 0;
    default:
      return XenError(XEN_ENOSYS);
  }
}

int64_t Vcpus::Initialise(HypercallCaller& caller, State& state, uint64_t arg) {
  if (state.started) return XenError(XEN_EEXIST);
  std::optional<vcpu_hvm_context_t> context = caller.access.ReadObject<vcpu_hvm_context_t>(arg);
  if (!context) return XenError(XEN_EFAULT);
  // What the accelerators start a vCPU in: 32-bit protected mode, flat segments, paging off.
  const vcpu_hvm_x86_32& regs = context->cpu_regs.x86_32;
  if (context->mode != VCPU_HVM_MODE_32B || (regs.cr0 & 0x80000001) != 1 || regs.cr4 != 0 || regs.efer != 0 ||
      regs.cs_base != 0 || regs.ds_base != 0 || regs.ss_base != 0) {
    return XenError(XEN_EINVAL);
  }
  state.start_context = accel::PvhEntry{regs.eip, regs.ebx, regs.esp};
  return 0;
}

void Vcpus::UpdateTime(uint32_t vcpu) {
  absl::MutexLock lock(&mutex_);
  if (vcpu < vcpus_.size()) UpdateTimeLocked(vcpu);
}

void Vcpus::SharedInfoPlaced() {
  absl::MutexLock lock(&mutex_);
  for (uint32_t v = 0; v < vcpus_.size(); ++v) {
    if (vcpus_[v].vcpu == nullptr) continue;
    delivery_.VcpuInfoPlaced(v);
    UpdateTimeLocked(v);
  }
}

void Vcpus::UpdateTimeLocked(uint32_t vcpu) {
  State& state = vcpus_[vcpu];
  if (state.vcpu == nullptr) return;
  TimeInfo time = time_scale_;
  time.system_time_ns = clock_.NowNs();
  time.tsc_timestamp = __rdtsc() + state.tsc_offset;
  uint8_t* time_area = nullptr;
  if (state.time_area_gpa) {
    absl::StatusOr<uint8_t*> host = memory_.HostAddress(memory::GuestAddress(*state.time_area_gpa), kTimeAreaSize);
    if (host.ok()) time_area = *host;
  }
  pages_.WriteTime(vcpu, time, time_area);
}

void Vcpus::SetBlocked(uint32_t vcpu, bool blocked) {
  absl::MutexLock lock(&mutex_);
  if (vcpu >= vcpus_.size()) return;
  State& state = vcpus_[vcpu];
  const uint64_t now = clock_.NowNs();
  if (blocked) {
    state.blocked_since_ns = now;
  } else if (state.blocked) {
    state.time_blocked_ns += now - state.blocked_since_ns;
  }
  state.blocked = blocked;
  WriteRunstateLocked(vcpu);
}

void Vcpus::SetRunstateUpdateFlag(bool enabled) {
  absl::MutexLock lock(&mutex_);
  runstate_update_flag_ = enabled;
}

void Vcpus::WriteRunstateLocked(uint32_t vcpu) {
  State& state = vcpus_[vcpu];
  if (!state.runstate_gpa) return;
  const bool long_mode = pages_.long_mode();
  const uint64_t now = clock_.NowNs();
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
  if (long_mode) bytes.resize(8);  // 64-bit: state_entry_time is 8-aligned
  const size_t entry_at = bytes.size();
  put(&entry, 8);
  put(times, sizeof(times));
  const memory::GuestAddress area(*state.runstate_gpa);
  const memory::GuestAddress entry_word = area.Unchecked(entry_at);
  absl::StatusOr<uint64_t> old_entry = memory_.AtomicLoad<uint64_t>(entry_word);  // fails unaligned
  if (!runstate_update_flag_ || !old_entry.ok()) {
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

}  // namespace xenkvm::xen
