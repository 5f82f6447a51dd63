#include "components/xen/xenstore/store.h"

#include <algorithm>
#include <charconv>

#include "absl/strings/str_cat.h"

namespace xenkvm::xen::xenstore {
namespace {

bool ValidPathCharacter(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '/' ||
         c == '_' || c == '@';
}

// Whether `path` is `ancestor` or lies below it.
bool Under(std::string_view path, std::string_view ancestor) {
  if (ancestor == "/") return true;
  return path.size() >= ancestor.size() && path.substr(0, ancestor.size()) == ancestor &&
         (path.size() == ancestor.size() || path[ancestor.size()] == '/');
}

std::string ParentOf(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == 0 ? std::string("/") : path.substr(0, slash);
}

std::string NameOf(const std::string& path) { return path.substr(path.rfind('/') + 1); }

std::string ChildPath(const std::string& parent, const std::string& name) {
  return parent == "/" ? absl::StrCat("/", name) : absl::StrCat(parent, "/", name);
}

bool IsSpecialWatch(std::string_view path) { return path == "@introduceDomain" || path == "@releaseDomain"; }

}  // namespace

const char* ErrorName(Error error) {
  static const char* const kNames[] = {"EINVAL", "EACCES", "EEXIST", "EISDIR",  "ENOENT", "ENOMEM",
                                       "ENOSPC", "EIO",    "ENOTEMPTY", "ENOSYS", "EROFS",  "EBUSY",
                                       "EAGAIN", "EISCONN", "E2BIG",   "EPERM"};
  return kNames[static_cast<int>(error)];
}

std::optional<Permission> ParsePermission(std::string_view text) {
  if (text.size() < 2) return std::nullopt;
  Permission permission;
  switch (text[0]) {
    case 'n': permission.access = Access::kNone; break;
    case 'r': permission.access = Access::kRead; break;
    case 'w': permission.access = Access::kWrite; break;
    case 'b': permission.access = Access::kBoth; break;
    default: return std::nullopt;
  }
  std::string_view digits = text.substr(1);
  if (digits.size() > 5) return std::nullopt;
  auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), permission.domid);
  if (error != std::errc() || end != digits.data() + digits.size() || permission.domid > 0xffff) return std::nullopt;
  return permission;
}

std::string FormatPermission(const Permission& permission) {
  static const char kLetters[] = {'n', 'r', 'w', 'b'};
  return absl::StrCat(std::string(1, kLetters[static_cast<int>(permission.access)]), permission.domid);
}

Store::Store(Limits limits) : limits_(limits) {
  // The root and /local/domain belong to domain 0; guests see only what is made for them.
  Context context{&toolstack_, nullptr, &tree_};
  auto root = std::make_shared<Node>();
  root->permissions = {{0, Access::kNone}};
  (void)Put(context, "/", root, false);
  (void)Create(context, "/local/domain", "");
  (void)Create(context, "/tool", "");
}

std::string Store::DomainPath(uint32_t domid) { return absl::StrCat("/local/domain/", domid); }

Store::ClientId Store::Connect(uint32_t domid, bool privileged, WatchSink sink) {
  ClientId id = next_client_++;
  clients_[id] = Client{domid, privileged, std::move(sink), {}, 0};
  return id;
}

void Store::Disconnect(ClientId client) {
  RemoveTransactions(client);
  clients_.erase(client);
}

void Store::RemoveTransactions(ClientId client) {
  absl::erase_if(transactions_, [client](const auto& entry) { return entry.second.client == client; });
  if (auto found = clients_.find(client); found != clients_.end()) found->second.transactions = 0;
}

Result<Store::Context> Store::MakeContext(ClientId client_id, uint32_t transaction) {
  auto client = clients_.find(client_id);
  if (client == clients_.end()) return Error::kEINVAL;
  Context context{&client->second, nullptr, &tree_};
  if (transaction != 0) {
    auto found = transactions_.find(transaction);
    if (found == transactions_.end() || found->second.client != client_id) return Error::kENOENT;
    context.transaction = &found->second;
    context.tree = &found->second.tree;
  }
  return context;
}

Result<std::string> Store::Resolve(const Client& client, std::string_view path) const {
  if (path.empty()) return Error::kEINVAL;
  std::string absolute;
  if (path[0] == '/') {
    if (path.size() > kAbsolutePathMax) return Error::kEINVAL;
    absolute = std::string(path);
  } else {
    if (path.size() > kRelativePathMax) return Error::kEINVAL;
    absolute = absl::StrCat(DomainPath(client.domid), "/", std::string(path));
    if (absolute.size() > kAbsolutePathMax) return Error::kEINVAL;
  }
  if (!std::all_of(absolute.begin(), absolute.end(), ValidPathCharacter)) return Error::kEINVAL;
  if (absolute.find("//") != std::string::npos) return Error::kEINVAL;
  if (absolute.size() > 1 && absolute.back() == '/') return Error::kEINVAL;  // XSA-481: "/local/domain/"
  return absolute;
}

Access Store::AccessOf(const Client& client, const Node& node) const {
  if (client.privileged) return Access::kBoth;
  if (node.permissions.empty()) return Access::kNone;
  if (node.permissions[0].domid == client.domid) return Access::kBoth;
  for (size_t i = 1; i < node.permissions.size(); ++i) {
    if (node.permissions[i].domid == client.domid) return node.permissions[i].access;
  }
  return node.permissions[0].access;
}

bool Store::CanRead(const Client& client, const Node& node) const {
  return (static_cast<int>(AccessOf(client, node)) & static_cast<int>(Access::kRead)) != 0;
}

bool Store::CanWrite(const Client& client, const Node& node) const {
  return (static_cast<int>(AccessOf(client, node)) & static_cast<int>(Access::kWrite)) != 0;
}

Status Store::Track(Context& context, const std::string& path) {
  Transaction* transaction = context.transaction;
  if (transaction == nullptr || transaction->accessed.contains(path)) return Ok{};
  if (!context.client->privileged && transaction->accessed.size() >= limits_.nodes_per_transaction) {
    return Error::kENOSPC;
  }
  auto found = transaction->tree.find(path);
  transaction->accessed[path] = found == transaction->tree.end() ? 0 : found->second->generation;
  return Ok{};
}

Result<Store::NodePtr> Store::Get(Context& context, const std::string& path) {
  if (Status tracked = Track(context, path); !tracked.ok()) return tracked.error();
  auto found = context.tree->find(path);
  return found == context.tree->end() ? NodePtr() : found->second;
}

int64_t Store::CountOf(const Context& context, uint32_t domid) const {
  int64_t count = 0;
  if (auto found = node_counts_.find(domid); found != node_counts_.end()) count = found->second;
  if (context.transaction != nullptr) {
    if (auto found = context.transaction->node_delta.find(domid); found != context.transaction->node_delta.end()) {
      count += found->second;
    }
  }
  return count;
}

void Store::AdjustCount(Context& context, uint32_t domid, int64_t delta) {
  if (context.transaction != nullptr) {
    context.transaction->node_delta[domid] += delta;
  } else {
    node_counts_[domid] += delta;
  }
}

Status Store::Put(Context& context, const std::string& path, std::shared_ptr<Node> node, bool fire) {
  if (Status tracked = Track(context, path); !tracked.ok()) return tracked;
  auto found = context.tree->find(path);
  if (found != context.tree->end()) AdjustCount(context, found->second->permissions[0].domid, -1);
  AdjustCount(context, node->permissions[0].domid, +1);
  node->generation = ++generation_;
  NodePtr stored = std::move(node);
  (*context.tree)[path] = stored;
  if (context.transaction != nullptr) context.transaction->changed.insert(path);
  if (fire) Fire(context, path, stored, false);
  return Ok{};
}

Status Store::Erase(Context& context, const std::string& path) {
  if (Status tracked = Track(context, path); !tracked.ok()) return tracked;
  auto found = context.tree->find(path);
  if (found == context.tree->end()) return Ok{};
  AdjustCount(context, found->second->permissions[0].domid, -1);
  context.tree->erase(found);
  if (context.transaction != nullptr) context.transaction->changed.insert(path);
  return Ok{};
}

Status Store::Create(Context& context, const std::string& path, std::string_view value) {
  // Walk up to the nearest node that exists; every level below it is created.
  std::vector<std::string> missing{path};
  NodePtr ancestor;
  while (true) {
    std::string parent = ParentOf(missing.back());
    Result<NodePtr> found = Get(context, parent);
    if (!found.ok()) return found.error();
    if (found.value()) {
      ancestor = found.value();
      break;
    }
    missing.push_back(parent);
  }
  if (!CanWrite(*context.client, *ancestor)) return Error::kEACCES;
  Permissions permissions = ancestor->permissions;
  if (!context.client->privileged) {
    permissions[0].domid = context.client->domid;
    if (CountOf(context, context.client->domid) + static_cast<int64_t>(missing.size()) >
        static_cast<int64_t>(limits_.nodes_per_domain)) {
      return Error::kENOSPC;
    }
    if (context.transaction != nullptr &&
        context.transaction->accessed.size() + missing.size() > limits_.nodes_per_transaction) {
      return Error::kENOSPC;
    }
  }
  // Top down: each new node, then its parent's child list.
  for (auto level = missing.rbegin(); level != missing.rend(); ++level) {
    auto node = std::make_shared<Node>();
    node->permissions = permissions;
    if (*level == path) node->value = std::string(value);
    if (Status put = Put(context, *level, node, false); !put.ok()) return put;
    std::string parent_path = ParentOf(*level);
    auto parent = std::make_shared<Node>(*context.tree->at(parent_path));
    parent->children.insert(NameOf(*level));
    if (Status put = Put(context, parent_path, parent, false); !put.ok()) return put;
  }
  Fire(context, path, context.tree->at(path), false);
  return Ok{};
}

Result<Store::Target> Store::Lookup(ClientId client, uint32_t transaction, std::string_view path) {
  Result<Context> context = MakeContext(client, transaction);
  if (!context.ok()) return context.error();
  Result<std::string> absolute = Resolve(*context.value().client, path);
  if (!absolute.ok()) return absolute.error();
  Result<NodePtr> node = Get(context.value(), absolute.value());
  if (!node.ok()) return node.error();
  return Target{context.value(), std::move(absolute.value()), std::move(node.value())};
}

Result<Store::Target> Store::LookupReadable(ClientId client, uint32_t transaction, std::string_view path) {
  Result<Target> target = Lookup(client, transaction, path);
  if (!target.ok()) return target.error();
  if (!target.value().node) return Error::kENOENT;
  if (!CanRead(*target.value().context.client, *target.value().node)) return Error::kEACCES;
  return target;
}

Result<std::string> Store::Read(ClientId client, uint32_t transaction, std::string_view path) {
  Result<Target> target = LookupReadable(client, transaction, path);
  if (!target.ok()) return target.error();
  return target.value().node->value;
}

Status Store::Write(ClientId client, uint32_t transaction, std::string_view path, std::string_view value) {
  Result<Target> target = Lookup(client, transaction, path);
  if (!target.ok()) return target.error();
  Target& t = target.value();
  if (!t.context.client->privileged && value.size() > limits_.node_size) return Error::kENOSPC;
  if (!t.node) return Create(t.context, t.path, value);
  if (!CanWrite(*t.context.client, *t.node)) return Error::kEACCES;
  auto updated = std::make_shared<Node>(*t.node);
  updated->value = std::string(value);
  return Put(t.context, t.path, updated, true);
}

Status Store::Mkdir(ClientId client, uint32_t transaction, std::string_view path) {
  Result<Target> target = Lookup(client, transaction, path);
  if (!target.ok()) return target.error();
  if (target.value().node) return Ok{};  // xenstored: mkdir of an existing node succeeds
  return Create(target.value().context, target.value().path, "");
}

Status Store::RemoveSubtree(Context& context, const std::string& path, const NodePtr& node) {
  // Iteratively (XSA-418: a 1000-deep tree must not exhaust the stack).
  std::vector<std::string> subtree{path};
  for (size_t i = 0; i < subtree.size(); ++i) {
    auto found = context.tree->find(subtree[i]);
    if (found == context.tree->end()) continue;
    for (const std::string& child : found->second->children) subtree.push_back(ChildPath(subtree[i], child));
  }
  if (context.transaction != nullptr && !context.client->privileged &&
      context.transaction->accessed.size() + subtree.size() > limits_.nodes_per_transaction) {
    return Error::kENOSPC;
  }
  for (const std::string& victim : subtree) {
    if (Status erased = Erase(context, victim); !erased.ok()) return erased;
  }
  std::string parent_path = ParentOf(path);
  auto parent = std::make_shared<Node>(*context.tree->at(parent_path));
  parent->children.erase(NameOf(path));
  if (Status put = Put(context, parent_path, parent, false); !put.ok()) return put;
  Fire(context, path, node, true);
  return Ok{};
}

Status Store::Remove(ClientId client, uint32_t transaction, std::string_view path) {
  Result<Target> target = Lookup(client, transaction, path);
  if (!target.ok()) return target.error();
  Target& t = target.value();
  if (!t.node) {
    // As xenstored: removing a missing node under an existing parent succeeds.
    if (t.path == "/") return Error::kENOENT;
    Result<NodePtr> parent = Get(t.context, ParentOf(t.path));
    if (!parent.ok()) return parent.error();
    return parent.value() ? Status(Ok{}) : Status(Error::kENOENT);
  }
  if (!CanWrite(*t.context.client, *t.node)) return Error::kEACCES;  // XSA-353: rm / from a guest
  if (t.path == "/") return Error::kEINVAL;
  return RemoveSubtree(t.context, t.path, t.node);
}

Result<std::pair<uint64_t, std::vector<std::string>>> Store::DirectoryWithGeneration(ClientId client,
                                                                                       uint32_t transaction,
                                                                                       std::string_view path) {
  Result<Target> target = LookupReadable(client, transaction, path);
  if (!target.ok()) return target.error();
  const Node& node = *target.value().node;
  return std::make_pair(node.generation, std::vector<std::string>(node.children.begin(), node.children.end()));
}

Result<std::vector<std::string>> Store::Directory(ClientId client, uint32_t transaction, std::string_view path) {
  auto listed = DirectoryWithGeneration(client, transaction, path);
  if (!listed.ok()) return listed.error();
  return std::move(listed.value().second);
}

Result<Permissions> Store::GetPermissions(ClientId client, uint32_t transaction, std::string_view path) {
  Result<Target> target = LookupReadable(client, transaction, path);
  if (!target.ok()) return target.error();
  return target.value().node->permissions;
}

Status Store::SetPermissions(ClientId client, uint32_t transaction, std::string_view path,
                             const Permissions& permissions) {
  Result<Target> target = Lookup(client, transaction, path);
  if (!target.ok()) return target.error();
  Target& t = target.value();
  const Client& caller = *t.context.client;
  if (permissions.empty()) return Error::kEINVAL;
  if (!caller.privileged && permissions.size() > limits_.permissions_per_node) return Error::kENOSPC;
  if (!t.node) return Error::kENOENT;
  const uint32_t owner = t.node->permissions[0].domid;
  if (!caller.privileged) {
    if (owner != caller.domid) return Error::kEACCES;
    if (permissions[0].domid != owner) return Error::kEPERM;  // XSA-352: only domain 0 gives nodes away
  }
  auto updated = std::make_shared<Node>(*t.node);
  updated->permissions = permissions;
  return Put(t.context, t.path, updated, true);
}

Status Store::Watch(ClientId client_id, std::string_view path, std::string_view token) {
  auto client = clients_.find(client_id);
  if (client == clients_.end()) return Error::kEINVAL;
  WatchEntry watch;
  watch.token = std::string(token);
  if (!path.empty() && path[0] == '@') {
    if (!IsSpecialWatch(path)) return Error::kEINVAL;
    if (!client->second.privileged) return Error::kEACCES;
    watch.path = std::string(path);
  } else {
    Result<std::string> absolute = Resolve(client->second, path);
    if (!absolute.ok()) return absolute.error();
    watch.path = absolute.value();
    watch.relative = path[0] != '/';
  }
  std::vector<WatchEntry>& watches = client->second.watches;
  for (const WatchEntry& existing : watches) {
    if (existing.path == watch.path && existing.token == watch.token) return Error::kEEXIST;
  }
  if (!client->second.privileged && watches.size() >= limits_.watches_per_client) return Error::kE2BIG;
  watches.push_back(std::move(watch));
  return Ok{};
}

Status Store::Unwatch(ClientId client_id, std::string_view path, std::string_view token) {
  auto client = clients_.find(client_id);
  if (client == clients_.end()) return Error::kEINVAL;
  std::string absolute(path);
  if (path.empty() || path[0] != '@') {
    Result<std::string> resolved = Resolve(client->second, path);
    if (!resolved.ok()) return resolved.error();
    absolute = resolved.value();
  }
  std::vector<WatchEntry>& watches = client->second.watches;
  auto found = std::find_if(watches.begin(), watches.end(), [&](const WatchEntry& watch) {
    return watch.path == absolute && watch.token == token;
  });
  if (found == watches.end()) return Error::kENOENT;
  watches.erase(found);
  return Ok{};
}

void Store::ResetWatches(ClientId client) {
  RemoveTransactions(client);
  if (auto found = clients_.find(client); found != clients_.end()) found->second.watches.clear();
}

Result<uint32_t> Store::TransactionStart(ClientId client_id) {
  auto client = clients_.find(client_id);
  if (client == clients_.end()) return Error::kEINVAL;
  if (!client->second.privileged && client->second.transactions >= limits_.transactions_per_client) {
    return Error::kENOSPC;
  }
  while (next_transaction_ == 0 || transactions_.contains(next_transaction_)) ++next_transaction_;
  const uint32_t id = next_transaction_++;
  Transaction& transaction = transactions_[id];
  transaction.client = client_id;
  transaction.tree = tree_;  // shares the nodes; only changed ones are copied
  ++client->second.transactions;
  return id;
}

Status Store::TransactionEnd(ClientId client_id, uint32_t id, bool commit) {
  auto found = transactions_.find(id);
  if (found == transactions_.end() || found->second.client != client_id) return Error::kENOENT;
  Transaction transaction = std::move(found->second);
  transactions_.erase(found);
  if (auto client = clients_.find(client_id); client != clients_.end()) --client->second.transactions;
  if (!commit) return Ok{};
  for (const auto& [path, generation] : transaction.accessed) {
    auto now = tree_.find(path);
    if ((now == tree_.end() ? 0 : now->second->generation) != generation) {
      ++statistics_.conflicts;
      return Error::kEAGAIN;
    }
  }
  for (const std::string& path : transaction.changed) {
    auto node = transaction.tree.find(path);
    if (node == transaction.tree.end()) {
      tree_.erase(path);
    } else {
      tree_[path] = node->second;
    }
  }
  for (const auto& [domid, delta] : transaction.node_delta) node_counts_[domid] += delta;
  ++statistics_.commits;
  for (const Transaction::Event& event : transaction.events) FireNow(event.path, event.node, event.removed);
  return Ok{};
}

void Store::Fire(Context& context, const std::string& path, const NodePtr& node, bool removed) {
  if (context.transaction != nullptr) {
    context.transaction->events.push_back({path, node, removed});
  } else {
    FireNow(path, node, removed);
  }
}

void Store::FireNow(const std::string& path, const NodePtr& node, bool removed) {
  struct Pending {
    const WatchSink* sink;
    std::string path;
    std::string token;
  };
  std::vector<Pending> pending;
  for (auto& [id, client] : clients_) {
    if (!client.sink || !CanRead(client, *node)) continue;  // XSA-115: no events for unreadable nodes
    const std::string domain_prefix = absl::StrCat(DomainPath(client.domid), "/");
    for (const WatchEntry& watch : client.watches) {
      if (watch.path[0] == '@') continue;
      std::string event_path;
      if (Under(path, watch.path)) {
        event_path = path;
      } else if (removed && Under(watch.path, path)) {
        event_path = watch.path;  // a watched node went with its ancestor
      } else {
        continue;
      }
      if (watch.relative && event_path.starts_with(domain_prefix)) event_path.erase(0, domain_prefix.size());
      pending.push_back({&client.sink, std::move(event_path), watch.token});
    }
  }
  statistics_.watch_events += pending.size();
  for (const Pending& event : pending) (*event.sink)(event.path, event.token);
}

void Store::FireSpecial(const char* path) {
  for (auto& [id, client] : clients_) {
    if (!client.sink || !client.privileged) continue;
    for (const WatchEntry& watch : client.watches) {
      if (watch.path == path) {
        ++statistics_.watch_events;
        client.sink(path, watch.token);
      }
    }
  }
}

void Store::IntroduceDomain(uint32_t domid) {
  introduced_.insert(domid);
  FireSpecial("@introduceDomain");
}

bool Store::IsDomainIntroduced(uint32_t domid) const { return introduced_.contains(domid); }

void Store::ReleaseDomain(uint32_t domid) {
  Context context{&toolstack_, nullptr, &tree_};
  const std::string home = DomainPath(domid);
  if (auto found = tree_.find(home); found != tree_.end()) {
    const NodePtr node = found->second;  // a copy: the removal erases the map's
    (void)RemoveSubtree(context, home, node);
  }
  // What the domain still owned or was named in passes to domain 0, so that a later domain with
  // the same id inherits nothing (XSA-322).
  std::vector<std::string> paths;
  for (const auto& [path, node] : tree_) {
    for (const Permission& permission : node->permissions) {
      if (permission.domid == domid) {
        paths.push_back(path);
        break;
      }
    }
  }
  for (const std::string& path : paths) {
    auto updated = std::make_shared<Node>(*tree_.at(path));
    Permissions kept{updated->permissions[0]};
    if (kept[0].domid == domid) kept[0].domid = 0;
    for (size_t i = 1; i < updated->permissions.size(); ++i) {
      if (updated->permissions[i].domid != domid) kept.push_back(updated->permissions[i]);
    }
    updated->permissions = std::move(kept);
    (void)Put(context, path, updated, false);
  }
  for (auto& [id, client] : clients_) {
    if (client.domid == domid && !client.privileged) RemoveTransactions(id);
  }
  introduced_.erase(domid);
  FireSpecial("@releaseDomain");
}

StoreStatistics Store::Statistics() const {
  StoreStatistics statistics = statistics_;
  statistics.nodes = tree_.size();
  statistics.transactions = transactions_.size();
  for (const auto& [id, client] : clients_) statistics.watches += client.watches.size();
  return statistics;
}

}  // namespace xenkvm::xen::xenstore
