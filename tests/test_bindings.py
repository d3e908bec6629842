"""The binding against this machine's real /dev/kvm (x86: generic ioctls work, PPC ones give
ENOTTY) and its error paths on real files."""

from __future__ import annotations

import contextlib
import errno
import os
import struct

import pytest

from kvmppc import _kvm
from kvmppc.errors import (
    KvmNotLoadedError,
    KvmOSError,
    KvmPermissionError,
    NotPowerPCKvmError,
)
from kvmppc.ioctls import Cap
from kvmppc.model import PageSize, RadixGeometry, SegmentPageSizes, SmmuFlag
from tests.helpers import needs_kvm

KVM = "/dev/kvm"
IS_POWERPC = os.uname().machine.startswith("ppc")



def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@needs_kvm
def test_api_version_is_12() -> None:
    with _kvm.open_kvm(KVM) as device:
        assert device.api_version() == 12


@needs_kvm
def test_check_extension_reports_generic_and_ppc_caps() -> None:
    with _kvm.open_kvm(KVM) as device:
        # Every KVM with VM-scoped checks since 4.0 reports it; the PPC cap only on powerpc.
        assert device.check_extension(Cap.CHECK_EXTENSION_VM) > 0
        assert (device.check_extension(Cap.PPC_GET_SMMU_INFO) > 0) == IS_POWERPC


@needs_kvm
def test_create_vm_gives_a_distinct_closable_fd() -> None:
    with _kvm.open_kvm(KVM) as device, device.create_vm() as vm:
        assert vm.fd not in (device.fd, 0, 1, 2)
        assert vm.check_extension(Cap.CHECK_EXTENSION_VM) >= 0
        fd = vm.fd
    assert vm.closed
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF


@needs_kvm
@pytest.mark.skipif(IS_POWERPC, reason="on powerpc the PPC ioctls answer")
def test_ppc_ioctl_on_non_powerpc_kvm_says_so() -> None:
    with _kvm.open_kvm(KVM) as device, device.create_vm() as vm, pytest.raises(
        NotPowerPCKvmError
    ) as info:
        vm.get_smmu_info()
    assert info.value.errno == errno.ENOTTY
    assert "not a PowerPC KVM" in str(info.value)
    assert "KVM_PPC_GET_SMMU_INFO" in str(info.value)
    for call in ("get_rmmu_info", "get_cpu_char", "get_pvinfo"):
        with _kvm.open_kvm(KVM) as device, device.create_vm() as vm, pytest.raises(
            NotPowerPCKvmError
        ):
            getattr(vm, call)()


def test_dev_null_is_not_kvm() -> None:
    """A device that is not KVM answers ENOTTY to KVM_GET_API_VERSION."""
    with _kvm.open_kvm("/dev/null") as device, pytest.raises(KvmOSError) as info:
        device.api_version()
    assert info.value.errno == errno.ENOTTY
    assert info.value.path == "/dev/null"
    assert info.value.operation == "KVM_GET_API_VERSION"


def test_closed_fd_gives_ebadf() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(KvmOSError) as info:
        _kvm.raw_ioctl_check_extension(read_end, Cap.PPC_GET_SMMU_INFO)
    assert info.value.errno == errno.EBADF


def test_use_after_close_gives_ebadf_not_another_fd() -> None:
    device = _kvm.KvmDevice("/dev/null")
    device.close()
    with pytest.raises(KvmOSError) as info:
        device.check_extension(Cap.PPC_GET_SMMU_INFO)
    assert info.value.errno == errno.EBADF


def test_missing_device_means_no_module_loaded(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "kvm")
    with pytest.raises(KvmNotLoadedError) as info:
        _kvm.KvmDevice(path)
    assert info.value.errno == errno.ENOENT
    assert "modprobe kvm_hv" in str(info.value)


def test_unreadable_node_names_the_kvm_group(tmp_path: os.PathLike[str]) -> None:
    """Run unprivileged: a forked child drops to nobody before opening a 0600 node."""
    node = os.path.join(tmp_path, "kvm")
    with open(node, "w"):
        pass
    os.chmod(node, 0o600)
    os.chmod(tmp_path, 0o755)
    if os.geteuid() != 0 and os.access(node, os.R_OK):
        pytest.skip("cannot make a node unreadable for this user")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
            try:
                _kvm.KvmDevice(node)
                message = "opened"
            except KvmPermissionError as exc:
                message = f"{exc.errno}:{exc}"
            except BaseException as exc:  # report anything else to the parent
                message = f"other:{exc!r}"
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    code, _, text = message.partition(":")
    assert code == str(errno.EACCES), message
    assert "'kvm' group" in text


@needs_kvm
def test_no_fd_leak_over_thousands_of_vm_cycles() -> None:
    before = open_fds()
    for _ in range(2000):
        # ENOTTY off powerpc: the error path must not leak either.
        with _kvm.open_kvm(KVM) as device, device.create_vm() as vm, contextlib.suppress(
            KvmOSError
        ):
            vm.get_smmu_info()
    assert open_fds() == before


# --------------------------------------------------------------------------------------------
# decoding raw structs (layout from kvm-ppc-facts.md §1, independent of the cffi cdef)


def pack_smmu_info(flags: int, slb_size: int, data_keys: int, instr_keys: int,
                   rows: list[tuple[int, int, list[tuple[int, int]]]]) -> bytes:
    raw = bytearray(592)
    struct.pack_into("=QIHH", raw, 0, flags, slb_size, data_keys, instr_keys)
    for i, (page_shift, slb_enc, encs) in enumerate(rows):
        struct.pack_into("=II", raw, 16 + 72 * i, page_shift, slb_enc)
        for j, (enc_shift, pte_enc) in enumerate(encs):
            struct.pack_into("=II", raw, 16 + 72 * i + 8 + 8 * j, enc_shift, pte_enc)
    return bytes(raw)


def test_decode_smmu_info_power9_hv_answer() -> None:
    raw = pack_smmu_info(0x7, 32, 32, 32, [
        (12, 0x000, [(12, 0x0), (24, 0x38)]),
        (16, 0x110, [(16, 0x1), (24, 0x8)]),
        (24, 0x100, [(24, 0x0)]),
    ])
    info = _kvm.decode_smmu_info(raw)
    assert info.flags == SmmuFlag.PAGE_SIZES_REAL | SmmuFlag.ONE_T_SEGMENTS | SmmuFlag.NO_HASH
    assert info.flag_names == ["PAGE_SIZES_REAL", "1T_SEGMENTS", "NO_HASH"]
    assert (info.slb_size, info.data_keys, info.instr_keys) == (32, 32, 32)
    assert info.segments == (
        SegmentPageSizes(12, 0x000, (PageSize(12, 0x0), PageSize(24, 0x38))),
        SegmentPageSizes(16, 0x110, (PageSize(16, 0x1), PageSize(24, 0x8))),
        SegmentPageSizes(24, 0x100, (PageSize(24, 0x0),)),
    )


def test_decode_smmu_info_stops_at_first_unused_row() -> None:
    # api.rst: a lookup may stop at the first page_shift == 0 row; rows after it are ignored.
    raw = pack_smmu_info(0, 64, 0, 0, [(12, 0, [(12, 0)]), (0, 0, []), (24, 0x100, [(24, 0)])])
    assert [seg.page_shift for seg in _kvm.decode_smmu_info(raw).segments] == [12]


def test_decode_smmu_info_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="592 bytes"):
        _kvm.decode_smmu_info(b"\0" * 591)


def test_decode_rmmu_info_power9_answer() -> None:
    raw = bytearray(96)
    struct.pack_into("=B4B", raw, 0, 12, 9, 9, 9, 13)
    struct.pack_into("=B4B", raw, 8, 16, 5, 9, 9, 13)
    struct.pack_into("=4I", raw, 64, 0xC, 0xA0000010, 0x20000015, 0x4000001E)
    info = _kvm.decode_rmmu_info(bytes(raw))
    assert info.geometries == (RadixGeometry(12, (9, 9, 9, 13)), RadixGeometry(16, (5, 9, 9, 13)))
    assert info.page_shifts == (12, 16, 21, 30)


def test_statfs_reports_hugetlbfs_magic_only_for_hugetlbfs() -> None:
    f_type, f_bsize = _kvm.statfs_type_and_block_size("/proc")
    assert f_type != _kvm.HUGETLBFS_MAGIC
    assert f_bsize > 0
    with pytest.raises(KvmOSError) as info:
        _kvm.statfs_type_and_block_size("/nonexistent/kvmppc")
    assert info.value.errno == errno.ENOENT
