#include "components/xen/xenstore/connection.h"

#include <charconv>
#include <cstring>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "xen/io/xs_wire.h"

namespace xenkvm::xen::xenstore {
namespace {

struct Header {
  uint32_t type;
  uint32_t request_id;
  uint32_t transaction;
  uint32_t length;
};
static_assert(sizeof(Header) == kHeaderSize);

// The NUL-terminated strings a payload holds; std::nullopt unless it is exactly `count` of them
// (count 0: any number, at least one).
std::optional<std::vector<std::string_view>> Strings(std::string_view payload, size_t count) {
  if (payload.empty() || payload.back() != '\0') return std::nullopt;
  std::vector<std::string_view> strings;
  size_t start = 0;
  while (start < payload.size()) {
    size_t end = payload.find('\0', start);
    strings.push_back(payload.substr(start, end - start));
    start = end + 1;
  }
  if (count != 0 && strings.size() != count) return std::nullopt;
  return strings;
}

std::optional<uint32_t> ParseDomid(std::string_view text) {
  uint32_t domid = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), domid);
  if (text.empty() || error != std::errc() || end != text.data() + text.size() || domid > 0xffff) {
    return std::nullopt;
  }
  return domid;
}

// Each string followed by its NUL, as XenStore's payloads want them.
std::string Terminated(std::initializer_list<std::string_view> strings) {
  std::string out;
  for (std::string_view s : strings) out.append(s).push_back('\0');
  return out;
}
std::string Terminated(const std::vector<std::string>& strings) {
  std::string out;
  for (const std::string& s : strings) out.append(s).push_back('\0');
  return out;
}

// Requests that may run inside a transaction; every other type must carry transaction 0.
bool TakesTransaction(uint32_t type) {
  switch (type) {
    case XS_READ: case XS_WRITE: case XS_MKDIR: case XS_RM: case XS_DIRECTORY: case XS_DIRECTORY_PART:
    case XS_GET_PERMS: case XS_SET_PERMS: case XS_TRANSACTION_END:
      return true;
    default:
      return false;
  }
}

}  // namespace

Connection::Connection(Store& store, uint32_t domid, bool privileged, std::function<void()> output_ready)
    : store_(store), domid_(domid), privileged_(privileged), output_ready_(std::move(output_ready)) {
  client_ = store_.Connect(domid_, privileged_,
                           [this](std::string_view path, std::string_view token) { QueueEvent(path, token); });
}

Connection::~Connection() { store_.Disconnect(client_); }

absl::StatusOr<size_t> Connection::Receive(std::span<const uint8_t> bytes) {
  if (failed_) return absl::InvalidArgumentError("xenstore: the connection failed earlier");
  size_t taken = 0;
  answering_ = true;
  while (taken < bytes.size() && WantsInput()) {
    size_t want = input_.size() < kHeaderSize ? kHeaderSize - input_.size() : 0;
    Header header{};
    if (want == 0) {
      std::memcpy(&header, input_.data(), sizeof(header));
      want = kHeaderSize + header.length - input_.size();
    }
    const size_t chunk = std::min(want, bytes.size() - taken);
    input_.append(reinterpret_cast<const char*>(bytes.data() + taken), chunk);
    taken += chunk;
    if (input_.size() < kHeaderSize) break;
    std::memcpy(&header, input_.data(), sizeof(header));
    if (header.length > kPayloadMax) {
      failed_ = true;
      answering_ = false;
      return absl::InvalidArgumentError(
          absl::StrFormat("xenstore: domain %u sent a %u-byte payload (the protocol allows %u)", domid_,
                          header.length, kPayloadMax));
    }
    if (input_.size() == kHeaderSize + header.length) {
      ++messages_;
      Answer(header.type, header.request_id, header.transaction,
             std::string_view(input_).substr(kHeaderSize, header.length));
      input_.clear();
    }
  }
  answering_ = false;
  return taken;
}

std::span<const uint8_t> Connection::Output() const {
  return {reinterpret_cast<const uint8_t*>(output_.data()) + output_sent_, output_.size() - output_sent_};
}

void Connection::Consume(size_t bytes) {
  output_sent_ = std::min(output_.size(), output_sent_ + bytes);
  if (output_sent_ == output_.size()) {
    output_.clear();
    output_sent_ = 0;
  } else if (output_sent_ >= kOutputBudget) {
    output_.erase(0, output_sent_);
    output_sent_ = 0;
  }
}

void Connection::Reset() {
  input_.clear();
  output_.clear();
  output_sent_ = 0;
  failed_ = false;
  store_.ResetWatches(client_);
}

void Connection::Queue(uint32_t type, uint32_t request_id, uint32_t transaction, std::string_view payload) {
  Header header{type, request_id, transaction, static_cast<uint32_t>(payload.size())};
  output_.append(reinterpret_cast<const char*>(&header), sizeof(header));
  output_.append(payload);
}

void Connection::QueueError(uint32_t request_id, uint32_t transaction, Error error) {
  Queue(XS_ERROR, request_id, transaction, Terminated({ErrorName(error)}));
}

void Connection::QueueEvent(std::string_view path, std::string_view token) {
  const size_t length = path.size() + token.size() + 2;
  if (length > kPayloadMax || output_.size() - output_sent_ >= kOutputBudget) {
    ++dropped_events_;
    return;
  }
  Queue(XS_WATCH_EVENT, 0, 0, Terminated({path, token}));
  if (!answering_ && output_ready_) output_ready_();
}

void Connection::Answer(uint32_t type, uint32_t request_id, uint32_t transaction, std::string_view payload) {
  static const std::string kOk("OK\0", 3);
  auto reply = [&](std::string_view body) { Queue(type, request_id, transaction, body); };
  auto fail = [&](Error error) { QueueError(request_id, transaction, error); };
  auto done = [&](const Status& status) {
    if (status.ok()) {
      reply(kOk);
    } else {
      fail(status.error());
    }
  };
  if (transaction != 0 && !TakesTransaction(type)) return fail(Error::kEINVAL);

  switch (type) {
    case XS_READ: {
      auto args = Strings(payload, 1);
      if (!args) return fail(Error::kEINVAL);
      Result<std::string> value = store_.Read(client_, transaction, (*args)[0]);
      return value.ok() ? reply(value.value()) : fail(value.error());
    }
    case XS_WRITE: {
      size_t nul = payload.find('\0');
      if (nul == std::string_view::npos) return fail(Error::kEINVAL);
      return done(store_.Write(client_, transaction, payload.substr(0, nul), payload.substr(nul + 1)));
    }
    case XS_MKDIR:
    case XS_RM: {
      auto args = Strings(payload, 1);
      if (!args) return fail(Error::kEINVAL);
      return done(type == XS_MKDIR ? store_.Mkdir(client_, transaction, (*args)[0])
                                   : store_.Remove(client_, transaction, (*args)[0]));
    }
    case XS_DIRECTORY: {
      auto args = Strings(payload, 1);
      if (!args) return fail(Error::kEINVAL);
      auto children = store_.Directory(client_, transaction, (*args)[0]);
      if (!children.ok()) return fail(children.error());
      std::string body = Terminated(children.value());
      if (body.size() > kPayloadMax) return fail(Error::kE2BIG);  // XSA-72: the client asks part by part
      return reply(body);
    }
    case XS_DIRECTORY_PART: {
      auto args = Strings(payload, 2);
      if (!args) return fail(Error::kEINVAL);
      uint32_t offset = 0;
      std::string_view text = (*args)[1];
      auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), offset);
      if (text.empty() || error != std::errc() || end != text.data() + text.size()) return fail(Error::kEINVAL);
      auto listed = store_.DirectoryWithGeneration(client_, transaction, (*args)[0]);
      if (!listed.ok()) return fail(listed.error());
      const std::string all = Terminated(listed.value().second);
      if (offset > all.size()) return fail(Error::kEINVAL);
      std::string body = Terminated({absl::StrCat(listed.value().first)});
      size_t position = offset;
      while (position < all.size()) {
        size_t next = all.find('\0', position) + 1;
        if (body.size() + (next - position) + 1 > kPayloadMax) break;
        body.append(all, position, next - position);
        position = next;
      }
      if (position == all.size()) body.push_back('\0');  // the list is complete
      return reply(body);
    }
    case XS_GET_PERMS: {
      auto args = Strings(payload, 1);
      if (!args) return fail(Error::kEINVAL);
      auto permissions = store_.GetPermissions(client_, transaction, (*args)[0]);
      if (!permissions.ok()) return fail(permissions.error());
      std::vector<std::string> texts;
      for (const Permission& permission : permissions.value()) texts.push_back(FormatPermission(permission));
      return reply(Terminated(texts));
    }
    case XS_SET_PERMS: {
      auto args = Strings(payload, 0);
      if (!args || args->size() < 2) return fail(Error::kEINVAL);
      Permissions permissions;
      for (size_t i = 1; i < args->size(); ++i) {
        std::optional<Permission> permission = ParsePermission((*args)[i]);
        if (!permission) return fail(Error::kEINVAL);
        permissions.push_back(*permission);
      }
      return done(store_.SetPermissions(client_, transaction, (*args)[0], permissions));
    }
    case XS_WATCH: {
      auto args = Strings(payload, 2);
      if (!args) return fail(Error::kEINVAL);
      Status watched = store_.Watch(client_, (*args)[0], (*args)[1]);
      done(watched);
      if (watched.ok()) QueueEvent((*args)[0], (*args)[1]);  // every new watch fires once
      return;
    }
    case XS_UNWATCH: {
      auto args = Strings(payload, 2);
      if (!args) return fail(Error::kEINVAL);
      return done(store_.Unwatch(client_, (*args)[0], (*args)[1]));
    }
    case XS_RESET_WATCHES:
      store_.ResetWatches(client_);
      return reply(kOk);
    case XS_TRANSACTION_START: {
      Result<uint32_t> id = store_.TransactionStart(client_);
      return id.ok() ? reply(Terminated({absl::StrCat(id.value())})) : fail(id.error());
    }
    case XS_TRANSACTION_END: {
      auto args = Strings(payload, 1);
      if (!args || ((*args)[0] != "T" && (*args)[0] != "F")) return fail(Error::kEINVAL);
      return done(store_.TransactionEnd(client_, transaction, (*args)[0] == "T"));
    }
    case XS_GET_DOMAIN_PATH: {
      auto args = Strings(payload, 1);
      std::optional<uint32_t> domid = args ? ParseDomid((*args)[0]) : std::nullopt;
      if (!domid) return fail(Error::kEINVAL);
      return reply(Terminated({Store::DomainPath(*domid)}));
    }
    case XS_IS_DOMAIN_INTRODUCED: {
      auto args = Strings(payload, 1);
      std::optional<uint32_t> domid = args ? ParseDomid((*args)[0]) : std::nullopt;
      if (!domid) return fail(Error::kEINVAL);
      if (!privileged_) return fail(Error::kEACCES);
      return reply(store_.IsDomainIntroduced(*domid) ? std::string_view("T\0", 2) : std::string_view("F\0", 2));
    }
    case XS_CONTROL:
    case XS_INTRODUCE:
    case XS_RELEASE:
    case XS_RESUME:
    case XS_SET_TARGET:
      // The VMM introduces and releases its guest itself; these are for a Xen toolstack.
      return fail(privileged_ ? Error::kENOSYS : Error::kEACCES);
    default:
      return fail(Error::kEINVAL);  // replies sent as requests, unknown types
  }
}

}  // namespace xenkvm::xen::xenstore
