//! The client side of the CLI: asks the daemon over the control socket and prints tables
//! or, with `--json`, the API's JSON unchanged.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod pki;
pub mod service;

use crate::api::{self, Request};
use crate::pods::PodRecord;

/// Calls the daemon and prints the result as JSON or through `table`.
pub async fn show<T: DeserializeOwned + Serialize>(
    socket: &Path,
    request: Request,
    json: bool,
    table: impl FnOnce(&T) -> String,
) -> Result<()> {
    let result: T = api::call(socket, &request).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", table(&result));
    }
    Ok(())
}

pub fn status_table(s: &api::Status) -> String {
    let mut out = status_lines(s);
    if let Some(g) = &s.gossip {
        out.push_str(&format!(
            "gossip      {} alive, {} suspect, {} dead; health {}; sent {} B, received {} B; keys {}\n",
            g.members_alive,
            g.members_suspect,
            g.members_dead,
            g.local_health,
            g.bytes_sent,
            g.bytes_received,
            g.key_fingerprints.join(", ")
        ));
        for (reason, n) in g.drops.iter().filter(|(_, n)| **n > 0) {
            out.push_str(&format!("  gossip {reason:<11}{n}\n"));
        }
    }
    out
}

fn status_lines(s: &api::Status) -> String {
    let dropped: u64 = s.drops.values().sum();
    let mut out = format!(
        "node        {}\nready       {}\nunderlay    {} on {}\npod subnet  {} (gateway {})\nvtep        {} udp/{} vni {}\nmtu         pods {} tunnel {}\npeers       {}\npods        {}\nuptime      {}s\ndrops       {}\n",
        s.node,
        s.ready,
        s.underlay,
        s.underlay_interface,
        s.pod_subnet,
        s.gateway,
        s.vtep_mac,
        s.tunnel_port,
        s.vni,
        s.pod_mtu,
        s.tunnel_mtu,
        s.peers,
        s.pods,
        s.uptime_s,
        dropped
    );
    for (reason, n) in s.drops.iter().filter(|(_, n)| **n > 0) {
        out.push_str(&format!("  {reason:<18}{n}\n"));
    }
    out.push_str(&format!("services    {}\n", s.services));
    if s.dns.is_empty() {
        out.push_str("dns         off\n");
    } else {
        let count = |k: &str| s.dns.get(k).copied().unwrap_or(0);
        out.push_str(&format!(
            "dns         {}:53, {} queries, {} answered, {} nxdomain, {} forwarded, {} forward failures\n",
            s.gateway,
            count("queries"),
            count("answered"),
            count("nxdomain"),
            count("forwarded"),
            count("forward_failed")
        ));
    }
    out
}

/// `probe 2sw host-gw:down udp:down quic:up relay:up@n3` — why the path, its switches,
/// every rung (the relay rung with the member it goes through).
fn ladder_cell(l: &api::LadderReport) -> String {
    let mut out = l.reason.clone();
    if l.switches > 0 {
        out.push_str(&format!(" {}sw", l.switches));
    }
    for r in &l.rungs {
        out.push_str(&format!(" {}:{}", r.path, r.health));
        if r.path == "relay"
            && let Some(relay) = &l.relay
        {
            out.push_str(&format!("@{relay}"));
        }
    }
    out
}

/// `connected rtt 0.21ms dgram 1434 cert-until 2027-12-01` (the parts that are known).
fn quic_cell(q: &api::QuicReport) -> String {
    let mut out = q.state.clone();
    if let Some(rtt) = q.rtt_us {
        out.push_str(&format!(" rtt {:.2}ms", rtt as f64 / 1000.0));
    }
    if let Some(n) = q.max_datagram {
        out.push_str(&format!(" dgram {n}"));
    }
    if let Some(date) = q
        .cert_not_after
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s as i64).ok())
    {
        out.push_str(&format!(" cert-until {}", date.date()));
    }
    out
}

pub fn peers_table(p: &api::Peers) -> String {
    let rows = p.peers.iter().map(|r| {
        vec![
            r.name.clone(),
            r.path.clone(),
            if r.daemon_down {
                "daemon-down".to_owned()
            } else {
                r.ladder
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), ladder_cell)
            },
            r.underlay.to_string(),
            r.pod_subnet.to_string(),
            match (r.path_mtu, r.inner_mtu, &r.path_mtu_source) {
                (Some(outer), Some(inner), Some(source)) => format!("{outer}/{inner} {source}"),
                _ => "-".to_owned(),
            },
            r.quic.as_ref().map_or_else(|| "-".to_owned(), quic_cell),
            r.tx_packets.to_string(),
            r.tx_bytes.to_string(),
            r.rx_packets.to_string(),
            r.rx_bytes.to_string(),
            r.drops.to_string(),
        ]
    });
    let mut out = table(
        &[
            "NAME",
            "PATH",
            "WHY",
            "UNDERLAY",
            "POD SUBNET",
            "PATH MTU/INNER",
            "QUIC",
            "TX PKTS",
            "TX BYTES",
            "RX PKTS",
            "RX BYTES",
            "DROPS",
        ],
        rows,
    );
    for r in &p.peers {
        if let Some(e) = &r.route_error {
            out.push_str(&format!(
                "\nroute to {} ({}) FAILED: {e}\n",
                r.name, r.pod_subnet
            ));
        }
    }
    if !p.rejected.is_empty() {
        out.push_str("\npeers left out:\n");
        for r in &p.rejected {
            out.push_str(&format!(
                "  {} {} {}: {}\n",
                r.name, r.underlay, r.pod_subnet, r.reason
            ));
        }
    }
    let unattributed: Vec<_> = p.drops.iter().filter(|(_, n)| **n > 0).collect();
    if !unattributed.is_empty() {
        out.push_str("\ndrops by reason (all peers and unknown senders):\n");
        for (reason, n) in unattributed {
            out.push_str(&format!("  {reason:<18}{n}\n"));
        }
    }
    out
}

pub fn routes_table(r: &api::Routes) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    table(
        &["DESTINATION", "KIND", "VIA", "DEV", "SRC"],
        r.routes.iter().map(|r| {
            vec![
                r.dst.to_string(),
                r.kind.clone(),
                opt(r.via.map(|v| v.to_string())),
                opt(r.dev.clone()),
                opt(r.src.map(|v: Ipv4Addr| v.to_string())),
            ]
        }),
    )
}

pub fn members_table(m: &api::Members) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    table(
        &[
            "NAME",
            "ADDRESS",
            "SUBNET",
            "STATE",
            "INCARNATION",
            "LAST HEARD",
        ],
        m.members.iter().map(|m| {
            vec![
                m.name.clone(),
                m.address.to_string(),
                opt(m.subnet.map(|s| s.to_string())),
                if m.daemon_down {
                    format!("{} (daemon down)", m.state.as_str())
                } else {
                    m.state.as_str().to_owned()
                },
                m.incarnation.to_string(),
                opt(m.last_heard_ms.map(|ms| format!("{ms} ms ago"))),
            ]
        }),
    )
}

pub fn keys_table(k: &api::Keys) -> String {
    let mut out = String::new();
    for (i, key) in k.keys.iter().enumerate() {
        out.push_str(&format!(
            "{key}{}\n",
            if i == 0 { "  (primary)" } else { "" }
        ));
    }
    out
}

pub fn pods_table(p: &api::PodList) -> String {
    table(
        &["NAME", "IP", "NETNS", "VETH", "LABELS"],
        p.pods.iter().map(pod_row),
    )
}

/// `KEY=VALUE` of `--label`; the daemon checks the label syntax.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not a label; expected KEY=VALUE, e.g. app=web"))
}

/// `k=v,k2=v2`, or `-` for none.
fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn pod_line(p: &PodRecord) -> String {
    format!(
        "pod {} has {} in {} (veth {})\n",
        p.name,
        p.ip,
        p.netns.display(),
        p.veth
    )
}

fn pod_row(p: &PodRecord) -> Vec<String> {
    vec![
        p.name.clone(),
        p.ip.to_string(),
        p.netns.display().to_string(),
        p.veth.clone(),
        labels_text(&p.labels),
    ]
}

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (cell, w) in cells.zip(&widths) {
            s.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}
