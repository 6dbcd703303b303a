//! The Service catalog: every node turns the gossip objects (Service heads and parts,
//! pod endpoints) and the set of live members into the same [`ServiceTable`], and
//! decides what to write when a Service is added, changed or deleted, when a node's pods
//! change, and what the housekeeper repairs.
//!
//! Everything here is a pure function of its inputs (plus the previous [`Catalog`],
//! which only supplies the version of a split Service still in use while the parts of
//! its newer version arrive), so nodes holding the same objects and members build
//! identical tables.
//!
//! **Allocation order.** Services are taken in `(created, key)` order; each claims its
//! `(cluster IP, protocol, port)` per port, `(node port, protocol)` per port and
//! `(external IP, protocol, port)` per port. A claim an older Service already holds is a
//! conflict: if the contested value was given in the spec the younger Service is
//! [`ServiceStatus::Conflict`] (naming the holder) and holds nothing; if it was
//! allocated the Service is [`ServiceStatus::Pending`], keeps its other claims, and the
//! housekeeper re-allocates the contested values ([`repairs`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use crate::gossip::Hlc;
use crate::gossip::codec::stable_hash;

use super::codec::{
    Allocation, CodecError, Head, ObjectKey, ObjectWrite, PodEndpoint, ServiceObject, SplitHead,
    assemble_with, check_key, decode_head_with, decode_part, parse_key, part_key, pod_key,
    service_key, service_writes,
};
use super::spec::{Protocol, ServiceSettings, ServiceSpec, ServiceType, SpecError};
use super::table::{
    Endpoint, ResolvedPort, ResolvedService, ServiceKey, ServiceStatus, ServiceTable,
};

/// How long a part that no head names is kept before the housekeeper deletes it, in
/// wall-clock ms of its stamp: a part may arrive well before its head (they travel
/// separately), and deleting it then would break that version for good.
pub const ORPHAN_GRACE_MS: u64 = 10 * 60 * 1000;

/// The version of a Service in use.
#[derive(Debug, Clone)]
struct InUse {
    object: Arc<ServiceObject>,
    /// The inline head it was decoded from: an unchanged head is not decoded again.
    raw: Option<Arc<[u8]>>,
    /// Set iff this version is split: its parts.
    split: Option<SplitHead>,
}

/// A part present in gossip.
#[derive(Debug, Clone)]
struct PartRef {
    key: String,
    service: ServiceKey,
    hash: u64,
    /// `None` for a part that does not decode.
    stamp: Option<Hlc>,
}

/// What one Service claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Claim {
    Vip(Ipv4Addr, Protocol, u16),
    NodePort(u16, Protocol),
    External(Ipv4Addr, Protocol, u16),
}

impl Claim {
    fn describe(self) -> String {
        match self {
            Claim::Vip(ip, proto, port) => format!("cluster IP {ip}:{port}/{proto}"),
            Claim::NodePort(port, proto) => format!("node port {port}/{proto}"),
            Claim::External(ip, proto, port) => format!("external IP {ip}:{port}/{proto}"),
        }
    }
}

/// The catalog built from one snapshot of the gossip objects.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    table: ServiceTable,
    /// The version of every Service in use (complete: all parts present).
    in_use: BTreeMap<ServiceKey, InUse>,
    /// The winning head of every Service, complete or not.
    heads: BTreeMap<ServiceKey, HeadRef>,
    parts: Vec<PartRef>,
    /// Every pod endpoint published, by node then pod, live node or not.
    pods: BTreeMap<String, BTreeMap<String, Arc<PodCached>>>,
    /// The settings the Services were checked against: what was checked under other
    /// settings is checked again.
    settings: ServiceSettings,
    /// Who holds each claim (Services not in conflict).
    holders: HashMap<Claim, ServiceKey>,
    /// The live members the table was resolved with.
    live: BTreeSet<String>,
    skipped: usize,
}

/// A decoded pod endpoint with the bytes it came from.
#[derive(Debug)]
struct PodCached {
    endpoint: PodEndpoint,
    raw: Box<[u8]>,
}

/// The winning head of a Service, as far as the catalog needs it.
#[derive(Debug, Clone, Copy)]
struct HeadRef {
    split: Option<SplitHead>,
}

impl Catalog {
    /// Builds the catalog from the live gossip objects (`Gossip::objects()`), the names
    /// of the live members (up: alive or suspect — this node included), and the
    /// cluster's settings. `previous` is the last catalog this node built (or
    /// `Catalog::default()`): a split Service whose newest version is still missing parts
    /// keeps the version `previous` used.
    ///
    /// Objects that do not decode, or Services that do not validate under `settings`,
    /// are left out and counted ([`Catalog::skipped`]); keys outside `svc/` and `pod/`
    /// are ignored.
    pub fn build<'a>(
        objects: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        live: &BTreeSet<String>,
        settings: &ServiceSettings,
        previous: &Catalog,
    ) -> Catalog {
        let mut c = Catalog {
            settings: settings.clone(),
            ..Catalog::default()
        };
        // What the previous build decoded and checked under the same settings is reused
        // when its bytes are unchanged: a rebuild after one change decodes one object.
        let reuse = previous.settings == *settings;
        let mut part_values: HashMap<&'a str, &'a [u8]> = HashMap::new();
        let mut heads: Vec<(ServiceKey, &'a [u8])> = Vec::new();
        for (key, value) in objects {
            let parsed = parse_key(key);
            match parsed {
                Some(ObjectKey::Service(service)) => heads.push((service, value)),
                Some(ObjectKey::Part {
                    service,
                    hash,
                    index: _,
                }) => {
                    let stamp = decode_part(value).ok().map(|p| p.stamp);
                    if stamp.is_none() {
                        c.skipped += 1;
                    }
                    part_values.insert(key, value);
                    c.parts.push(PartRef {
                        key: key.to_owned(),
                        service,
                        hash,
                        stamp,
                    });
                }
                Some(ObjectKey::Pod { node, pod }) => {
                    let cached = previous
                        .pods
                        .get(&node)
                        .and_then(|pods| pods.get(&pod))
                        .filter(|p| *p.raw == *value)
                        .cloned();
                    let decoded = cached.or_else(|| {
                        PodEndpoint::decode(value).ok().map(|endpoint| {
                            Arc::new(PodCached {
                                endpoint,
                                raw: value.into(),
                            })
                        })
                    });
                    match decoded {
                        Some(p) => {
                            c.pods.entry(node).or_default().insert(pod, p);
                        }
                        None => c.skipped += 1,
                    }
                }
                None => {
                    if key.starts_with(super::codec::SERVICE_PREFIX)
                        || key.starts_with(super::codec::POD_PREFIX)
                    {
                        c.skipped += 1;
                    }
                }
            }
        }
        for (service, value) in heads {
            let prev = previous.in_use.get(&service).filter(|_| reuse);
            if let Some(prev) = prev
                && prev.raw.as_deref() == Some(value)
            {
                c.heads.insert(service.clone(), HeadRef { split: None });
                c.in_use.insert(service, prev.clone());
                continue;
            }
            let head = match decode_head_with(value, settings) {
                Ok(head) => head,
                Err(_) => {
                    c.skipped += 1;
                    continue;
                }
            };
            let in_use = match head {
                Head::Inline { object, .. } => {
                    c.heads.insert(service.clone(), HeadRef { split: None });
                    check_key(&service, &object).ok().map(|()| InUse {
                        object: Arc::new(*object),
                        raw: Some(value.into()),
                        split: None,
                    })
                }
                Head::Split(split) => {
                    c.heads
                        .insert(service.clone(), HeadRef { split: Some(split) });
                    if let Some(prev) = prev
                        && prev.split == Some(split)
                    {
                        c.in_use.insert(service, prev.clone());
                        continue;
                    }
                    let part = |i| {
                        part_values
                            .get(part_key(&service, split.hash, i).as_str())
                            .copied()
                    };
                    match assemble_with(&service, &split, part, settings) {
                        Ok(Some(object)) => Some(InUse {
                            object: Arc::new(object),
                            raw: None,
                            split: Some(split),
                        }),
                        // Parts still on their way: the version in use stays.
                        Ok(None) => match previous.in_use.get(&service) {
                            Some(prev) if prev.object.spec.validate(settings).is_ok() => {
                                Some(prev.clone())
                            }
                            Some(_) => None,
                            None => continue,
                        },
                        Err(_) => None,
                    }
                }
            };
            match in_use {
                Some(u) => {
                    c.in_use.insert(service, u);
                }
                None => c.skipped += 1,
            }
        }
        c.resolve(live, settings);
        c
    }

    /// Allocation order, conflicts, endpoints: fills `table` and `holders`.
    fn resolve(&mut self, live: &BTreeSet<String>, settings: &ServiceSettings) {
        let mut order: Vec<(Hlc, &ServiceKey)> = self
            .in_use
            .iter()
            .map(|(k, u)| (u.object.created, k))
            .collect();
        order.sort();
        self.live = live.clone();
        let pods = PodIndex::new(&self.pods, live);
        let mut holders: HashMap<Claim, ServiceKey> = HashMap::new();
        let mut services = BTreeMap::new();
        for (_, key) in order {
            let object = &self.in_use[key].object;
            let status = status_of(key, object, settings, &mut holders);
            let endpoints = endpoints_of(&object.spec, &pods);
            services.insert(key.clone(), resolved(key, object, status, endpoints));
        }
        self.holders = holders;
        self.table = ServiceTable { services };
    }

    /// The resolved Services.
    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    /// What `object` (written by this node after the catalog was built, see
    /// [`allocate_pending`]) resolves to against this catalog: its status by the claims
    /// the catalog's Services hold, its endpoints among the live members' pods. The next
    /// build has the final word (a concurrent write elsewhere may still win); this is
    /// what a node answers at once instead of rebuilding the whole table per write.
    pub fn preview(&self, object: &ServiceObject) -> ResolvedService {
        let key = object.key();
        // The holders of its own claims are all its status depends on.
        let mut holders: HashMap<Claim, ServiceKey> = claims(object)
            .into_iter()
            .filter_map(|(claim, _)| Some((claim, self.holders.get(&claim)?.clone())))
            .collect();
        let status = status_of(&key, object, &self.settings, &mut holders);
        let endpoints = if object.spec.selector.is_empty() {
            endpoints_of(&object.spec, &PodIndex::default())
        } else {
            endpoints_of(&object.spec, &PodIndex::new(&self.pods, &self.live))
        };
        resolved(&key, object, status, endpoints)
    }

    /// Objects left out of the last build: malformed, or Services that do not validate
    /// under this node's settings.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The Service object in use for `key`.
    pub fn object(&self, key: &ServiceKey) -> Option<&ServiceObject> {
        self.in_use.get(key).map(|u| &*u.object)
    }

    /// Every Service object in use, by key.
    pub fn objects(&self) -> impl Iterator<Item = (&ServiceKey, &ServiceObject)> {
        self.in_use.iter().map(|(k, u)| (k, &*u.object))
    }

    /// The part keys a new version of `key` replaces, or a delete of `key` removes: those
    /// of its winning head and of the version in use.
    pub fn part_keys(&self, key: &ServiceKey) -> Vec<String> {
        let mut keys: BTreeSet<String> = BTreeSet::new();
        if let Some(split) = self.heads.get(key).and_then(|h| h.split) {
            keys.extend(split.part_keys(key));
        }
        if let Some(split) = self.in_use.get(key).and_then(|u| u.split) {
            keys.extend(split.part_keys(key));
        }
        keys.into_iter().collect()
    }

    /// The pods `node` has published (live or not), by name.
    pub fn published_pods(&self, node: &str) -> impl Iterator<Item = (&str, &PodEndpoint)> {
        self.pods
            .get(node)
            .into_iter()
            .flatten()
            .map(|(name, p)| (name.as_str(), &p.endpoint))
    }

    /// Whether the version of `key` in use is the one its winning head names (and not the
    /// previous one, kept while the parts of a newer version arrive).
    pub fn is_current(&self, key: &ServiceKey) -> bool {
        match (self.heads.get(key), self.in_use.get(key)) {
            (Some(head), Some(in_use)) => head.split == in_use.split,
            _ => false,
        }
    }

    /// Whether `spec` is exactly the spec of its Service's current version: writing it
    /// again would change nothing but the stamps (every node applying the same
    /// `[[service]]` list at start would otherwise rewrite every Service).
    pub fn unchanged(&self, spec: &ServiceSpec) -> bool {
        let key = spec.key();
        self.is_current(&key) && self.object(&key).is_some_and(|o| o.spec == *spec)
    }

    /// Who holds a claim, other than `me`.
    fn held_by_other(&self, claim: Claim, me: &ServiceKey) -> Option<&ServiceKey> {
        self.holders.get(&claim).filter(|h| *h != me)
    }
}

// ---- status ---------------------------------------------------------------------------

/// The claims of a Service, each with whether its value was given in the spec.
fn claims(object: &ServiceObject) -> Vec<(Claim, bool)> {
    let (spec, alloc) = (&object.spec, &object.alloc);
    let mut out = Vec::new();
    if let Some(ip) = alloc.cluster_ip {
        let given = spec.given_cluster_ip().is_some();
        out.extend(
            spec.ports
                .iter()
                .map(|p| (Claim::Vip(ip, p.protocol, p.port), given)),
        );
    }
    for (p, np) in spec.ports.iter().zip(&alloc.node_ports) {
        if let Some(np) = np {
            out.push((Claim::NodePort(*np, p.protocol), p.node_port.is_some()));
        }
    }
    if let Some(ip) = alloc.external_ip {
        let given = spec.external_ip.is_some();
        out.extend(
            spec.ports
                .iter()
                .map(|p| (Claim::External(ip, p.protocol, p.port), given)),
        );
    }
    out
}

/// Why an allocated value no longer fits the settings (they changed), if it does not.
fn misfit(object: &ServiceObject, settings: &ServiceSettings) -> Option<String> {
    if let Some(ip) = object.alloc.cluster_ip
        && !settings.is_cluster_ip(ip)
    {
        return Some(format!(
            "its cluster IP {ip} is outside the service CIDR {}",
            settings.service_cidr
        ));
    }
    for np in object.alloc.node_ports.iter().flatten() {
        if !settings.node_port_range.contains(np) {
            return Some(format!(
                "its node port {np} is outside the node port range {}-{}",
                settings.node_port_range.start(),
                settings.node_port_range.end()
            ));
        }
    }
    if let Some(ip) = object.alloc.external_ip
        && !settings.in_external_pool(ip)
    {
        return Some(format!("its external IP {ip} is outside the external pool"));
    }
    None
}

/// The status of `object`, taking its claims into `holders` unless it is in conflict.
fn status_of(
    key: &ServiceKey,
    object: &ServiceObject,
    settings: &ServiceSettings,
    holders: &mut HashMap<Claim, ServiceKey>,
) -> ServiceStatus {
    let claims = claims(object);
    let contested = |given: bool| {
        claims.iter().find_map(|(claim, g)| {
            let holder = holders.get(claim).filter(|h| *h != key)?;
            (*g == given).then(|| (*claim, holder.clone()))
        })
    };
    if let Some((claim, holder)) = contested(true) {
        return ServiceStatus::Conflict(format!(
            "{} is held by {holder}, an older Service; give another value, or delete {holder}",
            claim.describe()
        ));
    }
    let lost = contested(false);
    for (claim, _) in &claims {
        holders.entry(*claim).or_insert_with(|| key.clone());
    }
    if let Some((claim, holder)) = lost {
        return ServiceStatus::Pending(format!(
            "its {} is held by {holder}, an older Service; being re-allocated",
            claim.describe()
        ));
    }
    if let Some(why) = misfit(object, settings) {
        return ServiceStatus::Pending(format!("{why}; being re-allocated"));
    }
    if object.spec.kind == ServiceType::LoadBalancer && object.alloc.external_ip.is_none() {
        let why = if settings.external_pool.is_empty() {
            "no external IP: the external pool is empty; set services.external_pool or give external_ip"
        } else {
            "no external IP: the external pool has no free address"
        };
        return ServiceStatus::Pending(why.to_owned());
    }
    ServiceStatus::Active
}

// ---- endpoints ------------------------------------------------------------------------

/// The pods of live nodes, indexed by label.
#[derive(Default)]
struct PodIndex<'a> {
    pods: Vec<(&'a str, &'a str, &'a PodEndpoint)>,
    by_label: HashMap<(&'a str, &'a str), Vec<u32>>,
}

impl<'a> PodIndex<'a> {
    fn new(
        pods: &'a BTreeMap<String, BTreeMap<String, Arc<PodCached>>>,
        live: &BTreeSet<String>,
    ) -> Self {
        let mut index = PodIndex {
            pods: Vec::new(),
            by_label: HashMap::new(),
        };
        for (node, node_pods) in pods {
            if !live.contains(node) {
                continue;
            }
            for (name, pod) in node_pods {
                let pod = &pod.endpoint;
                let i = index.pods.len() as u32;
                index.pods.push((node, name, pod));
                for (k, v) in &pod.labels {
                    index
                        .by_label
                        .entry((k.as_str(), v.as_str()))
                        .or_default()
                        .push(i);
                }
            }
        }
        index
    }

    /// Pods whose labels include every label of `selector`.
    fn select<'s>(
        &'s self,
        selector: &'s BTreeMap<String, String>,
    ) -> impl Iterator<Item = Endpoint> + 's {
        // Walk the shortest posting list, check the other labels on each pod.
        let shortest = selector
            .iter()
            .map(|(k, v)| {
                self.by_label
                    .get(&(k.as_str(), v.as_str()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|list| list.len())
            .unwrap_or(&[]);
        shortest.iter().filter_map(move |&i| {
            let (node, name, pod) = self.pods[i as usize];
            let matches = selector
                .iter()
                .all(|(k, v)| pod.labels.get(k).is_some_and(|pv| pv == v));
            matches.then(|| Endpoint {
                ip: pod.ip,
                port: None,
                node: Some(node.to_owned()),
                pod: Some(name.to_owned()),
            })
        })
    }
}

fn endpoints_of(spec: &ServiceSpec, pods: &PodIndex<'_>) -> Vec<Endpoint> {
    let mut endpoints: Vec<Endpoint> = if spec.kind == ServiceType::ExternalName {
        Vec::new()
    } else if !spec.backends.is_empty() {
        spec.backends
            .iter()
            .map(|b| Endpoint {
                ip: b.ip,
                port: b.port,
                node: None,
                pod: None,
            })
            .collect()
    } else if !spec.selector.is_empty() {
        pods.select(&spec.selector).collect()
    } else {
        Vec::new()
    };
    endpoints.sort_unstable();
    endpoints.dedup();
    endpoints
}

fn resolved(
    key: &ServiceKey,
    object: &ServiceObject,
    status: ServiceStatus,
    endpoints: Vec<Endpoint>,
) -> ResolvedService {
    let spec = &object.spec;
    ResolvedService {
        key: key.clone(),
        kind: spec.kind,
        cluster_ip: object.alloc.cluster_ip,
        external_ip: object.alloc.external_ip,
        external_name: spec.external_name.clone(),
        ports: spec
            .ports
            .iter()
            .zip(&object.alloc.node_ports)
            .map(|(p, np)| ResolvedPort {
                name: p.name.clone(),
                protocol: p.protocol,
                port: p.port,
                target_port: p.target(),
                node_port: *np,
                proxy_protocol: p.proxy_protocol,
            })
            .collect(),
        endpoints,
        algorithm: spec.algorithm,
        affinity: spec.session_affinity,
        affinity_timeout_s: spec.affinity_timeout_s,
        health: spec.health_check,
        status,
    }
}

// ---- allocation -----------------------------------------------------------------------

/// Why a Service could not be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// A value the spec gives is held by another Service.
    #[error("{field}: {what} is held by {holder}; give another value, or delete {holder} first")]
    Taken {
        field: String,
        what: String,
        holder: ServiceKey,
    },
    #[error(
        "cluster_ip: every address of the service CIDR {0} is taken; widen cluster.service_cidr or delete Services"
    )]
    ClusterIpsExhausted(Ipv4Net),
    #[error(
        "ports: no free node port left in {0}-{1}; widen services.node_port_range or delete Services"
    )]
    NodePortsExhausted(u16, u16),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Values in use by Services other than the one being allocated, whatever their status:
/// a new allocation avoids all of them, so it never starts a conflict.
#[derive(Debug, Default)]
struct Used {
    vips: BTreeSet<Ipv4Addr>,
    node_ports: BTreeSet<u16>,
    external: BTreeSet<Ipv4Addr>,
}

impl Used {
    /// The values of every Service of `catalog` but `except`.
    fn of(catalog: &Catalog, except: Option<&ServiceKey>) -> Used {
        let mut used = Used::default();
        for (k, u) in &catalog.in_use {
            if Some(k) != except {
                used.add(&u.object.alloc);
            }
        }
        used
    }

    fn add(&mut self, alloc: &Allocation) {
        self.vips.extend(alloc.cluster_ip);
        self.node_ports.extend(alloc.node_ports.iter().flatten());
        self.external.extend(alloc.external_ip);
    }
}

/// Hosts of `net` a Service may get: all but the network and broadcast addresses of a /30
/// or wider. Returns the first and how many.
fn hosts(net: Ipv4Net) -> (u32, u64) {
    let first = u32::from(net.network());
    let size = 1u64 << (32 - u32::from(net.prefix_len()));
    if net.prefix_len() <= 30 {
        (first + 1, size - 2)
    } else {
        (first, size)
    }
}

/// Where the probe for `key` starts among `count` slots: a stable hash (the gossip
/// codec's FNV-1a + MurmurHash3 finalizer) of a purpose tag, the namespace and the name.
fn preferred(purpose: &[u8], key: &ServiceKey, count: u64) -> u64 {
    stable_hash(&[purpose, key.namespace.as_bytes(), key.name.as_bytes()]) % count.max(1)
}

/// The cluster IP `key` is offered first: two Services added at once rarely prefer the
/// same one. `None` iff the service CIDR has no hosts.
pub fn preferred_cluster_ip(key: &ServiceKey, settings: &ServiceSettings) -> Option<Ipv4Addr> {
    let (first, count) = hosts(settings.service_cidr);
    (count > 0).then(|| Ipv4Addr::from(first + preferred(b"cluster-ip", key, count) as u32))
}

/// The node port `key`'s first port is offered first.
pub fn preferred_node_port(key: &ServiceKey, settings: &ServiceSettings) -> u16 {
    let (lo, hi) = (
        *settings.node_port_range.start(),
        *settings.node_port_range.end(),
    );
    let count = u64::from(hi.saturating_sub(lo)) + 1;
    lo + preferred(b"node-port", key, count) as u16
}

fn pick_cluster_ip(key: &ServiceKey, settings: &ServiceSettings, used: &Used) -> Option<Ipv4Addr> {
    let (first, count) = hosts(settings.service_cidr);
    let start = preferred(b"cluster-ip", key, count);
    (0..count)
        .map(|k| Ipv4Addr::from(first + ((start + k) % count) as u32))
        .find(|ip| !used.vips.contains(ip))
}

fn pick_node_port(
    key: &ServiceKey,
    settings: &ServiceSettings,
    used: &Used,
    taken: &[u16],
) -> Option<u16> {
    let lo = *settings.node_port_range.start();
    let count = u64::from(settings.node_port_range.end().saturating_sub(lo)) + 1;
    let start = preferred(b"node-port", key, count);
    (0..count)
        .map(|k| lo + ((start + k) % count) as u16)
        .find(|p| !used.node_ports.contains(p) && !taken.contains(p))
}

fn pick_external_ip(key: &ServiceKey, settings: &ServiceSettings, used: &Used) -> Option<Ipv4Addr> {
    let ranges: Vec<(u32, u64)> = settings.external_pool.iter().map(|n| hosts(*n)).collect();
    let total: u64 = ranges.iter().map(|(_, c)| c).sum();
    let start = preferred(b"external-ip", key, total);
    let nth = |mut i: u64| {
        for (first, count) in &ranges {
            if i < *count {
                return Some(Ipv4Addr::from(first + i as u32));
            }
            i -= count;
        }
        None
    };
    (0..total)
        .filter_map(|k| nth((start + k) % total))
        .find(|ip| !used.external.contains(ip) && settings.in_external_pool(*ip))
}

/// The allocation of `spec`: given values as given (refused if another Service holds
/// them), the values `existing` (the Service's current object) already has where they
/// still fit and nobody else holds them, and new ones for the rest, avoiding `used`
/// (values of every other Service). Chosen values are added to `used`.
fn allocation_for(
    spec: &ServiceSpec,
    existing: Option<&ServiceObject>,
    catalog: &Catalog,
    settings: &ServiceSettings,
    used: &mut Used,
) -> Result<Allocation, AllocError> {
    allocation_around(spec, existing, catalog, &HashMap::new(), settings, used)
}

/// [`allocation_for`], with the claims of `pending` (Services written since `catalog` was
/// built) taken as if the catalog held them.
fn allocation_around(
    spec: &ServiceSpec,
    existing: Option<&ServiceObject>,
    catalog: &Catalog,
    pending: &HashMap<Claim, ServiceKey>,
    settings: &ServiceSettings,
    used: &mut Used,
) -> Result<Allocation, AllocError> {
    let key = spec.key();
    let taken_by = |claim: Claim| {
        catalog
            .held_by_other(claim, &key)
            .or_else(|| pending.get(&claim).filter(|h| **h != key))
            .cloned()
    };
    let free = |claims: Vec<Claim>| claims.into_iter().all(|c| taken_by(c).is_none());
    // Cluster IP.
    let cluster_ip = if !spec.has_cluster_ip() {
        None
    } else if let Some(ip) = spec.given_cluster_ip() {
        for p in &spec.ports {
            if let Some(holder) = taken_by(Claim::Vip(ip, p.protocol, p.port)) {
                return Err(AllocError::Taken {
                    field: "cluster_ip".into(),
                    what: Claim::Vip(ip, p.protocol, p.port).describe(),
                    holder,
                });
            }
        }
        Some(ip)
    } else {
        let previous = existing.and_then(|o| o.alloc.cluster_ip).filter(|ip| {
            settings.is_cluster_ip(*ip)
                && free(
                    spec.ports
                        .iter()
                        .map(|p| Claim::Vip(*ip, p.protocol, p.port))
                        .collect(),
                )
        });
        match previous {
            Some(ip) => Some(ip),
            None => Some(
                pick_cluster_ip(&key, settings, used)
                    .ok_or(AllocError::ClusterIpsExhausted(settings.service_cidr))?,
            ),
        }
    };
    // Node ports: given ones as given, the rest around them.
    let exhausted = || {
        AllocError::NodePortsExhausted(
            *settings.node_port_range.start(),
            *settings.node_port_range.end(),
        )
    };
    let mut chosen: Vec<u16> = spec.ports.iter().filter_map(|p| p.node_port).collect();
    let mut node_ports: Vec<Option<u16>> = Vec::with_capacity(spec.ports.len());
    for (i, p) in spec.ports.iter().enumerate() {
        if !spec.kind.has_node_ports() {
            node_ports.push(None);
            continue;
        }
        if let Some(np) = p.node_port {
            if let Some(holder) = taken_by(Claim::NodePort(np, p.protocol)) {
                return Err(AllocError::Taken {
                    field: format!("ports[{i}].node_port"),
                    what: Claim::NodePort(np, p.protocol).describe(),
                    holder,
                });
            }
            node_ports.push(Some(np));
            continue;
        }
        // The same (protocol, port) in the existing object keeps its node port.
        let previous = existing
            .and_then(|o| {
                o.spec
                    .ports
                    .iter()
                    .zip(&o.alloc.node_ports)
                    .find(|(op, _)| op.protocol == p.protocol && op.port == p.port)
                    .and_then(|(_, np)| *np)
            })
            .filter(|np| {
                settings.node_port_range.contains(np)
                    && !chosen.contains(np)
                    && taken_by(Claim::NodePort(*np, p.protocol)).is_none()
            });
        let np = match previous {
            Some(np) => np,
            None => pick_node_port(&key, settings, used, &chosen).ok_or_else(exhausted)?,
        };
        node_ports.push(Some(np));
        chosen.push(np);
    }
    // External IP.
    let external_ip = if spec.kind != ServiceType::LoadBalancer {
        None
    } else if let Some(ip) = spec.external_ip {
        for p in &spec.ports {
            if let Some(holder) = taken_by(Claim::External(ip, p.protocol, p.port)) {
                return Err(AllocError::Taken {
                    field: "external_ip".into(),
                    what: Claim::External(ip, p.protocol, p.port).describe(),
                    holder,
                });
            }
        }
        Some(ip)
    } else {
        let previous = existing.and_then(|o| o.alloc.external_ip).filter(|ip| {
            settings.in_external_pool(*ip)
                && free(
                    spec.ports
                        .iter()
                        .map(|p| Claim::External(*ip, p.protocol, p.port))
                        .collect(),
                )
        });
        // With no pool (or none free) the Service waits, pending, for one.
        previous.or_else(|| {
            if settings.external_pool.is_empty() {
                None
            } else {
                pick_external_ip(&key, settings, used)
            }
        })
    };
    let alloc = Allocation {
        cluster_ip,
        node_ports,
        external_ip,
    };
    used.add(&alloc);
    Ok(alloc)
}

/// The object to write for `spec`: a new Service created at `created` (a fresh
/// `Gossip::stamp`), or an update of the existing one, which keeps its creation stamp
/// and every allocated value that still fits. Given values held by another Service, and
/// exhausted CIDRs or node port ranges, are refused; a LoadBalancer without a free
/// external IP is allocated without one (it is pending until the pool has room).
///
/// Returns `Err` iff the spec does not validate under `settings` or cannot be
/// allocated.
pub fn allocate(
    spec: &ServiceSpec,
    created: Hlc,
    catalog: &Catalog,
    settings: &ServiceSettings,
) -> Result<ServiceObject, AllocError> {
    spec.validate(settings)?;
    let key = spec.key();
    let existing = catalog.object(&key);
    let mut used = Used::of(catalog, Some(&key));
    let alloc = allocation_for(spec, existing, catalog, settings, &mut used)?;
    let object = ServiceObject {
        spec: spec.clone(),
        alloc,
        created: existing.map_or(created, |o| o.created),
    };
    // Refuse here what could not be written.
    object.encode()?;
    Ok(object)
}

/// The Services this node wrote since its catalog was built, oldest first, and what they
/// hold: a node that answers writes without rebuilding its catalog each time allocates
/// each new one around the catalog and these ([`PendingWrites::allocate`]), in time that
/// does not grow with the catalog (the values in use are gathered once per build). Clear
/// it when the catalog is rebuilt from a store that has the writes.
#[derive(Debug, Default)]
pub struct PendingWrites {
    objects: Vec<ServiceObject>,
    /// The values of the catalog's Services and the pending ones; gathered at the first
    /// write after a build.
    used: Option<Used>,
    /// The pending Services' claims.
    holders: HashMap<Claim, ServiceKey>,
}

impl PendingWrites {
    /// Forgets the pending writes (the catalog was rebuilt with them).
    pub fn clear(&mut self) {
        *self = PendingWrites::default();
    }

    pub fn objects(&self) -> &[ServiceObject] {
        &self.objects
    }

    /// [`allocate`] around the pending writes too, and records the result as pending (the
    /// caller writes it; a write that fails leaves its values taken until the next
    /// build, which is only cautious). An update of a pending Service keeps what the
    /// pending version has. `Ok(None)` iff the Service's current version (pending or in
    /// the catalog) already has this spec: nothing to write.
    pub fn allocate(
        &mut self,
        spec: &ServiceSpec,
        created: Hlc,
        catalog: &Catalog,
        settings: &ServiceSettings,
    ) -> Result<Option<ServiceObject>, AllocError> {
        spec.validate(settings)?;
        let key = spec.key();
        let existing = self
            .objects
            .iter()
            .rev()
            .find(|o| o.key() == key)
            .or_else(|| catalog.object(&key))
            .cloned();
        if existing.as_ref().is_some_and(|o| o.spec == *spec) {
            return Ok(None);
        }
        let objects = &self.objects;
        let used = self.used.get_or_insert_with(|| {
            let mut used = Used::of(catalog, None);
            for o in objects {
                used.add(&o.alloc);
            }
            used
        });
        // Its own values (if it has any) are in `used`; allocation keeps those that are
        // still its own and picks new ones around everything else.
        let alloc = allocation_around(
            spec,
            existing.as_ref(),
            catalog,
            &self.holders,
            settings,
            used,
        )?;
        let object = ServiceObject {
            spec: spec.clone(),
            alloc,
            created: existing.map_or(created, |o| o.created),
        };
        object.encode()?;
        used.add(&object.alloc);
        for (claim, _) in claims(&object) {
            self.holders.entry(claim).or_insert_with(|| key.clone());
        }
        self.objects.push(object.clone());
        Ok(Some(object))
    }
}

/// The writes that add or update a Service: allocation (see [`allocate`]) with
/// `stamp` (a fresh `Gossip::stamp`) as creation stamp of a new Service and as version
/// stamp, then the parts and head of the new version and the deletes of the parts it
/// replaces. Apply them in order with `Gossip::set_object`. None if the Service's current
/// version already has this spec.
pub fn put_service(
    spec: &ServiceSpec,
    stamp: Hlc,
    catalog: &Catalog,
    settings: &ServiceSettings,
) -> Result<Vec<ObjectWrite>, AllocError> {
    if catalog.unchanged(spec) {
        spec.validate(settings)?;
        return Ok(Vec::new());
    }
    let object = allocate(spec, stamp, catalog, settings)?;
    Ok(service_writes(
        &object,
        stamp,
        &catalog.part_keys(&spec.key()),
    )?)
}

/// [`put_service`] for many Services at once (a config's `[[service]]` list, a bulk
/// import): each is allocated around the catalog and the ones before it, all with
/// `stamp`; specs their Service already has are skipped. Returns `Err((i, error))` for the
/// first spec `i` that cannot be allocated; nothing is written then.
///
/// Apply a config's list only once this node holds the cluster's state (after the join's
/// full-state pull): against an empty catalog every Service would be written anew, with
/// a new creation stamp.
pub fn put_services(
    specs: &[ServiceSpec],
    stamp: Hlc,
    catalog: &Catalog,
    settings: &ServiceSettings,
) -> Result<Vec<ObjectWrite>, (usize, AllocError)> {
    let keys: BTreeSet<ServiceKey> = specs.iter().map(ServiceSpec::key).collect();
    // Values of the Services being replaced are free for their new versions: each keeps
    // its own through `existing`, and no other Service of the batch may take them.
    let mut used = Used::default();
    for (k, u) in &catalog.in_use {
        if !keys.contains(k) {
            used.add(&u.object.alloc);
        }
    }
    for spec in specs {
        if let Some(existing) = catalog.object(&spec.key()) {
            used.add(&existing.alloc);
        }
    }
    let mut writes = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let fail = |e: AllocError| (i, e);
        spec.validate(settings).map_err(|e| fail(e.into()))?;
        if catalog.unchanged(spec) {
            continue;
        }
        let key = spec.key();
        let existing = catalog.object(&key);
        let alloc = allocation_for(spec, existing, catalog, settings, &mut used).map_err(fail)?;
        let object = ServiceObject {
            spec: spec.clone(),
            alloc,
            created: existing.map_or(stamp, |o| o.created),
        };
        let w =
            service_writes(&object, stamp, &catalog.part_keys(&key)).map_err(|e| fail(e.into()))?;
        writes.extend(w);
    }
    Ok(writes)
}

/// The writes that delete a Service: its head and every part the catalog knows of.
/// Parts still travelling are deleted by the housekeeper later ([`repairs`]).
pub fn delete_service(key: &ServiceKey, catalog: &Catalog) -> Vec<ObjectWrite> {
    std::iter::once(service_key(key))
        .chain(catalog.part_keys(key))
        .map(ObjectWrite::delete)
        .collect()
}

/// The writes that make `node`'s published pods (`pod/<node>/…`) equal `local_pods`
/// (pod name → endpoint): new and changed pods written, pods that are gone deleted. Pods
/// whose name or labels cannot be published are left out (validate them when they are
/// added: `pod::validate_pod_name`, `codec::validate_pod_labels`).
pub fn pod_writes(
    catalog: &Catalog,
    node: &str,
    local_pods: &BTreeMap<String, PodEndpoint>,
) -> Vec<ObjectWrite> {
    let empty = BTreeMap::new();
    let published = catalog.pods.get(node).unwrap_or(&empty);
    let mut writes = Vec::new();
    for (name, pod) in local_pods {
        if published.get(name).is_some_and(|p| p.endpoint == *pod) {
            continue;
        }
        if let (Some(key), Ok(value)) = (pod_key(node, name), pod.encode()) {
            writes.push(ObjectWrite::set(key, value));
        }
    }
    for name in published.keys() {
        if !local_pods.contains_key(name)
            && let Some(key) = pod_key(node, name)
        {
            writes.push(ObjectWrite::delete(key));
        }
    }
    writes
}

/// The housekeeper: the first live member by name. It alone makes the repairs every
/// node would otherwise make at once.
pub fn housekeeper(live: &BTreeSet<String>) -> Option<&str> {
    live.first().map(String::as_str)
}

/// What [`repairs`] needs to know about this node and the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Housekeeping<'a> {
    /// This node's name.
    pub local: &'a str,
    /// Up members (alive or suspect), this node included: as for [`Catalog::build`].
    pub live: &'a BTreeSet<String>,
    /// Every member gossip still knows of, in any state (dead and left ones too, until
    /// they are reaped): pods of nodes outside it are deleted.
    pub members: &'a BTreeSet<String>,
    /// This node's pods, by name.
    pub local_pods: &'a BTreeMap<String, PodEndpoint>,
    /// A fresh `Gossip::stamp`, for the versions the repairs write.
    pub stamp: Hlc,
    /// Wall-clock ms now (Unix), to age orphaned parts.
    pub wall_ms: u64,
}

/// The writes this node should make now, given the catalog it just built: for every
/// node, those that make its published pods equal its local pods ([`pod_writes`]); for
/// the housekeeper ([`housekeeper`]) also re-allocations of Pending Services (contested
/// allocated values, values the settings no longer allow, a LoadBalancer's missing
/// external IP), deletes of parts no head names that are older than
/// [`ORPHAN_GRACE_MS`], and deletes of the pods of nodes that are no members at all.
/// Apply them in order with `Gossip::set_object`; run again after the next build
/// (applying them changes the objects).
pub fn repairs(
    catalog: &Catalog,
    settings: &ServiceSettings,
    h: &Housekeeping<'_>,
) -> Vec<ObjectWrite> {
    let mut writes = pod_writes(catalog, h.local, h.local_pods);
    if housekeeper(h.live) != Some(h.local) {
        return writes;
    }
    // Re-allocations, oldest Service first; each avoids what the previous ones took.
    let mut used = Used::of(catalog, None);
    let mut pending: Vec<(Hlc, &ServiceKey)> = catalog
        .table
        .services
        .iter()
        .filter(|(_, s)| matches!(s.status, ServiceStatus::Pending(_)))
        .filter_map(|(k, _)| Some((catalog.in_use.get(k)?.object.created, k)))
        .collect();
    pending.sort();
    for (_, key) in pending {
        let Some(object) = catalog.object(key) else {
            continue;
        };
        // A newer version is on its way (its parts are missing here): re-allocating the
        // version in use would overwrite it. Once it is in, it is judged on its own.
        if !catalog.is_current(key) {
            continue;
        }
        let Ok(alloc) = reallocation(object, catalog, settings, &mut used) else {
            continue;
        };
        if alloc == object.alloc {
            continue;
        }
        let new = ServiceObject {
            alloc,
            ..object.clone()
        };
        if let Ok(w) = service_writes(&new, h.stamp, &catalog.part_keys(key)) {
            writes.extend(w);
        }
    }
    // Orphaned parts.
    for part in &catalog.parts {
        let named = catalog
            .heads
            .get(&part.service)
            .and_then(|head| head.split)
            .is_some_and(|split| split.hash == part.hash);
        let old = part
            .stamp
            .is_none_or(|s| s.physical_ms().saturating_add(ORPHAN_GRACE_MS) <= h.wall_ms);
        let in_use = catalog
            .in_use
            .get(&part.service)
            .and_then(|u| u.split)
            .is_some_and(|split| split.hash == part.hash);
        if !named && !in_use && old {
            writes.push(ObjectWrite::delete(part.key.clone()));
        }
    }
    // Pods of nodes that are gone for good.
    for (node, pods) in &catalog.pods {
        if h.members.contains(node) || node == h.local {
            continue;
        }
        writes.extend(
            pods.keys()
                .filter_map(|pod| pod_key(node, pod))
                .map(ObjectWrite::delete),
        );
    }
    writes
}

/// A Pending Service's allocation redone: contested and misfit allocated values
/// replaced, the rest kept.
fn reallocation(
    object: &ServiceObject,
    catalog: &Catalog,
    settings: &ServiceSettings,
    used: &mut Used,
) -> Result<Allocation, AllocError> {
    // Its own values are in `used`; allocation_for keeps those that are still its own
    // and picks new ones around everything else.
    allocation_for(&object.spec, Some(object), catalog, settings, used)
}

#[cfg(test)]
mod tests;
