#include "components/kvm/vm.h"

#include <sys/mman.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "components/base/status.h"
#include "components/kvm/flex_array.h"
#include "components/kvm/ioctl.h"
#include "components/kvm/xen_abi.h"

namespace xenkvm::kvm {

Vm Vm::Adopt(base::Fd fd, size_t vcpu_mmap_size, XenCapabilities xen) {
  return Vm(std::move(fd), vcpu_mmap_size, xen);
}

absl::StatusOr<int> Vm::CheckExtension(int capability) const {
  return XENKVM_KVM_IOCTL(fd(), KVM_CHECK_EXTENSION, capability);
}

absl::StatusOr<uint32_t> Vm::GetTscKhz() const {
  XENKVM_ASSIGN_OR_RETURN(int khz, XENKVM_KVM_IOCTL(fd(), KVM_GET_TSC_KHZ, 0));
  return static_cast<uint32_t>(khz);
}

// ---- Memory

absl::Status Vm::SetUserMemoryRegion(uint32_t slot, uint64_t guest_address, uint64_t size,
                                     void* host, uint32_t flags) {
  if (size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory slot ", slot, ": size 0 (use RemoveUserMemoryRegion to delete a slot)"));
  }
  if ((guest_address | size | reinterpret_cast<uintptr_t>(host)) & (memory::kPageSize - 1)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "memory slot %u: guest address %#x, size %#x and host address %p must be page-aligned", slot,
        guest_address, size, host));
  }
  kvm_userspace_memory_region region{};
  region.slot = slot;
  region.flags = flags;
  region.guest_phys_addr = guest_address;
  region.memory_size = size;
  region.userspace_addr = reinterpret_cast<uint64_t>(host);
  XENKVM_RETURN_IF_ERROR(XENKVM_KVM_IOCTL(fd(), KVM_SET_USER_MEMORY_REGION, &region).status());
  memory_slots_.insert(slot);
  return absl::OkStatus();
}

absl::Status Vm::RemoveUserMemoryRegion(uint32_t slot) {
  if (!memory_slots_.contains(slot)) {
    return absl::NotFoundError(absl::StrCat("memory slot ", slot, " is not set"));
  }
  kvm_userspace_memory_region region{};
  region.slot = slot;
  XENKVM_RETURN_IF_ERROR(XENKVM_KVM_IOCTL(fd(), KVM_SET_USER_MEMORY_REGION, &region).status());
  memory_slots_.erase(slot);
  return absl::OkStatus();
}

absl::Status Vm::MapGuestMemory(const memory::GuestMemory& memory, uint32_t first_slot) {
  uint32_t slot = first_slot;
  for (const memory::GuestRegion& region : memory.regions()) {
    XENKVM_RETURN_IF_ERROR(SetUserMemoryRegion(slot++, region.start().value(), region.size(),
                                               region.host_address()));
  }
  return absl::OkStatus();
}

// ---- Interrupt controller and vCPUs

absl::Status Vm::EnableSplitIrqchip(uint32_t ioapic_pins) {
  if (split_irqchip_) return absl::OkStatus();
  if (!vcpu_ids_.empty()) {
    return absl::FailedPreconditionError(
        "EnableSplitIrqchip: vCPUs exist already; the split irqchip must be enabled before the "
        "first vCPU is created");
  }
  kvm_enable_cap cap{};
  cap.cap = KVM_CAP_SPLIT_IRQCHIP;
  cap.args[0] = ioapic_pins;
  XENKVM_RETURN_IF_ERROR(
      base::Annotate(XENKVM_KVM_IOCTL(fd(), KVM_ENABLE_CAP, &cap).status(), "KVM_CAP_SPLIT_IRQCHIP"));
  split_irqchip_ = true;
  return absl::OkStatus();
}

absl::StatusOr<Vcpu> Vm::CreateVcpu(uint32_t id) {
  if (!split_irqchip_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CreateVcpu(", id, "): call EnableSplitIrqchip() first; xenkvm runs every VM with a split "
        "irqchip and the kernel cannot switch once a vCPU exists"));
  }
  if (vcpu_ids_.contains(id)) {
    return absl::AlreadyExistsError(absl::StrCat("CreateVcpu: vCPU ", id, " exists already"));
  }
  XENKVM_ASSIGN_OR_RETURN(int raw, XENKVM_KVM_IOCTL(fd(), KVM_CREATE_VCPU, id));
  base::Fd vcpu_fd(raw);
  void* run = ::mmap(nullptr, vcpu_mmap_size_, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd.get(), 0);
  if (run == MAP_FAILED) return base::ErrnoStatus(absl::StrCat("mmap(kvm_run of vCPU ", id, ")"));
  vcpu_ids_.insert(id);
  return Vcpu(id, std::move(vcpu_fd), static_cast<kvm_run*>(run), vcpu_mmap_size_, xen_);
}

absl::Status Vm::EnableUserSpaceMsr(uint32_t reasons) {
  kvm_enable_cap cap{};
  cap.cap = KVM_CAP_X86_USER_SPACE_MSR;
  cap.args[0] = reasons;
  return base::Annotate(XENKVM_KVM_IOCTL(fd(), KVM_ENABLE_CAP, &cap).status(),
                        "KVM_CAP_X86_USER_SPACE_MSR");
}

// ---- Interrupt delivery

absl::Status Vm::RegisterIrqfd(const base::EventFd& trigger, uint32_t gsi,
                               const base::EventFd* resample) {
  kvm_irqfd irqfd{};
  irqfd.fd = static_cast<uint32_t>(trigger.fd());
  irqfd.gsi = gsi;
  if (resample != nullptr) {
    irqfd.flags = KVM_IRQFD_FLAG_RESAMPLE;
    irqfd.resamplefd = static_cast<uint32_t>(resample->fd());
  }
  return XENKVM_KVM_IOCTL(fd(), KVM_IRQFD, &irqfd).status();
}

absl::Status Vm::UnregisterIrqfd(const base::EventFd& trigger, uint32_t gsi) {
  kvm_irqfd irqfd{};
  irqfd.fd = static_cast<uint32_t>(trigger.fd());
  irqfd.gsi = gsi;
  irqfd.flags = KVM_IRQFD_FLAG_DEASSIGN;
  return XENKVM_KVM_IOCTL(fd(), KVM_IRQFD, &irqfd).status();
}

namespace {

absl::StatusOr<kvm_ioeventfd> ToIoeventfd(const base::EventFd& event, const IoEventSpec& spec) {
  bool length_ok = spec.length == 1 || spec.length == 2 || spec.length == 4 || spec.length == 8 ||
                   (spec.length == 0 && spec.space == IoEventSpec::Space::kMmio);
  if (!length_ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ioeventfd length ", spec.length, ": use 1, 2, 4 or 8 (or 0, any length, for MMIO)"));
  }
  if (spec.datamatch && spec.length == 0) {
    return absl::InvalidArgumentError("ioeventfd: datamatch needs a length of 1, 2, 4 or 8");
  }
  kvm_ioeventfd ioeventfd{};
  ioeventfd.addr = spec.address;
  ioeventfd.len = spec.length;
  ioeventfd.fd = event.fd();
  if (spec.space == IoEventSpec::Space::kPio) ioeventfd.flags |= KVM_IOEVENTFD_FLAG_PIO;
  if (spec.datamatch) {
    ioeventfd.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
    ioeventfd.datamatch = *spec.datamatch;
  }
  return ioeventfd;
}

}  // namespace

absl::Status Vm::RegisterIoeventfd(const base::EventFd& event, const IoEventSpec& spec) {
  XENKVM_ASSIGN_OR_RETURN(kvm_ioeventfd ioeventfd, ToIoeventfd(event, spec));
  return XENKVM_KVM_IOCTL(fd(), KVM_IOEVENTFD, &ioeventfd).status();
}

absl::Status Vm::UnregisterIoeventfd(const base::EventFd& event, const IoEventSpec& spec) {
  XENKVM_ASSIGN_OR_RETURN(kvm_ioeventfd ioeventfd, ToIoeventfd(event, spec));
  ioeventfd.flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
  return XENKVM_KVM_IOCTL(fd(), KVM_IOEVENTFD, &ioeventfd).status();
}

absl::StatusOr<bool> Vm::SignalMsi(uint64_t address, uint32_t data) {
  kvm_msi msi{};
  msi.address_lo = static_cast<uint32_t>(address);
  msi.address_hi = static_cast<uint32_t>(address >> 32);
  msi.data = data;
  XENKVM_ASSIGN_OR_RETURN(int delivered, XENKVM_KVM_IOCTL(fd(), KVM_SIGNAL_MSI, &msi));
  return delivered > 0;
}

absl::Status Vm::CommitRoutes(const GsiRoutes& candidate) {
  std::vector<uint64_t> table = candidate.Serialize();
  XENKVM_RETURN_IF_ERROR(internal::Ioctl(fd(), internal::kKvmSetGsiRouting, "KVM_SET_GSI_ROUTING", table.data()).status());
  routes_ = candidate;
  return absl::OkStatus();
}

absl::Status Vm::SetMsiRoute(uint32_t gsi, uint64_t address, uint32_t data) {
  GsiRoutes candidate = routes_;
  XENKVM_RETURN_IF_ERROR(candidate.SetMsi(gsi, address, data));
  return CommitRoutes(candidate);
}

absl::Status Vm::SetXenEvtchnRoute(uint32_t gsi, uint32_t port, uint32_t vcpu, uint32_t priority) {
  XENKVM_RETURN_IF_ERROR(xen_.Require(XenCapability::kEvtchn2Level, "a Xen event-channel GSI route"));
  GsiRoutes candidate = routes_;
  XENKVM_RETURN_IF_ERROR(candidate.SetXenEvtchn(gsi, port, vcpu, priority));
  return CommitRoutes(candidate);
}

absl::Status Vm::RemoveRoute(uint32_t gsi) {
  GsiRoutes candidate = routes_;
  XENKVM_RETURN_IF_ERROR(candidate.Remove(gsi));
  return CommitRoutes(candidate);
}

// ---- Clock

absl::StatusOr<kvm_clock_data> Vm::GetClock() const {
  kvm_clock_data clock{};
  XENKVM_RETURN_IF_ERROR(XENKVM_KVM_IOCTL(fd(), KVM_GET_CLOCK, &clock).status());
  return clock;
}

absl::Status Vm::SetClock(const kvm_clock_data& clock) {
  kvm_clock_data copy = clock;
  return XENKVM_KVM_IOCTL(fd(), KVM_SET_CLOCK, &copy).status();
}

// ---- Xen

absl::Status Vm::ConfigureXenHypercalls(uint32_t msr, bool hyperv_leaves) {
  if (msr == 0) {
    return absl::InvalidArgumentError(
        "Xen hypercall MSR 0 is refused: a non-zero MSR is what turns on KVM's Xen mode (use 0x40000000)");
  }
  if (msr < kXenHypercallMsrFirst || msr > kXenHypercallMsrLast) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Xen hypercall MSR %#x is outside 0x40000000..0x4fffffff (the range Linux 6.15+ accepts)", msr));
  }
  if (hyperv_leaves && msr < kXenHypercallMsrWithHyperV) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Xen hypercall MSR %#x collides with Hyper-V's MSRs; with Hyper-V leaves exposed use %#x", msr,
        kXenHypercallMsrWithHyperV));
  }
  XENKVM_RETURN_IF_ERROR(xen_.Require(XenCapability::kHypercallMsr, "KVM_XEN_HVM_CONFIG"));
  XENKVM_RETURN_IF_ERROR(
      xen_.Require(XenCapability::kInterceptHypercall, "intercepting Xen hypercalls"));
  kvm_xen_hvm_config config{};
  config.flags = xen_.ConfigFlags();
  config.msr = msr;
  return XENKVM_KVM_IOCTL(fd(), KVM_XEN_HVM_CONFIG, &config).status();
}

absl::Status Vm::SetHvmAttr(kvm_xen_hvm_attr& attr, XenCapability needed, const char* what) {
  XENKVM_RETURN_IF_ERROR(xen_.Require(needed, what));
  return base::Annotate(XENKVM_KVM_IOCTL(fd(), KVM_XEN_HVM_SET_ATTR, &attr).status(), what);
}

absl::StatusOr<kvm_xen_hvm_attr> Vm::GetHvmAttr(uint16_t type, XenCapability needed,
                                                const char* what) const {
  XENKVM_RETURN_IF_ERROR(xen_.Require(needed, what));
  kvm_xen_hvm_attr attr{};
  attr.type = type;
  XENKVM_RETURN_IF_ERROR(
      base::Annotate(XENKVM_KVM_IOCTL(fd(), KVM_XEN_HVM_GET_ATTR, &attr).status(), what));
  return attr;
}

absl::Status Vm::SetXenLongMode(bool long_mode) {
  kvm_xen_hvm_attr attr{};
  attr.type = KVM_XEN_ATTR_TYPE_LONG_MODE;
  attr.u.long_mode = long_mode ? 1 : 0;
  return SetHvmAttr(attr, XenCapability::kSharedInfo, "Xen attribute LONG_MODE");
}

absl::StatusOr<bool> Vm::GetXenLongMode() const {
  XENKVM_ASSIGN_OR_RETURN(kvm_xen_hvm_attr attr, GetHvmAttr(KVM_XEN_ATTR_TYPE_LONG_MODE,
                                                            XenCapability::kSharedInfo,
                                                            "Xen attribute LONG_MODE"));
  return attr.u.long_mode != 0;
}

absl::Status Vm::SetXenSharedInfoGfn(uint64_t gfn) {
  kvm_xen_hvm_attr attr{};
  attr.type = KVM_XEN_ATTR_TYPE_SHARED_INFO;
  attr.u.shared_info.gfn = gfn;
  return SetHvmAttr(attr, XenCapability::kSharedInfo, "Xen attribute SHARED_INFO");
}

absl::StatusOr<uint64_t> Vm::GetXenSharedInfoGfn() const {
  XENKVM_ASSIGN_OR_RETURN(kvm_xen_hvm_attr attr, GetHvmAttr(KVM_XEN_ATTR_TYPE_SHARED_INFO,
                                                            XenCapability::kSharedInfo,
                                                            "Xen attribute SHARED_INFO"));
  return attr.u.shared_info.gfn;
}

// SHARED_INFO_HVA (6.9) keeps the address in the same union slot as shared_info.gfn.
absl::Status Vm::SetXenSharedInfoHva(uint64_t hva) {
  kvm_xen_hvm_attr attr{};
  attr.type = kXenAttrSharedInfoHva;
  attr.u.shared_info.gfn = hva;
  return SetHvmAttr(attr, XenCapability::kSharedInfoHva, "Xen attribute SHARED_INFO_HVA");
}

absl::StatusOr<uint64_t> Vm::GetXenSharedInfoHva() const {
  XENKVM_ASSIGN_OR_RETURN(kvm_xen_hvm_attr attr, GetHvmAttr(kXenAttrSharedInfoHva,
                                                            XenCapability::kSharedInfoHva,
                                                            "Xen attribute SHARED_INFO_HVA"));
  return attr.u.shared_info.gfn;
}

absl::Status Vm::SetXenUpcallVector(uint8_t vector) {
  if (vector != 0 && vector < 0x10) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Xen upcall vector %#x is an exception vector; use 0 (off) or 0x10..0xff", vector));
  }
  kvm_xen_hvm_attr attr{};
  attr.type = KVM_XEN_ATTR_TYPE_UPCALL_VECTOR;
  attr.u.vector = vector;
  return SetHvmAttr(attr, XenCapability::kSharedInfo, "Xen attribute UPCALL_VECTOR");
}

absl::StatusOr<uint8_t> Vm::GetXenUpcallVector() const {
  XENKVM_ASSIGN_OR_RETURN(kvm_xen_hvm_attr attr, GetHvmAttr(KVM_XEN_ATTR_TYPE_UPCALL_VECTOR,
                                                            XenCapability::kSharedInfo,
                                                            "Xen attribute UPCALL_VECTOR"));
  return attr.u.vector;
}

absl::Status Vm::EvtchnAttr(const XenEvtchnRoute& route, uint32_t flags, const char* what) {
  kvm_xen_hvm_attr attr{};
  attr.type = KVM_XEN_ATTR_TYPE_EVTCHN;
  attr.u.evtchn.send_port = route.send_port;
  attr.u.evtchn.flags = flags;
  attr.u.evtchn.type =
      route.type == XenEvtchnRoute::Type::kIpi ? kEvtchnStatIpi : kEvtchnStatInterdomain;
  if (const auto* to_port = std::get_if<XenEvtchnRoute::ToPort>(&route.deliver)) {
    if (route.type == XenEvtchnRoute::Type::kIpi && to_port->port != route.send_port) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": an IPI port delivers to itself; deliver.port ", to_port->port,
          " must equal send_port ", route.send_port));
    }
    attr.u.evtchn.deliver.port.port = to_port->port;
    attr.u.evtchn.deliver.port.vcpu = to_port->vcpu;
    attr.u.evtchn.deliver.port.priority = to_port->priority;
  } else {
    const auto& to_fd = std::get<XenEvtchnRoute::ToEventFd>(route.deliver);
    if (route.type == XenEvtchnRoute::Type::kIpi) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": an IPI cannot be delivered to an eventfd"));
    }
    if (to_fd.fd < 0) return absl::InvalidArgumentError(absl::StrCat(what, ": no eventfd given"));
    attr.u.evtchn.deliver.eventfd.port = 0;
    attr.u.evtchn.deliver.eventfd.fd = to_fd.fd;
  }
  return SetHvmAttr(attr, XenCapability::kEvtchnSend, what);
}

absl::Status Vm::AssignXenEvtchn(const XenEvtchnRoute& route) {
  return EvtchnAttr(route, 0, "Xen attribute EVTCHN (assign)");
}

absl::Status Vm::UpdateXenEvtchn(const XenEvtchnRoute& route) {
  return EvtchnAttr(route, KVM_XEN_EVTCHN_UPDATE, "Xen attribute EVTCHN (update)");
}

absl::Status Vm::DeassignXenEvtchn(uint32_t send_port) {
  kvm_xen_hvm_attr attr{};
  attr.type = KVM_XEN_ATTR_TYPE_EVTCHN;
  attr.u.evtchn.send_port = send_port;
  attr.u.evtchn.flags = KVM_XEN_EVTCHN_DEASSIGN;
  return SetHvmAttr(attr, XenCapability::kEvtchnSend, "Xen attribute EVTCHN (deassign)");
}

absl::Status Vm::ResetXenEvtchns() {
  kvm_xen_hvm_attr attr{};
  attr.type = KVM_XEN_ATTR_TYPE_EVTCHN;
  attr.u.evtchn.flags = KVM_XEN_EVTCHN_RESET;
  return SetHvmAttr(attr, XenCapability::kEvtchnSend, "Xen attribute EVTCHN (reset)");
}

absl::Status Vm::SetXenVersion(uint32_t version) {
  kvm_xen_hvm_attr attr{};
  attr.type = KVM_XEN_ATTR_TYPE_XEN_VERSION;
  attr.u.xen_version = version;
  return SetHvmAttr(attr, XenCapability::kEvtchnSend, "Xen attribute XEN_VERSION");
}

absl::StatusOr<uint32_t> Vm::GetXenVersion() const {
  XENKVM_ASSIGN_OR_RETURN(kvm_xen_hvm_attr attr, GetHvmAttr(KVM_XEN_ATTR_TYPE_XEN_VERSION,
                                                            XenCapability::kEvtchnSend,
                                                            "Xen attribute XEN_VERSION"));
  return attr.u.xen_version;
}

// RUNSTATE_UPDATE_FLAG (6.2) is a u8 at the start of the union.
absl::Status Vm::SetXenRunstateUpdateFlag(bool enabled) {
  kvm_xen_hvm_attr attr{};
  attr.type = kXenAttrRunstateUpdateFlag;
  attr.u.long_mode = enabled ? 1 : 0;
  return SetHvmAttr(attr, XenCapability::kRunstateUpdateFlag, "Xen attribute RUNSTATE_UPDATE_FLAG");
}

absl::StatusOr<bool> Vm::GetXenRunstateUpdateFlag() const {
  XENKVM_ASSIGN_OR_RETURN(kvm_xen_hvm_attr attr,
                          GetHvmAttr(kXenAttrRunstateUpdateFlag, XenCapability::kRunstateUpdateFlag,
                                     "Xen attribute RUNSTATE_UPDATE_FLAG"));
  return attr.u.long_mode != 0;
}

absl::Status Vm::XenEvtchnSend(uint32_t port, uint32_t vcpu, uint32_t priority) {
  XENKVM_RETURN_IF_ERROR(xen_.Require(XenCapability::kEvtchnSend, "KVM_XEN_HVM_EVTCHN_SEND"));
  kvm_irq_routing_xen_evtchn evtchn{};
  evtchn.port = port;
  evtchn.vcpu = vcpu;
  evtchn.priority = priority;
  return XENKVM_KVM_IOCTL(fd(), KVM_XEN_HVM_EVTCHN_SEND, &evtchn).status();
}

}  // namespace xenkvm::kvm
