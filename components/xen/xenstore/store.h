// The XenStore database: a tree of nodes with values and permissions, watches, transactions and
// per-domain quotas, with the semantics of Xen's C xenstored (docs/misc/xenstore.txt). It knows
// nothing of rings or sockets: transports (ring_server.h, socket_server.h) turn wire messages into
// calls through a Connection (connection.h).
//
// Every request comes from a client: a guest domain (unprivileged, its relative paths under
// /local/domain/<domid>) or the toolstack side (privileged: the VMM and external socket clients).
// Not thread-safe: one thread (the VMM's backend event loop) owns the store and its clients.
#ifndef XENKVM_COMPONENTS_XEN_XENSTORE_STORE_H_
#define XENKVM_COMPONENTS_XEN_XENSTORE_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"

namespace xenkvm::xen::xenstore {

// XenStore's errors travel as their errno names (xs_wire.h's xsd_errors).
enum class Error { kEINVAL, kEACCES, kEEXIST, kEISDIR, kENOENT, kENOMEM, kENOSPC, kEIO, kENOTEMPTY,
                   kENOSYS, kEROFS, kEBUSY, kEAGAIN, kEISCONN, kE2BIG, kEPERM };
const char* ErrorName(Error error);

// A value or the error that refused it.
template <typename T>
class Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit, like StatusOr
  Result(Error error) : value_(error) {}         // NOLINT
  bool ok() const { return std::holds_alternative<T>(value_); }
  const T& value() const { return std::get<T>(value_); }
  T& value() { return std::get<T>(value_); }
  Error error() const { return std::get<Error>(value_); }

 private:
  std::variant<T, Error> value_;
};
struct Ok {};
using Status = Result<Ok>;

enum class Access : uint8_t { kNone = 0, kRead = 1, kWrite = 2, kBoth = 3 };
struct Permission {
  uint32_t domid = 0;
  Access access = Access::kNone;
  bool operator==(const Permission&) const = default;
};
// Entry 0 names the owner (who may do anything) and gives everyone not listed its access.
using Permissions = std::vector<Permission>;
// "r5", "n0"...; std::nullopt for a malformed entry.
std::optional<Permission> ParsePermission(std::string_view text);
std::string FormatPermission(const Permission& permission);

// Quotas, C xenstored 4.17's defaults. They bind unprivileged clients only.
struct Limits {
  uint32_t nodes_per_domain = 1000;
  uint32_t node_size = 2048;          // value bytes (ENOSPC beyond)
  uint32_t watches_per_client = 128;  // E2BIG beyond
  uint32_t transactions_per_client = 10;
  uint32_t permissions_per_node = 5;
  uint32_t nodes_per_transaction = 1024;  // nodes read or written in one transaction
};

inline constexpr uint32_t kPayloadMax = 4096;      // XENSTORE_PAYLOAD_MAX
inline constexpr size_t kAbsolutePathMax = 3072;   // XENSTORE_ABS_PATH_MAX
inline constexpr size_t kRelativePathMax = 2048;   // XENSTORE_REL_PATH_MAX

struct StoreStatistics {
  uint64_t nodes = 0;
  uint64_t watches = 0;
  uint64_t transactions = 0;
  uint64_t commits = 0;
  uint64_t conflicts = 0;  // commits refused with EAGAIN
  uint64_t watch_events = 0;
};

class Store {
 public:
  using ClientId = uint64_t;
  // Receives a fired watch: the path as the watcher should see it (relative if it watched a
  // relative path) and its token.
  using WatchSink = std::function<void(std::string_view path, std::string_view token)>;

  explicit Store(Limits limits = {});
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  ClientId Connect(uint32_t domid, bool privileged, WatchSink sink);
  // Drops the client's watches and transactions.
  void Disconnect(ClientId client);

  // `transaction` 0 means none. Paths are absolute or relative to the client's /local/domain/<domid>.
  Result<std::string> Read(ClientId client, uint32_t transaction, std::string_view path);
  Status Write(ClientId client, uint32_t transaction, std::string_view path, std::string_view value);
  Status Mkdir(ClientId client, uint32_t transaction, std::string_view path);
  Status Remove(ClientId client, uint32_t transaction, std::string_view path);
  Result<std::vector<std::string>> Directory(ClientId client, uint32_t transaction, std::string_view path);
  // The children in the order Directory gives them, and the node's generation (DIRECTORY_PART).
  Result<std::pair<uint64_t, std::vector<std::string>>> DirectoryWithGeneration(ClientId client,
                                                                                 uint32_t transaction,
                                                                                 std::string_view path);
  Result<Permissions> GetPermissions(ClientId client, uint32_t transaction, std::string_view path);
  Status SetPermissions(ClientId client, uint32_t transaction, std::string_view path, const Permissions& permissions);

  // Registers a watch; the caller then delivers the watch's first event itself (xenstored fires
  // every new watch once, after its reply).
  Status Watch(ClientId client, std::string_view path, std::string_view token);
  Status Unwatch(ClientId client, std::string_view path, std::string_view token);
  // Drops the client's watches and transactions (XS_RESET_WATCHES).
  void ResetWatches(ClientId client);

  Result<uint32_t> TransactionStart(ClientId client);
  // Commits (EAGAIN when a node it used changed meanwhile; the transaction is gone either way) or
  // aborts.
  Status TransactionEnd(ClientId client, uint32_t transaction, bool commit);

  // The toolstack's domain lifecycle: a released domain's /local/domain/<domid> goes, the nodes it
  // owned elsewhere pass to domain 0 and its permission entries are dropped (XSA-322, XSA-419).
  void IntroduceDomain(uint32_t domid);
  void ReleaseDomain(uint32_t domid);
  bool IsDomainIntroduced(uint32_t domid) const;
  static std::string DomainPath(uint32_t domid);

  StoreStatistics Statistics() const;
  const Limits& limits() const { return limits_; }

 private:
  struct Node {
    std::string value;
    Permissions permissions;
    std::set<std::string> children;  // names, sorted
    uint64_t generation = 0;
  };
  using NodePtr = std::shared_ptr<const Node>;
  using Tree = absl::flat_hash_map<std::string, NodePtr>;
  struct Transaction {
    ClientId client = 0;
    Tree tree;                                            // a copy of the store when it started
    absl::flat_hash_map<std::string, uint64_t> accessed;  // path -> generation then (0: absent)
    absl::flat_hash_set<std::string> changed;
    struct Event {
      std::string path;
      NodePtr node;
      bool removed = false;
    };
    std::vector<Event> events;  // fired at commit
    absl::flat_hash_map<uint32_t, int64_t> node_delta;    // per owner
  };
  struct WatchEntry {
    std::string path;   // absolute, or "@..."
    std::string token;
    bool relative = false;
  };
  struct Client {
    uint32_t domid = 0;
    bool privileged = false;
    WatchSink sink;
    std::vector<WatchEntry> watches;
    uint32_t transactions = 0;
  };
  // The tree a request works on, and its bookkeeping.
  struct Context {
    Client* client = nullptr;
    Transaction* transaction = nullptr;
    Tree* tree = nullptr;
  };

  // A request's context, its absolute path and the node there (null when there is none).
  struct Target {
    Context context;
    std::string path;
    NodePtr node;
  };
  Result<Context> MakeContext(ClientId client, uint32_t transaction);
  Result<Target> Lookup(ClientId client, uint32_t transaction, std::string_view path);
  // Lookup, for a node that must exist and be readable (ENOENT, EACCES).
  Result<Target> LookupReadable(ClientId client, uint32_t transaction, std::string_view path);
  Result<std::string> Resolve(const Client& client, std::string_view path) const;
  // Looks `path` up, recording it in the transaction's read set.
  Result<NodePtr> Get(Context& context, const std::string& path);
  // Stores `node` (its generation renewed); `fire` runs the watches on `path`.
  Status Put(Context& context, const std::string& path, std::shared_ptr<Node> node, bool fire);
  Status Erase(Context& context, const std::string& path);
  Status Track(Context& context, const std::string& path);
  Status Create(Context& context, const std::string& path, std::string_view value);
  Status RemoveSubtree(Context& context, const std::string& path, const NodePtr& node);
  void Fire(Context& context, const std::string& path, const NodePtr& node, bool removed);
  void FireNow(const std::string& path, const NodePtr& node, bool removed);
  void FireSpecial(const char* path);
  Access AccessOf(const Client& client, const Node& node) const;
  bool CanRead(const Client& client, const Node& node) const;
  bool CanWrite(const Client& client, const Node& node) const;
  void AdjustCount(Context& context, uint32_t domid, int64_t delta);
  int64_t CountOf(const Context& context, uint32_t domid) const;
  void RemoveTransactions(ClientId client);

  const Limits limits_;
  Tree tree_;
  absl::flat_hash_map<uint32_t, int64_t> node_counts_;  // per owner
  uint64_t generation_ = 0;
  std::map<ClientId, Client> clients_;
  ClientId next_client_ = 1;
  absl::flat_hash_map<uint32_t, Transaction> transactions_;
  uint32_t next_transaction_ = 1;
  std::set<uint32_t> introduced_;
  StoreStatistics statistics_;
  Client toolstack_{0, true, nullptr, {}, 0};  // the store's own privileged hand (ReleaseDomain)
};

}  // namespace xenkvm::xen::xenstore

#endif  // XENKVM_COMPONENTS_XEN_XENSTORE_STORE_H_
