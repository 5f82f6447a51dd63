// The microVM assembler: from a VmConfig it builds guest memory, loads the kernel, chooses and
// creates the accelerator and the vCPUs (one thread each), wires the devices to the console log
// and the VM's lifecycle, runs until the guest powers off, resets or crashes, and says how it ended.
#ifndef XENKVM_VMM_VM_H_
#define XENKVM_VMM_VM_H_

#include <atomic>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "components/accel/accelerator.h"
#include "components/devices/bus.h"
#include "components/devices/ioapic.h"
#include "components/devices/legacy.h"
#include "components/memory/guest_memory.h"
#include "components/base/event_loop.h"
#include "components/xen/shim.h"
#include "vmm/hypervisor_log.h"
#include "components/xen/xenstore/ring_server.h"
#include "components/xen/xenstore/socket_server.h"
#include "components/xen/xenstore/store.h"
#include "components/xenbus/console.h"
#include "components/xenbus/xen_disk.h"
#include "components/xenbus/xen_net.h"
#include "vmm/console_log.h"
#include "vmm/vm_config.h"

namespace xenkvm::vmm {

// How a VM ended.
struct VmEnd {
  enum class Kind {
    kPoweredOff,  // the guest powered off; `status` is what it reported (0: success)
    kReset,       // the guest asked for a reset (i8042, triple fault); xenkvm does not reboot
    kCrashed,     // the guest did something the VM cannot continue from
    kHalted,      // every vCPU halted with interrupts off: nothing can wake the guest
    kStopped,     // the VMM was asked to stop it
  };
  Kind kind = Kind::kStopped;
  uint32_t status = 0;
  std::string reason;
};
std::string Describe(const VmEnd& end);

// The accelerator `kind` names; for kAuto, kvm when /dev/kvm is usable (and can run a Xen guest's
// hypercalls), else emu. `why` receives a line saying what was chosen and why.
absl::StatusOr<std::unique_ptr<accel::Accelerator>> ChooseAccelerator(AcceleratorKind kind,
                                                                      const memory::GuestMemory& memory,
                                                                      std::string* why);

class Vm {
 public:
  // Builds the VM (nothing runs yet). Errors name what is wrong: the config, the kernel file, the
  // accelerator. `console` receives the guest's console output and must outlive the VM.
  static absl::StatusOr<std::unique_ptr<Vm>> Create(const VmConfig& config, ConsoleLog& console);
  ~Vm();

  // Runs the vCPUs until the VM ends; returns how. Call once.
  VmEnd Run();
  // Ends the VM from any thread (first end wins).
  void End(VmEnd end);
  // Stops every vCPU (they wait outside the guest) until Resume(); the guest's Xen time goes on.
  void Pause();
  void Resume();
  bool paused() const;
  // Asks the guest to shut down through XenStore's control/shutdown ("poweroff", "reboot"...), as
  // `xl shutdown` does; the guest's PV drivers act on it. kFailedPrecondition without the Xen
  // interface. Returns whether the guest advertises control/feature-<reason> (a guest without PV
  // drivers never answers).
  // Console input for the guest: to its Xen PV console (queued while in[] is full, up to
  // kConsoleInputLimit bytes), else to COM1. Returns how many bytes were taken (the rest is dropped).
  static constexpr size_t kConsoleInputLimit = 64 * 1024;
  size_t SendConsoleInput(const std::string& bytes);
  absl::StatusOr<bool> RequestShutdown(const std::string& reason);

  // The VM's xen-disk devices as the backend sees them.
  struct DiskInfo {
    xenbus::XenDiskConfig config;
    uint32_t device_id = 0;
    xenbus::XenbusState backend_state = xenbus::XenbusState::kUnknown;
    xenbus::XenbusState frontend_state = xenbus::XenbusState::kUnknown;
    std::optional<xenbus::DiskRingStatistics> statistics;
  };
  std::vector<DiskInfo> Disks();
  // Hot-plug: a new xen-disk (kAlreadyExists for a vdev in use, the image's error otherwise).
  absl::StatusOr<DiskInfo> AttachDisk(const xenbus::XenDiskConfig& disk);
  // Hot-unplug: asks the frontend to close and waits up to `timeout` (not with `force`), then
  // removes the device. Returns whether it had to be forced. kNotFound for an unknown vdev.
  absl::StatusOr<bool> DetachDisk(const std::string& vdev, bool force, absl::Duration timeout);

  // The VM's xen-net devices as the backend sees them.
  struct NetworkInfo {
    xenbus::XenNetConfig config;
    std::string tap;  // the tap's name (the kernel's choice when none was given)
    xenbus::XenbusState backend_state = xenbus::XenbusState::kUnknown;
    xenbus::XenbusState frontend_state = xenbus::XenbusState::kUnknown;
    std::optional<xenbus::NetRingStatistics> statistics;
  };
  std::vector<NetworkInfo> Networks();
  // Hot-plug: a new vif at the next index (`config.devid` is ignored). Indexes are not reused while
  // the VM runs: a guest still tearing down an unplugged vif would take a new one at its path for
  // the old (Linux's netfront then waits on it forever). The tap's error (permission, a tap in use)
  // otherwise.
  absl::StatusOr<NetworkInfo> AttachNetwork(xenbus::XenNetConfig config);
  // Hot-unplug, as DetachDisk. kNotFound for an unknown index.
  absl::StatusOr<bool> DetachNetwork(uint32_t devid, bool force, absl::Duration timeout);

  // The guest's memory as the balloon sees it, in KiB.
  struct MemoryStatus {
    uint64_t target_kib = 0;   // what the guest is asked to hold (memory/target)
    uint64_t current_kib = 0;  // what it holds: max_kib less what it gave back
    uint64_t max_kib = 0;      // its configured memory (memory/static-max)
  };
  // `xl mem-set`: the guest's balloon driver is asked to hold `target_kib` (through XenStore's
  // memory/target). kInvalidArgument outside 1 MiB..its RAM; kFailedPrecondition without the Xen
  // interface.
  absl::StatusOr<MemoryStatus> SetMemoryTarget(uint64_t target_kib);
  absl::StatusOr<MemoryStatus> Memory();
  // What the guest wrote with console_io (kFailedPrecondition without the Xen interface).
  absl::StatusOr<HypervisorLog::Contents> ReadHypervisorLog(bool clear);

  const std::string& accelerator_choice() const { return accelerator_choice_; }
  // The Xen shim, or nullptr when the VM runs without the Xen interface.
  xen::Shim* xen() const { return xen_.get(); }
  const accel::Accelerator& accelerator() const { return *accelerator_; }

 private:
  Vm(ConsoleLog& console) : console_(console) {}
  // Building a VM, in named steps (vm.cc).
  struct BootPlan {
    accel::PvhEntry entry;    // vCPU 0's start
    std::string description;  // what the kernel file was
  };
  absl::StatusOr<BootPlan> LoadGuest(const VmConfig& config);
  absl::Status RegisterPlatformDevices();
  absl::Status Build(const VmConfig& config);
  absl::Status BuildXenBackends(const VmConfig& config);
  // Runs `work` on the backend loop (which owns XenStore and the PV backends) and waits for it.
  absl::Status OnBackendLoop(std::function<void()> work);
  // Hot-unplug of the device `devid` among `devices` (disks_ or networks_), named `what` in errors.
  template <typename Device>
  absl::StatusOr<bool> DetachDevice(std::vector<std::unique_ptr<Device>>& devices, uint32_t devid,
                                    const std::string& what, bool force, absl::Duration timeout);
  void FlushConsoleInput();  // on the backend loop
  void VcpuLoop(accel::Vcpu& vcpu);
  void HandleBusAccess(accel::Vcpu& vcpu, const devices::Bus& bus, uint64_t address, uint8_t size, bool is_write,
                       uint64_t value);

  ConsoleLog& console_;
  std::unique_ptr<memory::GuestMemory> memory_;
  std::unique_ptr<accel::Accelerator> accelerator_;
  std::string accelerator_choice_;
  // Backends (XenStore, the PV console) run on this loop; declared before what runs on it, so it outlives them.
  std::unique_ptr<base::EventLoop> backend_loop_;
  std::unique_ptr<xen::xenstore::Store> store_;
  std::unique_ptr<xen::Shim> xen_;
  std::unique_ptr<xen::xenstore::RingServer> store_ring_;
  std::unique_ptr<xen::xenstore::SocketServer> store_socket_;
  std::unique_ptr<xenbus::ConsoleBackend> pv_console_;
  std::string pv_console_input_;  // waiting for room in the PV console's in[] (backend loop only)
  std::shared_ptr<devices::Serial> serial_;
  std::vector<std::unique_ptr<xenbus::XenDisk>> disks_;  // used on the backend loop only
  std::vector<std::unique_ptr<xenbus::XenNet>> networks_;  // used on the backend loop only
  uint32_t next_vif_index_ = 0;                           // the backend loop's too
  uint32_t domid_ = 1;
  std::unique_ptr<HypervisorLog> hypervisor_log_;
  uint64_t memory_kib_ ABSL_GUARDED_BY(mutex_) = 0;  // the configured memory (XenStore static-max)
  uint64_t memory_target_kib_ ABSL_GUARDED_BY(mutex_) = 0;
  std::vector<std::unique_ptr<accel::Vcpu>> vcpus_;
  devices::Bus pio_bus_{"port I/O"};
  devices::Bus mmio_bus_{"MMIO"};
  std::shared_ptr<devices::Ioapic> ioapic_;

  mutable absl::Mutex mutex_;
  std::optional<VmEnd> end_ ABSL_GUARDED_BY(mutex_);
  bool paused_ ABSL_GUARDED_BY(mutex_) = false;
  uint32_t halted_vcpus_ ABSL_GUARDED_BY(mutex_) = 0;
  std::atomic<bool> ending_{false};
  std::atomic<uint64_t> unclaimed_accesses_{0};
  // Exits taken and the time the vCPUs spent in them (from Run() returning to the next Run()):
  // logged when the VM ends, for the boot benchmark's share of time in exits.
  std::atomic<uint64_t> exits_{0};
  std::atomic<int64_t> exit_ns_{0};
};

}  // namespace xenkvm::vmm

#endif  // XENKVM_VMM_VM_H_
