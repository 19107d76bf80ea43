//! The zones a server is authoritative for, and how it answers. No I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// Largest UDP answer when the query has no EDNS (RFC 1035).
const CLASSIC_UDP_BYTES: usize = 512;
/// Largest UDP answer offered with EDNS (the DNS flag day 2020 value).
const EDNS_UDP_BYTES: u16 = 1232;

/// What is wrong with the names given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("'{0}' is not a valid DNS name")]
    BadName(String),
    #[error("'{name}' is in none of the zones served ({zones})")]
    OutsideZones { name: String, zones: String },
}

/// One zone: its apex, its name server and its address records.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Zone {
    apex: Name,
    nameserver: Name,
    records: BTreeMap<Name, Vec<IpAddr>>,
}

/// The zones served, with one TTL for every record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneSet {
    zones: Vec<Zone>,
    ttl: u32,
    serial: u32,
}

/// `text` as a fully qualified name.
pub(crate) fn fqdn(text: &str) -> Result<Name, DnsError> {
    let mut parsed = Name::from_ascii(text.trim_end_matches('.'))
        .map_err(|_| DnsError::BadName(text.to_string()))?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

/// The same, lower-cased: how names are compared.
fn name(text: &str) -> Result<Name, DnsError> {
    Ok(fqdn(text)?.to_lowercase())
}

/// The A or AAAA data of `address`.
pub(crate) fn address_data(address: IpAddr) -> RData {
    match address {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

impl ZoneSet {
    /// Zones `apexes`, each served by the name server `ns.<apex>`, holding `records`
    /// (`name`, address); every record has `ttl` seconds. `serial` versions the zones
    /// (a change of records should raise it).
    pub fn new(
        apexes: &[String],
        records: &[(String, IpAddr)],
        ttl: u32,
        serial: u32,
    ) -> Result<ZoneSet, DnsError> {
        let mut zones = Vec::new();
        for apex in apexes {
            let apex = name(apex)?;
            let nameserver = name(&format!("ns.{apex}"))?;
            zones.push(Zone {
                apex,
                nameserver,
                records: BTreeMap::new(),
            });
        }
        let mut set = ZoneSet { zones, ttl, serial };
        for (text, address) in records {
            let owner = name(text)?;
            let zone = set.zone_mut(&owner).ok_or_else(|| DnsError::OutsideZones {
                name: text.clone(),
                zones: apexes.join(", "),
            })?;
            let addresses = zone.records.entry(owner).or_default();
            if !addresses.contains(address) {
                addresses.push(*address);
            }
        }
        Ok(set)
    }

    fn zone_index(&self, owner: &Name) -> Option<usize> {
        // The most specific zone holding the name.
        self.zones
            .iter()
            .enumerate()
            .filter(|(_, zone)| zone.apex.zone_of(owner))
            .max_by_key(|(_, zone)| zone.apex.num_labels())
            .map(|(index, _)| index)
    }

    fn zone_mut(&mut self, owner: &Name) -> Option<&mut Zone> {
        let index = self.zone_index(owner)?;
        self.zones.get_mut(index)
    }

    fn soa(&self, zone: &Zone) -> Record {
        let hostmaster = Name::from_ascii("hostmaster")
            .and_then(|label| label.append_domain(&zone.apex))
            .unwrap_or_else(|_| zone.apex.clone());
        Record::from_rdata(
            zone.apex.clone(),
            self.ttl,
            RData::SOA(SOA::new(
                zone.nameserver.clone(),
                hostmaster,
                self.serial,
                3600,
                600,
                86400,
                self.ttl,
            )),
        )
    }

    fn address_record(&self, owner: &Name, address: IpAddr) -> Record {
        Record::from_rdata(owner.clone(), self.ttl, address_data(address))
    }

    /// The answer to `query` (wire format), for UDP when `udp`; `None` when the bytes are
    /// not a DNS message worth answering.
    pub fn answer(&self, query: &[u8], udp: bool) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut response = self.respond(&request);
        let limit = match (&request.edns, udp) {
            (_, false) => usize::from(u16::MAX),
            (Some(edns), true) => usize::from(edns.max_payload().clamp(512, EDNS_UDP_BYTES)),
            (None, true) => CLASSIC_UDP_BYTES,
        };
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_UDP_BYTES);
            response.set_edns(edns);
        }
        let bytes = response.to_vec().ok()?;
        if bytes.len() <= limit {
            return Some(bytes);
        }
        // Too large for UDP: the client asks again over TCP.
        response.truncate().to_vec().ok()
    }

    /// The response to a parsed query.
    pub fn respond(&self, request: &Message) -> Message {
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return response;
        }
        let [query] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response;
        };
        response.add_query(query.clone());
        let owner = query.name().to_lowercase();
        let Some(zone) = self.zone_index(&owner).map(|index| &self.zones[index]) else {
            response.metadata.response_code = ResponseCode::Refused;
            return response;
        };
        response.metadata.authoritative = true;
        if query.query_class() != DNSClass::IN && query.query_class() != DNSClass::ANY {
            response.metadata.response_code = ResponseCode::Refused;
            return response;
        }
        let addresses = zone.records.get(&owner);
        let is_apex = owner == zone.apex;
        let is_nameserver = owner == zone.nameserver;
        if addresses.is_none() && !is_apex && !is_nameserver {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authority(self.soa(zone));
            return response;
        }
        let wanted = query.query_type();
        let any = wanted == RecordType::ANY;
        if is_apex && (any || wanted == RecordType::SOA) {
            response.add_answer(self.soa(zone));
        }
        if is_apex && (any || wanted == RecordType::NS) {
            response.add_answer(Record::from_rdata(
                zone.apex.clone(),
                self.ttl,
                RData::NS(NS(zone.nameserver.clone())),
            ));
        }
        for &address in addresses.into_iter().flatten() {
            let fits = match address {
                IpAddr::V4(_) => any || wanted == RecordType::A,
                IpAddr::V6(_) => any || wanted == RecordType::AAAA,
            };
            if fits {
                response.add_answer(self.address_record(&owner, address));
            }
        }
        if response.answers.is_empty() {
            // The name exists without records of that type: NODATA.
            response.add_authority(self.soa(zone));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn zones() -> ZoneSet {
        ZoneSet::new(
            &["shop.example".to_string()],
            &[
                ("web1.shop.example".to_string(), "10.0.1.5".parse().unwrap()),
                ("web1.shop.example".to_string(), "fd00::5".parse().unwrap()),
                (
                    "Repo.West.shop.example.".to_string(),
                    "10.0.0.10".parse().unwrap(),
                ),
            ],
            30,
            7,
        )
        .unwrap()
    }

    fn ask(zones: &ZoneSet, owner: &str, kind: RecordType) -> Message {
        let mut query = Message::query();
        query.add_query(Query::query(Name::from_ascii(owner).unwrap(), kind));
        let bytes = zones.answer(&query.to_vec().unwrap(), true).unwrap();
        Message::from_vec(&bytes).unwrap()
    }

    #[test]
    fn names_are_answered_authoritatively_with_their_ttl() {
        let zones = zones();
        let answer = ask(&zones, "WEB1.shop.example.", RecordType::A);
        assert!(answer.metadata.authoritative);
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(answer.answers.len(), 1);
        assert_eq!(answer.answers[0].ttl, 30);
        assert_eq!(
            answer.answers[0].data,
            RData::A(A("10.0.1.5".parse().unwrap()))
        );
        let answer = ask(&zones, "web1.shop.example.", RecordType::AAAA);
        assert_eq!(answer.answers.len(), 1);
        let answer = ask(&zones, "repo.west.shop.example.", RecordType::A);
        assert_eq!(answer.answers.len(), 1);
    }

    #[test]
    fn unknown_names_missing_types_and_foreign_zones() {
        let zones = zones();
        let missing = ask(&zones, "db9.shop.example.", RecordType::A);
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(missing.authorities[0].record_type(), RecordType::SOA);
        let nodata = ask(&zones, "repo.west.shop.example.", RecordType::AAAA);
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
        let foreign = ask(&zones, "example.org.", RecordType::A);
        assert_eq!(foreign.metadata.response_code, ResponseCode::Refused);
        assert!(!foreign.metadata.authoritative);
        let apex = ask(&zones, "shop.example.", RecordType::SOA);
        assert_eq!(apex.answers[0].record_type(), RecordType::SOA);
        let ns = ask(&zones, "shop.example.", RecordType::NS);
        assert_eq!(ns.answers[0].record_type(), RecordType::NS);
    }

    #[test]
    fn records_outside_the_zones_and_bad_names_are_refused() {
        let outside = ZoneSet::new(
            &["shop.example".to_string()],
            &[(
                "web1.other.example".to_string(),
                "10.0.0.1".parse().unwrap(),
            )],
            30,
            1,
        );
        assert!(matches!(outside, Err(DnsError::OutsideZones { .. })));
        assert!(ZoneSet::new(&["bad..name".to_string()], &[], 30, 1).is_err());
    }

    #[test]
    fn garbage_gets_no_answer() {
        assert_eq!(zones().answer(b"\x00\x01garbage", true), None);
    }
}
