// xenkvm-vmm: runs one VM in the foreground, the guest console on stdout, logs on stderr.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "components/base/log.h"
#include "components/xen/version.h"
#include "vmm/control_server.h"
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

constexpr char kUsage[] =
    "usage: xenkvm-vmm --kernel FILE [--initrd FILE] [--name NAME] [--memory MiB] [--vcpus N]\n"
    "                  [--cmdline STRING]\n"
    "                  [--accel kvm|emu|auto] [--cpu-template NAME] [--xen-version VERSION|off]\n"
    "                  [--xen-max-evtchn N]\n"
    "                  [--disk target=PATH,vdev=xvda,access=rw]... [--xenstore-socket PATH]\n"
    "                  [--control-socket PATH] [--log-level LEVEL]\n"
    "\n"
    "Runs one Xen PVH guest in the foreground; its console goes to stdout, logs to stderr.\n"
    "  --kernel FILE     the kernel, with a Xen PVH entry note (required): an ELF vmlinux or a\n"
    "                    bzImage/vmlinuz (gzip, xz, lzma, zstd, lz4 or bzip2 payload)\n"
    "  --initrd FILE     an initial ramdisk (initramfs), given to the kernel as its first module\n"
    "  --name NAME       the domain's name in XenStore (default guest)\n"
    "  --memory MiB      guest RAM, whole MiB (default 256, at least 2)\n"
    "  --vcpus N         virtual CPUs, 1 to 32 (default 1)\n"
    "  --cmdline STRING  kernel command line (default empty)\n"
    "  --accel NAME      kvm, emu (software CPU) or auto: kvm when /dev/kvm is usable (default)\n"
    "  --cpu-template T  narrow the guest's CPUID: host (default), x86-64-v1, x86-64-v2, x86-64-v3\n"
    "  --xen-version V   the Xen version shown to the guest: 4.17 (default) or major << 16 | minor\n"
    "                    (0x40011); \"off\" runs the guest without the Xen interface\n"
    "  --xen-max-evtchn N  event channels the guest may open, 64 to 4096 (default 4096)\n"
    "  --disk SPEC       a xen-disk: target=PATH (an image file or block device), vdev=NAME\n"
    "                    (xvda, the default; hd*, sd*, d<N>), access=rw|ro, features=flush+discard+\n"
    "                    persistent+indirect (what to offer; default all); repeat for more disks\n"
    "  --xenstore-socket PATH  also serve the guest's XenStore on this Unix socket (mode 0600), for\n"
    "                    xenstore-utils: XENSTORED_PATH=PATH xenstore-ls /local/domain\n"
    "  --control-socket PATH  serve the VMM control service there (xenkvmd uses it)\n"
    "  --status-file PATH  when the VMM ends, write \"exit STATUS\" and its last message there\n"
    "  --log-level LEVEL trace, debug, info, warn, error, critical, off (default $XENKVM_LOG or info)\n"
    "\n"
    "Exit status: 0 the guest powered off; 1 bad usage; 2 the VM could not be built; 3 the guest\n"
    "powered off reporting failure; 4 the guest asked for a reset; 5 the guest crashed; 6 every vCPU\n"
    "halted with interrupts off; 7 stopped by a signal.\n";

xenkvm::vmm::Vm* running_vm = nullptr;
std::string status_file;  // --status-file

// Records how the VMM ends for whoever started it (xenkvmd reads it after a restart, when the VMM
// is no longer its child): "exit STATUS\nMESSAGE\n", written whole (a temporary file, renamed).
void WriteStatus(int status, const std::string& message) {
  if (status_file.empty()) return;
  const std::string temporary = status_file + ".tmp";
  if (FILE* file = std::fopen(temporary.c_str(), "w")) {
    const bool written = std::fprintf(file, "exit %d\n%s\n", status, message.c_str()) > 0;
    if (std::fclose(file) == 0 && written) std::rename(temporary.c_str(), status_file.c_str());
  }
}

int Finish(int status, const std::string& message) {
  std::fprintf(stderr, "xenkvm-vmm: %s\n", message.c_str());
  WriteStatus(status, message);
  return status;
}

int Usage(const std::string& error) {
  std::fprintf(stderr, "xenkvm-vmm: %s\n\n%s", error.c_str(), kUsage);
  WriteStatus(kExitUsage, error);
  return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  xenkvm::vmm::VmConfig config;
  std::string log_level;
  std::string control_socket;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    std::string value;
    if (size_t eq = flag.find('='); eq != std::string::npos && flag.rfind("--", 0) == 0) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    } else if (flag.rfind("--", 0) == 0) {
      if (i + 1 >= argc) return Usage(absl::StrCat(flag, " needs a value"));
      value = argv[++i];
    } else {
      return Usage(absl::StrCat("unexpected argument \"", flag, "\""));
    }
    if (flag == "--kernel") {
      config.kernel = value;
    } else if (flag == "--initrd") {
      config.initrd = value;
    } else if (flag == "--name") {
      config.name = value;
    } else if (flag == "--disk") {
      absl::StatusOr<xenkvm::xenbus::XenDiskConfig> disk = xenkvm::vmm::ParseDiskSpec(value);
      if (!disk.ok()) return Usage(std::string(disk.status().message()));
      config.disks.push_back(std::move(*disk));
    } else if (flag == "--xenstore-socket") {
      config.xenstore_socket = value;
    } else if (flag == "--memory") {
      if (!absl::SimpleAtoi(value, &config.memory_mib)) return Usage(absl::StrCat("--memory: \"", value, "\" is not a number of MiB"));
    } else if (flag == "--vcpus") {
      if (!absl::SimpleAtoi(value, &config.vcpus)) return Usage(absl::StrCat("--vcpus: \"", value, "\" is not a number"));
    } else if (flag == "--cmdline") {
      config.cmdline = value;
    } else if (flag == "--cpu-template") {
      absl::StatusOr<xenkvm::accel::CpuTemplate> cpu = xenkvm::accel::ParseCpuTemplate(value);
      if (!cpu.ok()) return Usage(absl::StrCat("--cpu-template: ", cpu.status().message()));
      config.cpu_template = *cpu;
    } else if (flag == "--accel") {
      absl::StatusOr<xenkvm::vmm::AcceleratorKind> kind = xenkvm::vmm::ParseAcceleratorKind(value);
      if (!kind.ok()) return Usage(std::string(kind.status().message()));
      config.accelerator = *kind;
    } else if (flag == "--xen-version") {
      absl::StatusOr<uint32_t> version = xenkvm::xen::ParseXenVersion(value);
      if (!version.ok()) return Usage(absl::StrCat("--xen-version: ", version.status().message()));
      config.xen_version = *version;
    } else if (flag == "--xen-max-evtchn") {
      if (!absl::SimpleAtoi(value, &config.xen_max_event_channels)) {
        return Usage(absl::StrCat("--xen-max-evtchn: \"", value, "\" is not a number"));
      }
    } else if (flag == "--control-socket") {
      control_socket = value;
    } else if (flag == "--status-file") {
      status_file = value;
    } else if (flag == "--log-level") {
      log_level = value;
    } else {
      return Usage(absl::StrCat("unknown option ", flag));
    }
  }
  if (absl::Status logging = xenkvm::base::InitLogging(log_level); !logging.ok()) {
    return Usage(std::string(logging.message()));
  }
  if (config.kernel.empty()) return Usage("--kernel is required");
  if (absl::Status valid = xenkvm::vmm::Validate(config); !valid.ok()) return Usage(std::string(valid.message()));

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
  std::unique_ptr<xenkvm::vmm::ControlServer> control;
  if (!control_socket.empty()) {
    absl::StatusOr<std::unique_ptr<xenkvm::vmm::ControlServer>> started =
        xenkvm::vmm::ControlServer::Start(control_socket, **vm);
    if (!started.ok()) return Finish(kExitSetupFailed, std::string(started.status().message()));
    control = std::move(started).value();
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
