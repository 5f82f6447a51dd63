// sched_op: yield, block, poll, shutdown.
#include <sched.h>

#include <span>
#include <vector>

#include "components/xen/dispatcher.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {
namespace {

constexpr uint32_t kMaxPollPorts = 128;

// Xen ends SCHEDOP_poll early too when the vCPU has an event it can take now
// (local_events_need_delivery: upcall_pending, RFLAGS.IF set): a vCPU polling its spinlock's port
// must still answer the IPIs of the CPU that holds the lock, or both wait for ever.
bool InterruptsEnabled(HypercallCaller& caller) {
  absl::StatusOr<accel::Registers> registers = caller.accel_vcpu.GetRegisters();
  return registers.ok() && (registers->rflags & (uint64_t{1} << 9)) != 0;
}

}  // namespace

int64_t Dispatcher::SchedOp(HypercallCaller& caller, uint64_t command, uint64_t arg) {
  switch (command) {
    case SCHEDOP_yield:
      sched_yield();
      return 0;
    case SCHEDOP_block:
      s_.events.WaitForEvents(caller.vcpu, {}, std::nullopt, InterruptsEnabled(caller));
      return 0;
    case SCHEDOP_shutdown: {
      std::optional<uint32_t> reason = caller.access.ReadObject<uint32_t>(arg);
      if (!reason) return XenError(XEN_EFAULT);
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
          return XenError(XEN_EINVAL);
      }
      if (shutdown_) shutdown_(why);
      return 0;
    }
    case SCHEDOP_poll:
      return Poll(caller, arg);
    default:
      return XenError(XEN_ENOSYS);
  }
}

// ports handle, nr_ports, timeout (64-bit: @0 @8 @16; 32-bit: @0 @4 @8). Returns at once when a
// port is pending, else blocks until one is (or the timeout, system time; 0: none).
int64_t Dispatcher::Poll(HypercallCaller& caller, uint64_t arg) {
  std::optional<uint64_t> ports_handle = caller.ReadWord(arg);
  std::optional<uint32_t> count = caller.access.ReadObject<uint32_t>(arg + caller.word_size());
  std::optional<uint64_t> timeout = caller.access.ReadObject<uint64_t>(arg + (caller.long_mode ? 16 : 8));
  if (!ports_handle || !count || !timeout) return XenError(XEN_EFAULT);
  if (*count > kMaxPollPorts) return XenError(XEN_EINVAL);
  std::vector<uint32_t> ports(*count);
  if (*count > 0 &&
      !caller.access.Read(*ports_handle, std::span(reinterpret_cast<uint8_t*>(ports.data()), ports.size() * sizeof(uint32_t)))) {
    return XenError(XEN_EFAULT);
  }
  for (uint32_t port : ports) {
    if (!s_.events.ValidPort(port)) return XenError(XEN_EINVAL);
  }
  s_.events.WaitForEvents(caller.vcpu, ports, *timeout == 0 ? std::nullopt : std::optional<uint64_t>(*timeout),
                          InterruptsEnabled(caller));
  return 0;
}

}  // namespace xenkvm::xen
