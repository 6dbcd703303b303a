//! Gratuitous ARP: how a node tells its L2 segment that an address (a LoadBalancer IP
//! it has just taken over) now lives at its MAC, so neighbours update their caches at
//! once instead of sending to the old holder until their entries expire.

use std::net::Ipv4Addr;

use etherparse::{ArpEthIpv4Packet, ArpOperation};

use super::MacAddr;

/// A gratuitous ARP request for `ip` from `mac` (RFC 5227 §3's "ARP Announcement":
/// sender and target protocol address both `ip`, target hardware address zero), to be
/// broadcast on the segment. Requests rather than replies because every stack updates
/// an existing cache entry from either, and some ignore unsolicited replies.
pub fn gratuitous_arp(mac: MacAddr, ip: Ipv4Addr) -> [u8; ArpEthIpv4Packet::LEN] {
    ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: mac.0,
        sender_ipv4: ip.octets(),
        target_mac: [0; 6],
        target_ipv4: ip.octets(),
    }
    .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_has_the_rfc_5227_shape() {
        let mac = MacAddr([0x02, 0, 0, 0, 0, 0x11]);
        let ip = Ipv4Addr::new(10, 100, 1, 240);

        let bytes = gratuitous_arp(mac, ip);

        assert_eq!(
            bytes,
            [
                0, 1, // Ethernet
                8, 0, // IPv4
                6, 4, // address lengths
                0, 1, // request
                2, 0, 0, 0, 0, 0x11, // sender MAC
                10, 100, 1, 240, // sender IP
                0, 0, 0, 0, 0, 0, // target MAC
                10, 100, 1, 240, // target IP = sender IP
            ]
        );
    }
}
