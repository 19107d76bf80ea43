//! `lifeboat init`.

use lifeboat_repository::{Encryption, InitOptions, Repository};
use serde_json::json;

use crate::cli::{EncryptionChoice, GlobalOptions, InitArguments};
use crate::output::print_json;
use crate::repository::{password, storage};

pub fn run(global: &GlobalOptions, arguments: &InitArguments) -> anyhow::Result<u8> {
    let encryption = match arguments.encryption {
        EncryptionChoice::Aes256Gcm => Encryption::Aes256Gcm,
        EncryptionChoice::None => Encryption::None,
    };
    let chunk_size_bytes = u32::try_from(arguments.chunk_size)
        .map_err(|_| anyhow::anyhow!("chunk size {} is too large", arguments.chunk_size))?;
    let repository = Repository::init(
        storage(global, crate::repository::Access::Write)?,
        InitOptions {
            encryption,
            password: password(global)?,
            chunk_size_bytes,
        },
    )?;
    let config = repository.config();
    if global.json {
        print_json(&json!({
            "repository": repository.location(),
            "repository_id": config.repository_id,
            "encryption": config.encryption,
            "chunk_size_bytes": config.chunk_size_bytes,
            "format_version": config.format_version,
        }))?;
    } else {
        say!(
            "created repository {} (id {}, {}, chunks of {})",
            repository.location(),
            &config.repository_id[..8],
            match config.encryption {
                Encryption::Aes256Gcm => "encrypted with AES-256-GCM",
                Encryption::None => "NOT encrypted",
            },
            crate::output::bytes(config.chunk_size_bytes as u64)
        );
        if config.encryption == Encryption::Aes256Gcm {
            say!("keep the password safe: without it the repository cannot be read");
        }
    }
    Ok(0)
}
