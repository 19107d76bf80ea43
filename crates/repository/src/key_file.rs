//! Key files (`keys/<id>`): the master keys wrapped with a key derived from a password.
//!
//! A repository may hold several key files (one per password); any of them opens it.
//! The wrapping key is Argon2id(password, salt); its parameters are stored in the file so
//! they can be raised later without breaking old files.

use serde::{Deserialize, Serialize};

use crate::crypto::{Crypto, KEY_BYTES, MasterKeys, fill_random};

/// Associated data of the wrapped keys.
const WRAPPED_KEYS_CONTEXT: &[u8] = b"lifeboat-key-file-v1";
/// Argon2id memory cost for new key files, in KiB (64 MiB).
pub const DEFAULT_MEMORY_KIB: u32 = 64 * 1024;
/// Argon2id passes for new key files.
pub const DEFAULT_ITERATIONS: u32 = 3;
/// Argon2id lanes for new key files: with 64 MiB and 3 passes, the second recommended
/// option of RFC 9106. The lanes are filled on all cores at once, so opening a repository
/// costs the same memory and work but less waiting.
pub const DEFAULT_PARALLELISM: u32 = 4;
/// Upper bounds accepted when reading a key file, so a hostile file cannot make Lifeboat
/// allocate unbounded memory or spin forever.
const MAXIMUM_MEMORY_KIB: u32 = 4 * 1024 * 1024;
const MAXIMUM_ITERATIONS: u32 = 100;

/// The JSON content of a key file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyFile {
    /// Always `argon2id`.
    pub kdf: String,
    /// Argon2id memory cost in KiB.
    pub memory_kib: u32,
    /// Argon2id time cost.
    pub iterations: u32,
    /// Argon2id lanes.
    pub parallelism: u32,
    /// Hex salt, 32 bytes.
    pub salt: String,
    /// Hex of the sealed (data key ‖ id key).
    pub wrapped_keys: String,
    /// When the key file was made (RFC 3339).
    pub created: String,
}

impl KeyFile {
    /// Wraps `keys` under `password` with the default cost.
    pub fn wrap(keys: &MasterKeys, password: &[u8], created: String) -> KeyFile {
        let mut salt = [0u8; 32];
        fill_random(&mut salt);
        let wrapping = derive(
            password,
            &salt,
            DEFAULT_MEMORY_KIB,
            DEFAULT_ITERATIONS,
            DEFAULT_PARALLELISM,
        )
        .expect("default Argon2id parameters are valid");
        let mut plaintext = Vec::with_capacity(2 * KEY_BYTES);
        plaintext.extend_from_slice(&keys.data_key);
        plaintext.extend_from_slice(&keys.id_key);
        let sealed = wrapping.seal(WRAPPED_KEYS_CONTEXT, &plaintext);
        KeyFile {
            kdf: "argon2id".to_string(),
            memory_kib: DEFAULT_MEMORY_KIB,
            iterations: DEFAULT_ITERATIONS,
            parallelism: DEFAULT_PARALLELISM,
            salt: hex::encode(salt),
            wrapped_keys: hex::encode(sealed),
            created,
        }
    }

    /// Unwraps the master keys; `Ok(None)` when the password does not open this file,
    /// `Err` when the file itself is malformed.
    pub fn unwrap_keys(&self, password: &[u8]) -> Result<Option<MasterKeys>, String> {
        if self.kdf != "argon2id" {
            return Err(format!("unknown key derivation '{}'", self.kdf));
        }
        if self.memory_kib > MAXIMUM_MEMORY_KIB || self.iterations > MAXIMUM_ITERATIONS {
            return Err("key derivation cost out of bounds".to_string());
        }
        let salt = hex::decode(&self.salt).map_err(|_| "salt is not hex".to_string())?;
        let sealed =
            hex::decode(&self.wrapped_keys).map_err(|_| "wrapped keys are not hex".to_string())?;
        let wrapping = derive(
            password,
            &salt,
            self.memory_kib,
            self.iterations,
            self.parallelism,
        )?;
        let Ok(plaintext) = wrapping.open(WRAPPED_KEYS_CONTEXT, &sealed) else {
            return Ok(None);
        };
        if plaintext.len() != 2 * KEY_BYTES {
            return Err("wrapped keys have the wrong length".to_string());
        }
        let mut keys = MasterKeys {
            data_key: [0u8; KEY_BYTES],
            id_key: [0u8; KEY_BYTES],
        };
        keys.data_key.copy_from_slice(&plaintext[..KEY_BYTES]);
        keys.id_key.copy_from_slice(&plaintext[KEY_BYTES..]);
        Ok(Some(keys))
    }
}

fn derive(
    password: &[u8],
    salt: &[u8],
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
) -> Result<Crypto, String> {
    let params = argon2::Params::new(memory_kib, iterations, parallelism, Some(KEY_BYTES))
        .map_err(|e| format!("invalid key derivation parameters: {e}"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut wrapping_key = [0u8; KEY_BYTES];
    argon
        .hash_password_into(password, salt, &mut wrapping_key)
        .map_err(|e| format!("key derivation failed: {e}"))?;
    Ok(Crypto::encrypted(&MasterKeys {
        data_key: wrapping_key,
        id_key: [0u8; KEY_BYTES],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_right_password_unwraps_the_keys_and_a_wrong_one_does_not() {
        let keys = MasterKeys::generate();
        let file = KeyFile::wrap(&keys, b"correct horse", "now".to_string());
        let unwrapped = file.unwrap_keys(b"correct horse").unwrap().unwrap();
        assert_eq!(unwrapped.data_key, keys.data_key);
        assert_eq!(unwrapped.id_key, keys.id_key);
        assert!(file.unwrap_keys(b"wrong horse").unwrap().is_none());
    }

    #[test]
    fn hostile_costs_are_refused_before_deriving() {
        let keys = MasterKeys::generate();
        let mut file = KeyFile::wrap(&keys, b"pw", "now".to_string());
        file.memory_kib = u32::MAX;
        assert!(file.unwrap_keys(b"pw").is_err());
    }
}
