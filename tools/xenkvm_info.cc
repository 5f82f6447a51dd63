// xenkvm-info: what this host offers xenkvm: library versions, and whether KVM and io_uring are
// usable. README command (a) prints it before booting the demo guest.
#include <liburing.h>
#include <unicorn/unicorn.h>
#include <xen/xen-compat.h>

#include <cstdio>
#include <cstring>
#include <string>

#include <google/protobuf/stubs/common.h>
#include <grpcpp/grpcpp.h>

#include "components/kvm/kvm.h"
#include "spdlog/version.h"

namespace {

std::string KvmState() {
  absl::Status usable = xenkvm::kvm::KvmUsable();
  if (!usable.ok()) {
    return std::string("not usable (") + std::string(usable.message()) + ")";
  }
  absl::StatusOr<xenkvm::kvm::Kvm> kvm = xenkvm::kvm::Kvm::Open();
  absl::StatusOr<xenkvm::kvm::XenCapabilities> xen = kvm->ProbeXen();
  if (!xen.ok()) return "usable; Xen capabilities unknown (" + std::string(xen.status().message()) + ")";
  if (xen->empty()) return "usable, but this kernel has no KVM Xen support (CONFIG_KVM_XEN is off)";
  return "usable, KVM Xen capabilities " + xen->ToString();
}

std::string IoUringState() {
  io_uring ring;
  int result = io_uring_queue_init(4, &ring, 0);
  if (result < 0) return std::string("not usable (io_uring_queue_init: ") + std::strerror(-result) + ")";
  io_uring_queue_exit(&ring);
  return "usable";
}

}  // namespace

int main() {
  unsigned uc_major = 0, uc_minor = 0;
  const unsigned uc_combined = uc_version(&uc_major, &uc_minor);
  std::printf("xenkvm host report\n");
  std::printf("  unicorn          %u.%u.%u (emu accelerator; linked statically, Debian 13's libunicorn-dev)\n",
              uc_major, uc_minor, (uc_combined >> 8) & 0xff);
  std::printf("  gRPC             %s\n", grpc::Version().c_str());
  std::printf("  protobuf         %s\n",
              google::protobuf::internal::VersionString(GOOGLE_PROTOBUF_VERSION).c_str());
  std::printf("  spdlog           %d.%d.%d\n", SPDLOG_VER_MAJOR, SPDLOG_VER_MINOR, SPDLOG_VER_PATCH);
  std::printf("  Xen interface    %#x (public headers)\n", __XEN_LATEST_INTERFACE_VERSION__);
  std::printf("  /dev/kvm         %s\n", KvmState().c_str());
  std::printf("  io_uring         %s\n", IoUringState().c_str());
  return 0;
}
