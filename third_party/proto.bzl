"""C++ code from .proto files, with Debian's protoc.

Bazel 4.2.3's proto rules would need the protobuf repository from the network, so genrules run the
system protoc (and grpc_cpp_plugin) instead. Proto imports resolve against the workspace root and
the system include directory (google/protobuf/*.proto from libprotobuf-dev).

cc_proto_messages compiles the messages alone (protobuf only); cc_grpc_library adds the gRPC service
stubs of the same files on top of such a library, so a binary that needs only the messages (the
VMM) links no gRPC.
"""

def cc_proto_messages(name, srcs, deps = [], **kwargs):
    """The messages of `srcs` as a cc_library.

    Args:
      name: the cc_library to create.
      srcs: .proto files in this package.
      deps: other cc_proto_messages targets whose protos these import.
      **kwargs: passed to the cc_library.
    """
    bases = [src[:-len(".proto")] for src in srcs]
    prefix = native.package_name() + "/" if native.package_name() else ""
    outs_h = [b + ".pb.h" for b in bases]
    outs_cc = [b + ".pb.cc" for b in bases]
    native.genrule(
        name = name + "_generate",
        srcs = srcs + [d + "_protos" for d in deps],
        outs = outs_h + outs_cc,
        cmd = ("protoc -I. -I$(GENDIR) -I/usr/include --cpp_out=$(GENDIR) " +
               " ".join([prefix + s for s in srcs])),
    )
    native.filegroup(
        name = name + "_protos",
        srcs = srcs + [d + "_protos" for d in deps],
    )
    native.cc_library(
        name = name,
        srcs = outs_cc,
        hdrs = outs_h,
        deps = deps + ["//third_party:protobuf"],
        **kwargs
    )

def cc_grpc_library(name, srcs, messages, **kwargs):
    """The gRPC service stubs of `srcs` as a cc_library.

    Args:
      name: the cc_library to create.
      srcs: .proto files in this package, the same as `messages` was made from.
      messages: the cc_proto_messages target of `srcs`.
      **kwargs: passed to the cc_library.
    """
    bases = [src[:-len(".proto")] for src in srcs]
    prefix = native.package_name() + "/" if native.package_name() else ""
    outs_h = [b + ".grpc.pb.h" for b in bases]
    outs_cc = [b + ".grpc.pb.cc" for b in bases]
    native.genrule(
        name = name + "_generate",
        srcs = [messages + "_protos"],
        outs = outs_h + outs_cc,
        cmd = ("protoc -I. -I$(GENDIR) -I/usr/include " +
               "--grpc_out=$(GENDIR) --plugin=protoc-gen-grpc=$$(command -v grpc_cpp_plugin) " +
               " ".join([prefix + s for s in srcs])),
    )
    native.cc_library(
        name = name,
        srcs = outs_cc,
        hdrs = outs_h,
        deps = [messages, "//third_party:grpc", "//third_party:protobuf"],
        **kwargs
    )
