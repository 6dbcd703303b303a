//! The binary form of Services and pod endpoints as gossip objects, and their keys.
//!
//! ```text
//! svc/<namespace>/<name>                 head: the Service, or where its parts are
//! svc/<namespace>/<name>/<hash>/<i>      part i of a split Service (hash: 16 hex digits)
//! pod/<node>/<pod>                       a pod endpoint, written only by <node>
//!
//! every value:  version u8 = 1 | tag u8 | ...
//!   tag 1  inline head   stamp u64 | object
//!   tag 2  split head    stamp u64 | hash u64 | parts u16 | length u32
//!   tag 3  part          stamp u64 | chunk (the object's bytes [i·758, (i+1)·758))
//!   tag 4  pod endpoint  ip [4] | count u8 | { key str16 | value str8 }*
//! object:  created u64 | spec | allocation
//! ```
//!
//! Integers are big-endian, built with the gossip codec's `Writer`/`Reader`. `stamp` is
//! the writer's HLC when it wrote this version (`Gossip::stamp`); `hash` is
//! [`version_hash`] of the object bytes and the stamp, so two writers never produce the
//! same part keys with different bytes: parts are immutable, and a head names exactly
//! the parts that belong to it. A Service whose object does not fit one gossip value
//! ([`MAX_VALUE_LEN`], 768 B) is split into parts; [`service_writes`] gives the writes
//! for a new version, [`assemble`] puts a split Service back together once every part
//! has arrived.
//!
//! Decoding bounds every field as [`ServiceSpec::validate`] does (under
//! [`ServiceSettings::unrestricted`]: the node's own settings are applied when it builds
//! the catalog) and checks the allocation against the spec; it never panics and never
//! allocates more than the input's size.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::gossip::codec::{DecodeError, Reader, Writer, stable_hash};
use crate::gossip::{Hlc, MAX_KEY_LEN, MAX_NAME_LEN, MAX_VALUE_LEN};
use crate::pod::validate_pod_name;

use super::spec::{
    Algorithm, ClusterIp, ExplicitBackend, HealthCheck, MAX_BACKENDS, MAX_PORTS,
    MAX_SELECTOR_LABELS, Protocol, ServicePort, ServiceSettings, ServiceSpec, ServiceType,
    SessionAffinity, SpecError, label_key_problem, label_value_problem, unusable_address,
};
use super::table::ServiceKey;

/// The format version every value starts with.
pub const CODEC_VERSION: u8 = 1;

const TAG_INLINE: u8 = 1;
const TAG_SPLIT: u8 = 2;
const TAG_PART: u8 = 3;
const TAG_POD: u8 = 4;

/// Bytes of a part value before its chunk: version, tag, stamp.
const PART_HEADER: usize = 1 + 1 + 8;
/// Object bytes one part carries.
pub const PART_CHUNK: usize = MAX_VALUE_LEN - PART_HEADER;
/// Bytes of an inline head before the object.
const INLINE_HEADER: usize = 1 + 1 + 8;
/// Longest object: a Service at every limit of [`ServiceSpec::validate`] is about 17 KiB.
pub const MAX_OBJECT_LEN: usize = 32 * 1024;
/// Most parts of one Service.
pub const MAX_PARTS: u16 = MAX_OBJECT_LEN.div_ceil(PART_CHUNK) as u16;
/// Most labels of one pod.
pub const MAX_POD_LABELS: usize = 32;

/// Key prefix of Service heads and parts.
pub const SERVICE_PREFIX: &str = "svc/";
/// Key prefix of pod endpoints.
pub const POD_PREFIX: &str = "pod/";

/// Why bytes are not a Service or pod object, or an object cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("malformed object: {0}")]
    Decode(#[from] DecodeError),
    #[error("unknown object format version {0}")]
    Version(u8),
    #[error("unexpected object kind {0}")]
    Tag(u8),
    #[error("invalid Service spec: {0}")]
    Spec(#[from] SpecError),
    #[error("invalid allocation: {0}")]
    Allocation(&'static str),
    #[error("invalid pod labels: {0}")]
    Labels(#[from] LabelError),
    #[error("the object is {0} bytes, more than the {MAX_OBJECT_LEN} a Service may take")]
    TooLarge(usize),
    #[error("the parts do not hash to the version their head names")]
    HashMismatch,
    #[error("the object is for {found}, not for the key it is under ({expected})")]
    WrongKey {
        expected: ServiceKey,
        found: ServiceKey,
    },
}

// ---- objects ------------------------------------------------------------------------

/// What was allocated for a Service: every value it runs with, given in the spec or
/// allocated. A value the spec gives is copied here unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    /// `None` iff the Service has no cluster IP (headless, ExternalName).
    pub cluster_ip: Option<Ipv4Addr>,
    /// One per spec port: `Some` iff the Service type has node ports.
    pub node_ports: Vec<Option<u16>>,
    /// LoadBalancer: `None` while no external IP could be allocated (the pool is empty
    /// or full); the Service is then pending.
    pub external_ip: Option<Ipv4Addr>,
}

/// One Service as it is stored under `svc/<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceObject {
    pub spec: ServiceSpec,
    pub alloc: Allocation,
    /// When the Service was first added (an HLC of the writer's gossip clock); kept by
    /// every update, so an older Service keeps winning conflicts after an edit.
    pub created: Hlc,
}

impl ServiceObject {
    pub fn key(&self) -> ServiceKey {
        self.spec.key()
    }

    /// Checks that the allocation fits the spec: a cluster IP iff the Service has one,
    /// node ports iff its type has them (distinct per protocol), an external IP only on
    /// a LoadBalancer, and every value the spec gives copied unchanged.
    pub fn check_allocation(&self) -> Result<(), CodecError> {
        let (spec, alloc) = (&self.spec, &self.alloc);
        match (spec.has_cluster_ip(), alloc.cluster_ip) {
            (true, None) => return Err(CodecError::Allocation("cluster IP missing")),
            (false, Some(_)) => {
                return Err(CodecError::Allocation(
                    "cluster IP on a Service without one",
                ));
            }
            (true, Some(ip)) => {
                if spec.given_cluster_ip().is_some_and(|given| given != ip) {
                    return Err(CodecError::Allocation("cluster IP differs from the spec"));
                }
                if unusable_address(ip).is_some() {
                    return Err(CodecError::Allocation("unusable cluster IP"));
                }
            }
            (false, None) => {}
        }
        if alloc.node_ports.len() != spec.ports.len() {
            return Err(CodecError::Allocation("one node port entry per port"));
        }
        for (i, (port, np)) in spec.ports.iter().zip(&alloc.node_ports).enumerate() {
            match (spec.kind.has_node_ports(), np) {
                (true, None) => return Err(CodecError::Allocation("node port missing")),
                (false, Some(_)) => {
                    return Err(CodecError::Allocation(
                        "node port on a Service without node ports",
                    ));
                }
                (true, Some(np)) => {
                    if *np == 0 || port.node_port.is_some_and(|given| given != *np) {
                        return Err(CodecError::Allocation("node port differs from the spec"));
                    }
                    let earlier = spec.ports[..i].iter().zip(&alloc.node_ports);
                    if earlier
                        .into_iter()
                        .any(|(o, onp)| o.protocol == port.protocol && *onp == Some(*np))
                    {
                        return Err(CodecError::Allocation("node port used twice"));
                    }
                }
                (false, None) => {}
            }
        }
        match alloc.external_ip {
            Some(_) if spec.kind != ServiceType::LoadBalancer => {
                return Err(CodecError::Allocation(
                    "external IP on a Service that is no LoadBalancer",
                ));
            }
            Some(ip) => {
                if spec.external_ip.is_some_and(|given| given != ip) {
                    return Err(CodecError::Allocation("external IP differs from the spec"));
                }
                if unusable_address(ip).is_some() {
                    return Err(CodecError::Allocation("unusable external IP"));
                }
            }
            None => {
                if spec.external_ip.is_some() {
                    return Err(CodecError::Allocation("given external IP missing"));
                }
            }
        }
        Ok(())
    }

    /// The object's bytes (without version and tag). Returns `Err` iff the spec does not
    /// validate (under [`ServiceSettings::unrestricted`]), the allocation does not fit it,
    /// or it is longer than [`MAX_OBJECT_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        self.spec.validate(&ServiceSettings::unrestricted())?;
        self.check_allocation()?;
        let mut w = Writer::new();
        w.u64(self.created.0);
        encode_spec(&mut w, &self.spec);
        encode_opt_ip(&mut w, self.alloc.cluster_ip);
        for np in &self.alloc.node_ports {
            encode_opt_u16(&mut w, *np);
        }
        encode_opt_ip(&mut w, self.alloc.external_ip);
        if w.buf.len() > MAX_OBJECT_LEN {
            return Err(CodecError::TooLarge(w.buf.len()));
        }
        Ok(w.buf)
    }

    /// Decodes [`ServiceObject::encode`]'s bytes; `Err` iff they are malformed, have
    /// trailing bytes, or break a bound.
    pub fn decode(bytes: &[u8]) -> Result<ServiceObject, CodecError> {
        Self::decode_with(bytes, &ServiceSettings::unrestricted())
    }

    /// [`ServiceObject::decode`], validating the spec under `settings`.
    pub fn decode_with(
        bytes: &[u8],
        settings: &ServiceSettings,
    ) -> Result<ServiceObject, CodecError> {
        if bytes.len() > MAX_OBJECT_LEN {
            return Err(CodecError::TooLarge(bytes.len()));
        }
        let mut r = Reader::new(bytes);
        let created = Hlc(r.u64()?);
        let spec = decode_spec(&mut r)?;
        let cluster_ip = decode_opt_ip(&mut r)?;
        let mut node_ports = Vec::with_capacity(spec.ports.len());
        for _ in 0..spec.ports.len() {
            node_ports.push(decode_opt_u16(&mut r)?);
        }
        let external_ip = decode_opt_ip(&mut r)?;
        if !r.is_empty() {
            return Err(DecodeError::Invalid.into());
        }
        let object = ServiceObject {
            spec,
            alloc: Allocation {
                cluster_ip,
                node_ports,
                external_ip,
            },
            created,
        };
        object.spec.validate(settings)?;
        object.check_allocation()?;
        Ok(object)
    }
}

fn encode_opt_ip(w: &mut Writer, ip: Option<Ipv4Addr>) {
    match ip {
        None => w.u8(0),
        Some(ip) => {
            w.u8(1);
            w.ipv4(ip);
        }
    }
}

fn decode_opt_ip(r: &mut Reader<'_>) -> Result<Option<Ipv4Addr>, DecodeError> {
    Ok(if r.bool()? { Some(r.ipv4()?) } else { None })
}

fn encode_opt_u16(w: &mut Writer, v: Option<u16>) {
    match v {
        None => w.u8(0),
        Some(v) => {
            w.u8(1);
            w.u16(v);
        }
    }
}

fn decode_opt_u16(r: &mut Reader<'_>) -> Result<Option<u16>, DecodeError> {
    Ok(if r.bool()? { Some(r.u16()?) } else { None })
}

/// A string with a `u16` length prefix (label keys may be 317 bytes).
fn encode_str16(w: &mut Writer, s: &str) {
    w.bytes16(s.as_bytes());
}

fn decode_str16(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let bytes = r.bytes16()?;
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| DecodeError::Invalid)
}

fn protocol_code(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
    }
}

fn decode_protocol(r: &mut Reader<'_>) -> Result<Protocol, DecodeError> {
    match r.u8()? {
        0 => Ok(Protocol::Tcp),
        1 => Ok(Protocol::Udp),
        _ => Err(DecodeError::Invalid),
    }
}

/// Appends a validated spec (names and counts fit their prefixes).
fn encode_spec(w: &mut Writer, spec: &ServiceSpec) {
    w.str8(&spec.name);
    w.str8(&spec.namespace);
    w.u8(match spec.kind {
        ServiceType::ClusterIp => 0,
        ServiceType::NodePort => 1,
        ServiceType::LoadBalancer => 2,
        ServiceType::ExternalName => 3,
    });
    // Counts are bounded by validation (64 ports, 16 labels, 1000 backends).
    w.u8(spec.ports.len() as u8);
    for p in &spec.ports {
        w.str8(&p.name);
        w.u8(protocol_code(p.protocol));
        w.u16(p.port);
        encode_opt_u16(w, p.target_port);
        encode_opt_u16(w, p.node_port);
        w.bool(p.proxy_protocol);
    }
    w.u8(spec.selector.len() as u8);
    for (k, v) in &spec.selector {
        encode_str16(w, k);
        w.str8(v);
    }
    w.u16(spec.backends.len() as u16);
    for b in &spec.backends {
        w.ipv4(b.ip);
        encode_opt_u16(w, b.port);
    }
    match spec.cluster_ip {
        None => w.u8(0),
        Some(ClusterIp::Headless) => w.u8(1),
        Some(ClusterIp::Ip(ip)) => {
            w.u8(2);
            w.ipv4(ip);
        }
    }
    w.u8(match spec.session_affinity {
        SessionAffinity::None => 0,
        SessionAffinity::ClientIp => 1,
    });
    w.u32(spec.affinity_timeout_s);
    w.u8(match spec.algorithm {
        Algorithm::RoundRobin => 0,
        Algorithm::LeastConn => 1,
        Algorithm::Maglev => 2,
    });
    let h = &spec.health_check;
    w.bool(h.enabled);
    w.u32(h.interval_ms);
    w.u32(h.timeout_ms);
    w.u32(h.rise);
    w.u32(h.fall);
    encode_opt_ip(w, spec.external_ip);
    match &spec.external_name {
        None => w.u8(0),
        Some(name) => {
            w.u8(1);
            w.str8(name);
        }
    }
}

fn decode_spec(r: &mut Reader<'_>) -> Result<ServiceSpec, DecodeError> {
    let name = r.str8()?;
    let namespace = r.str8()?;
    let kind = match r.u8()? {
        0 => ServiceType::ClusterIp,
        1 => ServiceType::NodePort,
        2 => ServiceType::LoadBalancer,
        3 => ServiceType::ExternalName,
        _ => return Err(DecodeError::Invalid),
    };
    let count = usize::from(r.u8()?);
    if count > MAX_PORTS {
        return Err(DecodeError::Invalid);
    }
    let mut ports = Vec::with_capacity(count);
    for _ in 0..count {
        ports.push(ServicePort {
            name: r.str8()?,
            protocol: decode_protocol(r)?,
            port: r.u16()?,
            target_port: decode_opt_u16(r)?,
            node_port: decode_opt_u16(r)?,
            proxy_protocol: r.bool()?,
        });
    }
    let count = usize::from(r.u8()?);
    if count > MAX_SELECTOR_LABELS {
        return Err(DecodeError::Invalid);
    }
    let mut selector = BTreeMap::new();
    for _ in 0..count {
        let k = decode_str16(r)?;
        let v = r.str8()?;
        // Keys are written in order and once: anything else is not our encoding.
        if selector.keys().next_back().is_some_and(|last| *last >= k) {
            return Err(DecodeError::Invalid);
        }
        selector.insert(k, v);
    }
    let count = usize::from(r.u16()?);
    if count > MAX_BACKENDS || count * 5 > r.remaining() {
        return Err(DecodeError::Invalid);
    }
    let mut backends = Vec::with_capacity(count);
    for _ in 0..count {
        backends.push(ExplicitBackend {
            ip: r.ipv4()?,
            port: decode_opt_u16(r)?,
        });
    }
    let cluster_ip = match r.u8()? {
        0 => None,
        1 => Some(ClusterIp::Headless),
        2 => Some(ClusterIp::Ip(r.ipv4()?)),
        _ => return Err(DecodeError::Invalid),
    };
    let session_affinity = match r.u8()? {
        0 => SessionAffinity::None,
        1 => SessionAffinity::ClientIp,
        _ => return Err(DecodeError::Invalid),
    };
    let affinity_timeout_s = r.u32()?;
    let algorithm = match r.u8()? {
        0 => Algorithm::RoundRobin,
        1 => Algorithm::LeastConn,
        2 => Algorithm::Maglev,
        _ => return Err(DecodeError::Invalid),
    };
    let health_check = HealthCheck {
        enabled: r.bool()?,
        interval_ms: r.u32()?,
        timeout_ms: r.u32()?,
        rise: r.u32()?,
        fall: r.u32()?,
    };
    let external_ip = decode_opt_ip(r)?;
    let external_name = if r.bool()? { Some(r.str8()?) } else { None };
    Ok(ServiceSpec {
        name,
        namespace,
        kind,
        ports,
        selector,
        backends,
        cluster_ip,
        session_affinity,
        affinity_timeout_s,
        algorithm,
        health_check,
        external_ip,
        external_name,
    })
}

// ---- heads and parts ----------------------------------------------------------------

/// The value under a Service's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// The whole Service.
    Inline {
        stamp: Hlc,
        object: Box<ServiceObject>,
    },
    /// The Service is in parts.
    Split(SplitHead),
}

impl Head {
    /// When this version was written.
    pub fn stamp(&self) -> Hlc {
        match self {
            Head::Inline { stamp, .. } => *stamp,
            Head::Split(s) => s.stamp,
        }
    }
}

/// A head that names the parts of one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SplitHead {
    pub stamp: Hlc,
    /// [`version_hash`] of the object bytes and `stamp`.
    pub hash: u64,
    /// 2..=[`MAX_PARTS`].
    pub parts: u16,
    /// Length of the object bytes.
    pub len: u32,
}

impl SplitHead {
    /// The keys of this version's parts.
    pub fn part_keys(&self, service: &ServiceKey) -> Vec<String> {
        (0..self.parts)
            .map(|i| part_key(service, self.hash, i))
            .collect()
    }
}

/// One part's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    pub stamp: Hlc,
    pub chunk: &'a [u8],
}

/// The hash that names a split version: the gossip codec's stable hash (FNV-1a with the
/// MurmurHash3 finalizer) of a domain tag, the stamp and the object bytes. Mixing the
/// stamp in gives every write its own part keys, even of equal content: a writer that
/// deletes the parts of the version it replaces can never delete those of a concurrent
/// write that wins.
pub fn version_hash(stamp: Hlc, object: &[u8]) -> u64 {
    stable_hash(&[b"overlayd-service-parts", &stamp.0.to_be_bytes(), object])
}

fn check_version(r: &mut Reader<'_>) -> Result<u8, CodecError> {
    let version = r.u8()?;
    if version != CODEC_VERSION {
        return Err(CodecError::Version(version));
    }
    Ok(r.u8()?)
}

/// Decodes the value under a Service's key.
pub fn decode_head(bytes: &[u8]) -> Result<Head, CodecError> {
    decode_head_with(bytes, &ServiceSettings::unrestricted())
}

/// [`decode_head`], validating an inline Service under `settings`.
pub fn decode_head_with(bytes: &[u8], settings: &ServiceSettings) -> Result<Head, CodecError> {
    let mut r = Reader::new(bytes);
    match check_version(&mut r)? {
        TAG_INLINE => {
            let stamp = Hlc(r.u64()?);
            let object = Box::new(ServiceObject::decode_with(
                r.take(r.remaining())?,
                settings,
            )?);
            Ok(Head::Inline { stamp, object })
        }
        TAG_SPLIT => {
            let head = SplitHead {
                stamp: Hlc(r.u64()?),
                hash: r.u64()?,
                parts: r.u16()?,
                len: r.u32()?,
            };
            if !r.is_empty() {
                return Err(DecodeError::Invalid.into());
            }
            let len = head.len as usize;
            // Exactly the parts its length needs, and too long to have been inline.
            if len > MAX_OBJECT_LEN
                || head.parts < 2
                || head.parts > MAX_PARTS
                || usize::from(head.parts) != len.div_ceil(PART_CHUNK)
            {
                return Err(DecodeError::Invalid.into());
            }
            Ok(Head::Split(head))
        }
        tag => Err(CodecError::Tag(tag)),
    }
}

/// Decodes a part's value.
pub fn decode_part(bytes: &[u8]) -> Result<Part<'_>, CodecError> {
    let mut r = Reader::new(bytes);
    match check_version(&mut r)? {
        TAG_PART => {
            let stamp = Hlc(r.u64()?);
            let chunk = r.take(r.remaining())?;
            if chunk.is_empty() {
                return Err(DecodeError::Truncated.into());
            }
            Ok(Part { stamp, chunk })
        }
        tag => Err(CodecError::Tag(tag)),
    }
}

/// Puts a split Service back together: `part(i)` gives the value under part `i`'s key,
/// if it has arrived. Returns `Ok(None)` while a part is missing, `Err` if a part or
/// the whole is malformed or is not the version the head names (or not the Service
/// `key`).
pub fn assemble<'a>(
    key: &ServiceKey,
    head: &SplitHead,
    part: impl FnMut(u16) -> Option<&'a [u8]>,
) -> Result<Option<ServiceObject>, CodecError> {
    assemble_with(key, head, part, &ServiceSettings::unrestricted())
}

/// [`assemble`], validating the Service under `settings`.
pub fn assemble_with<'a>(
    key: &ServiceKey,
    head: &SplitHead,
    mut part: impl FnMut(u16) -> Option<&'a [u8]>,
    settings: &ServiceSettings,
) -> Result<Option<ServiceObject>, CodecError> {
    let mut bytes = Vec::with_capacity(head.len as usize);
    for i in 0..head.parts {
        let Some(value) = part(i) else {
            return Ok(None);
        };
        let p = decode_part(value)?;
        let expected = if i + 1 == head.parts {
            head.len as usize - PART_CHUNK * usize::from(i)
        } else {
            PART_CHUNK
        };
        if p.chunk.len() != expected || p.stamp != head.stamp {
            return Err(DecodeError::Invalid.into());
        }
        bytes.extend_from_slice(p.chunk);
    }
    if version_hash(head.stamp, &bytes) != head.hash {
        return Err(CodecError::HashMismatch);
    }
    let object = ServiceObject::decode_with(&bytes, settings)?;
    check_key(key, &object)?;
    Ok(Some(object))
}

/// An object must be stored under its own key.
pub(crate) fn check_key(key: &ServiceKey, object: &ServiceObject) -> Result<(), CodecError> {
    if object.spec.name != key.name || object.spec.namespace != key.namespace {
        return Err(CodecError::WrongKey {
            expected: key.clone(),
            found: object.key(),
        });
    }
    Ok(())
}

/// One gossip write: `Some` sets the key, `None` deletes it (`Gossip::set_object`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectWrite {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

impl ObjectWrite {
    pub fn set(key: String, value: Vec<u8>) -> Self {
        ObjectWrite {
            key,
            value: Some(value),
        }
    }

    pub fn delete(key: String) -> Self {
        ObjectWrite { key, value: None }
    }
}

/// The writes that store a new version of `object`, stamped `stamp` (a fresh
/// `Gossip::stamp`): its parts (if it does not fit one value), then its head, then the
/// deletes of `replaced` (the part keys of the version it replaces, as
/// `Catalog::part_keys` gives them; the new version never reuses one). Apply them in
/// order, in one go.
///
/// Returns `Err` iff the object does not encode (see [`ServiceObject::encode`]).
pub fn service_writes(
    object: &ServiceObject,
    stamp: Hlc,
    replaced: &[String],
) -> Result<Vec<ObjectWrite>, CodecError> {
    let bytes = object.encode()?;
    let key = service_key(&object.key());
    let mut writes = Vec::new();
    if INLINE_HEADER + bytes.len() <= MAX_VALUE_LEN {
        let mut w = Writer::new();
        w.u8(CODEC_VERSION);
        w.u8(TAG_INLINE);
        w.u64(stamp.0);
        w.raw(&bytes);
        writes.push(ObjectWrite::set(key, w.buf));
    } else {
        let head = SplitHead {
            stamp,
            hash: version_hash(stamp, &bytes),
            parts: bytes.len().div_ceil(PART_CHUNK) as u16,
            len: bytes.len() as u32,
        };
        for (i, chunk) in bytes.chunks(PART_CHUNK).enumerate() {
            let mut w = Writer::new();
            w.u8(CODEC_VERSION);
            w.u8(TAG_PART);
            w.u64(stamp.0);
            w.raw(chunk);
            writes.push(ObjectWrite::set(
                part_key(&object.key(), head.hash, i as u16),
                w.buf,
            ));
        }
        let mut w = Writer::new();
        w.u8(CODEC_VERSION);
        w.u8(TAG_SPLIT);
        w.u64(head.stamp.0);
        w.u64(head.hash);
        w.u16(head.parts);
        w.u32(head.len);
        writes.push(ObjectWrite::set(key, w.buf));
    }
    let deletes: Vec<ObjectWrite> = replaced
        .iter()
        .filter(|old| !writes.iter().any(|w| &w.key == *old))
        .map(|old| ObjectWrite::delete(old.clone()))
        .collect();
    writes.extend(deletes);
    Ok(writes)
}

// ---- pod endpoints ------------------------------------------------------------------

/// A pod as its node publishes it under `pod/<node>/<pod>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEndpoint {
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
}

/// Why pod labels cannot be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label key {key:?} {problem}")]
    Key { key: String, problem: String },
    #[error("label {key:?}: value {value:?} {problem}")]
    Value {
        key: String,
        value: String,
        problem: String,
    },
    #[error("{0} labels are more than the {MAX_POD_LABELS} a pod may have")]
    TooMany(usize),
    #[error(
        "the labels take {0} bytes, more than fit one gossip object ({MAX_VALUE_LEN} B with the address); use fewer or shorter labels"
    )]
    TooLarge(usize),
}

/// Checks pod labels: Kubernetes label syntax, at most [`MAX_POD_LABELS`], and small
/// enough for the pod to fit one gossip object.
pub fn validate_pod_labels(labels: &BTreeMap<String, String>) -> Result<(), LabelError> {
    if labels.len() > MAX_POD_LABELS {
        return Err(LabelError::TooMany(labels.len()));
    }
    for (key, value) in labels {
        if let Some(problem) = label_key_problem(key) {
            return Err(LabelError::Key {
                key: key.clone(),
                problem,
            });
        }
        if let Some(problem) = label_value_problem(value) {
            return Err(LabelError::Value {
                key: key.clone(),
                value: value.clone(),
                problem,
            });
        }
    }
    let len = pod_encoded_len(labels);
    if len > MAX_VALUE_LEN {
        return Err(LabelError::TooLarge(len));
    }
    Ok(())
}

fn pod_encoded_len(labels: &BTreeMap<String, String>) -> usize {
    1 + 1
        + 4
        + 1
        + labels
            .iter()
            .map(|(k, v)| 2 + k.len() + 1 + v.len())
            .sum::<usize>()
}

impl PodEndpoint {
    /// The value to publish. Returns `Err` iff the labels do not validate.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        validate_pod_labels(&self.labels)?;
        let mut w = Writer::new();
        w.u8(CODEC_VERSION);
        w.u8(TAG_POD);
        w.ipv4(self.ip);
        w.u8(self.labels.len() as u8);
        for (k, v) in &self.labels {
            encode_str16(&mut w, k);
            w.str8(v);
        }
        Ok(w.buf)
    }

    pub fn decode(bytes: &[u8]) -> Result<PodEndpoint, CodecError> {
        let mut r = Reader::new(bytes);
        match check_version(&mut r)? {
            TAG_POD => {}
            tag => return Err(CodecError::Tag(tag)),
        }
        let ip = r.ipv4()?;
        let count = usize::from(r.u8()?);
        if count > MAX_POD_LABELS {
            return Err(LabelError::TooMany(count).into());
        }
        let mut labels = BTreeMap::new();
        for _ in 0..count {
            let k = decode_str16(&mut r)?;
            let v = r.str8()?;
            if labels.keys().next_back().is_some_and(|last| *last >= k) {
                return Err(DecodeError::Invalid.into());
            }
            labels.insert(k, v);
        }
        if !r.is_empty() {
            return Err(DecodeError::Invalid.into());
        }
        if unusable_address(ip).is_some() {
            return Err(DecodeError::Invalid.into());
        }
        validate_pod_labels(&labels)?;
        Ok(PodEndpoint { ip, labels })
    }
}

// ---- keys ---------------------------------------------------------------------------

/// What a gossip object key names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectKey {
    /// `svc/<namespace>/<name>`.
    Service(ServiceKey),
    /// `svc/<namespace>/<name>/<hash>/<index>`.
    Part {
        service: ServiceKey,
        hash: u64,
        index: u16,
    },
    /// `pod/<node>/<pod>`.
    Pod { node: String, pod: String },
}

/// `svc/<namespace>/<name>`.
pub fn service_key(key: &ServiceKey) -> String {
    format!("{SERVICE_PREFIX}{}/{}", key.namespace, key.name)
}

/// `svc/<namespace>/<name>/<hash as 16 hex digits>/<index>`.
pub fn part_key(key: &ServiceKey, hash: u64, index: u16) -> String {
    format!(
        "{SERVICE_PREFIX}{}/{}/{hash:016x}/{index}",
        key.namespace, key.name
    )
}

/// `pod/<node>/<pod>`. Returns `None` iff the node name (1 to 63 bytes, no '/') or the
/// pod name (`pod::validate_pod_name`) cannot be in a key.
pub fn pod_key(node: &str, pod: &str) -> Option<String> {
    (node_name_ok(node) && validate_pod_name(pod).is_ok())
        .then(|| format!("{POD_PREFIX}{node}/{pod}"))
}

/// The key prefix of every pod `node` publishes.
pub fn pod_prefix(node: &str) -> String {
    format!("{POD_PREFIX}{node}/")
}

fn node_name_ok(node: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&node.len()) && !node.contains('/')
}

fn dns_label_ok(s: &str) -> bool {
    super::spec::dns_label_problem(s, super::spec::MAX_DNS_LABEL_LEN).is_none()
}

/// Parses a gossip object key; `None` for keys that are not Services, parts or pods (or
/// not in their canonical form).
pub fn parse_key(key: &str) -> Option<ObjectKey> {
    if key.len() > MAX_KEY_LEN {
        return None;
    }
    if let Some(rest) = key.strip_prefix(SERVICE_PREFIX) {
        let mut it = rest.split('/');
        let namespace = it.next()?;
        let name = it.next()?;
        if !dns_label_ok(namespace) || !dns_label_ok(name) {
            return None;
        }
        let service = ServiceKey::new(namespace, name);
        return match (it.next(), it.next(), it.next()) {
            (None, _, _) => Some(ObjectKey::Service(service)),
            (Some(hash), Some(index), None) => {
                if hash.len() != 16 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                {
                    return None;
                }
                let hash = u64::from_str_radix(hash, 16).ok()?;
                let index: u16 = index.parse().ok()?;
                // Canonical: no leading zeros or signs, within the part limit.
                if index.to_string() != key.rsplit('/').next()? || index >= MAX_PARTS {
                    return None;
                }
                Some(ObjectKey::Part {
                    service,
                    hash,
                    index,
                })
            }
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix(POD_PREFIX) {
        let (node, pod) = rest.split_once('/')?;
        if !node_name_ok(node) || validate_pod_name(pod).is_err() {
            return None;
        }
        return Some(ObjectKey::Pod {
            node: node.to_owned(),
            pod: pod.to_owned(),
        });
    }
    None
}

#[cfg(test)]
mod tests;
