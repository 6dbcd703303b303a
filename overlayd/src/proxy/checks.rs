//! Active health checks: one task per checked backend (distinct address, TCP), a TCP
//! connect every interval within the timeout. Results go into the shared health table,
//! where the proxy's own connects (passive results) land too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlayd_proto::service::HealthCheck;
use overlayd_proto::service::hash::{backend_identity, hash64};
use overlayd_proto::service::health::{BackendKey, Outcome};
use tokio::net::TcpStream;

use super::{Inner, lock};

/// Starts checks for backends that need them, stops those of backends that left or
/// whose parameters changed (restarted with the new ones).
pub(super) fn sync(inner: &Arc<Inner>) {
    let wanted: Vec<(BackendKey, HealthCheck)> = lock(&inner.health)
        .checked()
        .map(|(k, p)| (*k, *p))
        .collect();
    let mut running = lock(&inner.checks);
    running.retain(|key, (params, task)| {
        let keep = wanted.iter().any(|(k, p)| k == key && p == params);
        if !keep {
            task.abort();
        }
        keep
    });
    for (key, params) in wanted {
        running.entry(key).or_insert_with(|| {
            let task = inner.runtime.spawn(check_loop(inner.clone(), key, params));
            (params, task.abort_handle())
        });
    }
}

async fn check_loop(inner: Arc<Inner>, key: BackendKey, params: HealthCheck) {
    let interval = Duration::from_millis(u64::from(params.interval_ms.max(10)));
    let timeout = Duration::from_millis(u64::from(params.timeout_ms.max(1)));
    // Spread the first checks of many backends over an interval (by the fixed hash of
    // the address, so a restart does not bunch them either).
    let mut buf = [0u8; 21];
    let offset =
        hash64(0, backend_identity(key.addr, &mut buf)) % interval.as_millis().max(1) as u64;
    tokio::time::sleep(Duration::from_millis(offset)).await;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let outcome =
            match tokio::time::timeout(timeout, TcpStream::connect(SocketAddr::V4(key.addr))).await
            {
                Ok(Ok(stream)) => {
                    // Close with RST: a check leaves no TIME_WAIT behind on this node (one
                    // per check otherwise), as HAProxy's checks do.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    Outcome::Success
                }
                _ => Outcome::Failure,
            };
        let transition = lock(&inner.health).record(&key, outcome, Instant::now());
        if let Some(t) = transition {
            inner.health_changed(key, t, "health check");
        }
    }
}
