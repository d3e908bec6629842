"""cffi API-mode builder for kvmppc's door to the kernel.

Struct layouts and ioctl request numbers come from the C compiler and the kernel's UAPI
headers, so they are right on every architecture: powerpc's ``_IOC`` layout (13 size bits,
3 direction bits, NONE/READ/WRITE = 1/2/4) differs from the generic one used by x86 and arm.

Header history handled here (include/uapi/linux/kvm.h, arch/powerpc/include/uapi/asm/kvm.h):

* Until Linux 6.9 the SMMU structs, ``kvm_ppc_pvinfo`` and their ioctl numbers lived in
  ``<linux/kvm.h>`` for every architecture.  Since 6.9 they are in powerpc's ``<asm/kvm.h>``
  only, so an x86 build host with new headers lacks them.
* ``kvm_ppc_rmmu_info`` and ``kvm_ppc_cpu_char`` have always been powerpc-only.

Where a header lacks a struct we declare it with the kernel's own layout and derive the
request number with the target's own ``_IOR``/``_IOW`` macros, so the compiler still does the
encoding.  ``tests/test_ioctl_table.py`` checks the result against python-ioctl-opt.

Only ``kvmppc._kvm`` imports the compiled module.
"""

from __future__ import annotations

import cffi

MODULE_NAME = "kvmppc._kvmppc_cffi"

CDEF = r"""
/* Layouts: the compiler fills in offsets and padding ("...;"), sizes are checked in tests. */
struct kvm_ppc_one_page_size {
    uint32_t page_shift;
    uint32_t pte_enc;
    ...;
};
struct kvm_ppc_one_seg_page_size {
    uint32_t page_shift;
    uint32_t slb_enc;
    struct kvm_ppc_one_page_size enc[8];
    ...;
};
struct kvm_ppc_smmu_info {
    uint64_t flags;
    uint32_t slb_size;
    uint16_t data_keys;
    uint16_t instr_keys;
    struct kvm_ppc_one_seg_page_size sps[8];
    ...;
};
struct kvm_ppc_radix_geom {
    uint8_t page_shift;
    uint8_t level_bits[4];
    ...;
};
struct kvm_ppc_rmmu_info {
    struct kvm_ppc_radix_geom geometries[8];
    uint32_t ap_encodings[8];
    ...;
};
struct kvm_ppc_cpu_char {
    uint64_t character;
    uint64_t behaviour;
    uint64_t character_mask;
    uint64_t behaviour_mask;
    ...;
};
struct kvm_ppc_pvinfo {
    uint32_t flags;
    uint32_t hcall[4];
    ...;
};

#define KVM_API_VERSION ...
#define KVM_PPC_PAGE_SIZES_MAX_SZ ...
#define KVM_PPC_PAGE_SIZES_REAL ...
#define KVM_PPC_1T_SEGMENTS ...
#define KVM_PPC_NO_HASH ...
#define KVM_VM_PPC_HV ...
#define KVM_VM_PPC_PR ...

/* Capability numbers, checked against kvmppc.ioctls.Cap. */
#define KVM_CAP_SYNC_MMU ...
#define KVM_CAP_PPC_GET_PVINFO ...
#define KVM_CAP_PPC_SMT ...
#define KVM_CAP_PPC_GET_SMMU_INFO ...
#define KVM_CAP_PPC_ALLOC_HTAB ...
#define KVM_CAP_PPC_HTAB_FD ...
#define KVM_CAP_PPC_RTAS ...
#define KVM_CAP_CHECK_EXTENSION_VM ...
#define KVM_CAP_PPC_HTM ...
#define KVM_CAP_SPAPR_RESIZE_HPT ...
#define KVM_CAP_PPC_MMU_RADIX ...
#define KVM_CAP_PPC_MMU_HASH_V3 ...
#define KVM_CAP_PPC_FWNMI ...
#define KVM_CAP_PPC_SMT_POSSIBLE ...
#define KVM_CAP_PPC_GET_CPU_CHAR ...
#define KVM_CAP_PPC_NESTED_HV ...
#define KVM_CAP_PPC_SECURE_GUEST ...
#define KVM_CAP_PPC_DAWR1 ...
#define KVM_CAP_PPC_AIL_MODE_3 ...

/* Request numbers, as this target's compiler encodes them. */
#define KVM_GET_API_VERSION ...
#define KVM_CREATE_VM ...
#define KVM_CHECK_EXTENSION ...
#define KVM_PPC_GET_PVINFO ...
#define KVM_PPC_GET_SMMU_INFO ...
#define KVM_PPC_GET_RMMU_INFO ...
#define KVM_PPC_GET_CPU_CHAR ...

/* One non-variadic wrapper per ioctl, named after the kernel macro, so the compiler checks
   the argument type.  Each returns what ioctl(2) returns; errno is read with ffi.errno. */
int ioctl_KVM_GET_API_VERSION(int sys_fd);
int ioctl_KVM_CHECK_EXTENSION(int fd, long cap);
int ioctl_KVM_CREATE_VM(int sys_fd, unsigned long type);
int ioctl_KVM_PPC_GET_SMMU_INFO(int vm_fd, struct kvm_ppc_smmu_info *info);
int ioctl_KVM_PPC_GET_RMMU_INFO(int vm_fd, struct kvm_ppc_rmmu_info *info);
int ioctl_KVM_PPC_GET_CPU_CHAR(int vm_fd, struct kvm_ppc_cpu_char *cpu_char);
int ioctl_KVM_PPC_GET_PVINFO(int vm_fd, struct kvm_ppc_pvinfo *pvinfo);

/* statfs(2) reduced to what QEMU's qemu_mempath_getpagesize() looks at. */
#define HUGETLBFS_MAGIC ...
int kvmppc_statfs(const char *path, uint64_t *f_type, uint64_t *f_bsize);
"""

SOURCE = r"""
#include <errno.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/vfs.h>
#include <linux/magic.h>
#include <linux/types.h>
#include <linux/kvm.h>

/* Linux >= 6.9 moved these to powerpc's <asm/kvm.h>; KVM_PPC_PAGE_SIZES_MAX_SZ travels with
   them, so its absence means the header lacks the whole group (kernel layout kept). */
#ifndef KVM_PPC_PAGE_SIZES_MAX_SZ
#define KVM_PPC_PAGE_SIZES_MAX_SZ 8
#define KVM_PPC_PAGE_SIZES_REAL 0x00000001
#define KVM_PPC_1T_SEGMENTS 0x00000002
#define KVM_PPC_NO_HASH 0x00000004
struct kvm_ppc_pvinfo {
    __u32 flags;
    __u32 hcall[4];
    __u8 pad[108];
};
struct kvm_ppc_one_page_size {
    __u32 page_shift;
    __u32 pte_enc;
};
struct kvm_ppc_one_seg_page_size {
    __u32 page_shift;
    __u32 slb_enc;
    struct kvm_ppc_one_page_size enc[KVM_PPC_PAGE_SIZES_MAX_SZ];
};
struct kvm_ppc_smmu_info {
    __u64 flags;
    __u32 slb_size;
    __u16 data_keys;
    __u16 instr_keys;
    struct kvm_ppc_one_seg_page_size sps[KVM_PPC_PAGE_SIZES_MAX_SZ];
};
#endif

#ifndef KVM_PPC_NO_HASH /* added in 4.20, after the group above */
#define KVM_PPC_NO_HASH 0x00000004
#endif

/* Always powerpc-only (arch/powerpc/include/uapi/asm/kvm.h); KVM_PPC_MMUV3_RADIX and
   KVM_PPC_CPU_CHAR_SPEC_BAR_ORI31 are defined beside them there. */
#ifndef KVM_PPC_MMUV3_RADIX
struct kvm_ppc_rmmu_info {
    struct kvm_ppc_radix_geom {
        __u8 page_shift;
        __u8 level_bits[4];
        __u8 pad[3];
    } geometries[8];
    __u32 ap_encodings[8];
};
#endif
#ifndef KVM_PPC_CPU_CHAR_SPEC_BAR_ORI31
struct kvm_ppc_cpu_char {
    __u64 character;
    __u64 behaviour;
    __u64 character_mask;
    __u64 behaviour_mask;
};
#endif

#ifndef KVM_VM_PPC_HV
#define KVM_VM_PPC_HV 1
#define KVM_VM_PPC_PR 2
#endif

#ifndef KVM_PPC_GET_PVINFO
#define KVM_PPC_GET_PVINFO _IOW(KVMIO, 0xa1, struct kvm_ppc_pvinfo)
#endif
#ifndef KVM_PPC_GET_SMMU_INFO
#define KVM_PPC_GET_SMMU_INFO _IOR(KVMIO, 0xa6, struct kvm_ppc_smmu_info)
#endif
#ifndef KVM_PPC_GET_RMMU_INFO
#define KVM_PPC_GET_RMMU_INFO _IOW(KVMIO, 0xb0, struct kvm_ppc_rmmu_info)
#endif
#ifndef KVM_PPC_GET_CPU_CHAR
#define KVM_PPC_GET_CPU_CHAR _IOR(KVMIO, 0xb1, struct kvm_ppc_cpu_char)
#endif

static int ioctl_KVM_GET_API_VERSION(int sys_fd)
{
    return ioctl(sys_fd, KVM_GET_API_VERSION, 0);
}

static int ioctl_KVM_CHECK_EXTENSION(int fd, long cap)
{
    return ioctl(fd, KVM_CHECK_EXTENSION, cap);
}

static int ioctl_KVM_CREATE_VM(int sys_fd, unsigned long type)
{
    return ioctl(sys_fd, KVM_CREATE_VM, type);
}

static int ioctl_KVM_PPC_GET_SMMU_INFO(int vm_fd, struct kvm_ppc_smmu_info *info)
{
    return ioctl(vm_fd, KVM_PPC_GET_SMMU_INFO, info);
}

static int ioctl_KVM_PPC_GET_RMMU_INFO(int vm_fd, struct kvm_ppc_rmmu_info *info)
{
    return ioctl(vm_fd, KVM_PPC_GET_RMMU_INFO, info);
}

static int ioctl_KVM_PPC_GET_CPU_CHAR(int vm_fd, struct kvm_ppc_cpu_char *cpu_char)
{
    return ioctl(vm_fd, KVM_PPC_GET_CPU_CHAR, cpu_char);
}

static int ioctl_KVM_PPC_GET_PVINFO(int vm_fd, struct kvm_ppc_pvinfo *pvinfo)
{
    return ioctl(vm_fd, KVM_PPC_GET_PVINFO, pvinfo);
}

static int kvmppc_statfs(const char *path, uint64_t *f_type, uint64_t *f_bsize)
{
    struct statfs st;
    int ret;

    do { /* qemu_mempath_getpagesize() retries on EINTR too */
        ret = statfs(path, &st);
    } while (ret < 0 && errno == EINTR);
    if (ret == 0) {
        *f_type = (uint64_t)st.f_type;
        *f_bsize = (uint64_t)st.f_bsize;
    }
    return ret;
}
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(MODULE_NAME, SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
