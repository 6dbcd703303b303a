//! The lab's stand-in for the world's DNS (`overlayd lab resolve`, run in the router
//! namespace): every node forwards names outside the cluster domain to it, so forwarding
//! and ExternalName Services can be tried without the host's real resolvers (the lab must
//! never send traffic off the host). It answers every `A` question with [`WORLD_ADDR`]
//! and every other question with no records.

use std::io;
use std::net::{Ipv4Addr, UdpSocket};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

/// What every outside name resolves to in the lab (TEST-NET-1: never routed anywhere).
pub const WORLD_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);

/// Serves on UDP port 53 of every address until the process is killed.
pub fn serve() -> io::Result<()> {
    serve_on(&UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 53))?)
}

fn serve_on(sock: &UdpSocket) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        if let Some(reply) = answer(&buf[..n]) {
            let _ = sock.send_to(&reply, from);
        }
    }
}

/// The reply to one query, or `None` for what is no query.
fn answer(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    if q.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut r = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.metadata.response_code = ResponseCode::NoError;
    for question in &q.queries {
        r.add_query(question.clone());
        if question.query_type() == RecordType::A {
            r.add_answer(Record::from_rdata(
                question.name().clone(),
                60,
                RData::A(A(WORLD_ADDR)),
            ));
        }
    }
    r.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::Name;

    #[test]
    fn every_a_question_gets_the_world_address() {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let server = sock.local_addr().unwrap();
        std::thread::spawn(move || serve_on(&sock));
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        for (qtype, want) in [
            (RecordType::A, vec![WORLD_ADDR]),
            (RecordType::AAAA, vec![]),
        ] {
            let mut m = Message::new(7, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(
                Name::from_ascii("db.example.com.").unwrap(),
                qtype,
            ));
            client.send_to(&m.to_vec().unwrap(), server).unwrap();
            let mut buf = [0u8; 512];
            let n = client.recv(&mut buf).unwrap();
            let reply = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(reply.metadata.id, 7);
            let got: Vec<Ipv4Addr> = reply
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect();
            assert_eq!(got, want, "{qtype}");
        }
    }
}
