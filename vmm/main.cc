// xenkvm-vmm: runs one VM in the foreground, the guest console on stdout, logs on stderr.
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "components/base/fd_handover.h"
#include "components/base/lock_checks.h"
#include "components/base/log.h"
#include "components/base/status.h"
#include "components/base/version.h"
#include "components/xen/version.h"
#include "spdlog/spdlog.h"
#include "vmm/control_server.h"
#include "vmm/jail.h"
#include "vmm/seccomp_filter.h"
#include "vmm/vm.h"

namespace {

// Exit statuses (documented in vmm/README.md).
constexpr int kExitPoweredOff = 0;
constexpr int kExitUsage = 1;
constexpr int kExitSetupFailed = 2;
constexpr int kExitGuestFailed = 3;
constexpr int kExitReset = 4;
constexpr int kExitCrashed = 5;
constexpr int kExitHalted = 6;
constexpr int kExitStopped = 7;

constexpr char kDescription[] =
    "Runs one Xen PVH guest in the foreground; its console goes to stdout, logs to stderr.";
constexpr char kExitStatuses[] =
    "Exit status: 0 the guest powered off; 1 bad usage; 2 the VM could not be built; 3 the guest\n"
    "powered off reporting failure; 4 the guest asked for a reset; 5 the guest crashed; 6 every vCPU\n"
    "halted with interrupts off; 7 stopped by a signal.\n";

xenkvm::vmm::Vm* running_vm = nullptr;
std::string status_file;  // --status-file
int status_fd = -1;       // open from the start: an unprivileged or jailed VMM could not open it later

// Records how the VMM ends for whoever started it (xenkvmd reads it after a restart, when the VMM
// is no longer its child): "exit STATUS\nMESSAGE\n". The file, opened at the start, keeps the last
// run's account until this one ends; it is read only once the VMM is gone.
void WriteStatus(int status, const std::string& message) {
  if (status_fd < 0 && !status_file.empty()) {
    status_fd = open(status_file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  }
  if (status_fd < 0) return;
  const std::string text = absl::StrCat("exit ", status, "\n", message, "\n");
  if (ftruncate(status_fd, 0) == 0 && pwrite(status_fd, text.data(), text.size(), 0) == static_cast<ssize_t>(text.size())) {
    fdatasync(status_fd);
  }
}

int Finish(int status, const std::string& message) {
  std::fprintf(stderr, "xenkvm-vmm: %s\n", message.c_str());
  WriteStatus(status, message);
  return status;
}

int Usage(const std::string& error) {
  std::fprintf(stderr, "xenkvm-vmm: %s (see --help)\n", error.c_str());
  WriteStatus(kExitUsage, error);
  return kExitUsage;
}

// The flags, as CLI11 reads them; values are checked by the same parsers as the daemon's config.
struct Flags {
  xenkvm::vmm::VmConfig config;
  std::string memory, huge_pages, vcpus, max_evtchn, accel, cpu_template, xen_version, log_level, control_socket;
  std::vector<std::string> disks;
  std::vector<std::string> networks;
  bool seccomp = true;
  std::string run_as;
  std::string jail;
  std::string handover_socket;
};

void DefineFlags(CLI::App& app, Flags& flags) {
  app.add_option("--kernel", flags.config.kernel,
                 "the kernel, with a Xen PVH entry note: an ELF vmlinux or a bzImage/vmlinuz (gzip, xz, lzma, zstd, "
                 "lz4 or bzip2 payload)");
  app.add_option("--initrd", flags.config.initrd, "an initial ramdisk (initramfs), the kernel's first module");
  app.add_option("--name", flags.config.name, "the domain's name in XenStore (default guest)");
  app.add_option("--memory", flags.memory, "guest RAM, whole MiB (default 256, at least 2)");
  app.add_option("--huge-pages", flags.huge_pages,
                 "none (default) or 2M: guest RAM on the host's 2 MiB huge pages, reserved from its pool at start "
                 "(/proc/sys/vm/nr_hugepages); --memory must then be even");
  app.add_option("--vcpus", flags.vcpus, "virtual CPUs, 1 to 32 (default 1)");
  app.add_option("--cmdline", flags.config.cmdline, "kernel command line (default empty)");
  app.add_option("--accel", flags.accel, "kvm, emu (software CPU) or auto: kvm when /dev/kvm is usable (default)");
  app.add_option("--cpu-template", flags.cpu_template,
                 "narrow the guest's CPUID: host (default), x86-64-v1, x86-64-v2, x86-64-v3");
  app.add_option("--xen-version", flags.xen_version,
                 "the Xen version shown to the guest: 4.17 (default) or major << 16 | minor (0x40011); \"off\" runs "
                 "the guest without the Xen interface");
  app.add_option("--xen-max-evtchn", flags.max_evtchn, "event channels the guest may open, 64 to 131072 (FIFO; 2-level guests get at most 4096; default 4096)");
  app.add_option("--disk", flags.disks,
                 "a xen-disk: target=PATH (an image file or block device), vdev=NAME (xvda, the default; hd*, sd*, "
                 "d<N>), access=rw|ro, features=flush+discard+persistent+indirect (what to offer; default all), "
                 "cache=writeback|none (none: O_DIRECT); "
                 "repeat for more disks")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--net", flags.networks,
                 "a xen-net device on a TAP, xl's vif syntax: mac=MAC (default: 00:16:3e plus random bytes), "
                 "bridge=BRIDGE (the tap joins it), vifname=TAP (an existing tap, or the name of the one made), "
                 "mtu=N; repeat for more (vif0, vif1, ...)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--xenstore-socket", flags.config.xenstore_socket,
                 "also serve the guest's XenStore on this Unix socket (mode 0600), for xenstore-utils");
  app.add_option("--control-socket", flags.control_socket, "serve the VMM control service there (xenkvmd uses it)");
  app.add_option("--status-file", status_file, "when the VMM ends, write \"exit STATUS\" and its last message there");
  app.add_option("--run-as", flags.run_as,
                 "once the VM is built, become this user (a name or UID:GID; the VMM starts as root)");
  app.add_option("--jail", flags.jail,
                 "once the VM is built, confine the VMM to this (empty) directory as its read-only root, in a mount "
                 "namespace of its own; hot-plugged files then come through --handover-socket (needs root)");
  app.add_option("--handover-socket", flags.handover_socket,
                 "receive files for hot-plug (disk images, taps) opened by xenkvmd on this Unix socket (mode 0600)");
  app.add_flag("!--no-seccomp", flags.seccomp,
               "run without the system-call filter (to trace the VMM with strace; gdb works with it)");
  app.add_option("--log-level", flags.log_level, "trace, debug, info, warn, error, critical, off (default $XENKVM_LOG or info)");
}

// The values CLI11 took as text, parsed and checked; the first problem, said as a user needs it.
absl::Status ApplyFlags(Flags& flags) {
  xenkvm::vmm::VmConfig& config = flags.config;
  if (!flags.memory.empty() && !absl::SimpleAtoi(flags.memory, &config.memory_mib)) {
    return absl::InvalidArgumentError(absl::StrCat("--memory: \"", flags.memory, "\" is not a number of MiB"));
  }
  if (!flags.huge_pages.empty()) {
    absl::StatusOr<xenkvm::memory::RamPages> pages = xenkvm::memory::ParseHugePages(flags.huge_pages);
    if (!pages.ok()) return absl::InvalidArgumentError(absl::StrCat("--", pages.status().message()));
    config.ram_pages = *pages;
  }
  if (!flags.vcpus.empty() && !absl::SimpleAtoi(flags.vcpus, &config.vcpus)) {
    return absl::InvalidArgumentError(absl::StrCat("--vcpus: \"", flags.vcpus, "\" is not a number"));
  }
  if (!flags.max_evtchn.empty() && !absl::SimpleAtoi(flags.max_evtchn, &config.xen_max_event_channels)) {
    return absl::InvalidArgumentError(absl::StrCat("--xen-max-evtchn: \"", flags.max_evtchn, "\" is not a number"));
  }
  if (!flags.accel.empty()) {
    XENKVM_ASSIGN_OR_RETURN(config.accelerator, xenkvm::vmm::ParseAcceleratorKind(flags.accel));
  }
  if (!flags.cpu_template.empty()) {
    absl::StatusOr<xenkvm::accel::CpuTemplate> cpu = xenkvm::accel::ParseCpuTemplate(flags.cpu_template);
    if (!cpu.ok()) return absl::InvalidArgumentError(absl::StrCat("--cpu-template: ", cpu.status().message()));
    config.cpu_template = *cpu;
  }
  if (!flags.xen_version.empty()) {
    absl::StatusOr<uint32_t> version = xenkvm::xen::ParseXenVersion(flags.xen_version);
    if (!version.ok()) return absl::InvalidArgumentError(absl::StrCat("--xen-version: ", version.status().message()));
    config.xen_version = *version;
  }
  for (const std::string& spec : flags.disks) {
    XENKVM_ASSIGN_OR_RETURN(xenkvm::xenbus::XenDiskConfig disk, xenkvm::vmm::ParseDiskSpec(spec));
    config.disks.push_back(std::move(disk));
  }
  for (const std::string& spec : flags.networks) {
    XENKVM_ASSIGN_OR_RETURN(xenkvm::xenbus::XenNetConfig network,
                            xenkvm::xenbus::ParseVifSpec(spec, static_cast<uint32_t>(config.networks.size())));
    config.networks.push_back(std::move(network));
  }
  if (config.kernel.empty()) return absl::InvalidArgumentError("--kernel is required");
  return xenkvm::vmm::Validate(config);
}

}  // namespace

int main(int argc, char** argv) {
  xenkvm::base::DisableLockOrderChecks();
  Flags flags;
  CLI::App app(kDescription, "xenkvm-vmm");
  app.set_version_flag("--version", std::string("xenkvm-vmm ") + xenkvm::base::kVersion);
  app.footer(kExitStatuses);
  DefineFlags(app, flags);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    if (error.get_exit_code() == 0) return app.exit(error);  // --help, --version
    return Usage(error.what());
  }
  if (absl::Status logging = xenkvm::base::InitLogging(flags.log_level); !logging.ok()) {
    return Usage(std::string(logging.message()));
  }
  if (absl::Status valid = ApplyFlags(flags); !valid.ok()) return Usage(std::string(valid.message()));
  if (!flags.jail.empty()) {
    if (absl::Status prepared = xenkvm::vmm::PrepareJail(flags.jail); absl::IsFailedPrecondition(prepared)) {
      spdlog::warn("not confined to {}: {}", flags.jail, std::string(prepared.message()));
      flags.jail.clear();
    } else if (!prepared.ok()) {
      return Finish(kExitSetupFailed, std::string(prepared.message()));
    }
  }
  if (!status_file.empty()) status_fd = open(status_file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  xenkvm::vmm::VmConfig& config = flags.config;
  const std::string& control_socket = flags.control_socket;
  // SIGINT/SIGTERM end the VM (its vCPU threads are kicked out of the guest); SIGUSR2, sent by
  // main itself, releases the waiter when the VM ended on its own. Blocked before any thread
  // exists, so that every thread inherits the mask and only the waiter takes them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // A closed stdout (xenkvmd gone) must not kill the VM: console writes then just fail.
  signal(SIGPIPE, SIG_IGN);
  xenkvm::vmm::ConsoleLog console(STDOUT_FILENO);
  absl::StatusOr<std::unique_ptr<xenkvm::vmm::Vm>> vm = xenkvm::vmm::Vm::Create(config, console);
  if (!vm.ok()) return Finish(kExitSetupFailed, std::string(vm.status().message()));
  std::fprintf(stderr, "xenkvm-vmm: %s\n", (*vm)->accelerator_choice().c_str());

  running_vm = vm->get();
  std::unique_ptr<xenkvm::base::FdHandoverServer> handover;
  if (!flags.handover_socket.empty()) {
    absl::StatusOr<std::unique_ptr<xenkvm::base::FdHandoverServer>> started =
        xenkvm::base::FdHandoverServer::Start(flags.handover_socket);
    if (!started.ok()) return Finish(kExitSetupFailed, std::string(started.status().message()));
    handover = std::move(started).value();
  }
  std::unique_ptr<xenkvm::vmm::ControlServer> control;
  if (!control_socket.empty()) {
    absl::StatusOr<std::unique_ptr<xenkvm::vmm::ControlServer>> started =
        xenkvm::vmm::ControlServer::Start(control_socket, **vm, handover.get());
    if (!started.ok()) return Finish(kExitSetupFailed, std::string(started.status().message()));
    control = std::move(started).value();
  }
  // Built: from here on the VMM needs only its allow-list (every thread, the ones to come too).
  // A VMM killed by it (or crashing) leaves no core file: guest memory must not land on disk.
  const rlimit no_core{0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  if (!flags.jail.empty()) {
    if (absl::Status jailed = xenkvm::vmm::EnterJail(flags.jail); !jailed.ok()) {
      return Finish(kExitSetupFailed, std::string(jailed.message()));
    }
    spdlog::info("confined to {}", flags.jail);
  }
  if (!flags.run_as.empty()) {
    if (absl::Status dropped = xenkvm::vmm::DropPrivileges(flags.run_as); !dropped.ok()) {
      return Finish(kExitSetupFailed, std::string(dropped.message()));
    }
    spdlog::info("running as {} (uid {})", flags.run_as, getuid());
  }
  if (flags.seccomp) {
    if (absl::Status filtered = xenkvm::vmm::InstallSeccompFilter(); !filtered.ok()) {
      if (!absl::IsFailedPrecondition(filtered)) return Finish(kExitSetupFailed, std::string(filtered.message()));
      spdlog::warn("no seccomp filter: {}", std::string(filtered.message()));
    }
  }
  std::thread signal_waiter([&stop_signals] {
    int signal = 0;
    if (sigwait(&stop_signals, &signal) == 0 && signal != SIGUSR2) {
      running_vm->End({xenkvm::vmm::VmEnd::Kind::kStopped, 0, absl::StrCat("signal ", signal)});
    }
  });
  xenkvm::vmm::VmEnd end = (*vm)->Run();
  pthread_kill(signal_waiter.native_handle(), SIGUSR2);
  signal_waiter.join();

  int status = kExitCrashed;
  switch (end.kind) {
    case xenkvm::vmm::VmEnd::Kind::kPoweredOff:
      status = end.status == 0 ? kExitPoweredOff : kExitGuestFailed;
      break;
    case xenkvm::vmm::VmEnd::Kind::kReset:
      status = kExitReset;
      break;
    case xenkvm::vmm::VmEnd::Kind::kCrashed:
      status = kExitCrashed;
      break;
    case xenkvm::vmm::VmEnd::Kind::kHalted:
      status = kExitHalted;
      break;
    case xenkvm::vmm::VmEnd::Kind::kStopped:
      status = kExitStopped;
      break;
  }
  return Finish(status, xenkvm::vmm::Describe(end));
}
