#include "api/vmm_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

extern char** environ;

namespace xenkvm::api {
namespace {

std::string Errno(const std::string& what) { return absl::StrCat(what, ": ", std::strerror(errno)); }

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream file(path);
  if (!file) return std::nullopt;
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

// The last "xenkvm-vmm: ..." line of the VMM's log: how it says it ended or failed.
std::string LastVmmMessage(const std::string& log_path) {
  std::ifstream log(log_path);
  std::string line, last;
  while (std::getline(log, line)) {
    if (absl::StartsWith(line, "xenkvm-vmm: ")) last = line.substr(12);
  }
  return last;
}

std::string FormatRunEnd(const RunEnd& end) {
  std::string first = end.destroyed ? "destroyed"
                      : end.signal  ? absl::StrCat("signal ", *end.signal)
                                    : absl::StrCat("exit ", end.exit_status.value_or(-1));
  return absl::StrCat(first, "\n", end.message, "\n");
}

std::optional<RunEnd> ParseRunEnd(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, absl::MaxSplits('\n', 1));
  if (lines.empty()) return std::nullopt;
  RunEnd end;
  if (lines.size() > 1) end.message = std::string(absl::StripTrailingAsciiWhitespace(lines[1]));
  int number = 0;
  if (lines[0] == "destroyed") {
    end.destroyed = true;
  } else if (absl::StartsWith(lines[0], "exit ") && absl::SimpleAtoi(lines[0].substr(5), &number)) {
    end.exit_status = number;
  } else if (absl::StartsWith(lines[0], "signal ") && absl::SimpleAtoi(lines[0].substr(7), &number)) {
    end.signal = number;
  } else {
    return std::nullopt;
  }
  return end;
}

}  // namespace

VmFiles::VmFiles(const std::string& dir)
    : dir(dir),
      config(dir + "/config.json"),
      control_socket(dir + "/vmm.sock"),
      xenstore_socket(dir + "/xs.sock"),
      pid(dir + "/vmm.pid"),
      end(dir + "/vmm.end"),
      vmm_log(dir + "/vmm.log"),
      console_log(dir + "/console.log"),
      handover_socket(dir + "/handover.sock"),
      jail(dir + "/jail") {}

absl::Status WriteFileAtomically(const std::string& path, const std::string& content) {
  const std::string temporary = absl::StrCat(path, ".tmp");
  const int fd = open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::InternalError(Errno(absl::StrCat("cannot write ", temporary)));
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      absl::Status failed = absl::InternalError(Errno(absl::StrCat("cannot write ", temporary)));
      close(fd);
      unlink(temporary.c_str());
      return failed;
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) {
    absl::Status failed = absl::InternalError(Errno(absl::StrCat("cannot sync ", temporary)));
    close(fd);
    unlink(temporary.c_str());
    return failed;
  }
  close(fd);
  if (rename(temporary.c_str(), path.c_str()) != 0) {
    absl::Status failed = absl::InternalError(Errno(absl::StrCat("cannot rename ", temporary, " to ", path)));
    unlink(temporary.c_str());
    return failed;
  }
  const std::string parent = std::filesystem::path(path).parent_path().string();
  if (const int dir = open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dir >= 0) {
    fsync(dir);
    close(dir);
  }
  return absl::OkStatus();
}

absl::StatusOr<pid_t> SpawnVmm(const std::vector<std::string>& argv, const VmFiles& files) {
  std::error_code ignored;
  std::filesystem::rename(files.console_log, files.console_log + ".1", ignored);
  unlink(files.end.c_str());
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  const int console_fd = open(files.console_log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  const int log_fd = open(files.vmm_log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  auto close_all = [&] {
    for (int fd : {null_fd, console_fd, log_fd}) {
      if (fd >= 0) close(fd);
    }
  };
  if (null_fd < 0 || console_fd < 0 || log_fd < 0) {
    absl::Status failed = absl::InternalError(Errno(absl::StrCat("cannot open the VM's files in ", files.dir)));
    close_all();
    return failed;
  }
  std::vector<std::string> args = argv;
  std::vector<char*> pointers;
  for (std::string& arg : args) pointers.push_back(arg.data());
  pointers.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, null_fd, 0);
  posix_spawn_file_actions_adddup2(&actions, console_fd, 1);
  posix_spawn_file_actions_adddup2(&actions, log_fd, 2);
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  // Its own session: the daemon's terminal and process group (Ctrl-C, a service manager's kill of
  // the group) do not reach the VM.
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSID);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, pointers[0], &actions, &attributes, pointers.data(), environ);
  posix_spawnattr_destroy(&attributes);
  posix_spawn_file_actions_destroy(&actions);
  close_all();
  if (spawned != 0) return absl::InternalError(absl::StrCat("cannot run ", argv[0], ": ", std::strerror(spawned)));
  if (absl::Status recorded = WriteFileAtomically(files.pid, absl::StrCat(pid, "\n")); !recorded.ok()) {
    kill(pid, SIGKILL);  // a VMM the daemon could not find again after a restart must not run
    waitpid(pid, nullptr, 0);
    return recorded;
  }
  return pid;
}

std::optional<pid_t> FindRunningVmm(const VmFiles& files) {
  std::optional<std::string> text = ReadFile(files.pid);
  pid_t pid = 0;
  if (!text || !absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &pid) || pid <= 0) return std::nullopt;
  std::optional<std::string> command_line = ReadFile(absl::StrCat("/proc/", pid, "/cmdline"));
  if (!command_line) return std::nullopt;
  // Arguments are NUL-separated: this VM's control socket as a whole argument.
  const std::string wanted = absl::StrCat(std::string(1, '\0'), files.control_socket, std::string(1, '\0'));
  if (!absl::StrContains(*command_line, wanted)) return std::nullopt;
  return pid;
}

absl::StatusOr<ProcessWatch> ProcessWatch::Open(pid_t pid) {
  const int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return absl::NotFoundError(Errno(absl::StrCat("pidfd_open(", pid, ")")));
  return ProcessWatch(fd);
}

ProcessWatch::ProcessWatch(ProcessWatch&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

ProcessWatch::~ProcessWatch() {
  if (fd_ >= 0) close(fd_);
}

bool ProcessWatch::Wait(absl::Duration timeout) {
  pollfd poll_fd{fd_, POLLIN, 0};
  const int ms = static_cast<int>(absl::ToInt64Milliseconds(timeout));
  return poll(&poll_fd, 1, ms) > 0;
}

RunEnd CollectRunEnd(pid_t pid, const VmFiles& files, bool destroyed) {
  RunEnd end;
  int status = 0;
  pid_t reaped = -1;
  while (pid > 0 && (reaped = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
  }
  std::optional<RunEnd> written;
  if (std::optional<std::string> text = ReadFile(files.end)) written = ParseRunEnd(*text);
  if (reaped == pid && WIFSIGNALED(status)) {
    end.signal = WTERMSIG(status);
  } else if (reaped == pid) {
    end.exit_status = WEXITSTATUS(status);
  } else if (written) {
    end = *written;  // not the daemon's child (adopted after a restart): its own record
  } else {
    end.message = "the VMM ended while no xenkvmd watched it, and left no record (killed?)";
  }
  if (end.message.empty() && written && !written->message.empty()) end.message = written->message;
  if (end.message.empty() && !end.signal) end.message = LastVmmMessage(files.vmm_log);
  if (end.signal == SIGSYS) {
    end.message = "the VMM made a system call its seccomp filter forbids and was killed (SIGSYS; the kernel's "
                  "audit log names the call)";
  }
  if (end.message.empty()) {
    end.message = end.signal ? absl::StrCat("the VMM was killed by signal ", *end.signal)
                             : absl::StrCat("exit status ", end.exit_status.value_or(-1));
  }
  end.destroyed = destroyed;
  (void)WriteFileAtomically(files.end, FormatRunEnd(end));
  unlink(files.pid.c_str());
  return end;
}

std::optional<RunEnd> ReadRunEnd(const VmFiles& files) {
  std::optional<std::string> text = ReadFile(files.end);
  return text ? ParseRunEnd(*text) : std::nullopt;
}

namespace {

// utime + stime (seconds) and RSS (bytes) from a /proc stat file.
std::optional<std::pair<double, uint64_t>> ReadStat(const std::string& path) {
  std::ifstream file(path);
  std::string text;
  if (!std::getline(file, text)) return std::nullopt;
  // Fields after the command (which may hold spaces) in parentheses: state is field 3.
  const size_t end = text.rfind(')');
  if (end == std::string::npos || end + 2 > text.size()) return std::nullopt;
  std::vector<std::string> fields = absl::StrSplit(text.substr(end + 2), ' ');
  constexpr size_t kUtime = 14 - 3, kStime = 15 - 3, kRss = 24 - 3;
  uint64_t utime = 0, stime = 0, rss_pages = 0;
  if (fields.size() <= kRss || !absl::SimpleAtoi(fields[kUtime], &utime) || !absl::SimpleAtoi(fields[kStime], &stime) ||
      !absl::SimpleAtoi(fields[kRss], &rss_pages)) {
    return std::nullopt;
  }
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  return std::make_pair(static_cast<double>(utime + stime) / ticks,
                        rss_pages * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)));
}

}  // namespace

std::optional<ProcessUsage> ReadProcessUsage(pid_t pid) {
  std::optional<std::pair<double, uint64_t>> process = ReadStat(absl::StrCat("/proc/", pid, "/stat"));
  if (!process) return std::nullopt;
  ProcessUsage usage{process->first, process->second, {}};
  std::error_code error;
  for (const auto& task : std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/task"), error)) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    uint32_t vcpu = 0;
    if (!std::getline(comm, name) || !absl::StartsWith(name, "vcpu") || !absl::SimpleAtoi(name.substr(4), &vcpu) ||
        vcpu >= 1024) {
      continue;
    }
    if (std::optional<std::pair<double, uint64_t>> thread = ReadStat((task.path() / "stat").string())) {
      if (usage.vcpu_seconds.size() <= vcpu) usage.vcpu_seconds.resize(vcpu + 1);
      usage.vcpu_seconds[vcpu] += thread->first;
    }
  }
  return usage;
}

}  // namespace xenkvm::api
