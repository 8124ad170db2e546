//! Abuse limits at the signaling edge: WebSockets and joins per client IP, and the rate of
//! one session's messages. The room enforces the per-participant caps (tracks,
//! subscriptions); this module is what a flood of connections or messages meets first.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use dashmap::DashMap;

/// The window of `max_joins_per_ip_per_minute`.
const JOIN_WINDOW: Duration = Duration::from_secs(60);

/// Per-IP settings, from the config.
#[derive(Debug, Clone)]
pub struct IpLimitSettings {
    /// Open WebSockets per client IP; the next upgrade gets `429`.
    pub max_connections: usize,
    /// Joins per client IP in any 60 s; the next one gets `rateLimited`.
    pub max_joins_per_minute: usize,
    /// Reverse proxies whose `X-Forwarded-For` is believed. From anyone else the header is
    /// ignored: a client could otherwise pick its own IP and escape every limit.
    pub trusted_proxies: Vec<IpAddr>,
}

#[derive(Debug, Default)]
struct IpState {
    connections: usize,
    /// When its recent joins happened, oldest first, at most `max_joins_per_minute`.
    joins: VecDeque<Instant>,
}

/// The per-IP counts, shared by every session. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IpLimits {
    settings: Arc<IpLimitSettings>,
    state: Arc<DashMap<IpAddr, IpState>>,
}

/// One open WebSocket of one IP; dropping it gives the slot back.
#[derive(Debug)]
pub struct Connection {
    limits: IpLimits,
    ip: IpAddr,
}

impl IpLimits {
    pub fn new(settings: IpLimitSettings) -> Self {
        Self {
            settings: Arc::new(settings),
            state: Arc::new(DashMap::new()),
        }
    }

    /// The client's IP: the peer's address, or, when the peer is a trusted proxy, the
    /// last address in `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.ip();
        if !self.settings.trusted_proxies.contains(&peer) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !self.settings.trusted_proxies.contains(ip))
            .unwrap_or(peer)
    }

    /// Takes a connection slot for `ip`, or `None` when it has all of its own.
    pub fn connect(&self, ip: IpAddr) -> Option<Connection> {
        let mut state = self.state.entry(ip).or_default();
        if state.connections >= self.settings.max_connections {
            return None;
        }
        state.connections += 1;
        Some(Connection {
            limits: self.clone(),
            ip,
        })
    }

    /// Counts a join by `ip` at `now`; false when it has had its share of the last minute.
    pub fn allow_join(&self, ip: IpAddr, now: Instant) -> bool {
        let mut state = self.state.entry(ip).or_default();
        while state
            .joins
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= JOIN_WINDOW)
        {
            state.joins.pop_front();
        }
        if state.joins.len() >= self.settings.max_joins_per_minute {
            return false;
        }
        state.joins.push_back(now);
        true
    }

    /// The IPs with any state (for tests: entries go when nothing is left to count).
    pub fn tracked(&self) -> usize {
        self.state.len()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let now = Instant::now();
        self.limits.state.remove_if_mut(&self.ip, |_, state| {
            state.connections = state.connections.saturating_sub(1);
            let recent = state
                .joins
                .back()
                .is_some_and(|t| now.saturating_duration_since(*t) < JOIN_WINDOW);
            state.connections == 0 && !recent
        });
    }
}

/// A token bucket for one session's messages: `rate` per second on average, bursts of up
/// to `burst`.
#[derive(Debug, Clone)]
pub struct MessageRate {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl MessageRate {
    pub fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        // Bursts: a page that just joined sends its offer, candidates, mute states and
        // track settings at once.
        let burst = rate * 2.0;
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one message at `now`; false when over the rate.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn limits(proxies: &[&str]) -> IpLimits {
        IpLimits::new(IpLimitSettings {
            max_connections: 2,
            max_joins_per_minute: 3,
            trusted_proxies: proxies.iter().map(|p| p.parse().expect("ip")).collect(),
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn connections_per_ip_are_capped_and_given_back() {
        let limits = limits(&[]);
        let a = limits.connect(ip("10.0.0.1")).expect("first");
        let _b = limits.connect(ip("10.0.0.1")).expect("second");
        assert!(limits.connect(ip("10.0.0.1")).is_none());
        assert!(limits.connect(ip("10.0.0.2")).is_some(), "another IP");
        drop(a);
        let _c = limits.connect(ip("10.0.0.1")).expect("a slot came back");
    }

    #[test]
    fn joins_per_ip_are_capped_per_minute() {
        let limits = limits(&[]);
        let t0 = Instant::now();
        let client = ip("10.0.0.1");
        for i in 0..3 {
            assert!(limits.allow_join(client, t0 + Duration::from_secs(i)));
        }
        assert!(!limits.allow_join(client, t0 + Duration::from_secs(10)));
        assert!(limits.allow_join(ip("10.0.0.2"), t0));
        assert!(limits.allow_join(client, t0 + Duration::from_secs(60)));
        // entries go once nothing is left to count
        let conn = limits.connect(ip("10.0.0.9")).expect("slot");
        let before = limits.tracked();
        drop(conn);
        assert_eq!(limits.tracked(), before - 1);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let limits = limits(&["127.0.0.1", "10.0.0.254"]);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 198.51.100.7, 10.0.0.254"),
        );
        let proxy: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let stranger: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        // the last hop the trusted proxies did not add is the client
        assert_eq!(limits.client_ip(proxy, &headers), ip("198.51.100.7"));
        assert_eq!(limits.client_ip(stranger, &headers), ip("192.0.2.1"));
        assert_eq!(limits.client_ip(proxy, &HeaderMap::new()), ip("127.0.0.1"));
    }

    #[test]
    fn the_message_rate_allows_bursts_then_the_average() {
        let t0 = Instant::now();
        let mut rate = MessageRate::new(5, t0);
        for _ in 0..10 {
            assert!(rate.take(t0));
        }
        assert!(!rate.take(t0));
        assert!(!rate.take(t0 + Duration::from_millis(100)));
        assert!(rate.take(t0 + Duration::from_millis(250)));
        assert!(!rate.take(t0 + Duration::from_millis(260)));
    }
}
