// Builds a gRPC server from protoc-generated code, serves it on a Unix socket with reflection and
// health checking on, and calls it: the whole system-library recipe in one test.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <stdlib.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "gtest/gtest.h"
#include "third_party/testing/echo.grpc.pb.h"

namespace xenkvm::testing {
namespace {

class EchoService final : public Echo::Service {
  grpc::Status Say(grpc::ServerContext*, const EchoRequest* request, EchoReply* reply) override {
    if (request->text().empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "text: must not be empty");
    }
    reply->set_text(request->text());
    reply->set_length(static_cast<uint32_t>(request->text().size()));
    return grpc::Status::OK;
  }
};

TEST(GrpcRecipeTest, ServesAndCallsOverAUnixSocket) {
  // Bazel's TEST_TMPDIR is too long for a Unix socket path (108 bytes), so use a short one.
  char directory[] = "/tmp/xenkvm-grpc-XXXXXX";
  ASSERT_NE(::mkdtemp(directory), nullptr);
  std::string socket_path = std::string(directory) + "/echo.sock";
  std::string address = "unix:" + socket_path;
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  EchoService service;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials());
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);

  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = Echo::NewStub(channel);
  EchoRequest request;
  request.set_text("xenkvm");
  EchoReply reply;
  grpc::ClientContext context;
  grpc::Status status = stub->Say(&context, request, &reply);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(reply.text(), "xenkvm");
  EXPECT_EQ(reply.length(), 6u);

  grpc::ClientContext bad_context;
  EchoReply bad_reply;
  grpc::Status bad = stub->Say(&bad_context, EchoRequest(), &bad_reply);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  ASSERT_NE(server->GetHealthCheckService(), nullptr);
  server->Shutdown();
  ::unlink(socket_path.c_str());
  ::rmdir(directory);
}

}  // namespace
}  // namespace xenkvm::testing
