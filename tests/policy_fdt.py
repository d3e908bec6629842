"""A small flattened-device-tree (dtb) reader for the differential test.

Enough of the format (devicetree specification v0.4, chapter 5) to walk nodes and read
properties: the header, FDT_BEGIN_NODE / FDT_END_NODE / FDT_PROP / FDT_NOP / FDT_END tokens,
and the strings block.  All values are big-endian.
"""

from __future__ import annotations

import struct

FDT_MAGIC = 0xD00DFEED
FDT_BEGIN_NODE = 1
FDT_END_NODE = 2
FDT_PROP = 3
FDT_NOP = 4
FDT_END = 9


class FdtError(ValueError):
    pass


def _align4(offset: int) -> int:
    return (offset + 3) & ~3


def read_fdt(blob: bytes) -> dict[str, dict[str, bytes]]:
    """Every node's properties, keyed by the node's full path ("/", "/cpus/PowerPC,POWER9@0")."""
    if len(blob) < 40:
        raise FdtError("shorter than an FDT header")
    magic, totalsize, off_struct, off_strings = struct.unpack_from(">4I", blob, 0)
    if magic != FDT_MAGIC:
        raise FdtError(f"bad magic {magic:#x}")
    if totalsize > len(blob):
        raise FdtError(f"header says {totalsize} bytes, file has {len(blob)}")

    def string_at(offset: int) -> str:
        start = off_strings + offset
        end = blob.index(b"\0", start)
        return blob[start:end].decode("ascii")

    nodes: dict[str, dict[str, bytes]] = {}
    path: list[str] = []
    pos = off_struct
    while True:
        (token,) = struct.unpack_from(">I", blob, pos)
        pos += 4
        if token == FDT_BEGIN_NODE:
            end = blob.index(b"\0", pos)
            name = blob[pos:end].decode("ascii")
            pos = _align4(end + 1)
            path.append(name)
            nodes["/" + "/".join(p for p in path if p)] = {}
        elif token == FDT_END_NODE:
            if not path:
                raise FdtError("FDT_END_NODE without a node")
            path.pop()
        elif token == FDT_PROP:
            length, nameoff = struct.unpack_from(">2I", blob, pos)
            pos += 8
            value = blob[pos : pos + length]
            pos = _align4(pos + length)
            nodes["/" + "/".join(p for p in path if p)][string_at(nameoff)] = value
        elif token == FDT_NOP:
            continue
        elif token == FDT_END:
            return nodes
        else:
            raise FdtError(f"unknown token {token:#x} at {pos - 4}")


def cells(value: bytes) -> list[int]:
    """A property as big-endian u32 cells."""
    if len(value) % 4:
        raise FdtError(f"{len(value)} bytes is not a whole number of cells")
    return list(struct.unpack(f">{len(value) // 4}I", value))
