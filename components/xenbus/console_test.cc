#include "components/xenbus/console.h"

#include <cstddef>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "xen/io/console.h"

namespace xenkvm::xenbus {
namespace {

constexpr uint64_t kRing = 0x2000;

class ConsoleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    memory_ = std::make_unique<memory::GuestMemory>(
        std::move(memory::GuestMemory::Create({{memory::GuestAddress(0), 0x4000}})).value());
    auto backend = ConsoleBackend::Create(
        *memory_, kRing, [this](std::span<const uint8_t> bytes) { output_.append(bytes.begin(), bytes.end()); },
        [this] { ++notifications_; });
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
  }
  uint32_t Index(size_t offset) { return *memory_->AtomicLoad<uint32_t>(memory::GuestAddress(kRing + offset)); }
  void SetIndex(size_t offset, uint32_t value) {
    ASSERT_TRUE(memory_->AtomicStore<uint32_t>(memory::GuestAddress(kRing + offset), value).ok());
  }
  // The guest's hvc driver: bytes into out[], then out_prod.
  void GuestWrites(const std::string& text) {
    uint32_t producer = Index(offsetof(xencons_interface, out_prod));
    for (char c : text) {
      uint8_t b = static_cast<uint8_t>(c);
      ASSERT_TRUE(memory_->Write(memory::GuestAddress(kRing + offsetof(xencons_interface, out) + producer++ % 2048),
                                 {&b, 1})
                      .ok());
    }
    SetIndex(offsetof(xencons_interface, out_prod), producer);
  }

  std::unique_ptr<memory::GuestMemory> memory_;
  std::unique_ptr<ConsoleBackend> backend_;
  std::string output_;
  int notifications_ = 0;
};

TEST_F(ConsoleTest, TakesWhatTheGuestWroteAcrossTheWrap) {
  GuestWrites("hello\n");
  backend_->Process();
  EXPECT_EQ(output_, "hello\n");
  EXPECT_EQ(Index(offsetof(xencons_interface, out_cons)), 6u);
  EXPECT_EQ(notifications_, 1);
  // Around the 2048-byte ring several times, and through the 2^32 wrap of the indexes.
  SetIndex(offsetof(xencons_interface, out_cons), 0xfffffff0u);
  SetIndex(offsetof(xencons_interface, out_prod), 0xfffffff0u);
  output_.clear();
  std::string expected;
  for (int i = 0; i < 10; ++i) {
    std::string chunk(1500, static_cast<char>('a' + i));
    GuestWrites(chunk);
    backend_->Process();
    expected += chunk;
  }
  EXPECT_EQ(output_, expected);
  backend_->Process();  // nothing new: no output, no notification
  EXPECT_EQ(backend_->statistics().output_bytes, 6u + 15000u);
}

TEST_F(ConsoleTest, IgnoresAProducerBeyondTheRing) {
  SetIndex(offsetof(xencons_interface, out_prod), 5000);
  backend_->Process();
  EXPECT_EQ(output_, "");
  EXPECT_EQ(backend_->statistics().bad_indexes, 1u);
  EXPECT_EQ(Index(offsetof(xencons_interface, out_cons)), 0u);
  // The guest puts sane values back: served again.
  SetIndex(offsetof(xencons_interface, out_prod), 0);
  GuestWrites("ok");
  backend_->Process();
  EXPECT_EQ(output_, "ok");
}

TEST_F(ConsoleTest, SendsInputAsRoomAllows) {
  EXPECT_EQ(backend_->Send(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>("ls\n"), 3)), 3u);
  EXPECT_EQ(Index(offsetof(xencons_interface, in_prod)), 3u);
  std::string big(2000, 'x');
  EXPECT_EQ(backend_->Send(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(big.data()), big.size())), 1021u);
  EXPECT_EQ(backend_->Send(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>("y"), 1)), 0u);  // full
  SetIndex(offsetof(xencons_interface, in_cons), 0x7fffffffu);  // a consumer past the producer
  EXPECT_EQ(backend_->Send(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>("y"), 1)), 0u);
  EXPECT_EQ(backend_->statistics().bad_indexes, 1u);
}

TEST(ConsoleCreateTest, RefusesARingOutsideGuestMemory) {
  auto memory = std::move(memory::GuestMemory::Create({{memory::GuestAddress(0), 0x4000}})).value();
  EXPECT_FALSE(ConsoleBackend::Create(memory, 0x4000, [](auto) {}, [] {}).ok());
  EXPECT_FALSE(ConsoleBackend::Create(memory, 0x2100, [](auto) {}, [] {}).ok());
}

}  // namespace
}  // namespace xenkvm::xenbus
