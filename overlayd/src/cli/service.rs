//! `overlayd service …` and `overlayd services`: a Service spec from flags or a TOML/JSON
//! file, and the tables that show Services.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use overlayd_proto::service::spec::{DEFAULT_AFFINITY_TIMEOUT_S, DEFAULT_NAMESPACE};
use overlayd_proto::service::{
    Algorithm, ClusterIp, ExplicitBackend, HealthCheck, Protocol, ResolvedService, ServicePort,
    ServiceSpec, ServiceStatus, ServiceType, SessionAffinity,
};

use super::table;
use crate::api;

/// The flags of `overlayd service add`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct AddArgs {
    /// The Service's name (a DNS label); may come from --file instead.
    #[arg(required_unless_present = "file")]
    pub name: Option<String>,
    /// Read the whole spec from a file: TOML (one Service, the keys of `[[service]]`) or
    /// JSON (the same keys), by extension. Flags other than --json are then refused.
    #[arg(long, conflicts_with_all = ["namespace", "kind", "ports", "selector", "backends",
        "cluster_ip", "external_ip", "external_name", "algorithm", "session_affinity",
        "affinity_timeout", "no_health_check", "proxy_protocol"])]
    pub file: Option<PathBuf>,
    /// The Service's namespace (a DNS label; default `default`).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// ClusterIP (default), NodePort, LoadBalancer or ExternalName.
    #[arg(long = "type", value_parser = parse_type)]
    pub kind: Option<ServiceType>,
    /// A port: `[NAME=]PORT[:TARGET_PORT][/tcp|/udp][@NODE_PORT]`, e.g. `http=80:8080/tcp`;
    /// repeat for more.
    #[arg(long = "port", value_name = "PORT", value_parser = parse_port)]
    pub ports: Vec<ServicePort>,
    /// Select pods with this label; repeat for more (all must match).
    #[arg(long, value_name = "KEY=VALUE", value_parser = super::parse_label)]
    pub selector: Vec<(String, String)>,
    /// A backend outside overlayd: `IP` or `IP:PORT`; repeat for more.
    #[arg(long = "backend", value_name = "IP[:PORT]")]
    pub backends: Vec<ExplicitBackend>,
    /// A cluster IP from the Service CIDR, or `None` for a headless Service.
    #[arg(long, value_parser = parse_cluster_ip)]
    pub cluster_ip: Option<ClusterIp>,
    /// LoadBalancer: the external IP (default: one from services.external_pool).
    #[arg(long)]
    pub external_ip: Option<Ipv4Addr>,
    /// ExternalName: the DNS name the Service is an alias of.
    #[arg(long)]
    pub external_name: Option<String>,
    /// round_robin (default), least_conn or maglev.
    #[arg(long, value_parser = parse_algorithm)]
    pub algorithm: Option<Algorithm>,
    /// None (default) or ClientIP.
    #[arg(long, value_parser = parse_affinity)]
    pub session_affinity: Option<SessionAffinity>,
    /// Seconds a client keeps its backend under ClientIP affinity (default 10800).
    #[arg(long)]
    pub affinity_timeout: Option<u32>,
    /// No active health checks (failed connects still take a backend out).
    #[arg(long)]
    pub no_health_check: bool,
    /// Send backends a PROXY protocol v2 header with the client's address (TCP ports).
    #[arg(long)]
    pub proxy_protocol: bool,
}

impl AddArgs {
    /// The spec these flags describe, or the one in `--file`.
    pub fn spec(self) -> Result<ServiceSpec> {
        if let Some(file) = &self.file {
            let mut spec = read_spec(file)?;
            if let Some(name) = self.name {
                spec.name = name;
            }
            return Ok(spec);
        }
        let name = self
            .name
            .ok_or_else(|| anyhow!("a Service needs a name (or --file)"))?;
        let mut ports = self.ports;
        if self.proxy_protocol {
            for port in ports.iter_mut().filter(|p| p.protocol == Protocol::Tcp) {
                port.proxy_protocol = true;
            }
        }
        Ok(ServiceSpec {
            name,
            namespace: self
                .namespace
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            kind: self.kind.unwrap_or_default(),
            ports,
            selector: self.selector.into_iter().collect(),
            backends: self.backends,
            cluster_ip: self.cluster_ip,
            session_affinity: self.session_affinity.unwrap_or_default(),
            affinity_timeout_s: self.affinity_timeout.unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S),
            algorithm: self.algorithm.unwrap_or_default(),
            health_check: HealthCheck {
                enabled: !self.no_health_check,
                ..HealthCheck::default()
            },
            external_ip: self.external_ip,
            external_name: self.external_name,
        })
    }
}

/// A spec from a `.toml` or `.json` file.
fn read_spec(path: &Path) -> Result<ServiceSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    let spec = if is_json {
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?
    } else {
        toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?
    };
    Ok(spec)
}

/// Every Service of a file for `overlayd service apply`: TOML with `[[service]]` tables
/// (as in the config file), or JSON, an array of specs or `{"service": [...]}`.
pub fn read_specs(path: &Path) -> Result<Vec<ServiceSpec>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Specs {
        service: Vec<ServiceSpec>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Json {
        List(Vec<ServiceSpec>),
        Table(Specs),
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let specs = if path.extension().is_some_and(|e| e == "json") {
        match serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))? {
            Json::List(specs) | Json::Table(Specs { service: specs }) => specs,
        }
    } else {
        toml::from_str::<Specs>(&text)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?
            .service
    };
    Ok(specs)
}

/// Parses a value by its serde spelling (the one config files use), so the CLI accepts
/// exactly what the files do.
fn by_serde<T: serde::de::DeserializeOwned>(s: &str, what: &str, expected: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| anyhow!("{s:?} is not a {what}; expected {expected}"))
}

fn parse_type(s: &str) -> Result<ServiceType> {
    by_serde(
        s,
        "Service type",
        "ClusterIP, NodePort, LoadBalancer or ExternalName",
    )
}

fn parse_algorithm(s: &str) -> Result<Algorithm> {
    by_serde(s, "algorithm", "round_robin, least_conn or maglev")
}

fn parse_affinity(s: &str) -> Result<SessionAffinity> {
    by_serde(s, "session affinity", "None or ClientIP")
}

fn parse_cluster_ip(s: &str) -> Result<ClusterIp> {
    ClusterIp::try_from(s.to_owned()).map_err(|e| anyhow!(e))
}

/// `[NAME=]PORT[:TARGET_PORT][/tcp|/udp][@NODE_PORT]`.
pub fn parse_port(s: &str) -> Result<ServicePort> {
    let bad = |why: &str| {
        anyhow!(
            "{s:?} is not a port ({why}); expected [NAME=]PORT[:TARGET_PORT][/tcp|/udp][@NODE_PORT], \
             e.g. http=80:8080/tcp@30080"
        )
    };
    let (name, rest) = match s.split_once('=') {
        Some((name, rest)) => (name.to_owned(), rest),
        None => (String::new(), s),
    };
    let (rest, node_port) = match rest.split_once('@') {
        Some((rest, np)) => (rest, Some(np.parse().map_err(|_| bad("node port"))?)),
        None => (rest, None),
    };
    let (rest, protocol) = match rest.split_once('/') {
        Some((rest, p)) => (
            rest,
            match p.to_ascii_lowercase().as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return Err(bad("protocol")),
            },
        ),
        None => (rest, Protocol::Tcp),
    };
    let (port, target_port) = match rest.split_once(':') {
        Some((p, t)) => (p, Some(t.parse().map_err(|_| bad("target port"))?)),
        None => (rest, None),
    };
    Ok(ServicePort {
        name,
        protocol,
        port: port.parse().map_err(|_| bad("port"))?,
        target_port,
        node_port,
        proxy_protocol: false,
    })
}

/// Which Service `service get|del` mean.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct NameArgs {
    /// NAME, or NAMESPACE/NAME.
    pub name: String,
    /// The namespace (default `default`), unless NAME gives it.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

impl NameArgs {
    /// `(namespace, name)`.
    pub fn key(self) -> Result<(String, String)> {
        key_of(&self.name, self.namespace)
    }
}

/// `namespace/name` or `name` (namespace `default`) of `service get|del`.
pub fn key_of(name: &str, namespace: Option<String>) -> Result<(String, String)> {
    match (name.split_once('/'), namespace) {
        (Some(_), Some(_)) => bail!("give the namespace either as NAMESPACE/NAME or with -n"),
        (Some((ns, name)), None) => Ok((ns.to_owned(), name.to_owned())),
        (None, ns) => Ok((
            ns.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            name.to_owned(),
        )),
    }
}

fn status_text(status: &ServiceStatus) -> String {
    match status {
        ServiceStatus::Active => "active".into(),
        ServiceStatus::Conflict(why) => format!("conflict: {why}"),
        ServiceStatus::Pending(why) => format!("pending: {why}"),
    }
}

fn ports_text(s: &ResolvedService) -> String {
    s.ports
        .iter()
        .map(|p| {
            let mut text = format!("{}", p.port);
            if p.target_port != p.port {
                text.push_str(&format!(":{}", p.target_port));
            }
            text.push_str(&format!("/{}", p.protocol.as_str().to_ascii_lowercase()));
            if let Some(np) = p.node_port {
                text.push_str(&format!("@{np}"));
            }
            text
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn addr_text(s: &ResolvedService) -> String {
    match (&s.cluster_ip, &s.external_name) {
        (Some(ip), _) => ip.to_string(),
        (None, Some(name)) => name.clone(),
        (None, None) => "None".into(),
    }
}

/// `overlayd service list`.
pub fn list_table(l: &api::ServiceList) -> String {
    table(
        &[
            "NAMESPACE",
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORTS",
            "ENDPOINTS",
            "STATUS",
        ],
        l.services.iter().map(|i| {
            let s = &i.service;
            vec![
                s.key.namespace.clone(),
                s.key.name.clone(),
                s.kind.as_str().into(),
                addr_text(s),
                s.external_ip.map_or("-".into(), |ip| ip.to_string()),
                ports_text(s),
                s.endpoints.len().to_string(),
                status_text(&s.status),
            ]
        }),
    )
}

/// `overlayd service get` and `service add`: one Service.
pub fn info_text(i: &api::ServiceInfo) -> String {
    let s = &i.service;
    let mut out = format!(
        "service {} ({})\n  status:    {}\n  address:   {}\n  ports:     {}\n",
        s.key,
        s.kind,
        status_text(&s.status),
        addr_text(s),
        ports_text(s)
    );
    if let Some(ip) = s.external_ip {
        out.push_str(&format!("  external:  {ip}\n"));
    }
    out.push_str(&format!(
        "  balancing: {}{}\n",
        s.algorithm.as_str(),
        match s.affinity {
            SessionAffinity::ClientIp => format!(", ClientIP affinity {} s", s.affinity_timeout_s),
            SessionAffinity::None => String::new(),
        }
    ));
    let selector: BTreeMap<_, _> = i.spec.selector.iter().collect();
    if !selector.is_empty() {
        let text: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("  selector:  {}\n", text.join(",")));
    }
    out.push_str(&format!("  endpoints: {}\n", s.endpoints.len()));
    for e in &s.endpoints {
        let at = match (&e.pod, &e.node) {
            (Some(pod), Some(node)) => format!(" (pod {pod} on {node})"),
            _ => String::new(),
        };
        let port = e.port.map_or(String::new(), |p| format!(":{p}"));
        out.push_str(&format!("    {}{port}{at}\n", e.ip));
    }
    out
}

/// `overlayd services`: every Service with each backend's health and counters.
pub fn report_table(r: &api::ServicesReport) -> String {
    let mut out = String::new();
    for sr in &r.services {
        let s = &sr.service;
        out.push_str(&format!(
            "{} {} {} {} {} {}",
            s.key,
            s.kind,
            addr_text(s),
            ports_text(s),
            s.algorithm.as_str(),
            status_text(&s.status)
        ));
        if let Some(ip) = s.external_ip {
            out.push_str(&format!(
                " external {ip} held by {}",
                sr.lb_holder
                    .as_deref()
                    .unwrap_or("a node of its own segment")
            ));
        }
        out.push('\n');
        let rows: Vec<Vec<String>> = sr
            .ports
            .iter()
            .flat_map(|p| p.backends.iter().map(move |b| (p, b)))
            .map(|(p, b)| {
                // Which pod the backend address is, from the Service's endpoints.
                let endpoint = s.endpoints.iter().find(|e| {
                    s.ports
                        .iter()
                        .find(|sp| sp.port == p.key.port && sp.protocol == p.key.protocol)
                        .is_some_and(|sp| e.addr(sp) == b.addr)
                });
                vec![
                    format!(
                        "  {}/{}",
                        p.key.port,
                        p.key.protocol.as_str().to_ascii_lowercase()
                    ),
                    b.addr.to_string(),
                    endpoint
                        .and_then(|e| e.pod.clone())
                        .unwrap_or_else(|| "-".into()),
                    endpoint
                        .and_then(|e| e.node.clone())
                        .unwrap_or_else(|| "-".into()),
                    backend_state(b.state).into(),
                    b.active.to_string(),
                    b.connections.to_string(),
                    b.failed_connects.to_string(),
                ]
            })
            .collect();
        if rows.is_empty() {
            out.push_str("  (no backends)\n");
            continue;
        }
        out.push_str(&table(
            &[
                "  PORT", "BACKEND", "POD", "NODE", "HEALTH", "ACTIVE", "TOTAL", "FAILED",
            ],
            rows.into_iter(),
        ));
    }
    if out.is_empty() {
        out.push_str("no Services\n");
    }
    out
}

fn backend_state(state: api::BackendState) -> &'static str {
    match state {
        api::BackendState::Up => "up",
        api::BackendState::Down => "down",
        api::BackendState::Retrying => "retrying",
        api::BackendState::Draining => "draining",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_parse_every_part() {
        let p = parse_port("http=80:8080/udp@30080").unwrap();
        assert_eq!(
            (
                p.name.as_str(),
                p.port,
                p.target_port,
                p.protocol,
                p.node_port
            ),
            ("http", 80, Some(8080), Protocol::Udp, Some(30080))
        );
        let p = parse_port("53").unwrap();
        assert_eq!(
            (
                p.name.as_str(),
                p.port,
                p.target_port,
                p.protocol,
                p.node_port
            ),
            ("", 53, None, Protocol::Tcp, None)
        );
        for bad in ["", "x", "80/sctp", "80:x", "80@", "99999"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_make_a_spec_with_kubernetes_defaults() {
        let args = AddArgs {
            name: Some("web".into()),
            ports: vec![parse_port("80:8080").unwrap()],
            selector: vec![("app".into(), "web".into())],
            kind: Some(parse_type("NodePort").unwrap()),
            proxy_protocol: true,
            ..AddArgs::default()
        };

        let spec = args.spec().unwrap();

        assert_eq!(spec.namespace, "default");
        assert_eq!(spec.kind, ServiceType::NodePort);
        assert_eq!(spec.affinity_timeout_s, 10_800);
        assert!(spec.health_check.enabled);
        assert!(spec.ports[0].proxy_protocol);
        assert_eq!(spec.selector["app"], "web");
    }

    #[test]
    fn a_spec_file_is_toml_or_json() {
        let dir = std::env::temp_dir().join(format!("overlayd-svc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml_file = dir.join("web.toml");
        std::fs::write(
            &toml_file,
            "name = \"web\"\ntype = \"LoadBalancer\"\nselector = { app = \"web\" }\n\
             [[ports]]\nport = 80\ntarget_port = 8080\n",
        )
        .unwrap();
        let json_file = dir.join("web.json");
        std::fs::write(
            &json_file,
            r#"{"name":"web","type":"LoadBalancer","selector":{"app":"web"},"ports":[{"port":80,"target_port":8080}]}"#,
        )
        .unwrap();
        let from = |file: &Path| {
            AddArgs {
                file: Some(file.to_owned()),
                ..AddArgs::default()
            }
            .spec()
            .unwrap()
        };

        assert_eq!(from(&toml_file), from(&json_file));
        assert_eq!(from(&toml_file).kind, ServiceType::LoadBalancer);
        std::fs::write(&json_file, r#"{"name":"web","prots":[]}"#).unwrap();
        let err = AddArgs {
            file: Some(json_file),
            ..AddArgs::default()
        }
        .spec()
        .unwrap_err();
        assert!(err.to_string().contains("prots"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn apply_files_hold_many_services() {
        let dir = std::env::temp_dir().join(format!("overlayd-apply-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml_file = dir.join("all.toml");
        std::fs::write(
            &toml_file,
            "[[service]]\nname = \"a\"\nports = [{ port = 80 }]\n\
             [[service]]\nname = \"b\"\nports = [{ port = 81 }]\n",
        )
        .unwrap();
        let json_file = dir.join("all.json");
        std::fs::write(
            &json_file,
            r#"[{"name":"a","ports":[{"port":80}]},{"name":"b","ports":[{"port":81}]}]"#,
        )
        .unwrap();

        let from_toml = read_specs(&toml_file).unwrap();

        assert_eq!(from_toml.len(), 2);
        assert_eq!(from_toml, read_specs(&json_file).unwrap());
        std::fs::write(&toml_file, "[[service]]\nname = \"a\"\nport = 80\n").unwrap();
        let err = read_specs(&toml_file).unwrap_err().to_string();
        assert!(err.contains("port"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_take_a_namespace_either_way() {
        assert_eq!(
            key_of("web", None).unwrap(),
            ("default".into(), "web".into())
        );
        assert_eq!(
            key_of("prod/web", None).unwrap(),
            ("prod".into(), "web".into())
        );
        assert_eq!(
            key_of("web", Some("prod".into())).unwrap(),
            ("prod".into(), "web".into())
        );
        assert!(key_of("a/web", Some("b".into())).is_err());
    }
}
