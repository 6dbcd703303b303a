//! Services, sans-IO: what a Service is ([`spec`]), how Services and pod endpoints travel
//! as gossip objects, how every node turns them into the same resolved
//! [`table::ServiceTable`] (allocation of VIPs and node ports, conflicts, endpoints by
//! label selector), and the balancing decisions the daemon's proxy carries out (round
//! robin, least connections, Maglev, client-IP affinity, health, UDP flows).
//!
//! Nothing here does I/O or reads a clock: every input that depends on time takes `now`.
//! See docs/services.md for the design and its measurements.

mod aging;
pub mod balance;
pub mod catalog;
pub mod codec;
pub mod dns;
pub mod flows;
pub mod frontend;
pub mod hash;
pub mod health;
pub mod kernel;
pub mod lb;
pub mod maglev;
pub mod proxy_protocol;
pub mod spec;
pub mod table;

pub use catalog::{
    AllocError, Catalog, Housekeeping, PendingWrites, allocate, delete_service, housekeeper,
    pod_writes, put_service, put_services, repairs,
};
pub use codec::{Allocation, ObjectWrite, PodEndpoint, ServiceObject};
pub use spec::{
    Algorithm, ClusterIp, ExplicitBackend, FieldSegment, HealthCheck, Protocol, ServicePort,
    ServiceSettings, ServiceSpec, ServiceType, SessionAffinity, SpecError,
};
pub use table::{Endpoint, ResolvedPort, ResolvedService, ServiceKey, ServiceStatus, ServiceTable};

#[cfg(test)]
mod sim;
#[cfg(test)]
pub(crate) mod test_support;
