// The VM config: one format for xenkvmctl and the API (the JSON mapping of xenkvm.v1.VmConfig),
// plus the xl.cfg keys Xen users bring. Validation names the key that is wrong.
#ifndef XENKVM_API_CONFIG_H_
#define XENKVM_API_CONFIG_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/xenkvm/v1/vm.pb.h"

namespace xenkvm::api {

// A config file's text: JSON (first non-blank character '{') or xl.cfg. `source` names the file in
// errors. xl.cfg keys taken: name, memory, vcpus, kernel, ramdisk, extra, cmdline, type ("pvh" or "hvm"),
// disk (list of 'target=PATH,vdev=xvda,access=rw' or positional 'PATH,FORMAT,VDEV,ACCESS');
// any other key is refused with the list of them.
absl::StatusOr<v1::VmConfig> ParseConfigText(const std::string& text, const std::string& source);
absl::StatusOr<v1::VmConfig> ReadConfigFile(const std::string& path);

// INVALID_ARGUMENT naming the field for anything out of range or malformed.
absl::Status ValidateVmConfig(const v1::VmConfig& config);
// The config with its zero values replaced by the documented defaults.
v1::VmConfig WithDefaults(v1::VmConfig config);
// One vif (a networks entry, or a hot-plugged one); `field` names it in errors.
// One disk's fields (the VM's disks[i], or a hot-plugged one); errors start with `field`.
absl::Status ValidateDisk(const v1::DiskConfig& disk, const std::string& field);
absl::Status ValidateNetwork(const v1::NetworkConfig& network, const std::string& field);
// A networks entry in xl's vif syntax, as xenkvm-vmm's --net takes it.
std::string VifSpec(const v1::NetworkConfig& network);

// "4.17", "0x40011" or "off" (0).
absl::StatusOr<uint32_t> ParseXenVersion(const std::string& text);

// "created", "running", "paused", "shutdown", "crashed".
const char* VmStateName(v1::VmState state);

// xenkvm-vmm's command line for `config` (after defaults), without the program name. The VM's
// XenStore is served on `xenstore_socket` too when it has the Xen interface and the path is set.
std::vector<std::string> VmmArguments(const v1::VmConfig& config, const std::string& control_socket,
                                      const std::string& xenstore_socket = "");

}  // namespace xenkvm::api

#endif  // XENKVM_API_CONFIG_H_
