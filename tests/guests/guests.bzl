"""test_guest(): a freestanding test kernel built by the host's gcc with the tests/guests kit."""

_KIT = [
    "//tests/guests:kit/pvh_entry.S",
    "//tests/guests:kit/pvh_note.inc",
    "//tests/guests:kit/interrupts.S",
    "//tests/guests:kit/kit.c",
    "//tests/guests:kit/kit.h",
    "//tests/guests:kit/kit.ld",
    "//tests/guests:kit/xen.c",
    "//tests/guests:kit/xen.h",
    "//tests/guests:kit/xenstore.c",
    "//tests/guests:kit/xenstore.h",
    "//tests/guests:kit/xenbus.c",
    "//tests/guests:kit/xenbus.h",
    "//tests/guests:kit/blkfront.c",
    "//tests/guests:kit/blkfront.h",
]

_FLAGS = " ".join([
    "-m64", "-O2", "-g0", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
    "-ffreestanding", "-fno-pic", "-fno-pie", "-no-pie", "-static", "-nostdlib",
    "-fno-stack-protector", "-fcf-protection=none", "-mno-red-zone", "-mgeneral-regs-only",
    "-fno-asynchronous-unwind-tables", "-Wl,--build-id=none",
])

def test_guest(name, srcs):
    """An ELF test kernel with a PVH note, `name`.elf, from `srcs` and the kit."""
    native.genrule(
        name = name,
        srcs = srcs + _KIT,
        outs = [name + ".elf"],
        cmd = ("gcc " + _FLAGS + " -I$$(dirname $(location //tests/guests:kit/kit.h))/.. " +
               "-T $(location //tests/guests:kit/kit.ld) -o $@ " +
               "$(location //tests/guests:kit/pvh_entry.S) $(location //tests/guests:kit/interrupts.S) " +
               "$(location //tests/guests:kit/kit.c) $(location //tests/guests:kit/xen.c) " +
               "$(location //tests/guests:kit/xenstore.c) $(location //tests/guests:kit/xenbus.c) " +
               "$(location //tests/guests:kit/blkfront.c) " +
               " ".join(["$(location %s)" % s for s in srcs])),
        visibility = ["//visibility:public"],
    )
