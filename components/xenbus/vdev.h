// Xen virtual block device names (xl.cfg's vdev) and the device numbers frontends see.
#ifndef XENKVM_COMPONENTS_XENBUS_VDEV_H_
#define XENKVM_COMPONENTS_XENBUS_VDEV_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace xenkvm::xenbus {

// A virtual device name as xl.cfg writes it: xvd<letters> (major 202, and the extended form past
// xvdp), hd<a-d> (majors 3/22), sd<letters> (major 8), d<N> or a plain device number. Returns the
// number the frontend sees as virtual-device; kInvalidArgument with the accepted forms otherwise.
absl::StatusOr<uint32_t> ParseVirtualDevice(const std::string& vdev);

}  // namespace xenkvm::xenbus

#endif  // XENKVM_COMPONENTS_XENBUS_VDEV_H_
