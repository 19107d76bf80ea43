//! Encryption, authentication and chunk ids.
//!
//! # Design
//!
//! Every object body is *sealed* with associated data that names what it is (a chunk id,
//! `lifeboat-manifest`, …), so an object moved to another name or kind fails to open.
//!
//! * Encrypted repositories use AES-256-GCM: `nonce (12) ‖ ciphertext ‖ tag (16)`, with a
//!   fresh random 96-bit nonce per object. Random nonces stay safe up to about 2³² objects
//!   per key (256 TiB of 64 KiB chunks); the key file format allows rotating keys long
//!   before that matters.
//! * Unencrypted repositories (`--encryption none`) still authenticate against accidental
//!   damage: `payload ‖ BLAKE3(associated data ‖ payload)[..16]`.
//!
//! Chunk ids are BLAKE3 hashes of the plaintext chunk, keyed with a secret id key in
//! encrypted repositories so ids reveal nothing about content.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// Bytes of an AES-GCM nonce.
pub const NONCE_BYTES: usize = 12;
/// Bytes of an authentication tag (GCM tag, or truncated BLAKE3 checksum).
pub const TAG_BYTES: usize = 16;
/// Bytes of each master key.
pub const KEY_BYTES: usize = 32;

/// Fills `buffer` with random bytes from the operating system.
pub fn fill_random(buffer: &mut [u8]) {
    // The operating system's generator failing is not a condition Lifeboat can work
    // around: without randomness no nonce is safe. It does not happen on Linux ≥ 3.17.
    getrandom::fill(buffer).expect("the operating system's random generator failed");
}

/// The id of a chunk: a (keyed) BLAKE3 hash of its plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id that stands for an all-zero chunk, which is never stored.
    pub const ZERO: ChunkId = ChunkId([0u8; 32]);

    /// True for the all-zero chunk sentinel.
    pub fn is_zero(&self) -> bool {
        *self == ChunkId::ZERO
    }

    /// Full lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<ChunkId> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(ChunkId(bytes))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

/// The secrets of an encrypted repository, unwrapped from a key file.
#[derive(Clone)]
pub struct MasterKeys {
    /// Encrypts every object body.
    pub data_key: [u8; KEY_BYTES],
    /// Keys the chunk id hash.
    pub id_key: [u8; KEY_BYTES],
}

impl MasterKeys {
    /// Fresh random keys for a new repository.
    pub fn generate() -> MasterKeys {
        let mut data_key = [0u8; KEY_BYTES];
        let mut id_key = [0u8; KEY_BYTES];
        fill_random(&mut data_key);
        fill_random(&mut id_key);
        MasterKeys { data_key, id_key }
    }
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKeys(..)")
    }
}

/// A sealed object failed to open: it was damaged, or sealed with another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed (the data is damaged or was written with another key)")]
pub struct AuthenticationFailed;

/// Seals and opens object bodies, and computes chunk ids, for one repository.
#[derive(Clone)]
pub struct Crypto {
    /// `None` for repositories created with `--encryption none`. AWS-LC's AES-GCM: about
    /// five times the throughput of a portable implementation on the same core.
    cipher: Option<Arc<LessSafeKey>>,
    /// `None` with `cipher`: chunk ids are then plain BLAKE3.
    id_key: Option<[u8; KEY_BYTES]>,
}

impl fmt::Debug for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crypto")
            .field("encrypted", &self.is_encrypted())
            .finish()
    }
}

impl Crypto {
    /// No encryption: checksums only.
    pub fn unencrypted() -> Crypto {
        Crypto {
            cipher: None,
            id_key: None,
        }
    }

    /// AES-256-GCM with keyed chunk ids.
    pub fn encrypted(keys: &MasterKeys) -> Crypto {
        let key =
            UnboundKey::new(&AES_256_GCM, &keys.data_key).expect("a 32-byte key is an AES-256 key");
        Crypto {
            cipher: Some(Arc::new(LessSafeKey::new(key))),
            id_key: Some(keys.id_key),
        }
    }

    /// True when object bodies are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// Bytes reserved before the payload in a sealed object (the nonce).
    pub fn prefix_bytes(&self) -> usize {
        if self.cipher.is_some() {
            NONCE_BYTES
        } else {
            0
        }
    }

    /// Total bytes a sealed object adds to its payload.
    pub fn overhead_bytes(&self) -> usize {
        self.prefix_bytes() + TAG_BYTES
    }

    /// The id of a chunk's plaintext.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        match &self.id_key {
            Some(key) => ChunkId(*blake3::keyed_hash(key, data).as_bytes()),
            None => ChunkId(*blake3::hash(data).as_bytes()),
        }
    }

    /// A keyed hash for naming things (lock names, disk index names) without revealing them.
    pub fn name_hash(&self, domain: &str, data: &[u8]) -> [u8; 32] {
        let mut hasher = self.name_hasher(domain);
        hasher.update(data);
        *hasher.finalize().as_bytes()
    }

    /// The hasher [`Crypto::name_hash`] uses, for data that arrives in pieces.
    pub fn name_hasher(&self, domain: &str) -> blake3::Hasher {
        let mut hasher = match &self.id_key {
            Some(key) => blake3::Hasher::new_keyed(key),
            None => blake3::Hasher::new(),
        };
        hasher.update(domain.as_bytes());
        hasher.update(&[0]);
        hasher
    }

    /// Seals `buffer` in place. `buffer` must hold [`Crypto::prefix_bytes`] bytes of room
    /// followed by the plaintext; afterwards it holds the sealed object.
    pub fn seal_in_place(&self, associated_data: &[u8], buffer: &mut Vec<u8>) {
        assert!(
            buffer.len() >= self.prefix_bytes(),
            "sealed buffer lacks room for its prefix"
        );
        buffer.resize(buffer.len() + TAG_BYTES, 0);
        self.seal_slice(associated_data, buffer);
    }

    /// Seals the plaintext made of `parts` into `out`, which must be exactly
    /// [`Crypto::overhead_bytes`] longer than the parts together (memory of the caller's
    /// choosing: aligned for a direct write, say).
    pub fn seal_parts_into(&self, associated_data: &[u8], parts: &[&[u8]], out: &mut [u8]) {
        let mut at = self.prefix_bytes();
        for part in parts {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        assert_eq!(at + TAG_BYTES, out.len(), "sealed buffer of the wrong size");
        self.seal_slice(associated_data, out);
    }

    /// Seals `buffer` where it lies: [`Crypto::prefix_bytes`] bytes of room, the plaintext,
    /// then [`TAG_BYTES`] of room.
    fn seal_slice(&self, associated_data: &[u8], buffer: &mut [u8]) {
        let tag_start = buffer.len() - TAG_BYTES;
        match &self.cipher {
            Some(cipher) => {
                let mut nonce_bytes = [0u8; NONCE_BYTES];
                fill_random(&mut nonce_bytes);
                buffer[..NONCE_BYTES].copy_from_slice(&nonce_bytes);
                let tag = cipher
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce_bytes),
                        Aad::from(associated_data),
                        &mut buffer[NONCE_BYTES..tag_start],
                    )
                    // Only fails for plaintexts over 64 GiB; objects are bounded far below.
                    .expect("object larger than AES-GCM allows");
                buffer[tag_start..].copy_from_slice(tag.as_ref());
            }
            None => {
                let checksum = plain_checksum(associated_data, &buffer[..tag_start]);
                buffer[tag_start..].copy_from_slice(&checksum);
            }
        }
    }

    /// Seals a plaintext into a new buffer.
    pub fn seal(&self, associated_data: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut buffer = vec![0u8; plaintext.len() + self.overhead_bytes()];
        self.seal_parts_into(associated_data, &[plaintext], &mut buffer);
        buffer
    }

    /// Opens a sealed object where it lies; returns the plaintext, a part of `sealed`.
    pub fn open_slice<'a>(
        &self,
        associated_data: &[u8],
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], AuthenticationFailed> {
        if sealed.len() < self.overhead_bytes() {
            return Err(AuthenticationFailed);
        }
        let tag_start = sealed.len() - TAG_BYTES;
        match &self.cipher {
            Some(cipher) => {
                let (nonce, rest) = sealed.split_at_mut(NONCE_BYTES);
                let (ciphertext, tag) = rest.split_at_mut(tag_start - NONCE_BYTES);
                let nonce =
                    Nonce::try_assume_unique_for_key(nonce).map_err(|_| AuthenticationFailed)?;
                cipher
                    .open_in_place_separate_tag(nonce, Aad::from(associated_data), tag, ciphertext)
                    .map_err(|_| AuthenticationFailed)?;
                Ok(ciphertext)
            }
            None => {
                let (payload, checksum) = sealed.split_at_mut(tag_start);
                if plain_checksum(associated_data, payload) != *checksum {
                    return Err(AuthenticationFailed);
                }
                Ok(payload)
            }
        }
    }

    /// Opens a sealed object, consuming its buffer; returns the plaintext.
    pub fn open_in_place(
        &self,
        associated_data: &[u8],
        mut sealed: Vec<u8>,
    ) -> Result<Vec<u8>, AuthenticationFailed> {
        let length = self.open_slice(associated_data, &mut sealed)?.len();
        let start = self.prefix_bytes();
        sealed.truncate(start + length);
        sealed.drain(..start);
        Ok(sealed)
    }

    /// Opens a sealed object from a borrowed buffer.
    pub fn open(
        &self,
        associated_data: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, AuthenticationFailed> {
        self.open_in_place(associated_data, sealed.to_vec())
    }
}

fn plain_checksum(associated_data: &[u8], payload: &[u8]) -> [u8; TAG_BYTES] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(associated_data.len() as u64).to_le_bytes());
    hasher.update(associated_data);
    hasher.update(payload);
    let mut checksum = [0u8; TAG_BYTES];
    checksum.copy_from_slice(&hasher.finalize().as_bytes()[..TAG_BYTES]);
    checksum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> [Crypto; 2] {
        [
            Crypto::unencrypted(),
            Crypto::encrypted(&MasterKeys::generate()),
        ]
    }

    #[test]
    fn sealed_objects_open_to_their_plaintext() {
        for crypto in both() {
            let sealed = crypto.seal(b"kind", b"hello world");
            assert_eq!(sealed.len(), 11 + crypto.overhead_bytes());
            assert_eq!(crypto.open(b"kind", &sealed).unwrap(), b"hello world");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_fails_to_open() {
        for crypto in both() {
            let sealed = crypto.seal(b"kind", b"some payload bytes");
            for index in 0..sealed.len() {
                let mut damaged = sealed.clone();
                damaged[index] ^= 0x10;
                assert_eq!(crypto.open(b"kind", &damaged), Err(AuthenticationFailed));
            }
        }
    }

    #[test]
    fn parts_sealed_into_a_callers_buffer_open_to_their_concatenation() {
        for crypto in both() {
            let mut out = vec![0u8; 11 + crypto.overhead_bytes()];
            crypto.seal_parts_into(b"kind", &[b"hello", b" ", b"world"], &mut out);
            assert_eq!(crypto.open(b"kind", &out).unwrap(), b"hello world");
        }
    }

    #[test]
    fn an_object_opened_as_another_kind_fails() {
        for crypto in both() {
            let sealed = crypto.seal(b"lifeboat-manifest", b"{}");
            assert!(crypto.open(b"lifeboat-disk-index", &sealed).is_err());
        }
    }

    #[test]
    fn encrypted_objects_do_not_contain_their_plaintext() {
        let crypto = Crypto::encrypted(&MasterKeys::generate());
        let plaintext = b"a very recognisable plaintext string";
        let sealed = crypto.seal(b"kind", plaintext);
        assert!(!sealed.windows(plaintext.len()).any(|w| w == plaintext));
    }

    #[test]
    fn objects_sealed_by_earlier_versions_open_and_new_ones_open_there() {
        // AES-256-GCM as every version of Lifeboat wrote it (key 0x11…, nonce 00 01 … 0b,
        // sealed by the portable implementation used before AWS-LC's).
        let keys = MasterKeys {
            data_key: [0x11; KEY_BYTES],
            id_key: [0x22; KEY_BYTES],
        };
        let crypto = Crypto::encrypted(&keys);
        let plaintext = b"a recovery point sealed by Lifeboat 0.1";
        let sealed = hex::decode(
            "000102030405060708090a0b72c3c47618cc439166c1f3efabc69952e9d265097910360fcb\
             999f339426064c18d33d947c2b476065d515d8a64be1baee7d1aeb39fa0c",
        )
        .unwrap();
        assert_eq!(
            crypto.open(b"lifeboat-manifest", &sealed).unwrap(),
            plaintext
        );
        assert!(crypto.open(b"lifeboat-disk-index", &sealed).is_err());
        // What this version seals with that nonce is those same bytes.
        let mut buffer = vec![0u8; NONCE_BYTES];
        buffer.extend_from_slice(plaintext);
        let nonce: [u8; NONCE_BYTES] = core::array::from_fn(|i| i as u8);
        let tag = crypto
            .cipher
            .as_ref()
            .unwrap()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(b"lifeboat-manifest"),
                &mut buffer[NONCE_BYTES..],
            )
            .unwrap();
        buffer[..NONCE_BYTES].copy_from_slice(&nonce);
        buffer.extend_from_slice(tag.as_ref());
        assert_eq!(buffer, sealed);
    }

    #[test]
    fn keyed_chunk_ids_differ_between_repositories() {
        let first = Crypto::encrypted(&MasterKeys::generate());
        let second = Crypto::encrypted(&MasterKeys::generate());
        assert_ne!(first.chunk_id(b"data"), second.chunk_id(b"data"));
        assert_eq!(first.chunk_id(b"data"), first.chunk_id(b"data"));
        assert_eq!(
            Crypto::unencrypted().chunk_id(b"data").0,
            *blake3::hash(b"data").as_bytes()
        );
    }
}
