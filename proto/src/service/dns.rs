//! The cluster DNS, sans-IO: what to do with one DNS message a pod sent to its node's
//! bridge gateway. The daemon's shell (`overlayd/src/dns.rs`) owns the sockets, the
//! upstream resolvers and the clock; everything it decides comes from here.
//!
//! Names follow the Kubernetes DNS specification (schema 1.0.1), case-insensitively:
//!
//! | name | type | answer |
//! |---|---|---|
//! | `<svc>.<ns>.svc.<domain>` | A | the VIP; headless: every *ready* endpoint (none ready: NXDOMAIN, as the spec says) |
//! | `<svc>.<ns>.svc.<domain>` | any | ExternalName: a CNAME to `external_name`, followed ([`Answer::Chase`]) |
//! | `_<port>._<tcp\|udp>.<svc>.<ns>.svc.<domain>` | SRV | the named port: target the Service name (A in additional); headless: one per ready endpoint, target its hostname |
//! | `<svc>.<ns>.svc.<domain>` | SRV | (extension, as CoreDNS) one SRV per port, named or not |
//! | `<hostname>.<svc>.<ns>.svc.<domain>` | A | headless: the ready endpoint with that hostname |
//! | `<a>-<b>-<c>-<d>.<ns>.pod.<domain>` | A | `a.b.c.d` (the spec's deprecated pod record, unverified as kube-dns did) |
//! | `dns-version.<domain>` | TXT | `1.0.1` |
//! | `<domain>` | SOA | the zone's SOA |
//! | `<d>.<c>.<b>.<a>.in-addr.arpa` | PTR | a VIP: the Service name; a headless ready endpoint: its hostname name; anything else is forwarded |
//!
//! An endpoint's *hostname* is its address with dashes (`10-244-1-5`): overlayd pods have
//! no `hostname` field, and the spec asks only for a unique, system-assigned label. The pod
//! name would not do: names are unique per node only, so two nodes' pods of one Service may
//! share one.
//!
//! A name under the domain that exists with no record of the asked type is NODATA
//! (NOERROR, no answer) and one that does not exist is NXDOMAIN; both carry the zone's SOA
//! in the authority section so resolvers cache the negative answer for [`TTL`] seconds.
//! Names outside the domain (and reverse names of addresses we don't know) are
//! [`Answer::Forward`]ed as they are.
//!
//! Policy for the odd cases:
//! - a message that is a response, or is shorter than a header, is dropped: there is no
//!   query id to answer, or answering a response could loop between two servers;
//! - an opcode other than QUERY: NOTIMP; a message that does not parse past its header, or
//!   with other than one question: FORMERR; EDNS version above 0: BADVERS (RFC 6891);
//! - `ANY` under the domain is answered with the records the name has (every name here has
//!   one type, so the answer is small, and it is what RFC 8482 allows); outside the domain
//!   it is forwarded, so the upstream applies its own policy;
//! - AXFR/IXFR and classes other than IN under the domain: REFUSED (we offer no zone
//!   transfers and hold nothing in other classes).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::spec::{Protocol, ServiceType};
use super::table::{Endpoint, ResolvedService, ServiceKey, ServiceTable};

/// The cluster domain when none is configured, as in Kubernetes.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// TTL of every record we answer, and the negative-caching time (SOA minimum).
///
/// Short because what it names moves: a headless Service's ready endpoints change as
/// pods come, go and fail health checks, and a Service deleted and added again gets a new
/// VIP; a pod should not keep a dead address for long. Cheap because the responder is on
/// the pod's own node (one bridge hop, no upstream) and answers from memory. 5 s is also
/// CoreDNS's default for the kubernetes plugin.
pub const TTL: u32 = 5;

/// The largest UDP answer we send to a client that speaks EDNS (and what we advertise):
/// 1232 bytes fits every IPv6 path without fragmentation (DNS Flag Day 2020). Clients
/// without EDNS get at most 512 (RFC 1035).
pub const UDP_PAYLOAD: u16 = 1232;

/// The Kubernetes DNS schema version we implement, served as `dns-version.<domain>` TXT.
pub const SCHEMA_VERSION: &str = "1.0.1";

/// How many CNAMEs (ExternalName Services naming other Services) one answer follows
/// inside the domain before it gives up with SERVFAIL: a loop of ExternalNames must end.
const MAX_CNAME_HOPS: usize = 8;

/// A responder could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("cluster domain {domain:?} is not a DNS name: {reason}")]
    Domain { domain: String, reason: String },
    #[error("cluster domain must not be the root")]
    RootDomain,
}

/// How the query came, which bounds the size of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// At most 512 bytes, or the client's EDNS size up to [`UDP_PAYLOAD`]; larger answers
    /// are truncated (TC) so the client asks again over TCP.
    Udp,
    /// Length-prefixed: at most 65535 bytes.
    Tcp,
}

/// Why a message got no answer at all. The shell counts each as `dropped_<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than a DNS header: there is no id to answer.
    Short,
    /// QR set: a response, not a query. Answering it could loop between two servers.
    NotQuery,
    /// Even a header-only error reply could not be encoded (should not happen).
    Unencodable,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::Short,
        DropReason::NotQuery,
        DropReason::Unencodable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Short => "short",
            DropReason::NotQuery => "not_query",
            DropReason::Unencodable => "unencodable",
        }
    }
}

/// A reply to send back to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The wire form, ready for a datagram (or to be length-prefixed on TCP).
    pub bytes: Vec<u8>,
    /// Its response code, for the counters.
    pub rcode: ResponseCode,
    /// Whether the answer did not fit and was cut down to a TC header and question.
    pub truncated: bool,
}

/// What to do with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send this back.
    Reply(Reply),
    /// The name is not ours: send the query, as it is, to the upstream resolvers and
    /// their answer back to the client.
    Forward,
    /// An ExternalName answer whose CNAME chain leaves the domain: send
    /// [`Chase::query`] upstream and hand the answer (or `None` if none came) to
    /// [`Responder::finish_chase`], which appends it to the CNAME, as the Kubernetes
    /// spec's ExternalName example shows. Stub resolvers (glibc, musl) do not follow a
    /// CNAME themselves, so a bare CNAME would leave the pod with no address.
    Chase(Box<Chase>),
    /// Send nothing.
    Drop(DropReason),
}

/// The half-built answer to an ExternalName question; see [`Answer::Chase`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chase {
    /// A query for the last CNAME target and the client's type, with the client's id and
    /// EDNS (so the upstream may answer up to [`UDP_PAYLOAD`] over UDP).
    pub query: Vec<u8>,
    /// The client's transport, which bounds the final answer.
    pub transport: Transport,
    request: Message,
    chain: Vec<Record>,
    question: Query,
}

/// Answers DNS queries for one cluster domain from a [`ServiceTable`].
#[derive(Debug, Clone)]
pub struct Responder {
    /// Lowercase, fully qualified.
    domain: Name,
    soa: Record,
}

impl Responder {
    /// A responder for `domain` (`cluster.local`; a trailing dot is allowed).
    pub fn new(domain: &str) -> Result<Self, DnsError> {
        let text = domain.trim_end_matches('.');
        let bad = |reason: String| DnsError::Domain {
            domain: domain.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(DnsError::RootDomain);
        }
        let domain = Name::from_ascii(format!("{text}."))
            .map_err(|e| bad(e.to_string()))?
            .to_lowercase();
        let ns = domain
            .prepend_label("dns")
            .and_then(|n| n.prepend_label("ns"))
            .map_err(|e| bad(e.to_string()))?;
        let hostmaster = domain
            .prepend_label("hostmaster")
            .map_err(|e| bad(e.to_string()))?;
        // Refresh, retry and expire only matter to secondaries, which we don't have; the
        // serial is constant for the same reason. Minimum is the negative-caching TTL.
        let soa = SOA::new(ns, hostmaster, 1, 7200, 1800, 86400, TTL);
        let soa = Record::from_rdata(domain.clone(), TTL, RData::SOA(soa));
        Ok(Responder { domain, soa })
    }

    /// The cluster domain, lowercase, with its trailing dot.
    pub fn domain(&self) -> &Name {
        &self.domain
    }

    /// What to do with the message `query` that came over `transport`, answering from
    /// `table` (only active Services have names) with `ready` telling which endpoints of
    /// a headless Service to give out.
    pub fn answer(
        &self,
        query: &[u8],
        table: &ServiceTable,
        ready: impl Fn(&ServiceKey, &Endpoint) -> bool,
        transport: Transport,
    ) -> Answer {
        let header = match hickory_proto::op::Header::read(&mut BinDecoder::new(query)) {
            Ok(header) => header,
            Err(_) => return Answer::Drop(DropReason::Short),
        };
        if header.metadata.message_type != MessageType::Query {
            return Answer::Drop(DropReason::NotQuery);
        }
        if header.metadata.op_code != OpCode::Query {
            return error_reply(&header.metadata, ResponseCode::NotImp);
        }
        let request = match Message::from_vec(query) {
            Ok(m) => m,
            Err(_) => return error_reply(&header.metadata, ResponseCode::FormErr),
        };
        let [question] = request.queries.as_slice() else {
            return error_reply(&header.metadata, ResponseCode::FormErr);
        };
        if let Some(edns) = &request.edns
            && edns.version() > 0
        {
            return self.reply_answer(
                &request,
                ResponseCode::BADVERS,
                Sections::default(),
                transport,
            );
        }
        let name = question.name();
        let qtype = question.query_type();

        if !self.domain.zone_of(name) {
            if question.query_class() != DNSClass::IN {
                return Answer::Forward;
            }
            return match self.reverse(name, qtype, table, &ready) {
                Some(sections) => {
                    self.reply_answer(&request, ResponseCode::NoError, sections, transport)
                }
                None => Answer::Forward,
            };
        }
        if question.query_class() != DNSClass::IN
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
        {
            return self.reply_answer(
                &request,
                ResponseCode::Refused,
                Sections::default(),
                transport,
            );
        }

        let mut sections = Sections::default();
        let mut owner = name.clone();
        let mut hops = 0;
        loop {
            let rcode = match self.lookup(&owner, qtype, table, &ready) {
                Lookup::Records {
                    answers,
                    additionals,
                } => {
                    sections.answers.extend(answers);
                    sections.additionals.extend(additionals);
                    ResponseCode::NoError
                }
                // After a CNAME the rcode is that of the last name in the chain (RFC 6604).
                Lookup::NoData => {
                    sections.authorities.push(self.soa.clone());
                    ResponseCode::NoError
                }
                Lookup::NxDomain => {
                    sections.authorities.push(self.soa.clone());
                    ResponseCode::NXDomain
                }
                Lookup::ServFail => {
                    sections = Sections::default();
                    ResponseCode::ServFail
                }
                Lookup::Cname(target) => {
                    sections.answers.push(Record::from_rdata(
                        owner,
                        TTL,
                        RData::CNAME(CNAME(target.clone())),
                    ));
                    hops += 1;
                    if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
                        ResponseCode::NoError
                    } else if hops > MAX_CNAME_HOPS {
                        sections = Sections::default();
                        ResponseCode::ServFail
                    } else if !self.domain.zone_of(&target) {
                        return self.chase(&request, target, qtype, sections.answers, transport);
                    } else {
                        owner = target;
                        continue;
                    }
                }
            };
            return self.reply_answer(&request, rcode, sections, transport);
        }
    }

    /// Completes an ExternalName answer with what the upstream said about the CNAME
    /// target (`None`: no upstream answered). Without an upstream answer, or with an
    /// upstream failure, the client gets SERVFAIL: a bare CNAME would be cached as "no
    /// address" by its stub resolver.
    pub fn finish_chase(&self, chase: Chase, upstream: Option<&[u8]>) -> Option<Reply> {
        let Chase {
            transport,
            request,
            chain,
            question,
            ..
        } = chase;
        let upstream = upstream
            .and_then(|bytes| Message::from_vec(bytes).ok())
            .filter(|m| {
                m.metadata.message_type == MessageType::Response
                    && m.metadata.id == request.metadata.id
                    && matches!(m.queries.as_slice(), [q] if q.query_type() == question.query_type()
                        && q.name().eq_ignore_root(question.name()))
            });
        let Some(upstream) = upstream else {
            return self.reply(
                &request,
                ResponseCode::ServFail,
                Sections::default(),
                transport,
            );
        };
        let rcode = upstream.metadata.response_code;
        if !matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
            return self.reply(
                &request,
                ResponseCode::ServFail,
                Sections::default(),
                transport,
            );
        }
        let mut sections = Sections {
            answers: chain,
            ..Sections::default()
        };
        if upstream.answers.is_empty() {
            // A negative answer about the target: its SOA tells how long to cache it.
            sections.authorities = upstream.authorities;
        }
        sections.answers.extend(upstream.answers);
        self.reply(&request, rcode, sections, transport)
    }

    /// SERVFAIL to `query` (its id and question), for when no upstream answered a
    /// forwarded query. `None` if `query` is not a query we could have forwarded.
    pub fn servfail(&self, query: &[u8], transport: Transport) -> Option<Reply> {
        let request = Message::from_vec(query).ok()?;
        self.reply(
            &request,
            ResponseCode::ServFail,
            Sections::default(),
            transport,
        )
    }

    /// What `owner` (under the domain) holds for `qtype`.
    fn lookup(
        &self,
        owner: &Name,
        qtype: RecordType,
        table: &ServiceTable,
        ready: &impl Fn(&ServiceKey, &Endpoint) -> bool,
    ) -> Lookup {
        let depth = owner.iter().len() - self.domain.iter().len();
        let mut labels = Vec::with_capacity(depth);
        for label in owner.iter().take(depth) {
            match std::str::from_utf8(label) {
                Ok(text) => labels.push(text.to_ascii_lowercase()),
                // Every name we hold is ASCII.
                Err(_) => return Lookup::NxDomain,
            }
        }
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let a = |ip: Ipv4Addr| Record::from_rdata(owner.clone(), TTL, RData::A(A(ip)));
        let only = |wanted: RecordType, records: Vec<Record>| {
            if qtype == wanted || qtype == RecordType::ANY {
                Lookup::records(records)
            } else {
                Lookup::NoData
            }
        };
        match labels.as_slice() {
            [] => only(
                RecordType::SOA,
                vec![Record::from_rdata(
                    owner.clone(),
                    TTL,
                    self.soa.data.clone(),
                )],
            ),
            ["dns-version"] => only(
                RecordType::TXT,
                vec![Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()])),
                )],
            ),
            // Empty non-terminals: they exist because names exist below them.
            ["svc"] | ["pod"] | [_, "pod"] => Lookup::NoData,
            [ns, "svc"] => {
                let first = ServiceKey::new(*ns, "");
                let exists = table
                    .services
                    .range(first..)
                    .take_while(|(k, _)| k.namespace == *ns)
                    .any(|(_, s)| s.is_active());
                if exists {
                    Lookup::NoData
                } else {
                    Lookup::NxDomain
                }
            }
            [addr, _, "pod"] => match undash(addr) {
                Some(ip) => only(RecordType::A, vec![a(ip)]),
                None => Lookup::NxDomain,
            },
            [rest @ .., svc, ns, "svc"] => {
                let Some(svc) = table
                    .get(&ServiceKey::new(*ns, *svc))
                    .filter(|s| s.is_active())
                else {
                    return Lookup::NxDomain;
                };
                if svc.kind == ServiceType::ExternalName {
                    if !rest.is_empty() {
                        return Lookup::NxDomain;
                    }
                    return match svc.external_name.as_deref().map(external_target) {
                        Some(Some(target)) => Lookup::Cname(target),
                        // Validation requires a valid external name; if one slips
                        // through, say the server failed rather than that nothing exists.
                        _ => Lookup::ServFail,
                    };
                }
                let ready_eps: Vec<&Endpoint> = if svc.cluster_ip.is_none() {
                    let eps: Vec<&Endpoint> = svc
                        .endpoints
                        .iter()
                        .filter(|e| ready(&svc.key, e))
                        .collect();
                    if eps.is_empty() {
                        // The spec: a headless Service without ready endpoints is NXDOMAIN.
                        return Lookup::NxDomain;
                    }
                    eps
                } else {
                    Vec::new()
                };
                self.service_node(owner, svc, &ready_eps, rest, qtype)
            }
            _ => Lookup::NxDomain,
        }
    }

    /// A name at or below an active ClusterIP or headless Service: `rest` are the labels
    /// left of `<svc>.<ns>.svc`, `ready_eps` the ready endpoints (headless only).
    fn service_node(
        &self,
        owner: &Name,
        svc: &ResolvedService,
        ready_eps: &[&Endpoint],
        rest: &[&str],
        qtype: RecordType,
    ) -> Lookup {
        let wants = |t: RecordType| qtype == t || qtype == RecordType::ANY;
        let a = |ip: Ipv4Addr| Record::from_rdata(owner.clone(), TTL, RData::A(A(ip)));
        match rest {
            [] => {
                if wants(RecordType::A) {
                    let records = match svc.cluster_ip {
                        Some(vip) => vec![a(vip)],
                        None => distinct_ips(ready_eps).into_iter().map(a).collect(),
                    };
                    Lookup::records(records)
                } else if qtype == RecordType::SRV {
                    self.srv(owner, svc, ready_eps, svc.ports.iter().collect())
                } else {
                    Lookup::NoData
                }
            }
            [proto] => {
                // `_tcp.<svc>…`: exists iff a named port of that protocol does.
                let exists = parse_proto(proto).is_some_and(|p| {
                    svc.ports
                        .iter()
                        .any(|x| !x.name.is_empty() && x.protocol == p)
                });
                if exists {
                    Lookup::NoData
                } else if let Some(ip) = undash(proto).filter(|_| svc.cluster_ip.is_none()) {
                    // A headless endpoint's hostname.
                    if ready_eps.iter().any(|e| e.ip == ip) {
                        if wants(RecordType::A) {
                            Lookup::records(vec![a(ip)])
                        } else {
                            Lookup::NoData
                        }
                    } else {
                        Lookup::NxDomain
                    }
                } else {
                    Lookup::NxDomain
                }
            }
            [port, proto] => {
                let (Some(port), Some(proto)) = (port.strip_prefix('_'), parse_proto(proto)) else {
                    return Lookup::NxDomain;
                };
                let ports: Vec<_> = svc
                    .ports
                    .iter()
                    .filter(|p| {
                        !p.name.is_empty()
                            && p.name.eq_ignore_ascii_case(port)
                            && p.protocol == proto
                    })
                    .collect();
                if ports.is_empty() {
                    Lookup::NxDomain
                } else if wants(RecordType::SRV) {
                    self.srv(owner, svc, ready_eps, ports)
                } else {
                    Lookup::NoData
                }
            }
            _ => Lookup::NxDomain,
        }
    }

    /// SRV records of `ports` of `svc`, owned by `owner`, with the A records of their
    /// targets in the additional section. ClusterIP: target the Service name, port the
    /// Service port. Headless: one per ready endpoint, target its hostname, port the
    /// endpoint's (clients connect to it directly), weights splitting 100 evenly.
    fn srv(
        &self,
        owner: &Name,
        svc: &ResolvedService,
        ready_eps: &[&Endpoint],
        ports: Vec<&super::table::ResolvedPort>,
    ) -> Lookup {
        let Some(svc_name) = self.service_name(&svc.key) else {
            return Lookup::ServFail;
        };
        let srv = |port: u16, weight: u16, target: Name| {
            Record::from_rdata(
                owner.clone(),
                TTL,
                RData::SRV(SRV::new(0, weight, port, target)),
            )
        };
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        match svc.cluster_ip {
            Some(vip) => {
                answers.extend(ports.iter().map(|p| srv(p.port, 100, svc_name.clone())));
                additionals.push(Record::from_rdata(svc_name, TTL, RData::A(A(vip))));
            }
            None => {
                let mut hosts = BTreeSet::new();
                for port in ports {
                    let targets: BTreeSet<(Ipv4Addr, u16)> = ready_eps
                        .iter()
                        .map(|e| (e.ip, e.addr(port).port()))
                        .collect();
                    let weight = u16::try_from(100 / targets.len().max(1))
                        .unwrap_or(1)
                        .max(1);
                    for (ip, port) in targets {
                        let Ok(host) = svc_name.prepend_label(dashed(ip)) else {
                            continue;
                        };
                        answers.push(srv(port, weight, host.clone()));
                        if hosts.insert(ip) {
                            additionals.push(Record::from_rdata(host, TTL, RData::A(A(ip))));
                        }
                    }
                }
            }
        }
        Lookup::Records {
            answers,
            additionals,
        }
    }

    /// PTR for a reverse name of a VIP or of a headless Service's ready endpoint; `None`
    /// (forward it) for anything else.
    fn reverse(
        &self,
        name: &Name,
        qtype: RecordType,
        table: &ServiceTable,
        ready: &impl Fn(&ServiceKey, &Endpoint) -> bool,
    ) -> Option<Sections> {
        if !matches!(qtype, RecordType::PTR | RecordType::ANY) {
            return None;
        }
        let ip = match name.parse_arpa_name() {
            Ok(ipnet::IpNet::V4(net)) if net.prefix_len() == 32 => net.addr(),
            _ => return None,
        };
        let mut targets = Vec::new();
        for svc in table.iter().filter(|s| s.is_active()) {
            if svc.kind == ServiceType::ExternalName {
                continue;
            }
            let Some(svc_name) = self.service_name(&svc.key) else {
                continue;
            };
            match svc.cluster_ip {
                Some(vip) if vip == ip => targets.push(svc_name),
                Some(_) => {}
                None => {
                    if svc
                        .endpoints
                        .iter()
                        .any(|e| e.ip == ip && ready(&svc.key, e))
                        && let Ok(host) = svc_name.prepend_label(dashed(ip))
                    {
                        targets.push(host);
                    }
                }
            }
        }
        if targets.is_empty() {
            return None;
        }
        Some(Sections {
            answers: targets
                .into_iter()
                .map(|t| Record::from_rdata(name.clone(), TTL, RData::PTR(PTR(t))))
                .collect(),
            ..Sections::default()
        })
    }

    /// `<svc>.<ns>.svc.<domain>.`, lowercase.
    fn service_name(&self, key: &ServiceKey) -> Option<Name> {
        self.domain
            .prepend_label("svc")
            .and_then(|n| n.prepend_label(key.namespace.to_ascii_lowercase()))
            .and_then(|n| n.prepend_label(key.name.to_ascii_lowercase()))
            .ok()
    }

    fn chase(
        &self,
        request: &Message,
        target: Name,
        qtype: RecordType,
        chain: Vec<Record>,
        transport: Transport,
    ) -> Answer {
        let question = Query::query(target, qtype);
        let mut query = Message::new(request.metadata.id, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        query.add_query(question.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_PAYLOAD);
        query.set_edns(edns);
        match query.to_vec() {
            Ok(bytes) => Answer::Chase(Box::new(Chase {
                query: bytes,
                transport,
                request: request.clone(),
                chain,
                question,
            })),
            Err(_) => self.reply_answer(
                request,
                ResponseCode::ServFail,
                Sections::default(),
                transport,
            ),
        }
    }

    fn reply_answer(
        &self,
        request: &Message,
        rcode: ResponseCode,
        sections: Sections,
        transport: Transport,
    ) -> Answer {
        match self.reply(request, rcode, sections, transport) {
            Some(reply) => Answer::Reply(reply),
            None => Answer::Drop(DropReason::Unencodable),
        }
    }

    /// The response to `request`: its id, question, RD and CD, our records, EDNS if the
    /// client used it; cut down to a TC header if it is too long for `transport`.
    fn reply(
        &self,
        request: &Message,
        rcode: ResponseCode,
        sections: Sections,
        transport: Transport,
    ) -> Option<Reply> {
        let mut msg = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
        msg.metadata = Metadata::response_from_request(&request.metadata);
        // Our names are ours to say; errors are about the server, not the data.
        msg.metadata.authoritative =
            matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain);
        // Names outside the domain are resolved (forwarded) for the client.
        msg.metadata.recursion_available = true;
        msg.metadata.response_code = rcode;
        msg.queries = request.queries.clone();
        msg.answers = sections.answers;
        msg.authorities = sections.authorities;
        msg.additionals = sections.additionals;
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(UDP_PAYLOAD);
            msg.edns = Some(edns);
        }
        let limit = match transport {
            Transport::Udp => usize::from(request.max_payload().min(UDP_PAYLOAD)),
            Transport::Tcp => usize::from(u16::MAX),
        };
        let bytes = msg.to_vec().ok()?;
        if bytes.len() <= limit {
            return Some(Reply {
                bytes,
                rcode,
                truncated: false,
            });
        }
        // Clients retry a TC answer over TCP and ignore what it holds, so send the least.
        let bytes = msg.truncate().to_vec().ok()?;
        Some(Reply {
            bytes,
            rcode,
            truncated: true,
        })
    }
}

/// What a forwarder makes of a message from an upstream it sent `query` to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamReply {
    /// The answer: pass it to the client.
    Answer,
    /// The answer, cut short (TC): a client that asked over UDP gets it as it is and
    /// retries over TCP; a chase asks the same upstream again over TCP.
    Truncated,
    /// The upstream failed (SERVFAIL, REFUSED, NOTIMP): try the next one, and fall back
    /// to this answer if none does better, as glibc's resolver does.
    TryNext,
    /// Not a reply to this query (another id or question, not a response, garbage):
    /// keep waiting. A spoofer must guess the port, the id and the question.
    Ignore,
}

/// Judges `reply` from an upstream against the `query` sent to it.
pub fn check_upstream_reply(query: &[u8], reply: &[u8]) -> UpstreamReply {
    let (Ok(query), Ok(reply)) = (Message::from_vec(query), Message::from_vec(reply)) else {
        return UpstreamReply::Ignore;
    };
    // Name equality is case-insensitive: an upstream may echo a 0x20-mixed name as it
    // likes.
    let same_question = query.queries.len() == reply.queries.len()
        && query.queries.iter().zip(&reply.queries).all(|(q, r)| {
            q.name() == r.name()
                && q.query_type() == r.query_type()
                && q.query_class() == r.query_class()
        });
    if reply.metadata.message_type != MessageType::Response
        || reply.metadata.id != query.metadata.id
        || !same_question
    {
        return UpstreamReply::Ignore;
    }
    match reply.metadata.response_code {
        ResponseCode::ServFail | ResponseCode::Refused | ResponseCode::NotImp => {
            UpstreamReply::TryNext
        }
        _ if reply.metadata.truncation => UpstreamReply::Truncated,
        _ => UpstreamReply::Answer,
    }
}

#[derive(Debug, Default)]
struct Sections {
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

enum Lookup {
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// The name exists with no record of the type.
    NoData,
    NxDomain,
    /// An ExternalName: the name is an alias of this one.
    Cname(Name),
    ServFail,
}

impl Lookup {
    fn records(answers: Vec<Record>) -> Self {
        Lookup::Records {
            answers,
            additionals: Vec::new(),
        }
    }
}

/// A header-only error reply (the question could not be read, or the opcode is not ours).
fn error_reply(request: &Metadata, rcode: ResponseCode) -> Answer {
    let mut msg = Message::new(request.id, MessageType::Response, request.op_code);
    msg.metadata = Metadata::response_from_request(request);
    msg.metadata.recursion_available = true;
    msg.metadata.response_code = rcode;
    match msg.to_vec() {
        Ok(bytes) => Answer::Reply(Reply {
            bytes,
            rcode,
            truncated: false,
        }),
        Err(_) => Answer::Drop(DropReason::Unencodable),
    }
}

/// An ExternalName's target as a name; `None` if it is not one.
fn external_target(text: &str) -> Option<Name> {
    let text = text.trim_end_matches('.');
    if text.is_empty() {
        return None;
    }
    Name::from_ascii(format!("{text}.")).ok()
}

fn parse_proto(label: &str) -> Option<Protocol> {
    match label {
        "_tcp" => Some(Protocol::Tcp),
        "_udp" => Some(Protocol::Udp),
        _ => None,
    }
}

/// An address as a DNS label: `10.244.1.5` → `10-244-1-5`.
fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

/// The address a dashed label names, if it names one in canonical form.
fn undash(label: &str) -> Option<Ipv4Addr> {
    let ip: Ipv4Addr = label.replace('-', ".").parse().ok()?;
    (dashed(ip) == label).then_some(ip)
}

fn distinct_ips(eps: &[&Endpoint]) -> Vec<Ipv4Addr> {
    let set: BTreeSet<Ipv4Addr> = eps.iter().map(|e| e.ip).collect();
    set.into_iter().collect()
}

/// A pod's `/etc/resolv.conf`, in Kubernetes' form: names are tried in the pod's
/// namespace, then across namespaces, then in the domain, before they are tried as they
/// are (`ndots:5`: any name with fewer than five dots goes through the search list first).
pub fn resolv_conf(nameserver: Ipv4Addr, domain: &str, namespace: &str) -> String {
    let d = domain.trim_end_matches('.');
    format!("search {namespace}.svc.{d} svc.{d} {d}\nnameserver {nameserver}\noptions ndots:5\n")
}

/// The IPv4 nameservers of a resolv.conf text, in order, once each. IPv6 nameservers are
/// left out: the forwarder speaks IPv4.
pub fn resolv_conf_nameservers(text: &str) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            // Comments (`#`, `;`) and every other keyword.
            continue;
        }
        if let Some(ip) = words.next().and_then(|w| w.parse::<Ipv4Addr>().ok())
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// The upstreams to forward to: `candidates` in order, once each, without `listen`
/// itself (a node whose resolv.conf names its bridge gateway would otherwise forward to
/// itself forever).
pub fn upstreams(
    candidates: impl IntoIterator<Item = SocketAddrV4>,
    listen: SocketAddrV4,
) -> Vec<SocketAddrV4> {
    let mut out: Vec<SocketAddrV4> = Vec::new();
    for c in candidates {
        if c != listen && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::spec::{Algorithm, HealthCheck, SessionAffinity};
    use crate::service::table::{ResolvedPort, ServiceStatus};
    use std::str::FromStr;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    fn port(name: &str, protocol: Protocol, port: u16, target: u16) -> ResolvedPort {
        ResolvedPort {
            name: name.into(),
            protocol,
            port,
            target_port: target,
            node_port: None,
            proxy_protocol: false,
        }
    }

    fn ep(ip: [u8; 4]) -> Endpoint {
        Endpoint {
            ip: ip.into(),
            port: None,
            node: Some("n1".into()),
            pod: Some(format!("pod-{}", ip[3])),
        }
    }

    fn service(
        ns: &str,
        name: &str,
        kind: ServiceType,
        cluster_ip: Option<Ipv4Addr>,
        ports: Vec<ResolvedPort>,
        endpoints: Vec<Endpoint>,
    ) -> ResolvedService {
        ResolvedService {
            key: ServiceKey::new(ns, name),
            kind,
            cluster_ip,
            external_ip: None,
            external_name: None,
            ports,
            endpoints,
            algorithm: Algorithm::RoundRobin,
            affinity: SessionAffinity::None,
            affinity_timeout_s: 10_800,
            health: HealthCheck::default(),
            status: ServiceStatus::Active,
        }
    }

    /// web.default: ClusterIP with http/TCP 80→8080 and dns/UDP 53 and an unnamed port;
    /// db.default: headless, three endpoints of which .3.9 is not ready;
    /// ext.default: ExternalName → example.com; alias.prod: ExternalName → web.default;
    /// loop-a/loop-b.default: ExternalNames naming each other; pending.default: Pending;
    /// idle.default: headless with no ready endpoint.
    fn table() -> ServiceTable {
        let mut t = ServiceTable::default();
        let mut add = |s: ResolvedService| {
            t.services.insert(s.key.clone(), s);
        };
        add(service(
            "default",
            "web",
            ServiceType::ClusterIp,
            Some(VIP),
            vec![
                port("http", Protocol::Tcp, 80, 8080),
                port("dns", Protocol::Udp, 53, 5353),
                port("", Protocol::Tcp, 9000, 9000),
            ],
            vec![ep([10, 244, 1, 5])],
        ));
        add(service(
            "default",
            "db",
            ServiceType::ClusterIp,
            None,
            vec![port("pg", Protocol::Tcp, 5432, 6432)],
            vec![
                ep([10, 244, 1, 5]),
                ep([10, 244, 2, 7]),
                ep([10, 244, 3, 9]),
            ],
        ));
        let mut ext = service(
            "default",
            "ext",
            ServiceType::ExternalName,
            None,
            vec![],
            vec![],
        );
        ext.external_name = Some("example.com".into());
        add(ext);
        let mut alias = service(
            "prod",
            "alias",
            ServiceType::ExternalName,
            None,
            vec![],
            vec![],
        );
        alias.external_name = Some("web.default.svc.cluster.local".into());
        add(alias);
        for (a, b) in [("loop-a", "loop-b"), ("loop-b", "loop-a")] {
            let mut s = service(
                "default",
                a,
                ServiceType::ExternalName,
                None,
                vec![],
                vec![],
            );
            s.external_name = Some(format!("{b}.default.svc.cluster.local"));
            add(s);
        }
        let mut pending = service(
            "default",
            "pending",
            ServiceType::ClusterIp,
            Some(Ipv4Addr::new(10, 96, 0, 11)),
            vec![port("http", Protocol::Tcp, 80, 80)],
            vec![],
        );
        pending.status = ServiceStatus::Pending("re-allocating".into());
        add(pending);
        add(service(
            "default",
            "idle",
            ServiceType::ClusterIp,
            None,
            vec![port("http", Protocol::Tcp, 80, 80)],
            vec![ep([10, 244, 3, 9])],
        ));
        t
    }

    /// Every endpoint but 10.244.3.9 is ready.
    fn ready(_: &ServiceKey, e: &Endpoint) -> bool {
        e.ip != Ipv4Addr::new(10, 244, 3, 9)
    }

    fn query_msg(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        // from_ascii keeps the case (from_str would lowercase it, as IDNA does).
        m.add_query(Query::query(
            Name::from_ascii(name).expect("test name"),
            qtype,
        ));
        m
    }

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        query_msg(name, qtype).to_vec().expect("encode")
    }

    fn responder() -> Responder {
        Responder::new(DEFAULT_DOMAIN).expect("responder")
    }

    fn ask_bytes(bytes: &[u8], transport: Transport) -> Answer {
        responder().answer(bytes, &table(), ready, transport)
    }

    /// The reply to `name`/`qtype` over UDP, parsed; panics on anything but a reply.
    fn ask(name: &str, qtype: RecordType) -> Message {
        reply_of(ask_bytes(&query(name, qtype), Transport::Udp))
    }

    fn reply_of(answer: Answer) -> Message {
        match answer {
            Answer::Reply(r) => {
                let m = Message::from_vec(&r.bytes).expect("reply parses");
                // As numbers: BADVERS and BADSIG share 16 and decode as BADSIG.
                assert_eq!(
                    u16::from(m.metadata.response_code),
                    u16::from(r.rcode),
                    "Reply.rcode says the wire rcode"
                );
                assert_eq!(m.metadata.truncation, r.truncated);
                m
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn a_records(records: &[Record]) -> Vec<Ipv4Addr> {
        records
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    fn srv_records(records: &[Record]) -> Vec<(u16, String)> {
        records
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.port, s.target.to_ascii())),
                _ => None,
            })
            .collect()
    }

    fn assert_soa_authority(m: &Message) {
        assert_eq!(m.authorities.len(), 1, "{m}");
        let soa = &m.authorities[0];
        assert_eq!(soa.name.to_ascii(), "cluster.local.");
        assert!(matches!(&soa.data, RData::SOA(s) if s.minimum == TTL));
    }

    #[test]
    fn a_of_a_cluster_ip_service_is_its_vip() {
        let m = ask("web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.id, 0x4242);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
        assert_eq!(a_records(&m.answers), vec![VIP]);
        assert_eq!(m.answers[0].ttl, 5);
        assert_eq!(m.queries.len(), 1);
    }

    #[test]
    fn names_are_matched_without_regard_to_case() {
        let m = ask("WeB.DeFault.SVC.Cluster.LOCAL.", RecordType::A);
        assert_eq!(a_records(&m.answers), vec![VIP]);
        // The owner echoes the question as asked (0x20 clients compare it).
        assert_eq!(
            m.answers[0].name.to_ascii(),
            "WeB.DeFault.SVC.Cluster.LOCAL."
        );
        let m = ask("_HTTP._Tcp.web.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(srv_records(&m.answers).len(), 1);
    }

    #[test]
    fn headless_a_lists_only_ready_endpoints() {
        let m = ask("db.default.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            a_records(&m.answers),
            vec![Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 2, 7)]
        );
        // Readiness is asked each time: with everything ready, the third one appears.
        let m = reply_of(responder().answer(
            &query("db.default.svc.cluster.local.", RecordType::A),
            &table(),
            |_, _| true,
            Transport::Udp,
        ));
        assert_eq!(a_records(&m.answers).len(), 3);
    }

    #[test]
    fn headless_without_ready_endpoints_is_nxdomain() {
        let m = ask("idle.default.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.answers.is_empty());
        assert_soa_authority(&m);
    }

    #[test]
    fn headless_endpoint_hostnames_are_dashed_addresses() {
        let m = ask("10-244-2-7.db.default.svc.cluster.local.", RecordType::A);
        assert_eq!(a_records(&m.answers), vec![Ipv4Addr::new(10, 244, 2, 7)]);
        // Not ready: no name.
        let m = ask("10-244-3-9.db.default.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // ClusterIP Services have no endpoint names.
        let m = ask("10-244-1-5.web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn srv_of_a_named_port_targets_the_service_with_its_a_in_additional() {
        let m = ask("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            srv_records(&m.answers),
            vec![(80, "web.default.svc.cluster.local.".to_owned())]
        );
        assert_eq!(a_records(&m.additionals), vec![VIP]);
        assert_eq!(
            m.additionals[0].name.to_ascii(),
            "web.default.svc.cluster.local."
        );
        let m = ask("_dns._udp.web.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(
            srv_records(&m.answers),
            vec![(53, "web.default.svc.cluster.local.".into())]
        );
        // The port exists only with its own protocol.
        let m = ask("_dns._tcp.web.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // The bare Service name lists every port, the unnamed one too.
        let m = ask("web.default.svc.cluster.local.", RecordType::SRV);
        let ports: Vec<u16> = srv_records(&m.answers).iter().map(|s| s.0).collect();
        assert_eq!(ports, vec![80, 53, 9000]);
    }

    #[test]
    fn headless_srv_has_one_record_per_ready_endpoint() {
        let m = ask("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(
            srv_records(&m.answers),
            vec![
                (6432, "10-244-1-5.db.default.svc.cluster.local.".to_owned()),
                (6432, "10-244-2-7.db.default.svc.cluster.local.".to_owned()),
            ]
        );
        let extra: Vec<(String, Ipv4Addr)> = m
            .additionals
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some((r.name.to_ascii(), a.0)),
                _ => None,
            })
            .collect();
        assert_eq!(
            extra,
            vec![
                (
                    "10-244-1-5.db.default.svc.cluster.local.".into(),
                    Ipv4Addr::new(10, 244, 1, 5)
                ),
                (
                    "10-244-2-7.db.default.svc.cluster.local.".into(),
                    Ipv4Addr::new(10, 244, 2, 7)
                ),
            ]
        );
    }

    #[test]
    fn external_name_is_a_cname_followed_upstream() {
        let Answer::Chase(chase) = ask_bytes(
            &query("ext.default.svc.cluster.local.", RecordType::A),
            Transport::Udp,
        ) else {
            panic!("expected a chase")
        };
        let up_q = Message::from_vec(&chase.query).expect("chase query parses");
        assert_eq!(up_q.metadata.id, 0x4242);
        assert!(up_q.metadata.recursion_desired);
        assert_eq!(up_q.queries[0].name().to_ascii(), "example.com.");
        assert_eq!(up_q.queries[0].query_type(), RecordType::A);

        // The upstream's answer is appended to the CNAME.
        let mut up = Message::new(0x4242, MessageType::Response, OpCode::Query);
        up.queries = up_q.queries.clone();
        up.add_answer(Record::from_rdata(
            Name::from_str("example.com.").expect("name"),
            300,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 53))),
        ));
        let reply = responder()
            .finish_chase((*chase).clone(), Some(&up.to_vec().expect("encode")))
            .expect("reply");
        let m = Message::from_vec(&reply.bytes).expect("parses");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            m.queries[0].name().to_ascii(),
            "ext.default.svc.cluster.local."
        );
        assert!(matches!(&m.answers[0].data, RData::CNAME(c) if c.0.to_ascii() == "example.com."));
        assert_eq!(
            m.answers[0].name.to_ascii(),
            "ext.default.svc.cluster.local."
        );
        assert_eq!(a_records(&m.answers), vec![Ipv4Addr::new(192, 0, 2, 53)]);

        // No upstream answer, or one to another question: SERVFAIL.
        let failed = responder()
            .finish_chase((*chase).clone(), None)
            .expect("reply");
        assert_eq!(failed.rcode, ResponseCode::ServFail);
        let mut other = up.clone();
        other.queries = vec![Query::query(
            Name::from_str("evil.com.").expect("n"),
            RecordType::A,
        )];
        let failed = responder()
            .finish_chase(*chase, Some(&other.to_vec().expect("encode")))
            .expect("reply");
        assert_eq!(failed.rcode, ResponseCode::ServFail);

        // Asked for the CNAME itself: answered at once.
        let m = ask("ext.default.svc.cluster.local.", RecordType::CNAME);
        assert_eq!(m.answers.len(), 1);
        assert!(matches!(&m.answers[0].data, RData::CNAME(c) if c.0.to_ascii() == "example.com."));
    }

    #[test]
    fn external_name_into_the_cluster_is_followed_here() {
        let m = ask("alias.prod.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 2, "{m}");
        assert!(matches!(&m.answers[0].data, RData::CNAME(_)));
        assert_eq!(
            m.answers[1].name.to_ascii(),
            "web.default.svc.cluster.local."
        );
        assert_eq!(a_records(&m.answers), vec![VIP]);
        // A loop of ExternalNames ends in SERVFAIL, not in a hang.
        let m = ask("loop-a.default.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn existing_name_of_another_type_is_nodata_with_soa() {
        for (name, qtype) in [
            ("web.default.svc.cluster.local.", RecordType::AAAA),
            ("web.default.svc.cluster.local.", RecordType::MX),
            ("default.svc.cluster.local.", RecordType::A),
            ("svc.cluster.local.", RecordType::A),
            ("_tcp.web.default.svc.cluster.local.", RecordType::SRV),
            ("_http._tcp.web.default.svc.cluster.local.", RecordType::A),
        ] {
            let m = ask(name, qtype);
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NoError,
                "{name} {qtype}"
            );
            assert!(m.answers.is_empty(), "{name} {qtype}: {m}");
            assert_soa_authority(&m);
        }
    }

    #[test]
    fn missing_names_under_the_domain_are_nxdomain_with_soa() {
        for name in [
            "nosuch.default.svc.cluster.local.",
            "web.nosuchns.svc.cluster.local.",
            "nosuchns.svc.cluster.local.",
            // Pending and Conflict Services have no name yet.
            "pending.default.svc.cluster.local.",
            // What a pod's search list makes of an external name: answered here, at once.
            "example.com.default.svc.cluster.local.",
            "example.com.svc.cluster.local.",
            "example.com.cluster.local.",
            "_nosuch._tcp.web.default.svc.cluster.local.",
        ] {
            let m = ask(name, RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
            assert!(m.metadata.authoritative);
            assert!(m.answers.is_empty());
            assert_soa_authority(&m);
        }
    }

    #[test]
    fn names_outside_the_domain_are_forwarded() {
        for (name, qtype) in [
            ("example.com.", RecordType::A),
            ("example.com.", RecordType::ANY),
            ("local.", RecordType::SOA),
            ("cluster.local.example.com.", RecordType::A),
            // Reverse names of addresses that are no VIP or ready endpoint.
            ("99.0.96.10.in-addr.arpa.", RecordType::PTR),
            ("9.3.244.10.in-addr.arpa.", RecordType::PTR),
            // A VIP's reverse name asked for another type.
            ("10.0.96.10.in-addr.arpa.", RecordType::A),
        ] {
            assert_eq!(
                ask_bytes(&query(name, qtype), Transport::Udp),
                Answer::Forward,
                "{name} {qtype}"
            );
        }
    }

    #[test]
    fn ptr_of_a_vip_and_of_a_ready_endpoint() {
        let m = ask("10.0.96.10.in-addr.arpa.", RecordType::PTR);
        assert!(matches!(&m.answers[..], [r] if matches!(&r.data,
            RData::PTR(p) if p.0.to_ascii() == "web.default.svc.cluster.local.")));
        let m = ask("7.2.244.10.in-addr.arpa.", RecordType::PTR);
        assert!(matches!(&m.answers[..], [r] if matches!(&r.data,
            RData::PTR(p) if p.0.to_ascii() == "10-244-2-7.db.default.svc.cluster.local.")));
    }

    #[test]
    fn malformed_queries_get_formerr_with_their_id() {
        // Two questions.
        let mut two = query_msg("web.default.svc.cluster.local.", RecordType::A);
        two.add_query(Query::query(
            Name::from_str("x.").expect("n"),
            RecordType::A,
        ));
        // A header that promises a question, then garbage.
        let mut garbage = query("web.default.svc.cluster.local.", RecordType::A);
        garbage.truncate(12);
        garbage.extend_from_slice(&[0xff, 0xff, 0x01]);
        // No question at all.
        let mut none = query_msg("x.", RecordType::A);
        none.queries.clear();
        for bytes in [
            two.to_vec().expect("encode"),
            garbage,
            none.to_vec().expect("encode"),
        ] {
            let m = reply_of(ask_bytes(&bytes, Transport::Udp));
            assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
            assert_eq!(m.metadata.id, 0x4242);
            assert_eq!(m.metadata.message_type, MessageType::Response);
        }
    }

    #[test]
    fn unanswerable_messages_are_dropped_and_other_opcodes_not_implemented() {
        assert_eq!(
            ask_bytes(&[0x42, 0x42, 0x01], Transport::Udp),
            Answer::Drop(DropReason::Short)
        );
        let mut response = query_msg("web.default.svc.cluster.local.", RecordType::A);
        response.metadata.message_type = MessageType::Response;
        assert_eq!(
            ask_bytes(&response.to_vec().expect("encode"), Transport::Udp),
            Answer::Drop(DropReason::NotQuery)
        );
        let mut notify = query_msg("cluster.local.", RecordType::SOA);
        notify.metadata.op_code = OpCode::Notify;
        let m = reply_of(ask_bytes(&notify.to_vec().expect("encode"), Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        assert_eq!(m.metadata.id, 0x4242);
    }

    #[test]
    fn other_classes_and_zone_transfers_are_refused() {
        let mut chaos = query_msg("web.default.svc.cluster.local.", RecordType::A);
        chaos.queries[0].set_query_class(DNSClass::CH);
        let m = reply_of(ask_bytes(&chaos.to_vec().expect("encode"), Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        let m = reply_of(ask_bytes(
            &query("cluster.local.", RecordType::AXFR),
            Transport::Tcp,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn any_is_answered_with_what_the_name_holds() {
        let m = ask("web.default.svc.cluster.local.", RecordType::ANY);
        assert_eq!(a_records(&m.answers), vec![VIP]);
        let m = ask("ext.default.svc.cluster.local.", RecordType::ANY);
        assert!(matches!(&m.answers[..], [r] if matches!(r.data, RData::CNAME(_))));
    }

    #[test]
    fn schema_version_soa_and_pod_records() {
        let m = ask("dns-version.cluster.local.", RecordType::TXT);
        assert!(matches!(&m.answers[..], [r] if r.data.to_string().contains(SCHEMA_VERSION)));
        let m = ask("cluster.local.", RecordType::SOA);
        assert!(matches!(&m.answers[..], [r] if matches!(r.data, RData::SOA(_))));
        let m = ask("10-244-9-1.anyns.pod.cluster.local.", RecordType::A);
        assert_eq!(a_records(&m.answers), vec![Ipv4Addr::new(10, 244, 9, 1)]);
        let m = ask("10-244-09-1.anyns.pod.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn edns_version_above_zero_is_badvers() {
        let mut m = query_msg("web.default.svc.cluster.local.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_version(1);
        m.set_edns(edns);
        let r = reply_of(ask_bytes(&m.to_vec().expect("encode"), Transport::Udp));
        assert_eq!(u16::from(r.metadata.response_code), 16, "BADVERS");
        assert!(r.edns.is_some());
    }

    /// A headless Service with `n` ready endpoints 10.244.0.1…
    fn big_table(n: u8) -> ServiceTable {
        let mut t = ServiceTable::default();
        let s = service(
            "default",
            "big",
            ServiceType::ClusterIp,
            None,
            vec![port("http", Protocol::Tcp, 80, 80)],
            (1..=n).map(|i| ep([10, 244, 0, i])).collect(),
        );
        t.services.insert(s.key.clone(), s);
        t
    }

    #[test]
    fn udp_answers_too_large_are_truncated_and_tcp_answers_are_whole() {
        let t = big_table(60);
        let r = responder();
        let plain = query("big.default.svc.cluster.local.", RecordType::A);
        let Answer::Reply(udp) = r.answer(&plain, &t, |_, _| true, Transport::Udp) else {
            panic!("reply")
        };
        assert!(udp.truncated);
        assert!(udp.bytes.len() <= 512);
        let m = Message::from_vec(&udp.bytes).expect("parses");
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        assert_eq!(
            m.queries.len(),
            1,
            "the question stays so the client can match it"
        );

        let Answer::Reply(tcp) = r.answer(&plain, &t, |_, _| true, Transport::Tcp) else {
            panic!("reply")
        };
        assert!(!tcp.truncated);
        assert_eq!(
            a_records(&Message::from_vec(&tcp.bytes).expect("parses").answers).len(),
            60
        );

        // With EDNS the client may take up to 1232 bytes over UDP: 60 records fit…
        let mut with_edns = query_msg("big.default.svc.cluster.local.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        with_edns.set_edns(edns);
        let with_edns = with_edns.to_vec().expect("encode");
        let Answer::Reply(big) = r.answer(&with_edns, &t, |_, _| true, Transport::Udp) else {
            panic!("reply")
        };
        assert!(!big.truncated && big.bytes.len() > 512);
        let m = Message::from_vec(&big.bytes).expect("parses");
        assert_eq!(m.edns.as_ref().map(Edns::max_payload), Some(UDP_PAYLOAD));
        // …200 do not, whatever size the client offers.
        let Answer::Reply(huge) =
            r.answer(&with_edns, &big_table(200), |_, _| true, Transport::Udp)
        else {
            panic!("reply")
        };
        assert!(huge.truncated && huge.bytes.len() <= usize::from(UDP_PAYLOAD));
    }

    #[test]
    fn another_domain_is_served_and_cluster_local_is_then_forwarded() {
        let r = Responder::new("Corp.Example.").expect("responder");
        let Answer::Reply(reply) = r.answer(
            &query("web.default.svc.corp.example.", RecordType::A),
            &table(),
            ready,
            Transport::Udp,
        ) else {
            panic!("reply")
        };
        assert_eq!(
            a_records(&Message::from_vec(&reply.bytes).expect("p").answers),
            vec![VIP]
        );
        assert_eq!(
            r.answer(
                &query("web.default.svc.cluster.local.", RecordType::A),
                &table(),
                ready,
                Transport::Udp
            ),
            Answer::Forward
        );
        assert!(Responder::new(".").is_err());
        assert!(Responder::new("bad..name").is_err());
    }

    #[test]
    fn upstream_replies_are_matched_by_id_and_question() {
        let q = query("example.com.", RecordType::A);
        let reply = |id: u16, name: &str, rcode: ResponseCode, tc: bool| {
            let mut m = Message::new(id, MessageType::Response, OpCode::Query);
            m.add_query(Query::query(
                Name::from_ascii(name).expect("n"),
                RecordType::A,
            ));
            m.metadata.response_code = rcode;
            m.metadata.truncation = tc;
            m.to_vec().expect("encode")
        };
        let ok = ResponseCode::NoError;
        assert_eq!(
            check_upstream_reply(&q, &reply(0x4242, "example.com.", ok, false)),
            UpstreamReply::Answer
        );
        assert_eq!(
            check_upstream_reply(
                &q,
                &reply(0x4242, "EXAMPLE.com.", ResponseCode::NXDomain, false)
            ),
            UpstreamReply::Answer
        );
        assert_eq!(
            check_upstream_reply(&q, &reply(0x4242, "example.com.", ok, true)),
            UpstreamReply::Truncated
        );
        assert_eq!(
            check_upstream_reply(
                &q,
                &reply(0x4242, "example.com.", ResponseCode::ServFail, false)
            ),
            UpstreamReply::TryNext
        );
        assert_eq!(
            check_upstream_reply(&q, &reply(0x4243, "example.com.", ok, false)),
            UpstreamReply::Ignore
        );
        assert_eq!(
            check_upstream_reply(&q, &reply(0x4242, "example.net.", ok, false)),
            UpstreamReply::Ignore
        );
        assert_eq!(
            check_upstream_reply(&q, &q),
            UpstreamReply::Ignore,
            "a query is no reply"
        );
        assert_eq!(check_upstream_reply(&q, b"junk"), UpstreamReply::Ignore);
    }

    #[test]
    fn servfail_keeps_the_id_and_question() {
        let q = query("example.com.", RecordType::A);
        let r = responder().servfail(&q, Transport::Udp).expect("reply");
        let m = Message::from_vec(&r.bytes).expect("parses");
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(m.metadata.id, 0x4242);
        assert_eq!(m.queries[0].name().to_ascii(), "example.com.");
        assert!(!m.metadata.authoritative);
    }

    #[test]
    fn resolv_conf_for_a_pod() {
        assert_eq!(
            resolv_conf(Ipv4Addr::new(10, 244, 1, 1), "cluster.local.", "prod"),
            "search prod.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.244.1.1\n\
             options ndots:5\n"
        );
    }

    #[test]
    fn resolv_conf_nameservers_are_read_in_order() {
        let text = "# generated\n\
                    ; old style comment nameserver 9.9.9.9\n\
                    search example.com\n\
                    nameserver 192.0.2.53\n\
                    nameserver   2001:db8::1\n\
                    nameserver 127.0.0.53 # systemd-resolved\n\
                    nameserver 192.0.2.53\n\
                    #nameserver 192.0.2.99\n\
                    options edns0 trust-ad\n\
                    nameserver not-an-address\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            vec![Ipv4Addr::new(192, 0, 2, 53), Ipv4Addr::new(127, 0, 0, 53)]
        );
        assert!(resolv_conf_nameservers("").is_empty());
    }

    #[test]
    fn upstreams_never_include_ourselves() {
        let listen = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 1), 53);
        let got = upstreams(
            [
                SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 1), 53),
                SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 53), 53),
                SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 53), 53),
                // Same address, another port: another server.
                SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 1), 5353),
            ],
            listen,
        );
        assert_eq!(
            got,
            vec![
                SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 53), 53),
                SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 1), 5353),
            ]
        );
    }
}
