#include "components/xenbus/vif_spec.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace xenkvm::xenbus {
namespace {

// The number and its unit's multiplier: `units` lists suffix -> multiplier, longest first.
template <size_t N>
std::optional<double> Quantity(absl::string_view text, const std::pair<const char*, double> (&units)[N]) {
  for (const auto& [suffix, multiplier] : units) {
    if (!absl::EndsWith(text, suffix)) continue;
    double value = 0;
    if (!absl::SimpleAtod(text.substr(0, text.size() - std::string_view(suffix).size()), &value) || value <= 0) {
      return std::nullopt;
    }
    return value * multiplier;
  }
  return std::nullopt;
}

}  // namespace

uint64_t RateLimit::burst_bytes() const {
  return std::max<uint64_t>(1, static_cast<uint64_t>(bytes_per_second * absl::ToDoubleSeconds(interval)));
}

absl::StatusOr<RateLimit> ParseVifRate(const std::string& text) {
  const auto refuse = [&text] {
    return absl::InvalidArgumentError(absl::StrCat(
        text, " is not RATE/s[@INTERVAL] (e.g. 10Mb/s, 5MB/s@20ms: B, KB, MB, GB bytes; b, Kb, Mb, Gb bits; "
              "INTERVAL in us, ms or s)"));
  };
  const std::vector<std::string> parts = absl::StrSplit(text, '@');
  if (parts.size() > 2 || !absl::EndsWith(parts[0], "/s")) return refuse();
  static constexpr std::pair<const char*, double> kRateUnits[] = {
      {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"Gb", 1e9 / 8}, {"Mb", 1e6 / 8}, {"Kb", 1e3 / 8}, {"B", 1}, {"b", 1.0 / 8}};
  static constexpr std::pair<const char*, double> kIntervalUnits[] = {{"us", 1e-6}, {"ms", 1e-3}, {"s", 1}};
  const std::optional<double> rate = Quantity(absl::string_view(parts[0]).substr(0, parts[0].size() - 2), kRateUnits);
  if (!rate || *rate < 1) return refuse();
  RateLimit limit;
  limit.bytes_per_second = static_cast<uint64_t>(*rate);
  if (parts.size() == 2) {
    const std::optional<double> seconds = Quantity(parts[1], kIntervalUnits);
    if (!seconds || *seconds < 1e-6 || *seconds > 10) return refuse();
    limit.interval = absl::Seconds(*seconds);
  }
  return limit;
}

std::string FormatVifRate(const RateLimit& rate) {
  return absl::StrCat(rate.bytes_per_second, "B/s@", absl::ToInt64Microseconds(rate.interval), "us");
}

absl::StatusOr<XenNetConfig> ParseVifSpec(const std::string& spec, uint32_t devid) {
  XenNetConfig network;
  network.devid = devid;
  bool mac_given = false;
  for (absl::string_view item : absl::StrSplit(spec, ',', absl::SkipEmpty())) {
    const size_t equals = item.find('=');
    if (equals == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("vif \"", spec, "\": \"", std::string(item),
                                                     "\" is not key=value (mac=, bridge=, vifname=, mtu=, rate=, rx-rate=)"));
    }
    const std::string key(absl::StripAsciiWhitespace(item.substr(0, equals)));
    const std::string value(absl::StripAsciiWhitespace(item.substr(equals + 1)));
    if (key == "mac") {
      absl::StatusOr<net::MacAddress> mac = net::ParseMac(value);
      if (!mac.ok()) return absl::InvalidArgumentError(absl::StrCat("vif \"", spec, "\": ", mac.status().message()));
      network.mac = *mac;
      mac_given = true;
    } else if (key == "bridge") {
      network.bridge = value;
    } else if (key == "vifname") {
      network.tap = value;
    } else if (key == "mtu") {
      if (!absl::SimpleAtoi(value, &network.mtu) || network.mtu < 68 || network.mtu > 65535) {
        return absl::InvalidArgumentError(absl::StrCat("vif \"", spec, "\": mtu=", value, " is not 68 to 65535"));
      }
    } else if (key == "rate" || key == "rx-rate") {
      absl::StatusOr<RateLimit> rate = ParseVifRate(value);
      if (!rate.ok()) return absl::InvalidArgumentError(absl::StrCat("vif \"", spec, "\": ", key, "=", rate.status().message()));
      (key == "rate" ? network.tx_rate : network.rx_rate) = *rate;
    } else if (key == "type" && value == "vif") {
      // xl's default device type; "ioemu" (an emulated NIC) is not offered.
    } else {
      return absl::InvalidArgumentError(absl::StrCat("vif \"", spec, "\": ", key, "=", value,
                                                     " is not taken (mac, bridge, vifname, mtu, rate, rx-rate, type=vif)"));
    }
  }
  if (!mac_given) network.mac = net::GenerateXenMac();
  return network;
}

}  // namespace xenkvm::xenbus
