#include "components/xen/dispatcher.h"

#include <iterator>

#include "spdlog/spdlog.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {
const char* HypercallName(uint64_t number) {
  static constexpr const char* kNames[] = {
      "set_trap_table", "mmu_update", "set_gdt", "stack_switch", "set_callbacks", "fpu_taskswitch",
      "sched_op_compat", "platform_op", "set_debugreg", "get_debugreg", "update_descriptor", nullptr,
      "memory_op", "multicall", "update_va_mapping", "set_timer_op", "event_channel_op_compat",
      "xen_version", "console_io", "physdev_op_compat", "grant_table_op", "vm_assist",
      "update_va_mapping_otherdomain", "iret", "vcpu_op", "set_segment_base", "mmuext_op", "xsm_op",
      "nmi_op", "sched_op", "callback_op", "xenoprof_op", "event_channel_op", "physdev_op", "hvm_op",
      "sysctl", "domctl", "kexec_op", "tmem_op", "argo_op", "xenpmu_op", "dm_op", "hypfs_op"};
  return number < std::size(kNames) ? kNames[number] : nullptr;
}

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

Dispatcher::Dispatcher(const XenConfig& config, memory::GuestMemory& memory, Subsystems subsystems,
                       std::function<void(uint8_t)> console, std::function<void(ShutdownReason)> shutdown)
    : config_(config), memory_(memory), s_(subsystems), console_(std::move(console)), shutdown_(std::move(shutdown)) {}

uint64_t Dispatcher::Hypercall(accel::Vcpu& vcpu, const accel::HypercallExit& call) {
  if (call.cpl != 0) {
    refused_cpl_.fetch_add(1, std::memory_order_relaxed);
    return static_cast<uint64_t>(XenError(XEN_EPERM));
  }
  if (call.number < by_number_.size()) by_number_[call.number].fetch_add(1, std::memory_order_relaxed);
  if (!s_.events.long_mode_latched()) s_.events.LatchLongMode(call.long_mode);
  s_.upcalls.RetryOwed(vcpu.id());
  HypercallCaller caller{vcpu.id(), call.long_mode, vcpu, GuestAccess(memory_, vcpu)};
  const int64_t result = Dispatch(caller, call.number, call.args);
  if (result == XenError(XEN_ENOSYS)) {
    unknown_.fetch_add(1, std::memory_order_relaxed);
    const uint64_t bit = call.number < 64 ? uint64_t{1} << call.number : 0;
    if (bit != 0 && !(unknown_logged_.fetch_or(bit) & bit)) {
      spdlog::info("Xen shim: the guest called {} (hypercall {}, sub-op or first argument {:#x}): -ENOSYS, as Xen without it",
                   HypercallName(call.number) ? HypercallName(call.number) : "an unknown hypercall", call.number,
                   call.args[0]);
    }
  }
  // A 32-bit guest reads EAX: the error survives truncation (sign bits).
  return static_cast<uint64_t>(result);
}

int64_t Dispatcher::Dispatch(HypercallCaller& caller, uint64_t number, const std::array<uint64_t, 6>& args) {
  switch (number) {
    case __HYPERVISOR_set_timer_op:
      // 32-bit guests pass the 64-bit timeout in two registers (low, high).
      s_.timers.SetTimerOp(caller.vcpu, caller.long_mode ? args[0] : (args[0] | (args[1] << 32)));
      return 0;
    case __HYPERVISOR_memory_op:
      return MemoryOp(caller, args[0], args[1]);
    case __HYPERVISOR_xen_version:
      return XenVersion(caller, args[0], args[1]);
    case __HYPERVISOR_console_io:
      return ConsoleIo(caller, args[0], args[1], args[2]);
    case __HYPERVISOR_vcpu_op:
      return s_.vcpus.Op(caller, args[0], args[1], args[2]);
    case __HYPERVISOR_sched_op:
      return SchedOp(caller, args[0], args[1]);
    case __HYPERVISOR_event_channel_op:
      return s_.events.Op(caller, args[0], args[1]);
    case __HYPERVISOR_hvm_op:
      return HvmOp(caller, args[0], args[1]);
    case __HYPERVISOR_grant_table_op:
      return GrantTableOp(caller, args[0], args[1], args[2]);
    case __HYPERVISOR_vm_assist:
      return VmAssist(args[0], args[1]);
    default:
      return XenError(XEN_ENOSYS);
  }
}

// Of the assists, Xen offers HVM guests only the runstate update flag.
int64_t Dispatcher::VmAssist(uint64_t command, uint64_t type) {
  if (command != VMASST_CMD_enable && command != VMASST_CMD_disable) return XenError(XEN_ENOSYS);
  if (type != VMASST_TYPE_runstate_update_flag) return XenError(XEN_EINVAL);
  s_.vcpus.SetRunstateUpdateFlag(command == VMASST_CMD_enable);
  return 0;
}

void Dispatcher::SetHvmParam(uint32_t index, uint64_t value) {
  absl::MutexLock lock(&params_mutex_);
  hvm_params_[index] = value;
}

HypercallCounters Dispatcher::counters() const {
  HypercallCounters counters;
  for (size_t i = 0; i < by_number_.size(); ++i) counters.by_number[i] = by_number_[i].load(std::memory_order_relaxed);
  counters.unknown = unknown_.load(std::memory_order_relaxed);
  counters.refused_cpl = refused_cpl_.load(std::memory_order_relaxed);
  return counters;
}

}  // namespace xenkvm::xen
