#include "components/base/status.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::base {
namespace {

using ::testing::HasSubstr;

TEST(ErrnoStatusTest, NamesTheCallAndTheErrno) {
  absl::Status status = ErrnoStatus("ioctl(KVM_CREATE_VM)", EINVAL);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("ioctl(KVM_CREATE_VM)"));
  EXPECT_THAT(status.message(), HasSubstr("Invalid argument"));
  EXPECT_THAT(status.message(), HasSubstr("errno 22"));
}

TEST(ErrnoStatusTest, MapsCommonErrnos) {
  EXPECT_EQ(ErrnoStatus("x", ENOENT).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrnoStatus("x", EEXIST).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ErrnoStatus("x", EACCES).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoStatus("x", ENOMEM).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoStatus("x", EAGAIN).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrnoStatus("x", ENOTTY).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(ErrnoStatus("x", EIO).code(), absl::StatusCode::kInternal);
}

TEST(ErrnoStatusTest, ZeroErrnoIsNeverOk) {
  absl::Status status = ErrnoStatus("read", 0);
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(status.message(), HasSubstr("without setting errno"));
}

TEST(ErrnoStatusTest, UsesCurrentErrno) {
  errno = EBADF;
  EXPECT_EQ(ErrnoStatus("close").code(), absl::StatusCode::kInvalidArgument);
}

TEST(AnnotateTest, PrefixesAndKeepsCode) {
  absl::Status status = Annotate(absl::NotFoundError("no such file"), "loading kernel");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(status.message(), "loading kernel: no such file");
  EXPECT_TRUE(Annotate(absl::OkStatus(), "anything").ok());
}

absl::Status FailsWhen(bool fail) {
  if (fail) return absl::AbortedError("failed");
  return absl::OkStatus();
}

absl::StatusOr<int> ValueOrError(bool fail) {
  if (fail) return absl::OutOfRangeError("no value");
  return 7;
}

absl::StatusOr<int> UsesMacros(bool first_fails, bool second_fails) {
  XENKVM_RETURN_IF_ERROR(FailsWhen(first_fails));
  XENKVM_ASSIGN_OR_RETURN(int value, ValueOrError(second_fails));
  return value * 2;
}

TEST(MacrosTest, PropagateErrorsAndValues) {
  EXPECT_EQ(*UsesMacros(false, false), 14);
  EXPECT_EQ(UsesMacros(true, false).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(UsesMacros(false, true).status().code(), absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace xenkvm::base
