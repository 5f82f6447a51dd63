#include "vmm/vm.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "components/acpi/acpi_tables.h"
#include "components/accel/emu/emu_accelerator.h"
#include "components/accel/kvm/kvm_accelerator.h"
#include "components/base/status.h"
#include "components/devices/legacy.h"
#include "components/loader/kernel_image.h"
#include "components/loader/layout.h"
#include "components/loader/pvh_loader.h"
#include "components/xen/xenstore/domain.h"
#include "components/xenbus/vdev.h"
#include "third_party/xen_public.h"
#include "spdlog/spdlog.h"

namespace xenkvm::vmm {
namespace {

constexpr int64_t kEnosys = -38;  // hypercalls of a VM without the Xen interface


}  // namespace

std::string Describe(const VmEnd& end) {
  switch (end.kind) {
    case VmEnd::Kind::kPoweredOff:
      return end.status == 0 ? "the guest powered off"
                             : absl::StrFormat("the guest powered off reporting failure (status %u)", end.status);
    case VmEnd::Kind::kReset:
      return absl::StrCat("the guest asked for a reset (", end.reason, "); xenkvm-vmm does not reboot");
    case VmEnd::Kind::kCrashed:
      return absl::StrCat("the guest crashed: ", end.reason);
    case VmEnd::Kind::kHalted:
      return "every vCPU halted with interrupts disabled: the guest stopped without powering off";
    case VmEnd::Kind::kStopped:
      return absl::StrCat("stopped: ", end.reason);
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<accel::Accelerator>> ChooseAccelerator(AcceleratorKind kind,
                                                                      const memory::GuestMemory& memory,
                                                                      std::string* why) {
  if (kind == AcceleratorKind::kEmu) {
    *why = "accelerator: emu (as asked)";
    return accel::CreateEmuAccelerator(memory);
  }
  // Creating the accelerator is the test of KVM: no throwaway VM first.
  absl::StatusOr<std::unique_ptr<accel::Accelerator>> kvm = accel::CreateKvmAccelerator(memory);
  if (kind == AcceleratorKind::kKvm) {
    if (!kvm.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("accelerator: kvm asked for but not usable: ",
                                                        kvm.status().message(), "; use --accel emu"));
    }
    *why = "accelerator: kvm (as asked)";
    return kvm;
  }
  if (!kvm.ok()) {
    *why = absl::StrCat("accelerator: emu (auto: KVM not usable: ", kvm.status().message(), ")");
    return accel::CreateEmuAccelerator(memory);
  }
  *why = "accelerator: kvm (auto: /dev/kvm is usable)";
  return kvm;
}

absl::StatusOr<std::unique_ptr<Vm>> Vm::Create(const VmConfig& config, ConsoleLog& console) {
  XENKVM_RETURN_IF_ERROR(Validate(config));
  auto vm = std::unique_ptr<Vm>(new Vm(console));
  XENKVM_RETURN_IF_ERROR(vm->Build(config));
  return vm;
}

// Step 1: guest memory with the kernel, the initrd, the ACPI tables and the start info in it.
absl::StatusOr<Vm::BootPlan> Vm::LoadGuest(const VmConfig& config) {
  XENKVM_ASSIGN_OR_RETURN(std::vector<uint8_t> kernel_file,
                          loader::ReadBootFile("kernel", config.kernel, loader::kMaxKernelBytes));
  absl::StatusOr<loader::KernelImage> image = loader::ExtractElfKernel(std::move(kernel_file));
  if (!image.ok()) return absl::InvalidArgumentError(absl::StrCat(config.kernel, ": ", image.status().message()));
  std::vector<loader::BootModule> modules;
  if (!config.initrd.empty()) {
    XENKVM_ASSIGN_OR_RETURN(std::vector<uint8_t> initrd,
                            loader::ReadBootFile("initrd", config.initrd, config.memory_mib * loader::kMiB));
    modules.push_back({std::move(initrd), ""});
  }
  XENKVM_ASSIGN_OR_RETURN(std::vector<memory::RegionSpec> regions,
                          loader::RamRegions(config.memory_mib * loader::kMiB));
  XENKVM_ASSIGN_OR_RETURN(memory::GuestMemory memory, memory::GuestMemory::Create(regions, config.ram_pages));
  memory_ = std::make_unique<memory::GuestMemory>(std::move(memory));

  std::vector<loader::ReservedRange> reserved = loader::ReservedRanges();
  absl::StatusOr<loader::LoadedKernel> kernel = loader::LoadPvhKernel(image->elf, *memory_, reserved);
  if (!kernel.ok()) return absl::InvalidArgumentError(absl::StrCat(config.kernel, ": ", kernel.status().message()));
  XENKVM_ASSIGN_OR_RETURN(acpi::AcpiTables acpi_tables,
                          acpi::BuildAcpiTables({.vcpus = config.vcpus}, loader::kAcpiTablesAddress));
  if (acpi_tables.bytes.size() > loader::kAcpiTablesMax) return absl::InternalError("the ACPI tables outgrew their area");
  XENKVM_RETURN_IF_ERROR(memory_->Write(memory::GuestAddress(acpi_tables.base), acpi_tables.bytes));
  absl::StatusOr<uint32_t> start_info =
      loader::WriteStartInfo(*memory_, *kernel, config.cmdline, modules, acpi_tables.rsdp_address);
  if (!start_info.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(config.initrd.empty() ? "" : "initrd: ", start_info.status().message()));
  }
  return BootPlan{accel::PvhEntry{kernel->entry, *start_info}, image->description};
}

// Step 3: the platform's port I/O and MMIO devices.
absl::Status Vm::RegisterPlatformDevices() {
  auto output = [this](uint8_t byte) { console_.Append(byte); };
  serial_ = std::make_shared<devices::Serial>(output);
  XENKVM_RETURN_IF_ERROR(pio_bus_.Register(devices::kCom1Base, devices::kCom1Size, serial_, "COM1"));
  XENKVM_RETURN_IF_ERROR(
      pio_bus_.Register(devices::kDebugPort, 1, std::make_shared<devices::DebugPort>(output), "debug port"));
  XENKVM_RETURN_IF_ERROR(pio_bus_.Register(
      devices::kI8042DataPort, devices::kI8042CommandPort - devices::kI8042DataPort + 1,
      std::make_shared<devices::I8042>([this] { End({VmEnd::Kind::kReset, 0, "i8042 reset"}); }), "i8042"));
  static_assert(acpi::kSleepStatusPort == acpi::kSleepControlPort + 1 && acpi::kResetPort == acpi::kSleepControlPort + 2);
  static_assert(acpi::kResetValue == devices::AcpiSleepAndReset::kResetValue &&
                acpi::kSleepTypeS5 == devices::AcpiSleepAndReset::kSleepTypeS5);
  XENKVM_RETURN_IF_ERROR(pio_bus_.Register(
      acpi::kSleepControlPort, 3,
      std::make_shared<devices::AcpiSleepAndReset>([this] { End({VmEnd::Kind::kPoweredOff, 0, ""}); },
                                                   [this] { End({VmEnd::Kind::kReset, 0, "ACPI reset register"}); }),
      "ACPI sleep/reset"));
  XENKVM_RETURN_IF_ERROR(pio_bus_.Register(
      devices::kExitPort, 4,
      std::make_shared<devices::ExitPort>([this](uint32_t status) { End({VmEnd::Kind::kPoweredOff, status, ""}); }),
      "exit port"));

  // The IOAPIC: a level-triggered pin stays in service until its EOI where the backend reports
  // EOIs (emu); with the kvm backend the local APIC is in the kernel and says nothing, so each
  // assertion delivers there.
  ioapic_ = std::make_shared<devices::Ioapic>(
      [this](uint8_t destination, uint8_t vector, bool level) {
        if (destination >= vcpus_.size()) return false;
        accel::Vcpu& vcpu = *vcpus_[destination];
        return (level ? vcpu.InjectLevelInterrupt(vector) : vcpu.InjectInterrupt(vector)).ok();
      },
      /*eoi_tracking=*/accelerator_->capabilities().reports_eoi);
  XENKVM_RETURN_IF_ERROR(mmio_bus_.Register(devices::kIoapicBase, devices::kIoapicSize, ioapic_, "IOAPIC"));

  return absl::OkStatus();
}

absl::Status Vm::Build(const VmConfig& config) {
  XENKVM_ASSIGN_OR_RETURN(BootPlan boot, LoadGuest(config));
  XENKVM_ASSIGN_OR_RETURN(accelerator_, ChooseAccelerator(config.accelerator, *memory_, &accelerator_choice_));
  XENKVM_RETURN_IF_ERROR(accelerator_->RestrictCpuid(config.cpu_template));
  XENKVM_RETURN_IF_ERROR(RegisterPlatformDevices());
  if (config.xen_version != 0) {
    xen::XenConfig xen_config;
    xen_config.version = config.xen_version;
    xen_config.vcpus = config.vcpus;
    xen_config.max_event_channels = config.xen_max_event_channels;
    xen_config.gnttab_max_frames = config.xen_gnttab_max_frames;
    for (const loader::E820Entry& entry : loader::BuildE820(*memory_)) {
      xen_config.memory_map.push_back({entry.address, entry.size, entry.type});
    }
    hypervisor_log_ = std::make_unique<HypervisorLog>(xen_config.domid);
    xen::Shim::Callbacks callbacks;
    callbacks.console = [log = hypervisor_log_.get()](uint8_t byte) { log->Append(byte); };
    callbacks.set_gsi = [this](uint32_t gsi, bool asserted) { ioapic_->SetLevel(gsi, asserted); };
    callbacks.shutdown = [this](xen::ShutdownReason reason) {
      switch (reason) {
        case xen::ShutdownReason::kPoweroff:
          End({VmEnd::Kind::kPoweredOff, 0, ""});
          break;
        case xen::ShutdownReason::kReboot:
        case xen::ShutdownReason::kSoftReset:
          End({VmEnd::Kind::kReset, 0, absl::StrCat("SCHEDOP_shutdown ", xen::ShutdownReasonName(reason))});
          break;
        case xen::ShutdownReason::kCrash:
        case xen::ShutdownReason::kWatchdog:
          End({VmEnd::Kind::kCrashed, 0,
               absl::StrCat("the guest reported it (SCHEDOP_shutdown ", xen::ShutdownReasonName(reason), ")")});
          break;
      }
    };
    XENKVM_ASSIGN_OR_RETURN(backend_loop_, base::EventLoop::Create());
    XENKVM_RETURN_IF_ERROR(backend_loop_->Start());
    XENKVM_ASSIGN_OR_RETURN(xen_, xen::Shim::Create(xen_config, *memory_, *accelerator_, std::move(callbacks),
                                                    backend_loop_.get()));
    domid_ = xen_config.domid;
    // Before vCPU 0 exists: emu traces the boot vCPU for the hypercall-page write from its start.
    XENKVM_RETURN_IF_ERROR(xen_->EnableHypercallPage());
    XENKVM_RETURN_IF_ERROR(BuildXenBackends(config));
  }

  for (uint32_t id = 0; id < config.vcpus; ++id) {
    std::optional<accel::PvhEntry> entry;
    if (id == 0) entry = boot.entry;
    XENKVM_ASSIGN_OR_RETURN(std::unique_ptr<accel::Vcpu> vcpu, accelerator_->CreateVcpu(id, entry));
    if (xen_) XENKVM_RETURN_IF_ERROR(xen_->AttachVcpu(*vcpu));
    vcpus_.push_back(std::move(vcpu));
  }
  spdlog::info("VM built: {} MiB{}, {} vCPU(s), kernel {} ({}, entry {:#x}){}, Xen {}", config.memory_mib,
               config.ram_pages == memory::RamPages::k2MiB ? " on 2 MiB huge pages" : "", config.vcpus, config.kernel, boot.description, boot.entry.entry,
               config.initrd.empty() ? "" : absl::StrCat(", initrd ", config.initrd),
               config.xen_version ? absl::StrFormat("%u.%u", config.xen_version >> 16, config.xen_version & 0xffff)
                                  : std::string("off"));
  return absl::OkStatus();
}

// The toolstack's part for a Xen guest: its XenStore and its PV console, each a ring in a reserved
// page (QEMU's choice of pages too: the console at pfn 0xfeff8, XenStore at 0xfeff9) and an event
// channel bound to the VMM, announced by HVM parameters; then the domain's XenStore nodes.
absl::Status Vm::BuildXenBackends(const VmConfig& config) {
  constexpr uint64_t kConsoleRingGpa = loader::kXenReservedBase;
  constexpr uint64_t kStoreRingGpa = loader::kXenReservedBase + loader::kPageSize;
  store_ = std::make_unique<xen::xenstore::Store>();
  auto process_store = [this] {
    if (store_ring_) store_ring_->Process();
  };
  XENKVM_ASSIGN_OR_RETURN(uint32_t store_port, xen_->event_channels().AllocateBackendPort(process_store));
  XENKVM_ASSIGN_OR_RETURN(store_ring_, xen::xenstore::RingServer::Create(
                                           *store_, *memory_, kStoreRingGpa, domid_,
                                           [this, store_port] { (void)xen_->event_channels().NotifyGuest(store_port); },
                                           [this, process_store] { (void)backend_loop_->Post(process_store); }));
  XENKVM_ASSIGN_OR_RETURN(uint32_t console_port, xen_->event_channels().AllocateBackendPort([this] {
    if (pv_console_) pv_console_->Process();
    FlushConsoleInput();  // the guest's event may mean it took input: room for more
  }));
  XENKVM_ASSIGN_OR_RETURN(
      pv_console_, xenbus::ConsoleBackend::Create(
                       *memory_, kConsoleRingGpa,
                       [this](std::span<const uint8_t> bytes) {
                         for (uint8_t byte : bytes) console_.Append(byte);
                       },
                       [this, console_port] { (void)xen_->event_channels().NotifyGuest(console_port); }));
  xen_->SetHvmParam(HVM_PARAM_STORE_PFN, kStoreRingGpa >> 12);
  xen_->SetHvmParam(HVM_PARAM_STORE_EVTCHN, store_port);
  xen_->SetHvmParam(HVM_PARAM_CONSOLE_PFN, kConsoleRingGpa >> 12);
  xen_->SetHvmParam(HVM_PARAM_CONSOLE_EVTCHN, console_port);
  xen_->grant_table().SetReservedEntries(kConsoleRingGpa >> 12, kStoreRingGpa >> 12);
  xen::xenstore::DomainInfo domain{domid_, config.name, config.vcpus, config.memory_mib * 1024};
  {
    absl::MutexLock lock(&mutex_);
    memory_kib_ = domain.memory_kib;
    memory_target_kib_ = domain.memory_kib;
  }
  domain.console = xen::xenstore::DomainInfo::Console{kConsoleRingGpa >> 12, console_port};
  XENKVM_RETURN_IF_ERROR(xen::xenstore::CreateDomain(*store_, domain));
  // The disks and vifs: created on the backend loop, whose thread owns the store from now on.
  absl::Status disks = absl::OkStatus();
  XENKVM_RETURN_IF_ERROR(OnBackendLoop([&] {
    xenbus::XenDisk::Environment environment{store_.get(), memory_.get(), &xen_->event_channels(),
                                             &xen_->grant_table(), backend_loop_.get(), domid_,
                                             accelerator_.get()};
    for (const xenbus::XenDiskConfig& disk : config.disks) {
      absl::StatusOr<std::unique_ptr<xenbus::XenDisk>> created = xenbus::XenDisk::Create(environment, disk);
      if (!created.ok()) {
        disks = created.status();
        return;
      }
      disks_.push_back(std::move(*created));
    }
    for (const xenbus::XenNetConfig& network : config.networks) {
      absl::StatusOr<std::unique_ptr<xenbus::XenNet>> created = xenbus::XenNet::Create(environment, network);
      if (!created.ok()) {
        disks = created.status();
        return;
      }
      networks_.push_back(std::move(*created));
      next_vif_index_ = std::max(next_vif_index_, network.devid + 1);
    }
  }));
  XENKVM_RETURN_IF_ERROR(disks);
  if (!config.xenstore_socket.empty()) {
    XENKVM_ASSIGN_OR_RETURN(store_socket_,
                            xen::xenstore::SocketServer::Start(*store_, *backend_loop_, config.xenstore_socket));
  }
  return absl::OkStatus();
}

Vm::~Vm() {
  // Stop the backends' thread first: nothing may run on what is destroyed next.
  if (backend_loop_) {
    backend_loop_->Stop();
    backend_loop_->Join();
  }
  disks_.clear();
  networks_.clear();
  store_socket_.reset();
  store_ring_.reset();
  pv_console_.reset();
}

// Callers are the VM's build and the control server, which main stops before the VM (and so
// before the loop): a posted closure always runs.
absl::Status Vm::OnBackendLoop(std::function<void()> work) {
  auto done = std::make_shared<absl::Notification>();
  if (!backend_loop_->Post([&work, done] {
        work();
        done->Notify();
      }).ok()) {
    return absl::FailedPreconditionError("the VM's backends have stopped");
  }
  done->WaitForNotification();
  return absl::OkStatus();
}

size_t Vm::SendConsoleInput(const std::string& bytes) {
  if (!store_ || !backend_loop_) {
    serial_->Enqueue(std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
    return bytes.size();
  }
  size_t taken = 0;
  (void)OnBackendLoop([&] {
    taken = std::min(bytes.size(), kConsoleInputLimit - std::min(kConsoleInputLimit, pv_console_input_.size()));
    pv_console_input_.append(bytes, 0, taken);
    FlushConsoleInput();
  });
  return taken;
}

void Vm::FlushConsoleInput() {
  if (!pv_console_ || pv_console_input_.empty()) return;
  const size_t sent = pv_console_->Send(
      std::span(reinterpret_cast<const uint8_t*>(pv_console_input_.data()), pv_console_input_.size()));
  pv_console_input_.erase(0, sent);
}

absl::StatusOr<Vm::DiskInfo> Vm::AttachDisk(const xenbus::XenDiskConfig& config) {
  if (!store_) return absl::FailedPreconditionError("this VM runs without the Xen interface: no xen-disk");
  XENKVM_ASSIGN_OR_RETURN(const uint32_t devid, xenbus::ParseVirtualDevice(config.vdev));
  absl::StatusOr<DiskInfo> result = absl::InternalError("not run");
  // On the backend loop, one at a time: of concurrent attaches of one vdev exactly one wins, and a
  // refused attach changes nothing.
  XENKVM_RETURN_IF_ERROR(OnBackendLoop([&] {
    for (const auto& disk : disks_) {
      if (disk->device_id() != devid) continue;
      result = absl::AlreadyExistsError(absl::StrCat("xen-disk ", config.vdev, ": device ", devid, " is attached already (",
                                                     disk->config().vdev, ", ", disk->config().path,
                                                     "): detach it first"));
      return;
    }
    xenbus::XenDisk::Environment environment{store_.get(), memory_.get(), &xen_->event_channels(),
                                             &xen_->grant_table(), backend_loop_.get(), domid_,
                                             accelerator_.get()};
    absl::StatusOr<std::unique_ptr<xenbus::XenDisk>> disk = xenbus::XenDisk::Create(environment, config);
    if (!disk.ok()) {
      result = disk.status();
      return;
    }
    result = DiskInfo{(*disk)->config(), (*disk)->device_id(), (*disk)->backend_state(), (*disk)->frontend_state(),
                      std::nullopt};
    disks_.push_back(std::move(*disk));
  }));
  return result;
}

template <typename Device>
absl::StatusOr<bool> Vm::DetachDevice(std::vector<std::unique_ptr<Device>>& devices, uint32_t devid,
                                      const std::string& what, bool force, absl::Duration timeout) {
  auto closed = std::make_shared<absl::Notification>();
  Device* target = nullptr;
  absl::Status found = absl::NotFoundError(absl::StrCat("no ", what, " in this VM"));
  XENKVM_RETURN_IF_ERROR(OnBackendLoop([&] {
    for (auto& device : devices) {
      if (device->device_id() != devid) continue;
      if (!force && device->removal_requested()) {
        found = absl::FailedPreconditionError(absl::StrCat(what, " is being detached already (force ends it at once)"));
        break;
      }
      target = device.get();
      found = absl::OkStatus();
      if (!force) device->RequestRemoval([closed] { closed->Notify(); });
      break;
    }
  }));
  XENKVM_RETURN_IF_ERROR(found);
  const bool graceful = !force && closed->WaitForNotificationWithTimeout(timeout);
  XENKVM_RETURN_IF_ERROR(OnBackendLoop([&] {
    std::erase_if(devices, [&](const auto& device) { return device.get() == target; });
  }));
  return !graceful;
}

absl::StatusOr<bool> Vm::DetachDisk(const std::string& vdev, bool force, absl::Duration timeout) {
  if (!store_) return absl::FailedPreconditionError("this VM runs without the Xen interface: no xen-disk");
  XENKVM_ASSIGN_OR_RETURN(const uint32_t devid, xenbus::ParseVirtualDevice(vdev));
  return DetachDevice(disks_, devid, absl::StrCat("xen-disk ", vdev), force, timeout);
}

absl::StatusOr<Vm::NetworkInfo> Vm::AttachNetwork(xenbus::XenNetConfig config) {
  if (!store_) return absl::FailedPreconditionError("this VM runs without the Xen interface: no xen-net");
  absl::StatusOr<NetworkInfo> result = absl::InternalError("not run");
  // On the backend loop, one at a time: concurrent attaches take different indexes.
  XENKVM_RETURN_IF_ERROR(OnBackendLoop([&] {
    config.devid = next_vif_index_;
    xenbus::XenNet::Environment environment{store_.get(), memory_.get(), &xen_->event_channels(),
                                            &xen_->grant_table(), backend_loop_.get(), domid_,
                                             accelerator_.get()};
    absl::StatusOr<std::unique_ptr<xenbus::XenNet>> network = xenbus::XenNet::Create(environment, config);
    if (!network.ok()) {
      result = network.status();
      return;
    }
    ++next_vif_index_;
    result = NetworkInfo{(*network)->config(), (*network)->tap_name(), (*network)->backend_state(),
                         (*network)->frontend_state(), std::nullopt};
    networks_.push_back(std::move(*network));
  }));
  return result;
}

absl::StatusOr<bool> Vm::DetachNetwork(uint32_t devid, bool force, absl::Duration timeout) {
  if (!store_) return absl::FailedPreconditionError("this VM runs without the Xen interface: no xen-net");
  return DetachDevice(networks_, devid, absl::StrCat("xen-net vif", devid), force, timeout);
}

std::vector<Vm::NetworkInfo> Vm::Networks() {
  std::vector<NetworkInfo> networks;
  if (!backend_loop_) return networks;
  (void)OnBackendLoop([&] {
    for (const auto& network : networks_) {
      networks.push_back({network->config(), network->tap_name(), network->backend_state(),
                          network->frontend_state(), network->ring_statistics()});
    }
  });
  return networks;
}

std::vector<Vm::DiskInfo> Vm::Disks() {
  std::vector<DiskInfo> disks;
  if (!backend_loop_) return disks;
  (void)OnBackendLoop([&] {
    for (const auto& disk : disks_) {
      disks.push_back({disk->config(), disk->device_id(), disk->backend_state(), disk->frontend_state(),
                       disk->ring_statistics()});
    }
  });
  return disks;
}

absl::StatusOr<bool> Vm::RequestShutdown(const std::string& reason) {
  if (store_ == nullptr) {
    return absl::FailedPreconditionError("this VM runs without the Xen interface: it has no XenStore to ask through");
  }
  absl::StatusOr<bool> result = false;
  XENKVM_RETURN_IF_ERROR(OnBackendLoop([&] {
    absl::Status asked = xen::xenstore::RequestShutdown(*store_, domid_, reason);
    result = asked.ok() ? absl::StatusOr<bool>(xen::xenstore::GuestAdvertises(*store_, domid_, reason)) : asked;
  }));
  return result;
}

absl::StatusOr<Vm::MemoryStatus> Vm::Memory() {
  if (xen_ == nullptr) return absl::FailedPreconditionError("this VM runs without the Xen interface: it has no balloon");
  MemoryStatus status;
  const uint64_t given_back_kib = (xen_->reservation().ram_pages() - xen_->reservation().current_pages()) * 4;
  absl::MutexLock lock(&mutex_);
  status.max_kib = memory_kib_;
  status.current_kib = memory_kib_ - std::min(given_back_kib, memory_kib_);
  status.target_kib = memory_target_kib_;
  return status;
}

absl::StatusOr<Vm::MemoryStatus> Vm::SetMemoryTarget(uint64_t target_kib) {
  XENKVM_ASSIGN_OR_RETURN(MemoryStatus status, Memory());
  if (target_kib < 1024 || target_kib > status.max_kib) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "memory target %u KiB is outside 1024..%u KiB (1 MiB up to the VM's %u MiB of RAM)", target_kib,
        status.max_kib, status.max_kib / 1024));
  }
  absl::Status set;
  XENKVM_RETURN_IF_ERROR(OnBackendLoop([&] { set = xen::xenstore::SetMemoryTarget(*store_, domid_, target_kib); }));
  XENKVM_RETURN_IF_ERROR(set);
  spdlog::info("memory target set to {} KiB (the guest holds {} KiB)", target_kib, status.current_kib);
  absl::MutexLock lock(&mutex_);
  memory_target_kib_ = target_kib;
  status.target_kib = target_kib;
  return status;
}

absl::StatusOr<HypervisorLog::Contents> Vm::ReadHypervisorLog(bool clear) {
  if (hypervisor_log_ == nullptr) {
    return absl::FailedPreconditionError("this VM runs without the Xen interface: it has no hypervisor log");
  }
  return hypervisor_log_->Read(clear);
}

void Vm::End(VmEnd end) {
  {
    absl::MutexLock lock(&mutex_);
    if (end_) return;
    end_ = std::move(end);
  }
  ending_.store(true);
  if (xen_) xen_->Stop();  // vCPUs blocked in SCHEDOP_block/poll return
  for (auto& vcpu : vcpus_) vcpu->Kick();
}

void Vm::Pause() {
  {
    absl::MutexLock lock(&mutex_);
    if (end_ || paused_) return;
    paused_ = true;
  }
  for (auto& vcpu : vcpus_) vcpu->Kick();
}

void Vm::Resume() {
  absl::MutexLock lock(&mutex_);
  paused_ = false;
}

bool Vm::paused() const {
  absl::MutexLock lock(&mutex_);
  return paused_;
}

VmEnd Vm::Run() {
  std::vector<std::thread> threads;
  const absl::Time started = absl::Now();
  for (auto& vcpu : vcpus_) threads.emplace_back([this, raw = vcpu.get()] { VcpuLoop(*raw); });
  for (std::thread& thread : threads) thread.join();
  console_.Flush();
  const double vcpu_seconds = absl::ToDoubleSeconds(absl::Now() - started) * static_cast<double>(vcpus_.size());
  const double exit_seconds = static_cast<double>(exit_ns_.load()) / 1e9;
  spdlog::info("exits: {} in {:.3f} s of {:.3f} vCPU-seconds ({:.1f}% of the vCPUs' time)", exits_.load(), exit_seconds,
               vcpu_seconds, vcpu_seconds > 0 ? 100.0 * exit_seconds / vcpu_seconds : 0.0);
  absl::MutexLock lock(&mutex_);
  return end_.value_or(VmEnd{VmEnd::Kind::kStopped, 0, "no vCPU is running"});
}

// One guest access on `bus`: a store goes to the device; a load's value goes back to the vCPU.
// Nobody at the address: stores are dropped and loads read all-ones, as on a PC's floating bus.
void Vm::HandleBusAccess(accel::Vcpu& vcpu, const devices::Bus& bus, uint64_t address, uint8_t size, bool is_write,
                         uint64_t value) {
  std::array<uint8_t, 8> bytes{};
  std::span<uint8_t> data(bytes.data(), std::min<size_t>(size, bytes.size()));
  if (is_write) {
    devices::StoreLittleEndian(value, data);
    if (!bus.Write(address, data)) ++unclaimed_accesses_;
    return;
  }
  if (!bus.Read(address, data)) {
    ++unclaimed_accesses_;
    std::fill(bytes.begin(), bytes.end(), 0xff);
  }
  (void)vcpu.Complete(devices::LoadLittleEndian(data));
}

void Vm::VcpuLoop(accel::Vcpu& vcpu) {
  while (!ending_.load()) {
    absl::StatusOr<accel::Exit> exit = vcpu.Run();
    // Durations on the monotonic clock (absl::Now() is the wall clock, which can step).
    const auto exit_start = std::chrono::steady_clock::now();
    if (!exit.ok()) {
      End({VmEnd::Kind::kCrashed, 0, absl::StrCat("vCPU ", vcpu.id(), ": ", exit.status().message())});
      return;
    }
    bool handled = true;  // an exit the guest continues after: counted, with its time
    if (auto* io = std::get_if<accel::PortIoExit>(&*exit)) {
      HandleBusAccess(vcpu, pio_bus_, io->port, io->size, io->is_write, io->value);
    } else if (auto* mmio = std::get_if<accel::MmioExit>(&*exit)) {
      HandleBusAccess(vcpu, mmio_bus_, mmio->address, mmio->size, mmio->is_write, mmio->value);
    } else if (auto* eoi = std::get_if<accel::EoiExit>(&*exit)) {
      if (xen_) xen_->RefreshCallbackGsi();  // lowered first if the guest saw its events
      ioapic_->EndOfInterrupt(eoi->vector);
    } else if (auto* call = std::get_if<accel::HypercallExit>(&*exit)) {
      (void)vcpu.Complete(xen_ ? xen_->Hypercall(vcpu, *call) : static_cast<uint64_t>(kEnosys));
    } else {
      handled = false;
    }
    if (handled) {
      exits_.fetch_add(1, std::memory_order_relaxed);
      const auto took = std::chrono::steady_clock::now() - exit_start;
      exit_ns_.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(took).count(), std::memory_order_relaxed);
    } else if (std::holds_alternative<accel::HaltExit>(*exit)) {
      bool all_halted;
      {
        absl::MutexLock lock(&mutex_);
        all_halted = ++halted_vcpus_ == vcpus_.size();
      }
      if (all_halted) End({VmEnd::Kind::kHalted, 0, ""});
      absl::MutexLock lock(&mutex_);
      mutex_.Await(absl::Condition(
          +[](std::optional<VmEnd>* end) { return end->has_value(); }, &end_));
      return;
    } else if (auto* shutdown = std::get_if<accel::ShutdownExit>(&*exit)) {
      End({VmEnd::Kind::kReset, 0, shutdown->reason});
    } else if (auto* error = std::get_if<accel::GuestErrorExit>(&*exit)) {
      End({VmEnd::Kind::kCrashed, 0, error->reason});
    }
    // KickedExit: the VM is ending, pausing, or someone wanted this vCPU's attention.
    absl::MutexLock lock(&mutex_);
    mutex_.Await(absl::Condition(
        +[](Vm* vm) ABSL_EXCLUSIVE_LOCKS_REQUIRED(vm->mutex_) { return !vm->paused_ || vm->end_.has_value(); }, this));
  }
  if (absl::StatusOr<accel::Registers> registers = vcpu.GetRegisters(); registers.ok()) {
    spdlog::debug("vCPU {} stopped at RIP {:#x} RSP {:#x} RFLAGS {:#x}", vcpu.id(), registers->rip, registers->rsp,
                  registers->rflags);
  }
}

}  // namespace xenkvm::vmm
