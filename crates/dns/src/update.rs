//! RFC 2136 dynamic updates, signed with TSIG (RFC 8945), to an existing DNS server: how
//! Lifeboat moves names in a zone it does not serve itself (BIND, Knot, PowerDNS, …).

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine;

use hickory_proto::op::{Message, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{DNSClass, Name, Record, RecordType, TSigner};

use crate::server::{read_frame, write_frame};
use crate::zones::{DnsError, address_data, fqdn};

/// A TSIG key, as `tsig-keygen` writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsigKey {
    pub name: String,
    pub algorithm: String,
    pub secret: Vec<u8>,
}

/// Why an update failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{0}")]
    Name(#[from] DnsError),
    #[error("TSIG key file: {0}")]
    Key(String),
    #[error("DNS server {server}: {detail}")]
    Server { server: SocketAddr, detail: String },
    #[error("DNS server {server} refused the update of {name} ({code}){hint}")]
    Refused {
        server: SocketAddr,
        name: String,
        code: String,
        hint: &'static str,
    },
}

impl TsigKey {
    /// Reads a BIND key statement: `key "NAME" { algorithm hmac-sha256; secret "BASE64"; };`.
    pub fn parse(text: &str) -> Result<TsigKey, UpdateError> {
        let bad = |detail: &str| UpdateError::Key(detail.to_string());
        let after_key = text
            .split_once("key")
            .ok_or_else(|| bad("no 'key \"NAME\" { … };' statement"))?
            .1;
        let name = after_key
            .split('"')
            .nth(1)
            .ok_or_else(|| bad("the key has no quoted name"))?
            .to_string();
        let field = |field: &str| -> Option<String> {
            let rest = text.split_once(field)?.1;
            let value = rest.split(';').next()?.trim().trim_matches('"');
            Some(value.to_string())
        };
        let algorithm = field("algorithm").ok_or_else(|| bad("the key has no algorithm"))?;
        let secret = field("secret").ok_or_else(|| bad("the key has no secret"))?;
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret.trim())
            .map_err(|_| bad("the secret is not base64"))?;
        Ok(TsigKey {
            name,
            algorithm: algorithm.to_ascii_lowercase(),
            secret,
        })
    }

    fn signer(&self) -> Result<TSigner, UpdateError> {
        let algorithm = match self.algorithm.as_str() {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => {
                return Err(UpdateError::Key(format!(
                    "algorithm '{other}' is not supported (use hmac-sha256, hmac-sha384 or hmac-sha512)"
                )));
            }
        };
        let name = Name::from_ascii(&self.name)
            .map_err(|_| UpdateError::Key(format!("'{}' is not a key name", self.name)))?;
        TSigner::new(self.secret.clone(), algorithm, name, 300)
            .map_err(|e| UpdateError::Key(e.to_string()))
    }
}

/// Makes `name` (in `zone`) answer exactly `addresses` on `server`: its A and AAAA records
/// are replaced in one update, signed with `key` when given. No addresses removes them.
pub fn replace_addresses(
    server: SocketAddr,
    zone: &str,
    name: &str,
    addresses: &[IpAddr],
    ttl: u32,
    key: Option<&TsigKey>,
) -> Result<(), UpdateError> {
    let zone = fqdn(zone)?;
    let owner = fqdn(name)?;
    let mut message = Message::query();
    message.metadata.op_code = OpCode::Update;
    message.metadata.recursion_desired = false;
    let mut section = Query::new();
    section
        .set_name(zone)
        .set_query_class(DNSClass::IN)
        .set_query_type(RecordType::SOA);
    message.add_zone(section);
    for kind in [RecordType::A, RecordType::AAAA] {
        let mut delete = Record::update0(owner.clone(), 0, kind).into_record_of_rdata();
        delete.dns_class = DNSClass::ANY;
        message.add_update(delete);
    }
    for &address in addresses {
        message.add_update(Record::from_rdata(
            owner.clone(),
            ttl,
            address_data(address),
        ));
    }
    let failed = |detail: String| UpdateError::Server { server, detail };
    let mut verifier = None;
    if let Some(key) = key {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        verifier = message
            .finalize(&key.signer()?, now)
            .map_err(|e| failed(format!("cannot sign the update: {e}")))?;
    }
    let request = message
        .to_vec()
        .map_err(|e| failed(format!("cannot encode the update: {e}")))?;
    let response = exchange(server, &request).map_err(|e| failed(e.to_string()))?;
    let code = match verifier.as_mut() {
        Some(verifier) => verifier
            .verify(&response)
            .map(|answer| answer.metadata.response_code)
            .or_else(|error| {
                // A refusal may come unsigned (BADKEY, BADSIG): report its code.
                Message::from_vec(&response)
                    .map(|answer| answer.metadata.response_code)
                    .map_err(|_| failed(format!("the answer does not verify: {error}")))
            })?,
        None => {
            Message::from_vec(&response)
                .map_err(|e| failed(format!("the answer does not parse: {e}")))?
                .metadata
                .response_code
        }
    };
    if code == ResponseCode::NoError {
        return Ok(());
    }
    Err(UpdateError::Refused {
        server,
        name: name.to_string(),
        code: code.to_string(),
        hint: match code {
            ResponseCode::NotAuth | ResponseCode::Refused => {
                "; check the TSIG key and the zone's allow-update"
            }
            ResponseCode::NotZone => "; the name is not in that zone",
            _ => "",
        },
    })
}

/// One request and its answer over TCP (length-prefixed).
fn exchange(server: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write_frame(&mut stream, request)?;
    read_frame(&mut stream)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection without answering",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_key_files_are_read() {
        let key = TsigKey::parse(
            "key \"lifeboat-update\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LWtleS1ieXRlcw==\";\n};\n",
        )
        .unwrap();
        assert_eq!(key.name, "lifeboat-update");
        assert_eq!(key.algorithm, "hmac-sha256");
        assert_eq!(key.secret, b"secret-key-bytes");
        assert!(key.signer().is_ok());
        assert!(TsigKey::parse("nothing here").is_err());
        let md5 = TsigKey::parse("key \"k\" { algorithm hmac-md5; secret \"AA==\"; };").unwrap();
        assert!(md5.signer().is_err());
    }
}
