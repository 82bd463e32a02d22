//! DNS for a sandbox: queries to the UDP listeners are answered by policy, never forwarded.
//!
//! An A or AAAA question for a name the rules allow is answered with the addresses the
//! proxy's resolver finds for it that the rules also allow (A gets IPv4, AAAA IPv6; TTL 30 s).
//! A denied name, or one that resolves to no allowed address, gets NXDOMAIN. Other question
//! types get an empty NOERROR answer for allowed names and NXDOMAIN for denied ones. Garbage
//! is ignored. Every answered question is reported to the observer (protocol DNS, port 53).

use crate::proxy::{Context, Decision, Protocol};
use crate::rules::Verdict;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

/// The TTL of every answer: short, so that a policy change is seen soon.
pub const TTL: u32 = 30;
/// Queries answered at once per socket; more are dropped (the client retries).
const MAX_IN_FLIGHT: usize = 256;
/// The most addresses in one answer (keeps responses within 512 bytes).
const MAX_ANSWERS: usize = 16;
/// How long one query may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(8);

/// Answers queries arriving on `socket` until dropped.
pub(crate) async fn serve_udp(socket: UdpSocket, ctx: Arc<Context>) -> io::Result<()> {
    let socket = Arc::new(socket);
    let mut in_flight = JoinSet::new();
    let mut buf = vec![0u8; 4096];
    loop {
        while in_flight.try_join_next().is_some() {}
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            // ICMP errors from earlier replies (ECONNREFUSED) and the like: keep serving.
            Err(_) => continue,
        };
        if in_flight.len() >= MAX_IN_FLIGHT {
            continue;
        }
        let query = buf[..n].to_vec();
        let (socket, ctx) = (socket.clone(), ctx.clone());
        in_flight.spawn(async move {
            if let Ok(Some(reply)) =
                tokio::time::timeout(ANSWER_TIMEOUT, answer(&query, &ctx)).await
            {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}

/// The reply to the DNS message `query`, or `None` if it is not a query worth answering.
pub async fn answer(query: &[u8], ctx: &Context) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.queries = request.queries.clone();
    if request.metadata.op_code != OpCode::Query {
        reply.metadata.response_code = ResponseCode::NotImp;
        return reply.to_vec().ok();
    }
    let [question] = request.queries.as_slice() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply.to_vec().ok();
    };
    let qname = question.name().clone();
    let name = qname.to_ascii();
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let qtype = question.query_type();
    let egress = ctx.source.current();
    let mut decision = Decision::pending(Some(name.clone()), None, 53, Protocol::Dns);
    let verdict = egress.rules.name_verdict(&name);
    let outcome: Result<Vec<IpAddr>, String> = match verdict {
        Verdict::Deny(reason) => Err(reason.to_string()),
        Verdict::Allow if matches!(qtype, RecordType::A | RecordType::AAAA) => {
            match ctx.resolver.lookup(&name).await {
                Err(e) => Err(format!("{name} could not be resolved: {e}")),
                Ok(ips) => {
                    let allowed: Vec<IpAddr> = ips
                        .into_iter()
                        .filter(|ip| egress.rules.addr_verdict(*ip).is_allow())
                        .collect();
                    if allowed.is_empty() {
                        Err(format!(
                            "{name} resolves to no address the sandbox may reach"
                        ))
                    } else {
                        Ok(allowed)
                    }
                }
            }
        }
        Verdict::Allow => Ok(Vec::new()),
    };
    match outcome {
        Err(reason) => {
            reply.metadata.response_code = ResponseCode::NXDomain;
            decision.reason = Some(reason);
        }
        Ok(ips) => {
            // Only the asked family; a name with addresses of the other family only gets an
            // empty NOERROR, so that resolvers asking both do not conclude it does not exist.
            for ip in ips.iter().take(MAX_ANSWERS) {
                let rdata = match (qtype, ip) {
                    (RecordType::A, IpAddr::V4(v4)) => RData::from(*v4),
                    (RecordType::AAAA, IpAddr::V6(v6)) => RData::from(*v6),
                    _ => continue,
                };
                reply
                    .answers
                    .push(Record::from_rdata(qname.clone(), TTL, rdata));
            }
            decision.allowed = true;
            decision.ip = reply.answers.first().and_then(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            });
        }
    }
    ctx.observer.decision(&decision);
    reply.to_vec().ok()
}
