"""cc_grpc_library: C++ message and gRPC service code from .proto files, with Debian's protoc.

Bazel 4.2.3's proto rules would need the protobuf repository from the network, so a genrule runs the
system protoc with grpc_cpp_plugin instead. Proto imports resolve against the workspace root and the
system include directory (google/protobuf/*.proto from libprotobuf-dev).
"""

def cc_grpc_library(name, srcs, deps = [], grpc = True, **kwargs):
    """Generates and compiles the C++ code for `srcs`.

    Args:
      name: the cc_library to create.
      srcs: .proto files in this package.
      deps: other cc_grpc_library targets whose protos these import.
      grpc: also generate service stubs (.grpc.pb.*).
      **kwargs: passed to the cc_library.
    """
    bases = [src[:-len(".proto")] for src in srcs]
    pkg = native.package_name()
    prefix = pkg + "/" if pkg else ""
    outs_h = [b + ".pb.h" for b in bases]
    outs_cc = [b + ".pb.cc" for b in bases]
    if grpc:
        outs_h += [b + ".grpc.pb.h" for b in bases]
        outs_cc += [b + ".grpc.pb.cc" for b in bases]

    grpc_flags = ""
    if grpc:
        grpc_flags = "--grpc_out=$(GENDIR) --plugin=protoc-gen-grpc=$$(command -v grpc_cpp_plugin) "

    native.genrule(
        name = name + "_generate",
        srcs = srcs + [d + "_protos" for d in deps],
        outs = outs_h + outs_cc,
        cmd = ("protoc -I. -I$(GENDIR) -I/usr/include --cpp_out=$(GENDIR) " + grpc_flags +
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
        deps = deps + ["//third_party:grpc", "//third_party:protobuf"],
        **kwargs
    )
