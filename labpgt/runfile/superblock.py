"""Clearing the "open for writing" mark a killed SWMR writer leaves in the HDF5 superblock (what h5clear does).
"""
from __future__ import annotations

import struct





# superblock handling (h5clear equivalent), needed after a writer was killed

def _lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 hashlittle: the checksum HDF5 puts on version 2/3 superblocks."""
    m = 0xFFFFFFFF

    def rot(x, k):
        return ((x << k) | (x >> (32 - k))) & m

    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & m
    i = 0
    while n > 12:
        x, y, z = struct.unpack_from("<III", data, i)
        a, b, c = (a + x) & m, (b + y) & m, (c + z) & m
        a = (a - c) & m; a ^= rot(c, 4); c = (c + b) & m  # noqa: E702 (the published mix)
        b = (b - a) & m; b ^= rot(a, 6); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= rot(b, 8); b = (b + a) & m  # noqa: E702
        a = (a - c) & m; a ^= rot(c, 16); c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= rot(a, 19); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= rot(b, 4); b = (b + a) & m  # noqa: E702
        i += 12
        n -= 12
    if n == 0:
        return c
    x, y, z = struct.unpack("<III", data[i:] + b"\0" * (12 - n))
    a, b, c = (a + x) & m, (b + y) & m, (c + z) & m
    c ^= b; c = (c - rot(b, 14)) & m  # noqa: E702 (the published final)
    a ^= c; a = (a - rot(c, 11)) & m  # noqa: E702
    b ^= a; b = (b - rot(a, 25)) & m  # noqa: E702
    c ^= b; c = (c - rot(b, 16)) & m  # noqa: E702
    a ^= c; a = (a - rot(c, 4)) & m  # noqa: E702
    b ^= a; b = (b - rot(a, 14)) & m  # noqa: E702
    c ^= b; c = (c - rot(b, 24)) & m  # noqa: E702
    return c


_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _superblock(path) -> dict | None:
    """Version, write flags and stored end-of-file address of a v2/v3 superblock at offset 0, or None."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if len(head) < 12 or head[:8] != _SIGNATURE or head[8] not in (2, 3):
        return None
    o = head[9]
    n = 12 + 4 * o
    if o != 8 or len(head) < n + 4:
        return None
    base, ext, eof, root = struct.unpack_from("<4Q", head, 12)
    (stored,) = struct.unpack_from("<I", head, n)
    return {"version": head[8], "flags": head[11], "eof": eof, "checksum_ok": stored == _lookup3(head[:n])}


def clear_write_flags(path) -> bool:
    """Clear the superblock's "open for (SWMR) writing" flags, as ``h5clear -s`` does.

    Only for a file whose writer is gone (killed): a live writer's file must be left alone.
    Returns True if flags were set and have been cleared.
    """
    sb = _superblock(path)
    if sb is None or not sb["checksum_ok"] or sb["flags"] == 0:
        return False
    n = 12 + 4 * 8
    with open(path, "r+b") as fh:
        head = bytearray(fh.read(n + 4))
        head[11] = 0
        struct.pack_into("<I", head, n, _lookup3(bytes(head[:n])))
        fh.seek(0)
        fh.write(head)
    return True


def set_end_of_file(path, eof: int) -> None:
    """Rewrite the superblock's end-of-file address (and its checksum): for a writer that ran out of
    room after HDF5 had reserved space it could never write (labpgt/runfile/storage.py)."""
    sb = _superblock(path)
    if sb is None or not sb["checksum_ok"]:
        raise ValueError(f"{path}: no version 2/3 superblock with a valid checksum at offset 0")
    n = 12 + 4 * 8
    with open(path, "r+b") as fh:
        head = bytearray(fh.read(n + 4))
        struct.pack_into("<Q", head, 12 + 2 * 8, int(eof))
        struct.pack_into("<I", head, n, _lookup3(bytes(head[:n])))
        fh.seek(0)
        fh.write(head)
