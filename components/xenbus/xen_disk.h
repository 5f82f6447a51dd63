// xen-disk: one Xen PV block device (vbd) as the toolstack and blkback make it. Its XenBus life is
// XenbusDevice's (xenbus_device.h); on the frontend's rings (one or several queues, each of one or
// several pages), event channels and protocol it serves each queue with a DiskRing and publishes
// sectors, info, sector-size and the features with Connected.
//
// Runs on the VMM's backend event loop, which owns the XenStore; the data path runs on the
// DiskRing's own thread.
#ifndef XENKVM_COMPONENTS_XENBUS_XEN_DISK_H_
#define XENKVM_COMPONENTS_XENBUS_XEN_DISK_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "components/block/image.h"
#include "components/xenbus/disk_ring.h"
#include "components/xenbus/vdev.h"
#include "components/xenbus/xenbus_device.h"

namespace xenkvm::xenbus {

struct XenDiskConfig {
  std::string path;
  std::string vdev = "xvda";
  bool read_only = false;
  // What the backend offers the frontend.
  bool flush = true;
  bool discard = true;  // if the image can (a writable regular file)
  bool persistent_grants = true;
  uint32_t max_indirect_segments = 256;  // 0: no indirect requests
  uint32_t max_queues = 4;               // multi-queue-max-queues: one ring, thread and io_uring each
  uint32_t max_ring_page_order = 4;      // max-ring-page-order: rings of up to 2^order pages
  block::CacheMode cache = block::CacheMode::kWriteback;
  // The image opened by another process (block::Image::OpenFile in xenkvmd) and handed over: used
  // instead of opening `path`, which then only names it.
  std::shared_ptr<base::Fd> opened;
};

class XenDisk final : public XenbusDevice {
 public:
  // Opens the image and announces the device in XenStore (backend InitWait, frontend
  // Initialising). Errors name the image or the vdev.
  static absl::StatusOr<std::unique_ptr<XenDisk>> Create(const Environment& environment, XenDiskConfig config);
  // Disconnects and removes the device's nodes.
  ~XenDisk() override;

  const XenDiskConfig& config() const { return config_; }
  // All queues' together; none while the frontend is not connected.
  std::optional<DiskRingStatistics> ring_statistics() const;

 private:
  XenDisk(const Environment& environment, XenDiskConfig config, uint32_t devid);
  absl::Status Connect() override;
  void Disconnect() override;
  // One queue's ring-refs and event channel, under `dir` ("" or "queue-N/").
  absl::Status ConnectQueue(const std::string& dir, uint32_t pages, DiskRing::Options options);

  const XenDiskConfig config_;
  std::unique_ptr<block::Image> image_;
  std::vector<std::unique_ptr<DiskRing>> rings_;
};

}  // namespace xenkvm::xenbus

#endif  // XENKVM_COMPONENTS_XENBUS_XEN_DISK_H_
