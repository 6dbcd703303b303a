//! Sends gratuitous ARP announcements (`proto::wire::arp`) on an interface through an
//! `AF_PACKET` datagram socket: the kernel adds the Ethernet header for the broadcast
//! destination we give.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Result, bail};
use overlayd_proto::wire::MacAddr;
use overlayd_proto::wire::arp::gratuitous_arp;

const ETH_P_ARP: u16 = 0x0806;

/// Broadcasts `count` announcements that `ip` is at `mac` on interface `ifindex`.
pub fn announce(ifindex: u32, mac: MacAddr, ip: Ipv4Addr, count: usize) -> Result<()> {
    // SAFETY: a plain socket(2) call; the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value to fill in.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = i32::try_from(ifindex)?;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let packet = gratuitous_arp(mac, ip);
    for _ in 0..count {
        // SAFETY: the buffer and the address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            let e = std::io::Error::last_os_error();
            bail!("sending a gratuitous ARP for {ip} on interface #{ifindex}: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn ip(args: &str) -> String {
        let out = Command::new("ip")
            .args(args.split_whitespace())
            .output()
            .expect("running ip");
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A neighbour on the segment learns the announced address at our MAC.
    #[test]
    fn a_neighbour_learns_the_announced_address() {
        if !nix::unistd::geteuid().is_root() {
            use std::io::Write;
            let _ = std::io::stderr().write_all(
                b"\n*** ARP test SKIPPED: it needs root for a network namespace (CI runs it as root)\n",
            );
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            ip("link add garpa type veth peer name garpb");
            ip("link set garpa address 02:00:00:00:00:aa up");
            ip("link set garpb up");
            ip("addr add 192.0.2.2/24 dev garpb");
            std::fs::write("/proc/sys/net/ipv4/conf/garpb/arp_accept", "1").expect("arp_accept");
            let index: u32 = ip("-o link show garpa")
                .split(':')
                .next()
                .and_then(|i| i.trim().parse().ok())
                .expect("ifindex");
            let mac = MacAddr([2, 0, 0, 0, 0, 0xaa]);

            announce(index, mac, "192.0.2.240".parse().unwrap(), 2).unwrap();

            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            loop {
                let neigh = ip("neigh show dev garpb");
                if neigh.contains("192.0.2.240 lladdr 02:00:00:00:00:aa") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "not learnt: {neigh:?}"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
        .join()
        .expect("the netns thread");
    }
}
