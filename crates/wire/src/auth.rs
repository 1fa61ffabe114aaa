//! Peer authentication for cluster connections: a challenge-response over
//! a shared cluster secret, sans-IO (the caller brings the random
//! challenges).
//!
//! Each side sends a fresh 32-byte challenge in its [`Session`](crate::Session)
//! and answers the other's with a [`Proof`]: HMAC-SHA256 under the secret of
//! a domain tag, the cluster id, the prover's and the verifier's node ids,
//! the verifier's challenge and the prover's own. Binding both ids and both
//! challenges means a proof cannot be replayed on another connection, nor
//! reflected back at its maker, nor used to claim another node's id.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{ClusterId, NodeId, WireError};

/// Bytes in a challenge and in a proof.
pub const CHALLENGE_LEN: usize = 32;

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// The longest secret accepted, in bytes.
pub const MAX_SECRET_LEN: usize = 4096;

const DOMAIN: &[u8] = b"multinode cluster auth v1";

/// A cluster secret: every member holds the same one. Its `Debug` output
/// hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret of [`MIN_SECRET_LEN`] to [`MAX_SECRET_LEN`] bytes. A secret
    /// read from a file should be trimmed of its final newline first
    /// ([`Secret::from_file_contents`] does).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, WireError> {
        let bytes = bytes.into();
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&bytes.len()) {
            return Err(WireError::Auth {
                reason: format!(
                    "a cluster secret is {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes, not {}",
                    bytes.len()
                ),
            });
        }
        Ok(Self(bytes))
    }

    /// A secret from a file's contents, without trailing line ends.
    pub fn from_file_contents(contents: &[u8]) -> Result<Self, WireError> {
        let end = contents
            .iter()
            .rposition(|b| !matches!(b, b'\n' | b'\r'))
            .map_or(0, |i| i + 1);
        Self::new(&contents[..end])
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        Hmac::<Sha256>::new_from_slice(&self.0).expect("hmac takes any key length")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// The frame that answers a peer's challenge, sent right after reading the
/// peer's `Session` when a cluster secret is in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// HMAC-SHA256 of the proof input (see the module docs).
    pub mac: [u8; CHALLENGE_LEN],
}

/// Who proves what to whom on one connection.
#[derive(Clone, Copy, Debug)]
pub struct Exchange {
    /// The cluster both sides belong to.
    pub cluster: ClusterId,
    /// The side that makes the proof.
    pub prover: NodeId,
    /// The side that checks it.
    pub verifier: NodeId,
    /// The challenge the verifier sent.
    pub verifier_challenge: [u8; CHALLENGE_LEN],
    /// The challenge the prover sent.
    pub prover_challenge: [u8; CHALLENGE_LEN],
}

impl Exchange {
    fn tag(&self, secret: &Secret) -> Hmac<Sha256> {
        let mut mac = secret.mac();
        mac.update(DOMAIN);
        mac.update(&self.cluster.0.to_be_bytes());
        mac.update(&self.prover.0.to_be_bytes());
        mac.update(&self.verifier.0.to_be_bytes());
        mac.update(&self.verifier_challenge);
        mac.update(&self.prover_challenge);
        mac
    }

    /// The prover's answer.
    pub fn prove(&self, secret: &Secret) -> Proof {
        Proof {
            mac: self.tag(secret).finalize().into_bytes().into(),
        }
    }

    /// Checks the prover's answer, in constant time.
    pub fn verify(&self, secret: &Secret, proof: &Proof) -> Result<(), WireError> {
        self.tag(secret)
            .verify_slice(&proof.mac)
            .map_err(|_| WireError::Auth {
                reason: format!(
                    "node {} did not prove the cluster secret (wrong secret?)",
                    self.prover
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange() -> Exchange {
        Exchange {
            cluster: ClusterId(7),
            prover: NodeId(1),
            verifier: NodeId(2),
            verifier_challenge: [0xaa; CHALLENGE_LEN],
            prover_challenge: [0x55; CHALLENGE_LEN],
        }
    }

    #[test]
    fn a_proof_verifies_only_for_its_secret_ids_cluster_and_challenges() {
        let secret = Secret::new(*b"0123456789abcdef").unwrap();
        let e = exchange();
        let proof = e.prove(&secret);
        e.verify(&secret, &proof).unwrap();
        let other = Secret::new(*b"0123456789abcdeX").unwrap();
        assert!(e.verify(&other, &proof).is_err(), "another secret");
        let variants = [
            Exchange {
                cluster: ClusterId(8),
                ..e
            },
            Exchange {
                prover: NodeId(3),
                ..e
            },
            // Reflected: the verifier's own proof is no proof of the prover.
            Exchange {
                cluster: e.cluster,
                prover: e.verifier,
                verifier: e.prover,
                verifier_challenge: e.prover_challenge,
                prover_challenge: e.verifier_challenge,
            },
            Exchange {
                verifier_challenge: [0xab; CHALLENGE_LEN],
                ..e
            },
        ];
        for v in variants {
            assert!(v.verify(&secret, &proof).is_err(), "{v:?}");
        }
    }

    #[test]
    fn secrets_are_bounded_and_hidden() {
        assert!(Secret::new(vec![1; MIN_SECRET_LEN - 1]).is_err());
        assert!(Secret::new(vec![1; MAX_SECRET_LEN + 1]).is_err());
        let s = Secret::from_file_contents(b"correct horse battery staple\n").unwrap();
        assert_eq!(s, Secret::new(*b"correct horse battery staple").unwrap());
        assert_eq!(format!("{s:?}"), "Secret(28 bytes)");
        assert!(Secret::from_file_contents(b"\n\n").is_err());
    }
}
