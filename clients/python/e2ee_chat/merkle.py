"""The Merkle tree over a distribution's copies: RFC 6962 (Certificate Transparency) over
SHA-256, as docs/PROTOCOL.md ("The Merkle tree") gives it: roots, audit paths, and the
root rebuilt from a leaf and its path."""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf_hash(leaf: bytes) -> bytes:
    """``SHA-256(0x00 || leaf)``."""
    return _sha(b"\x00" + bytes(leaf))


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return _sha(b"\x01" + left + right)


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def root(hashes: Sequence[bytes]) -> bytes:
    """The root of the tree whose leaf hashes are ``hashes`` (at least one)."""
    if not hashes:
        raise ValueError("a tree has at least one leaf")
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return node_hash(root(hashes[:k]), root(hashes[k:]))


def audit_path(hashes: Sequence[bytes], m: int) -> list[bytes]:
    """The sibling hashes of leaf ``m``, from the leaf up to the root."""
    if len(hashes) <= 1:
        return []
    k = _split(len(hashes))
    if m < k:
        return audit_path(hashes[:k], m) + [root(hashes[k:])]
    return audit_path(hashes[k:], m - k) + [root(hashes[:k])]


def root_from_path(leaf: bytes, index: int, count: int, path: Sequence[bytes]) -> Optional[bytes]:
    """The root a leaf hash, its place and its path lead to; None (refuse the copy) for
    an index out of range, a path of the wrong length or an element not 32 bytes."""
    if index >= count or count < 1 or any(len(p) != 32 for p in path):
        return None
    sides = []  # from the root down: is our subtree the right one?
    while count > 1:
        k = _split(count)
        if index < k:
            sides.append(False)
            count = k
        else:
            sides.append(True)
            index -= k
            count -= k
    if len(sides) != len(path):
        return None
    h = leaf
    for sibling, right in zip(path, reversed(sides)):
        h = node_hash(bytes(sibling), h) if right else node_hash(h, bytes(sibling))
    return h
