//! A Merkle tree over the trail, hashed as RFC 6962 / RFC 9162 (Certificate
//! Transparency) hash it:
//!
//! - leaf = SHA-256(0x00 ‖ the record's line as stored, without its `\n`);
//! - node = SHA-256(0x01 ‖ left ‖ right);
//! - the tree over `n` leaves splits at `k`, the largest power of two below
//!   `n`: MTH(D[0:n]) = node(MTH(D[0:k]), MTH(D[k:n])); the empty tree's
//!   root is SHA-256 of nothing.
//!
//! Leaf `i` is record `seq = i + 1`. [`Tree`] keeps every complete aligned
//! subtree (level `j` holds the roots of leaves `[i·2ʲ, (i+1)·2ʲ)`), about two
//! hashes per leaf, so roots at any earlier size and proofs cost O(log² n)
//! hashes. The verifiers ([`verify_inclusion`], [`verify_consistency`]) are
//! RFC 9162 §2.1.3.2 and §2.1.4.2, written from the RFC, not from the prover.

use aws_lc_rs::digest;

/// A SHA-256 value.
pub type Hash = [u8; 32];

/// Why a proof cannot be made or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf {index} is not in a tree of {size} records")]
    LeafOutOfRange { index: u64, size: u64 },
    #[error("tree size {size} is larger than the trail ({have} records)")]
    SizeOutOfRange { size: u64, have: u64 },
    #[error("a consistency proof needs 0 < from <= to (from {from}, to {to})")]
    BadRange { from: u64, to: u64 },
    #[error("the proof does not verify")]
    Mismatch,
}

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The hash of one leaf: SHA-256(0x00 ‖ line).
pub fn leaf_hash(line: &[u8]) -> Hash {
    sha256(&[&[0u8], line])
}

/// The hash of an interior node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[1u8], left, right])
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// An append-only Merkle tree over leaf hashes.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// `levels[j][i]` = root of the complete subtree over leaves
    /// `[i·2ʲ, (i+1)·2ʲ)`; `levels[0]` are the leaves.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree {
            levels: vec![Vec::new()],
        }
    }

    /// Leaves in the tree.
    pub fn size(&self) -> u64 {
        self.levels[0].len() as u64
    }

    /// Appends the leaf for a stored line.
    pub fn push_line(&mut self, line: &[u8]) {
        self.push(leaf_hash(line));
    }

    /// Appends a leaf hash, completing every subtree it closes.
    pub fn push(&mut self, leaf: Hash) {
        self.levels[0].push(leaf);
        let mut j = 0;
        while self.levels[j].len() % 2 == 0 {
            let n = self.levels[j].len();
            let parent = node_hash(&self.levels[j][n - 2], &self.levels[j][n - 1]);
            if self.levels.len() == j + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[j + 1].push(parent);
            j += 1;
        }
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels[0].get(index as usize).copied()
    }

    /// MTH(D[start:end]) for `start < end <= size`, where `start` is a
    /// multiple of the largest power of two not above `end - start` (true of
    /// every range the RFC's recursions visit).
    fn subtree(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n.is_power_of_two() {
            let j = n.trailing_zeros() as usize;
            return self.levels[j][(start >> j) as usize];
        }
        let k = split(n);
        node_hash(&self.subtree(start, start + k), &self.subtree(start + k, end))
    }

    /// The root over the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_size(size)?;
        Ok(if size == 0 { empty_root() } else { self.subtree(0, size) })
    }

    fn check_size(&self, size: u64) -> Result<(), ProofError> {
        if size > self.size() {
            return Err(ProofError::SizeOutOfRange {
                size,
                have: self.size(),
            });
        }
        Ok(())
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves
    /// (RFC 9162 §2.1.3.1), leaf side first.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size)?;
        if index >= size {
            return Err(ProofError::LeafOutOfRange { index, size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Ok(proof)
    }

    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, start + k, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.path(m - k, start + k, end, out);
            out.push(self.subtree(start, start + k));
        }
    }

    /// The consistency proof from the tree of `from` leaves to the tree of
    /// `to` leaves (RFC 9162 §2.1.4.1).
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(to)?;
        if from == 0 || from > to {
            return Err(ProofError::BadRange { from, to });
        }
        let mut proof = Vec::new();
        self.subproof(from, 0, to, true, &mut proof);
        Ok(proof)
    }

    fn subproof(&self, m: u64, start: u64, end: u64, complete: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !complete {
                out.push(self.subtree(start, end));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, start + k, complete, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.subtree(start, start + k));
        }
    }
}

/// Verifies that `leaf` is leaf `index` of the tree of `size` leaves whose
/// root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::LeafOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::Mismatch);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode == 0 && r == *root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// Verifies that the tree of `to` leaves with root `to_root` extends the tree
/// of `from` leaves with root `from_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    from: u64,
    to: u64,
    from_root: &Hash,
    to_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if from == 0 || from > to {
        return Err(ProofError::BadRange { from, to });
    }
    if from == to {
        return if proof.is_empty() && from_root == to_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    let mut proof = proof.to_vec();
    if from.is_power_of_two() {
        proof.insert(0, *from_root);
    }
    let Some((first, rest)) = proof.split_first() else {
        return Err(ProofError::Mismatch);
    };
    let (mut fnode, mut snode) = (from - 1, to - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return Err(ProofError::Mismatch);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode == 0 && fr == *from_root && sr == *to_root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leaves of the RFC 6962 test vectors used by Certificate
    /// Transparency's reference implementations.
    fn ct_leaves() -> Vec<Vec<u8>> {
        vec![
            vec![],
            vec![0x00],
            vec![0x10],
            vec![0x20, 0x21],
            vec![0x30, 0x31],
            vec![0x40, 0x41, 0x42, 0x43],
            vec![0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            (0x60..=0x6f).collect(),
        ]
    }

    /// The roots at sizes 1 to 8, as published with those vectors.
    const CT_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn tree(n: usize) -> Tree {
        let mut t = Tree::new();
        for i in 0..n {
            t.push_line(format!("record {i}").as_bytes());
        }
        t
    }

    /// MTH straight from the RFC's definition, over leaf hashes.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    #[test]
    fn roots_match_the_published_vectors() {
        let mut t = Tree::new();
        assert_eq!(
            hex::encode(t.root(0).unwrap()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for (i, leaf) in ct_leaves().iter().enumerate() {
            t.push_line(leaf);
            assert_eq!(
                hex::encode(t.root(i as u64 + 1).unwrap()),
                CT_ROOTS[i],
                "size {}",
                i + 1
            );
        }
        // Earlier sizes stay answerable after growth.
        for (i, want) in CT_ROOTS.iter().enumerate() {
            assert_eq!(hex::encode(t.root(i as u64 + 1).unwrap()), *want);
        }
    }

    #[test]
    fn published_inclusion_and_consistency_proofs() {
        let mut t = Tree::new();
        for leaf in ct_leaves() {
            t.push_line(&leaf);
        }
        let hexes = |p: Vec<Hash>| p.into_iter().map(hex::encode).collect::<Vec<_>>();
        // Leaf 5 of 8, and the consistency proof 6 → 8, from the same vectors.
        assert_eq!(
            hexes(t.inclusion_proof(5, 8).unwrap()),
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
        assert_eq!(
            hexes(t.consistency_proof(6, 8).unwrap()),
            [
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
        assert_eq!(
            hexes(t.consistency_proof(1, 8).unwrap()),
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]
        );
    }

    #[test]
    fn every_root_proof_and_consistency_verifies_up_to_70_leaves() {
        let t = tree(70);
        let leaves: Vec<Hash> = (0..70).map(|i| t.leaf(i).unwrap()).collect();
        for size in 1..=70u64 {
            let root = t.root(size).unwrap();
            assert_eq!(root, reference_root(&leaves[..size as usize]), "size {size}");
            for index in 0..size {
                let proof = t.inclusion_proof(index, size).unwrap();
                verify_inclusion(index, size, &leaves[index as usize], &proof, &root).unwrap();
                // The wrong leaf, index or root does not verify.
                let other = leaf_hash(b"not a record");
                assert_eq!(
                    verify_inclusion(index, size, &other, &proof, &root),
                    Err(ProofError::Mismatch)
                );
                if size > 1 {
                    let wrong = (index + 1) % size;
                    assert!(verify_inclusion(wrong, size, &leaves[index as usize], &proof, &root).is_err());
                }
            }
            for from in 1..=size {
                let proof = t.consistency_proof(from, size).unwrap();
                let from_root = t.root(from).unwrap();
                verify_consistency(from, size, &from_root, &root, &proof).unwrap();
                if from < size {
                    let forged = leaf_hash(b"forged");
                    assert_eq!(
                        verify_consistency(from, size, &forged, &root, &proof),
                        Err(ProofError::Mismatch),
                        "{from}->{size}"
                    );
                }
            }
        }
    }

    #[test]
    fn out_of_range_requests_are_errors() {
        let t = tree(5);
        assert_eq!(t.root(6), Err(ProofError::SizeOutOfRange { size: 6, have: 5 }));
        assert_eq!(
            t.inclusion_proof(5, 5),
            Err(ProofError::LeafOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(t.consistency_proof(0, 3), Err(ProofError::BadRange { from: 0, to: 3 }));
        assert_eq!(t.consistency_proof(4, 3), Err(ProofError::BadRange { from: 4, to: 3 }));
    }
}
