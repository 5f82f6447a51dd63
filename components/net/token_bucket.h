// A token bucket, as Firecracker's rate limiter and netback's credit scheduler limit a device:
// `rate` tokens a second (bytes here), at most `burst` held; the bucket starts full. A take larger
// than the whole burst is allowed once the bucket is full (it empties it), so no packet waits
// forever.
#ifndef XENKVM_COMPONENTS_NET_TOKEN_BUCKET_H_
#define XENKVM_COMPONENTS_NET_TOKEN_BUCKET_H_

#include <algorithm>
#include <cstdint>

#include "absl/time/time.h"

namespace xenkvm::net {

class TokenBucket {
 public:
  TokenBucket(uint64_t rate_per_second, uint64_t burst, absl::Time now)
      : rate_(rate_per_second), burst_(std::max<uint64_t>(burst, 1)), tokens_(static_cast<double>(burst_)), last_(now) {}

  // Takes `count` tokens if the bucket holds them (all of it, when full, for more than a burst).
  bool TryTake(uint64_t count, absl::Time now) {
    Refill(now);
    const double need = static_cast<double>(std::min(count, burst_));
    if (tokens_ < need) return false;
    tokens_ -= need;
    return true;
  }
  // How long until TryTake(count) can succeed.
  absl::Duration TimeUntil(uint64_t count, absl::Time now) {
    Refill(now);
    const double missing = static_cast<double>(std::min(count, burst_)) - tokens_;
    return missing <= 0 ? absl::ZeroDuration() : absl::Seconds(missing / static_cast<double>(rate_));
  }

 private:
  void Refill(absl::Time now) {
    if (now <= last_) return;
    tokens_ = std::min(static_cast<double>(burst_), tokens_ + absl::ToDoubleSeconds(now - last_) * rate_);
    last_ = now;
  }

  const uint64_t rate_;
  const uint64_t burst_;
  double tokens_;
  absl::Time last_;
};

}  // namespace xenkvm::net

#endif  // XENKVM_COMPONENTS_NET_TOKEN_BUCKET_H_
