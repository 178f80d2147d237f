//! The Merkle tree of RFC 6962 (Certificate Transparency, §2.1) over SHA-256: how one
//! signature covers every recipient's copy of a sender key while each recipient receives
//! only its own copy and a path of `log2(n)` hashes.
//!
//! - a leaf's hash is `SHA-256(0x00 || leaf)`, an inner node's `SHA-256(0x01 || left ||
//!   right)`;
//! - the tree of `n > 1` leaves splits them at `k`, the largest power of two below `n`:
//!   the first `k` leaves on the left, the rest on the right;
//! - the audit path of leaf `m` lists the sibling hashes from the leaf up to the root.

use sha2::{Digest, Sha256};

/// A SHA-256 hash in the tree.
pub type Hash = [u8; 32];

/// The hash of one leaf: `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(leaf);
    hasher.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The largest power of two strictly below `n` (for `n > 1`).
fn split(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The root over the leaves whose hashes are `leaves`; `None` for no leaves.
pub fn root(leaves: &[Hash]) -> Option<Hash> {
    match leaves {
        [] => None,
        [only] => Some(*only),
        _ => {
            let (left, right) = leaves.split_at(split(leaves.len()));
            Some(node_hash(&root(left)?, &root(right)?))
        }
    }
}

/// The audit path of leaf `index` among `leaves`: sibling hashes, from the leaf up.
pub fn audit_path(leaves: &[Hash], index: usize) -> Vec<Hash> {
    let mut path = Vec::new();
    collect_path(leaves, index, &mut path);
    path
}

fn collect_path(leaves: &[Hash], index: usize, path: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split(leaves.len());
    let (left, right) = leaves.split_at(k);
    if index < k {
        collect_path(left, index, path);
        path.extend(root(right));
    } else {
        collect_path(right, index - k, path);
        path.extend(root(left));
    }
}

/// The root that leaf `index` of `size` leaves, with hash `leaf` and audit path `path`,
/// leads to; `None` if the path has the wrong length for that place in that tree.
pub fn root_from_path(leaf: Hash, index: usize, size: usize, path: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    // Walks down from the root to the leaf to learn on which side each sibling is, then
    // hashes back up.
    let mut sides = Vec::new();
    let (mut offset, mut width) = (index, size);
    while width > 1 {
        let k = split(width);
        if offset < k {
            sides.push(false);
            width = k;
        } else {
            sides.push(true);
            offset -= k;
            width -= k;
        }
    }
    if sides.len() != path.len() {
        return None;
    }
    let mut hash = leaf;
    for (sibling, leaf_on_right) in path.iter().zip(sides.iter().rev()) {
        hash = if *leaf_on_right {
            node_hash(sibling, &hash)
        } else {
            node_hash(&hash, sibling)
        };
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&[i as u8])).collect()
    }

    /// RFC 6962's test vectors (certificate-transparency-go, merkle tree tests): the
    /// roots of the first leaves of its eight-leaf list.
    #[test]
    fn roots_are_those_of_certificate_transparency() {
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let hashes: Vec<Hash> = inputs.iter().map(|leaf| leaf_hash(leaf)).collect();
        let expected = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        for (n, root_hex) in expected.iter().enumerate() {
            assert_eq!(
                hex(&root(&hashes[..=n]).unwrap()),
                *root_hex,
                "{} leaves",
                n + 1
            );
        }
        assert_eq!(root(&[]), None);
    }

    #[test]
    fn every_leaf_s_path_leads_to_the_root_and_nothing_else_does() {
        for size in 1..=37 {
            let leaves = leaves(size);
            let expected = root(&leaves).unwrap();
            for index in 0..size {
                let path = audit_path(&leaves, index);
                assert!(path.len() <= 6);
                assert_eq!(
                    root_from_path(leaves[index], index, size, &path),
                    Some(expected),
                    "leaf {index} of {size}"
                );
                // Another leaf, or this one at another place, does not lead there. (The size is
                // not committed to by a path: the signed bytes carry it.)
                let other = leaf_hash(b"other");
                assert_ne!(root_from_path(other, index, size, &path), Some(expected));
                if size > 1 {
                    let moved = (index + 1) % size;
                    assert_ne!(
                        root_from_path(leaves[index], moved, size, &path),
                        Some(expected),
                        "leaf {index} of {size} claimed at {moved}"
                    );
                }
            }
            assert_eq!(root_from_path(leaves[0], size, size, &[]), None);
        }
    }
}
