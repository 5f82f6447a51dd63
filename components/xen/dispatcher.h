// The hypercall dispatcher: the CPL check, counters, the caller's ABI, routing to the subsystem
// that answers, and the hypercall families that have no subsystem of their own. Each family is a
// file: xen_version_op.cc, memory_op.cc, grant_table_op.cc, hvm_op.cc, sched_op.cc, console_io.cc;
// event_channel_op is EventChannels', vcpu_op Vcpus'.
//
// Every argument is hostile: each structure is copied once from guest memory (translated through
// the caller's page tables), then checked; a bad value earns the guest Xen's error code.
#ifndef XENKVM_COMPONENTS_XEN_DISPATCHER_H_
#define XENKVM_COMPONENTS_XEN_DISPATCHER_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <span>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "components/accel/accelerator.h"
#include "components/memory/guest_memory.h"
#include "components/xen/config.h"
#include "components/xen/event_channels.h"
#include "components/xen/extra_frames.h"
#include "components/xen/grant_table.h"
#include "components/xen/hypercall_caller.h"
#include "components/xen/reservation.h"
#include "components/xen/shared_pages.h"
#include "components/xen/timers.h"
#include "components/xen/upcall.h"
#include "components/xen/vcpus.h"

namespace xenkvm::xen {

// Xen's name of hypercall `number` (xen.h's __HYPERVISOR_*), or nullptr for a number Xen does not
// define.
const char* HypercallName(uint64_t number);

enum class ShutdownReason { kPoweroff, kReboot, kCrash, kWatchdog, kSoftReset };
const char* ShutdownReasonName(ShutdownReason reason);

struct HypercallCounters {
  std::array<uint64_t, 64> by_number{};  // by hypercall number
  uint64_t unknown = 0;      // numbers Xen does not define or xenkvm does not implement
  uint64_t refused_cpl = 0;  // from user space (CPL > 0): -EPERM
};

// The subsystems a dispatcher routes to; all outlive it.
struct Subsystems {
  SharedPages& pages;
  Upcalls& upcalls;
  EventDelivery& delivery;
  Timers& timers;
  Vcpus& vcpus;
  EventChannels& events;
  GrantTable& grant_table;
  ExtraFrames& extra_frames;
  MemoryReservation& reservation;
};

class Dispatcher {
 public:
  Dispatcher(const XenConfig& config, memory::GuestMemory& memory, Subsystems subsystems,
             std::function<void(uint8_t)> console, std::function<void(ShutdownReason)> shutdown);

  // Answers `vcpu`'s hypercall exit, on its run-loop thread.
  uint64_t Hypercall(accel::Vcpu& vcpu, const accel::HypercallExit& call);
  // HVM parameters the toolstack (the VMM) provides.
  void SetHvmParam(uint32_t index, uint64_t value);
  HypercallCounters counters() const;

 private:
  int64_t Dispatch(HypercallCaller& caller, uint64_t number, const std::array<uint64_t, 6>& args);
  int64_t VmAssist(uint64_t command, uint64_t type);
  // xen_version_op.cc
  int64_t XenVersion(HypercallCaller& caller, uint64_t command, uint64_t arg);
  // memory_op.cc
  int64_t MemoryOp(HypercallCaller& caller, uint64_t command, uint64_t arg);
  int64_t AddToPhysmap(HypercallCaller& caller, uint16_t domid, uint32_t space, uint64_t index, uint64_t gpfn);
  int64_t MemoryMap(HypercallCaller& caller, uint64_t arg);
  int64_t Reservation(HypercallCaller& caller, uint64_t op, uint64_t start_extent, uint64_t arg);
  void ReleaseUnusedFrames() ABSL_EXCLUSIVE_LOCKS_REQUIRED(physmap_mutex_);
  // grant_table_op.cc
  int64_t GrantTableOp(HypercallCaller& caller, uint64_t command, uint64_t arg, uint64_t count);
  int64_t GetStatusFrames(HypercallCaller& caller, uint64_t arg, uint64_t count);
  int64_t GrantCopy(HypercallCaller& caller, uint64_t arg, uint64_t count);
  int16_t CopyOne(uint64_t source, uint16_t source_domid, uint16_t source_offset, bool source_gref, uint64_t dest,
                  uint16_t dest_domid, uint16_t dest_offset, bool dest_gref, std::span<uint8_t> bytes);
  // hvm_op.cc
  int64_t HvmOp(HypercallCaller& caller, uint64_t command, uint64_t arg);
  // sched_op.cc
  int64_t SchedOp(HypercallCaller& caller, uint64_t command, uint64_t arg);
  int64_t Poll(HypercallCaller& caller, uint64_t arg);
  // console_io.cc
  int64_t ConsoleIo(HypercallCaller& caller, uint64_t command, uint64_t count, uint64_t buffer);

  bool OwnDomain(uint16_t domid) const { return domid == DOMID_SELF || domid == config_.domid; }

  const XenConfig& config_;
  memory::GuestMemory& memory_;
  Subsystems s_;
  const std::function<void(uint8_t)> console_;
  const std::function<void(ShutdownReason)> shutdown_;

  // Placing frames (add_to_physmap) is serialized; taken before every subsystem's lock.
  absl::Mutex physmap_mutex_;
  mutable absl::Mutex params_mutex_;
  absl::flat_hash_map<uint32_t, uint64_t> hvm_params_ ABSL_GUARDED_BY(params_mutex_);

  std::array<std::atomic<uint64_t>, 64> by_number_{};
  std::atomic<uint64_t> unknown_{0};
  std::atomic<uint64_t> refused_cpl_{0};
  std::atomic<uint64_t> unknown_logged_{0};  // bit n: hypercall n named in the log once
};

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_DISPATCHER_H_
