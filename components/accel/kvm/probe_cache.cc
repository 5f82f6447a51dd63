#include "components/accel/kvm/probe_cache.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace xenkvm::accel {
namespace {

constexpr char kHeader[] = "xenkvm kvm instruction probes 1";
constexpr size_t kMaxFileBytes = 64 * 1024;

std::string FirstLine(const char* path) {
  std::ifstream file(path);
  std::string line;
  std::getline(file, line);
  return line;
}

// FNV-1a over the names of the known features `cpuid` offers: what decides which probes run. Not
// the whole CPUID, whose APIC IDs follow the host CPU the VMM happened to ask on.
uint64_t Fingerprint(std::span<const kvm_cpuid_entry2> cpuid) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (const CpuidFeature& feature : KnownCpuidFeatures()) {
    if (!OffersFeature(cpuid, feature.name)) continue;
    for (const char* c = feature.name; *c != '\0'; ++c) hash = (hash ^ static_cast<unsigned char>(*c)) * 0x100000001b3ull;
    hash = (hash ^ ' ') * 0x100000001b3ull;
  }
  return hash;
}

}  // namespace

std::optional<std::string> DefaultProbeCachePath() {
  if (geteuid() == 0) {
    if (mkdir("/run/xenkvm", 0755) != 0 && errno != EEXIST) return std::nullopt;
    return std::string("/run/xenkvm/kvm-instruction-probes");
  }
  const char* runtime = std::getenv("XDG_RUNTIME_DIR");
  if (runtime == nullptr || runtime[0] != '/') return std::nullopt;
  return absl::StrCat(runtime, "/xenkvm-kvm-instruction-probes");
}

std::optional<std::string> ProbeCacheKey(std::span<const kvm_cpuid_entry2> offered) {
  const std::string boot = FirstLine("/proc/sys/kernel/random/boot_id");
  if (boot.empty()) return std::nullopt;  // no boot to tie the result to: not kept
  std::string modules;
  for (const char* module : {"kvm", "kvm_intel", "kvm_amd", "kvm_pvm"}) {
    struct stat info;
    if (stat(absl::StrCat("/sys/module/", module).c_str(), &info) == 0) absl::StrAppend(&modules, module, ",");
  }
  return absl::StrFormat("%s %s %016x", boot, modules, Fingerprint(offered));
}

std::optional<ProbeResult> LoadProbeResult(const std::string& path, const std::string& key) {
  struct stat info;
  if (stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode) || static_cast<uint64_t>(info.st_size) > kMaxFileBytes) {
    return std::nullopt;
  }
  std::ifstream file(path);
  if (!file) return std::nullopt;
  std::string header, stored_key;
  if (!std::getline(file, header) || header != kHeader) return std::nullopt;
  if (!std::getline(file, stored_key) || stored_key != absl::StrCat("key ", key)) return std::nullopt;
  ProbeResult result;
  size_t bytes = header.size() + stored_key.size();
  for (std::string line; std::getline(file, line);) {
    bytes += line.size() + 1;
    if (bytes > kMaxFileBytes) return std::nullopt;
    const size_t space = line.find(' ');
    if (space == std::string::npos || space + 1 == line.size()) return std::nullopt;
    const std::string kind = line.substr(0, space), value = line.substr(space + 1);
    if (kind == "unrunnable") {
      result.unrunnable.push_back(value);
    } else if (kind == "baseline") {
      result.baseline.push_back(value);
    } else if (kind == "detail") {
      result.details.push_back(value);
    } else if (kind == "end" && value == "ok") {
      return result;  // a file cut short has no end line
    } else {
      return std::nullopt;
    }
  }
  return std::nullopt;
}

absl::Status StoreProbeResult(const std::string& path, const std::string& key, const ProbeResult& result) {
  for (const std::vector<std::string>* values : {&result.unrunnable, &result.baseline, &result.details}) {
    for (const std::string& value : *values) {
      if (value.empty() || value.find('\n') != std::string::npos) {
        return absl::InvalidArgumentError("a probe result with an empty or multi-line entry is not stored");
      }
    }
  }
  std::ostringstream text;
  text << kHeader << "\nkey " << key << "\n";
  for (const std::string& name : result.unrunnable) text << "unrunnable " << name << "\n";
  for (const std::string& name : result.baseline) text << "baseline " << name << "\n";
  for (const std::string& detail : result.details) text << "detail " << detail << "\n";
  text << "end ok\n";
  const std::string aside = absl::StrCat(path, ".", getpid());
  {
    std::ofstream file(aside, std::ios::trunc);
    file << text.str();
    file.close();
    if (!file) {
      std::remove(aside.c_str());
      return absl::UnavailableError(absl::StrCat("cannot write ", aside));
    }
  }
  if (std::rename(aside.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(aside.c_str());
    return absl::UnavailableError(absl::StrCat("cannot rename ", aside, " to ", path, ": ", std::strerror(error)));
  }
  return absl::OkStatus();
}

}  // namespace xenkvm::accel
