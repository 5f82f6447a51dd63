// Vm: one KVM virtual machine (KVM_CREATE_VM). Owns the VM descriptor, the GSI routing table and the
// VM-wide Xen attributes; creates the vCPUs.
#ifndef XENKVM_COMPONENTS_KVM_VM_H_
#define XENKVM_COMPONENTS_KVM_VM_H_

#include <linux/kvm.h>

#include <cstdint>
#include <optional>
#include <set>
#include <variant>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "components/base/event_fd.h"
#include "components/base/fd.h"
#include "components/kvm/gsi_routes.h"
#include "components/kvm/vcpu.h"
#include "components/kvm/xen_capabilities.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::kvm {

// A Xen event channel the kernel handles itself (KVM_XEN_ATTR_TYPE_EVTCHN): when the guest sends
// on `send_port`, KVM delivers to a local port (loopback or IPI) or signals an eventfd (a backend).
struct XenEvtchnRoute {
  struct ToPort {
    uint32_t port = 0;
    uint32_t vcpu = 0;  // the target vCPU's Xen vCPU id
    uint32_t priority = KVM_IRQ_ROUTING_XEN_EVTCHN_PRIO_2LEVEL;
  };
  struct ToEventFd {
    int fd = -1;  // borrowed; must stay open while assigned
  };
  enum class Type { kInterdomain, kIpi };

  uint32_t send_port = 0;
  Type type = Type::kInterdomain;
  std::variant<ToPort, ToEventFd> deliver;
};

// Where an ioeventfd listens.
struct IoEventSpec {
  enum class Space { kPio, kMmio };
  Space space = Space::kMmio;
  uint64_t address = 0;
  uint32_t length = 0;                 // 0 (MMIO only: any length), 1, 2, 4 or 8
  std::optional<uint64_t> datamatch;  // only writes of this value signal
};

class Vm {
 public:
  // Adopts an existing VM descriptor (from Kvm::CreateVm, or received from another process).
  static Vm Adopt(base::Fd fd, size_t vcpu_mmap_size, XenCapabilities xen);

  Vm(Vm&&) = default;
  Vm& operator=(Vm&&) = default;

  int fd() const { return fd_.get(); }
  const XenCapabilities& xen_capabilities() const { return xen_; }
  absl::StatusOr<int> CheckExtension(int capability) const;
  // KVM_GET_TSC_KHZ on the VM (KVM_CAP_VM_TSC_CONTROL, Linux 6.0): the TSC rate its vCPUs get.
  absl::StatusOr<uint32_t> GetTscKhz() const;

  // ---- Memory
  // `flags`: KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY. The host range must stay mapped while set.
  absl::Status SetUserMemoryRegion(uint32_t slot, uint64_t guest_address, uint64_t size, void* host,
                                   uint32_t flags = 0);
  absl::Status RemoveUserMemoryRegion(uint32_t slot);
  // One slot per GuestMemory region, from `first_slot` up.
  absl::Status MapGuestMemory(const memory::GuestMemory& memory, uint32_t first_slot = 0);

  // ---- Interrupt controller and vCPUs
  // Userspace PIC/IOAPIC, in-kernel LAPIC (KVM_CAP_SPLIT_IRQCHIP). Must come before any vCPU.
  absl::Status EnableSplitIrqchip(uint32_t ioapic_pins = 24);
  bool split_irqchip() const { return split_irqchip_; }
  // Refused until EnableSplitIrqchip(): xenkvm always runs with a split irqchip, which Xen's
  // GSI/INTx upcall needs, and the kernel cannot switch once a vCPU exists.
  absl::StatusOr<Vcpu> CreateVcpu(uint32_t id);

  // Let userspace handle RDMSR/WRMSR of MSRs KVM does not know (KVM_CAP_X86_USER_SPACE_MSR), as
  // KVM_EXIT_X86_RDMSR/WRMSR exits; `reasons` is a KVM_MSR_EXIT_REASON_* mask.
  absl::Status EnableUserSpaceMsr(uint32_t reasons);

  // ---- Interrupt delivery
  absl::Status RegisterIrqfd(const base::EventFd& trigger, uint32_t gsi,
                             const base::EventFd* resample = nullptr);
  absl::Status UnregisterIrqfd(const base::EventFd& trigger, uint32_t gsi);
  absl::Status RegisterIoeventfd(const base::EventFd& event, const IoEventSpec& spec);
  absl::Status UnregisterIoeventfd(const base::EventFd& event, const IoEventSpec& spec);
  // Injects an MSI now (KVM_SIGNAL_MSI); true if delivered, false if the guest blocked it.
  absl::StatusOr<bool> SignalMsi(uint64_t address, uint32_t data);

  // The routing table; each change commits the whole table and is undone if the kernel refuses it.
  absl::Status SetMsiRoute(uint32_t gsi, uint64_t address, uint32_t data);
  absl::Status SetXenEvtchnRoute(uint32_t gsi, uint32_t port, uint32_t vcpu,
                                 uint32_t priority = KVM_IRQ_ROUTING_XEN_EVTCHN_PRIO_2LEVEL);
  absl::Status RemoveRoute(uint32_t gsi);
  const GsiRoutes& routes() const { return routes_; }

  // ---- Clock
  absl::StatusOr<kvm_clock_data> GetClock() const;
  absl::Status SetClock(const kvm_clock_data& clock);

  // ---- Xen (each call checks the probed capability first)
  // KVM_XEN_HVM_CONFIG: KVM intercepts hypercalls and fills the hypercall page when the guest writes
  // `msr`. The flags are the probed capabilities the kernel accepts there. `msr` must be in
  // 0x40000000..0x4fffffff, and at 0x40000200 or above when Hyper-V's leaves are also exposed.
  absl::Status ConfigureXenHypercalls(uint32_t msr, bool hyperv_leaves = false);
  absl::Status SetXenLongMode(bool long_mode);
  absl::StatusOr<bool> GetXenLongMode() const;
  // kXenInvalidGfn unmaps it.
  absl::Status SetXenSharedInfoGfn(uint64_t gfn);
  absl::StatusOr<uint64_t> GetXenSharedInfoGfn() const;
  absl::Status SetXenSharedInfoHva(uint64_t hva);
  absl::StatusOr<uint64_t> GetXenSharedInfoHva() const;
  // The HVM-wide callback vector; 0 disables; 1..15 are refused (exception vectors).
  absl::Status SetXenUpcallVector(uint8_t vector);
  absl::StatusOr<uint8_t> GetXenUpcallVector() const;
  absl::Status AssignXenEvtchn(const XenEvtchnRoute& route);
  absl::Status UpdateXenEvtchn(const XenEvtchnRoute& route);
  absl::Status DeassignXenEvtchn(uint32_t send_port);
  absl::Status ResetXenEvtchns();
  // The version KVM answers XENVER_version with itself (major << 16 | minor).
  absl::Status SetXenVersion(uint32_t version);
  absl::StatusOr<uint32_t> GetXenVersion() const;
  absl::Status SetXenRunstateUpdateFlag(bool enabled);
  absl::StatusOr<bool> GetXenRunstateUpdateFlag() const;
  // Raises a Xen event channel port on a vCPU (KVM_XEN_HVM_EVTCHN_SEND).
  absl::Status XenEvtchnSend(uint32_t port, uint32_t vcpu,
                             uint32_t priority = KVM_IRQ_ROUTING_XEN_EVTCHN_PRIO_2LEVEL);

 private:
  Vm(base::Fd fd, size_t vcpu_mmap_size, XenCapabilities xen)
      : fd_(std::move(fd)), vcpu_mmap_size_(vcpu_mmap_size), xen_(xen) {}

  absl::Status CommitRoutes(const GsiRoutes& candidate);
  absl::Status EvtchnAttr(const XenEvtchnRoute& route, uint32_t flags, const char* what);
  absl::Status SetHvmAttr(kvm_xen_hvm_attr& attr, XenCapability needed, const char* what);
  absl::StatusOr<kvm_xen_hvm_attr> GetHvmAttr(uint16_t type, XenCapability needed,
                                              const char* what) const;

  base::Fd fd_;
  size_t vcpu_mmap_size_;
  XenCapabilities xen_;
  bool split_irqchip_ = false;
  std::set<uint32_t> vcpu_ids_;
  std::set<uint32_t> memory_slots_;
  GsiRoutes routes_;
};

}  // namespace xenkvm::kvm

#endif  // XENKVM_COMPONENTS_KVM_VM_H_
