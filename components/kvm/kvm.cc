#include "components/kvm/kvm.h"

#include <fcntl.h>

#include <cstdlib>
#include <memory>

#include "absl/strings/str_cat.h"
#include "components/base/status.h"
#include "components/kvm/flex_array.h"
#include "components/kvm/ioctl.h"

namespace xenkvm::kvm {

absl::StatusOr<Kvm> Kvm::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    absl::Status status = base::ErrnoStatus(absl::StrCat("open ", path), err);
    if (err == ENOENT || err == ENODEV || err == ENXIO) {
      return absl::NotFoundError(absl::StrCat(
          status.message(), ": KVM is not available on this host (no kvm module, or no hardware "
                            "virtualisation); use the emu accelerator"));
    }
    if (err == EACCES || err == EPERM) {
      return absl::PermissionDeniedError(absl::StrCat(
          status.message(), ": run as root or add this user to the group that owns ", path));
    }
    return status;
  }
  Kvm kvm{base::Fd(fd)};
  XENKVM_ASSIGN_OR_RETURN(int version, XENKVM_KVM_IOCTL(kvm.fd(), KVM_GET_API_VERSION, 0));
  if (version != KVM_API_VERSION) {
    return absl::FailedPreconditionError(absl::StrCat(path, " speaks KVM API version ", version,
                                                      "; xenkvm needs ", KVM_API_VERSION));
  }
  return kvm;
}

absl::StatusOr<int> Kvm::CheckExtension(int capability) const {
  return XENKVM_KVM_IOCTL(fd(), KVM_CHECK_EXTENSION, capability);
}

absl::StatusOr<size_t> Kvm::VcpuMmapSize() const {
  XENKVM_ASSIGN_OR_RETURN(int size, XENKVM_KVM_IOCTL(fd(), KVM_GET_VCPU_MMAP_SIZE, 0));
  if (size < static_cast<int>(sizeof(kvm_run))) {
    return absl::InternalError(absl::StrCat("KVM_GET_VCPU_MMAP_SIZE returned ", size,
                                            ", smaller than struct kvm_run"));
  }
  return static_cast<size_t>(size);
}

namespace {

// KVM_GET_SUPPORTED_CPUID and KVM_GET_MSR_INDEX_LIST take a count and answer E2BIG when it is too
// small; grow until it fits.
template <typename Entry>
absl::StatusOr<std::vector<Entry>> GrowingQuery(int fd, unsigned long request, const char* name,
                                                size_t entries_offset) {
  for (size_t capacity = 64; capacity <= (1u << 16); capacity *= 2) {
    internal::FlexArrayBuffer<Entry> buffer(entries_offset, capacity);
    buffer.count() = static_cast<uint32_t>(capacity);
    if (::ioctl(fd, request, buffer.data()) < 0) {
      if (errno == E2BIG) continue;
      return base::ErrnoStatus(absl::StrCat("ioctl(", name, ")"));
    }
    return std::vector<Entry>(buffer.entries(), buffer.entries() + buffer.count());
  }
  return absl::ResourceExhaustedError(absl::StrCat(name, ": list larger than 65536 entries"));
}

}  // namespace

absl::StatusOr<std::vector<kvm_cpuid_entry2>> Kvm::SupportedCpuid() const {
  return GrowingQuery<kvm_cpuid_entry2>(fd(), internal::kKvmGetSupportedCpuid, "KVM_GET_SUPPORTED_CPUID",
                                        internal::kCpuid2EntriesOffset);
}

absl::StatusOr<std::vector<uint32_t>> Kvm::MsrIndexList() const {
  return GrowingQuery<uint32_t>(fd(), internal::kKvmGetMsrIndexList, "KVM_GET_MSR_INDEX_LIST",
                                internal::kMsrListIndicesOffset);
}

absl::StatusOr<XenCapabilities> Kvm::ProbeXen() const {
  XENKVM_ASSIGN_OR_RETURN(int bits, CheckExtension(KVM_CAP_XEN_HVM));
  return XenCapabilities(static_cast<uint32_t>(bits));
}

absl::StatusOr<Vm> Kvm::CreateVm() const {
  XENKVM_ASSIGN_OR_RETURN(size_t mmap_size, VcpuMmapSize());
  XENKVM_ASSIGN_OR_RETURN(XenCapabilities xen, ProbeXen());
  XENKVM_ASSIGN_OR_RETURN(int vm_fd, XENKVM_KVM_IOCTL(fd(), KVM_CREATE_VM, 0));
  return Vm::Adopt(base::Fd(vm_fd), mmap_size, xen);
}

absl::Status KvmUsable(const std::string& path) {
  absl::StatusOr<Kvm> kvm = Kvm::Open(path);
  if (!kvm.ok()) return kvm.status();
  absl::StatusOr<Vm> vm = kvm->CreateVm();
  if (!vm.ok()) return base::Annotate(vm.status(), "KVM cannot create a VM here");
  return absl::OkStatus();
}

}  // namespace xenkvm::kvm
