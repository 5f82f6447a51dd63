// Xen's public interface headers (libxen-dev), usable from C++: they expect <stdint.h> to be
// included first and __XEN_INTERFACE_VERSION__ to be set (the //third_party:xen_headers target sets
// it). Include this instead of <xen/...> directly.
#ifndef XENKVM_THIRD_PARTY_XEN_PUBLIC_H_
#define XENKVM_THIRD_PARTY_XEN_PUBLIC_H_

#include <stdint.h>

#include <xen/arch-x86/hvm/start_info.h>
#include <xen/arch-x86/cpuid.h>
#include <xen/elfnote.h>
#include <xen/errno.h>
#include <xen/event_channel.h>
#include <xen/features.h>
#include <xen/grant_table.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/hvm_vcpu.h>
#include <xen/hvm/params.h>
#include <xen/memory.h>
#include <xen/sched.h>
#include <xen/vcpu.h>
#include <xen/version.h>
#include <xen/xen.h>

#endif  // XENKVM_THIRD_PARTY_XEN_PUBLIC_H_
