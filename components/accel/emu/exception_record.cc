#include "components/accel/emu/exception_record.h"

#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace xenkvm::accel::emu {
namespace {

// QEMU's values of old_exception: none, #DE, and the double fault a second #DE becomes.
constexpr int32_t kNone = -1, kDivideError = 0, kDoubleFault = 8;

std::vector<uint8_t> Snapshot(uc_engine* uc, uc_context* context) {
  uc_context_save(uc, context);
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(context);
  return std::vector<uint8_t>(bytes, bytes + uc_context_size(uc));
}

int32_t At(const std::vector<uint8_t>& bytes, size_t offset) {
  int32_t value;
  std::memcpy(&value, bytes.data() + offset, sizeof(value));
  return value;
}

// Raises two divide errors on a fresh engine and finds the one word that goes from "none" to #DE to
// the double fault QEMU makes of the second.
absl::StatusOr<size_t> LocateRecord() {
  uc_engine* uc = nullptr;
  if (uc_err err = uc_open(UC_ARCH_X86, UC_MODE_64, &uc); err != UC_ERR_OK) {
    return absl::InternalError(absl::StrCat("unicorn uc_open: ", uc_strerror(err)));
  }
  // Two instructions need no 1 GiB translation buffer (Unicorn's default, whose first huge page
  // alone is 2 MiB to zero): this engine costs the VMM's start little.
  constexpr uint32_t kTranslationBufferBytes = 1 << 20;
  uc_ctl_set_tcg_buffer_size(uc, kTranslationBufferBytes);
  constexpr uint64_t kCode = 0x1000;
  uc_context* context = nullptr;
  std::vector<std::vector<uint8_t>> snapshots;
  if (uc_mem_map(uc, kCode, 0x1000, UC_PROT_ALL) == UC_ERR_OK && uc_context_alloc(uc, &context) == UC_ERR_OK) {
    const uint8_t divide_by_zero[] = {0x31, 0xc9, 0xf7, 0xf1};  // xor ecx, ecx; div ecx
    uc_mem_write(uc, kCode, divide_by_zero, sizeof(divide_by_zero));
    snapshots.push_back(Snapshot(uc, context));
    for (int run = 0; run < 2; ++run) {
      uc_emu_start(uc, kCode, kCode + sizeof(divide_by_zero), 0, 0);  // stops at the #DE
      snapshots.push_back(Snapshot(uc, context));
    }
  }
  if (context != nullptr) uc_context_free(context);
  uc_close(uc);
  std::vector<size_t> candidates;
  for (size_t offset = 0; snapshots.size() == 3 && offset + 4 <= snapshots[0].size(); offset += 4) {
    if (At(snapshots[0], offset) == kNone && At(snapshots[1], offset) == kDivideError &&
        At(snapshots[2], offset) == kDoubleFault) {
      candidates.push_back(offset);
    }
  }
  if (candidates.size() != 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "emu accelerator: cannot find Unicorn's exception-in-flight record in its CPU context (",
        candidates.size(), " candidates); the backend is written for Unicorn 2.1.1"));
  }
  return candidates[0];
}

}  // namespace

absl::StatusOr<ExceptionRecord> ExceptionRecord::For(uc_engine* uc) {
  static const absl::StatusOr<size_t> offset = LocateRecord();
  if (!offset.ok()) return offset.status();
  uc_context* context = nullptr;
  if (uc_err err = uc_context_alloc(uc, &context); err != UC_ERR_OK) {
    return absl::InternalError(absl::StrCat("unicorn uc_context_alloc: ", uc_strerror(err)));
  }
  return ExceptionRecord(context, *offset);
}

ExceptionRecord::ExceptionRecord(ExceptionRecord&& other) noexcept
    : context_(std::exchange(other.context_, nullptr)), offset_(other.offset_) {}

ExceptionRecord& ExceptionRecord::operator=(ExceptionRecord&& other) noexcept {
  std::swap(context_, other.context_);
  offset_ = other.offset_;
  return *this;
}

ExceptionRecord::~ExceptionRecord() {
  if (context_ != nullptr) uc_context_free(context_);
}

absl::Status ExceptionRecord::Clear(uc_engine* uc) {
  if (uc_err err = uc_context_save(uc, context_); err != UC_ERR_OK) {
    return absl::InternalError(absl::StrCat("unicorn uc_context_save: ", uc_strerror(err)));
  }
  std::memcpy(reinterpret_cast<uint8_t*>(context_) + offset_, &kNone, sizeof(kNone));
  if (uc_err err = uc_context_restore(uc, context_); err != UC_ERR_OK) {
    return absl::InternalError(absl::StrCat("unicorn uc_context_restore: ", uc_strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace xenkvm::accel::emu
