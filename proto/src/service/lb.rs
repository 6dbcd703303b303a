//! Which node holds a LoadBalancer's external IP: rendezvous (highest random weight)
//! hashing over the candidates — the nodes that could answer ARP for the address (the
//! shell picks them: this node and its live peers on the same L2 segment).
//!
//! Every node that sees the same candidates picks the same holder, without talking, and
//! when a candidate leaves only the addresses it held move (each to the candidate with
//! the next highest weight); a candidate that joins takes only the addresses where it
//! weighs most.
//!
//! **The weight is fixed by this specification** (nodes of different versions must
//! agree): `weight(ip, node)` is the gossip codec's stable hash of the three parts
//! `"overlayd-lb"`, the 4 address octets and the node name's UTF-8 bytes — FNV-1a 64
//! (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) over each part's bytes
//! followed by a separator byte `0xff`, then MurmurHash3's fmix64 finalizer
//! (`h ^= h >> 33; h *= 0xff51afd7ed558ccd; h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53;
//! h ^= h >> 33`). The holder has the highest weight; equal weights go to the smaller
//! name. Test `the_weight_is_pinned` fixes a vector.

use std::net::Ipv4Addr;

use crate::gossip::codec::stable_hash;

/// The rendezvous weight of `node` for `ip` (see the module documentation).
pub fn weight(ip: Ipv4Addr, node: &str) -> u64 {
    stable_hash(&[b"overlayd-lb", &ip.octets(), node.as_bytes()])
}

/// The candidate that holds `ip`: the highest [`weight`], ties to the smaller name.
/// `None` iff there is no candidate. The order of `candidates` does not matter, and
/// duplicates are harmless.
pub fn holder<'a>(ip: Ipv4Addr, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|name| (weight(ip, name), std::cmp::Reverse(name), name))
        .max()
        .map(|(_, _, name)| name)
}

/// Whether `ip` is on the segment of an interface with these `addresses` (address and
/// prefix length): inside the subnet of one of them. Host addresses (/32) say nothing
/// about the segment — among them are the LoadBalancer IPs this node holds, which would
/// otherwise make an IP look local, not on-link, the moment the node takes it.
pub fn on_segment(ip: Ipv4Addr, addresses: &[(Ipv4Addr, u8)]) -> bool {
    addresses.iter().any(|&(addr, prefix)| {
        prefix < 32 && ipnet::Ipv4Net::new(addr, prefix).is_ok_and(|net| net.trunc().contains(&ip))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn ips(n: u32) -> impl Iterator<Item = Ipv4Addr> {
        (0..n).map(|i| Ipv4Addr::from(0xc000_0200 + i))
    }

    #[test]
    fn the_weight_is_pinned() {
        // Changing the hash would move every LoadBalancer IP during an upgrade. The
        // value was checked against an independent implementation of the documented
        // algorithm.
        assert_eq!(
            weight(Ipv4Addr::new(192, 0, 2, 10), "node-1"),
            0x3794_a6d4_8ca2_0de4
        );
        assert_eq!(
            holder(Ipv4Addr::new(192, 0, 2, 10), ["node-1", "node-2", "node-3"]),
            Some("node-3")
        );
    }

    #[test]
    fn every_order_of_the_candidates_agrees() {
        let a = ["n1", "n2", "n3", "n4"];
        let b = ["n4", "n2", "n1", "n3", "n2"];
        for ip in ips(500) {
            assert_eq!(holder(ip, a), holder(ip, b), "{ip}");
        }
        assert_eq!(holder(Ipv4Addr::new(192, 0, 2, 1), []), None);
        assert_eq!(holder(Ipv4Addr::new(192, 0, 2, 1), ["only"]), Some("only"));
    }

    #[test]
    fn a_leaving_candidate_moves_only_the_addresses_it_held() {
        let all = ["n1", "n2", "n3", "n4", "n5"];
        let rest = ["n1", "n2", "n4", "n5"];
        let mut moved = 0;
        let mut held: BTreeMap<&str, u32> = BTreeMap::new();
        for ip in ips(2000) {
            let before = holder(ip, all).unwrap();
            let after = holder(ip, rest).unwrap();
            *held.entry(before).or_default() += 1;
            if before == "n3" {
                moved += 1;
                assert_ne!(after, "n3");
            } else {
                assert_eq!(before, after, "{ip} moved from a candidate that stayed");
            }
        }
        // Spread evenly (400 each expected).
        assert!(held.values().all(|&c| (320..=480).contains(&c)), "{held:?}");
        assert_eq!(moved, held["n3"]);
    }

    #[test]
    fn an_ip_is_on_the_segment_of_a_subnet_address_not_of_a_host_address() {
        let eth0 = [
            (Ipv4Addr::new(10, 100, 1, 11), 24),
            (Ipv4Addr::new(10, 100, 1, 254), 32),
        ];
        assert!(on_segment(Ipv4Addr::new(10, 100, 1, 254), &eth0));
        assert!(on_segment(Ipv4Addr::new(10, 100, 1, 240), &eth0));
        assert!(!on_segment(Ipv4Addr::new(10, 100, 2, 254), &eth0));
        let held_only = [(Ipv4Addr::new(10, 100, 1, 254), 32)];
        assert!(!on_segment(Ipv4Addr::new(10, 100, 1, 254), &held_only));
    }
}
