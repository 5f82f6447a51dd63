// xenkvm-info: what this host offers xenkvm: library versions, and whether KVM and io_uring are
// usable. README command (a) prints it before booting the demo guest.
#include <fcntl.h>
#include <liburing.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unicorn/unicorn.h>
#include <unistd.h>
#include <xen/xen-compat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include <google/protobuf/stubs/common.h>
#include <grpcpp/grpcpp.h>

#include "spdlog/version.h"

namespace {

std::string KvmState() {
  int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    return std::string("not usable (open /dev/kvm: ") + std::strerror(errno) +
           "): the emu accelerator will be used";
  }
  int api = ::ioctl(fd, KVM_GET_API_VERSION, 0);
  int xen = ::ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_XEN_HVM);
  ::close(fd);
  return "usable (API version " + std::to_string(api) + ", KVM_CAP_XEN_HVM bits 0x" +
         [&] {
           char hex[16];
           std::snprintf(hex, sizeof(hex), "%x", xen < 0 ? 0 : xen);
           return std::string(hex);
         }() +
         ")";
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
  uc_version(&uc_major, &uc_minor);
  std::printf("xenkvm host report\n");
  std::printf("  unicorn          %u.%u (emu accelerator)\n", uc_major, uc_minor);
  std::printf("  gRPC             %s\n", grpc::Version().c_str());
  std::printf("  protobuf         %s\n",
              google::protobuf::internal::VersionString(GOOGLE_PROTOBUF_VERSION).c_str());
  std::printf("  spdlog           %d.%d.%d\n", SPDLOG_VER_MAJOR, SPDLOG_VER_MINOR, SPDLOG_VER_PATCH);
  std::printf("  Xen interface    %#x (public headers)\n", __XEN_LATEST_INTERFACE_VERSION__);
  std::printf("  /dev/kvm         %s\n", KvmState().c_str());
  std::printf("  io_uring         %s\n", IoUringState().c_str());
  return 0;
}
