#include "vmm/hypervisor_log.h"

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace xenkvm::vmm {

void HypervisorLog::Append(uint8_t byte) {
  absl::MutexLock lock(&mutex_);
  if (byte == '\r') return;
  if (byte == '\n') {
    EndLineLocked();
    return;
  }
  // Control bytes other than tab would reach the operator's terminal: shown as '?'.
  line_.push_back(byte == '\t' || (byte >= 0x20 && byte != 0x7f) ? static_cast<char>(byte) : '?');
  if (line_.size() >= kMaxLine) EndLineLocked();
}

void HypervisorLog::EndLineLocked() {
  const std::string line = absl::StrCat("(d", domid_, ") ", line_, "\n");
  line_.clear();
  spdlog::info("hypervisor log: {}", line.substr(0, line.size() - 1));
  kept_.insert(kept_.end(), line.begin(), line.end());
  while (kept_.size() > kCapacity) {
    kept_.pop_front();
    ++dropped_;
  }
}

HypervisorLog::Contents HypervisorLog::Read(bool clear) {
  absl::MutexLock lock(&mutex_);
  Contents contents{std::string(kept_.begin(), kept_.end()), dropped_};
  if (!line_.empty()) absl::StrAppend(&contents.text, "(d", domid_, ") ", line_);
  if (clear) {
    kept_.clear();
    dropped_ = 0;
  }
  return contents;
}

}  // namespace xenkvm::vmm
