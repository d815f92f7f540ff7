//! Counters and gauges for `/metrics`, in the Prometheus text format (written by hand: it is
//! a few lines of text).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::ping::Rejection;

/// Everything `/metrics` reports that the process counts itself. Shared by the server, the
/// routes, the streams and the Redis store; every field is updated without a lock.
#[derive(Default)]
pub struct Metrics {
    /// Connections with a thread, streams included.
    pub connections: AtomicUsize,
    /// Most connections served at once, set at start from the budget.
    pub connection_budget: AtomicUsize,
    pub connections_total: AtomicU64,
    /// Connections answered `503` at once for being over the budget.
    pub connections_refused_total: AtomicU64,
    pub pings_accepted_total: AtomicU64,
    pub pings_refused_invalid_total: AtomicU64,
    pub pings_refused_too_large_total: AtomicU64,
    pub pings_refused_unavailable_total: AtomicU64,
    /// Events written to streams (one per event per subscriber).
    pub events_delivered_total: AtomicU64,
    /// Failed Redis calls, from the pool and the subscription.
    pub redis_errors_total: AtomicU64,
    /// Times the subscription came back after being down.
    pub redis_resubscribes_total: AtomicU64,
}

/// Values that live elsewhere (the streams, the hub, the store), read when `/metrics` is
/// rendered.
pub struct Readings {
    /// Streams open now.
    pub streams: usize,
    pub subscribers_dropped_slow: u64,
    /// Whether the Redis feed is up; `None` in memory mode.
    pub feed_up: Option<bool>,
}

impl Metrics {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused ping under its reason.
    pub fn count_refused(&self, rejection: &Rejection) {
        Metrics::count(match rejection {
            Rejection::Invalid(_) => &self.pings_refused_invalid_total,
            Rejection::TooLarge(_) => &self.pings_refused_too_large_total,
        });
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, readings: &Readings) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP heartbeat_{name} {help}");
            let _ = writeln!(out, "# TYPE heartbeat_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "heartbeat_{name}{labels} {value}");
            }
        };
        metric(
            "build_info",
            "gauge",
            "Version of the running binary.",
            &[(concat!("{version=\"", env!("CARGO_PKG_VERSION"), "\"}"), 1)],
        );
        metric(
            "connections",
            "gauge",
            "Open connections, streams included.",
            &[("", self.connections.load(Ordering::Relaxed) as u64)],
        );
        metric(
            "connection_budget",
            "gauge",
            "Most connections served at once.",
            &[("", self.connection_budget.load(Ordering::Relaxed) as u64)],
        );
        metric(
            "streams",
            "gauge",
            "Open event streams.",
            &[("", readings.streams as u64)],
        );
        metric(
            "connections_total",
            "counter",
            "Connections accepted.",
            &[("", get(&self.connections_total))],
        );
        metric(
            "connections_refused_total",
            "counter",
            "Connections answered 503 for being over the connection budget.",
            &[("", get(&self.connections_refused_total))],
        );
        metric(
            "pings_accepted_total",
            "counter",
            "Pings stored and delivered.",
            &[("", get(&self.pings_accepted_total))],
        );
        metric(
            "pings_refused_total",
            "counter",
            "Pings refused, by reason.",
            &[
                (
                    "{reason=\"invalid\"}",
                    get(&self.pings_refused_invalid_total),
                ),
                (
                    "{reason=\"too_large\"}",
                    get(&self.pings_refused_too_large_total),
                ),
                (
                    "{reason=\"store_unavailable\"}",
                    get(&self.pings_refused_unavailable_total),
                ),
            ],
        );
        metric(
            "events_delivered_total",
            "counter",
            "Events written to streams.",
            &[("", get(&self.events_delivered_total))],
        );
        metric(
            "subscribers_dropped_total",
            "counter",
            "Subscribers disconnected for falling too far behind.",
            &[("", readings.subscribers_dropped_slow)],
        );
        metric(
            "redis_errors_total",
            "counter",
            "Failed Redis calls.",
            &[("", get(&self.redis_errors_total))],
        );
        metric(
            "redis_resubscribes_total",
            "counter",
            "Times the Redis subscription came back after being down.",
            &[("", get(&self.redis_resubscribes_total))],
        );
        if let Some(up) = readings.feed_up {
            metric(
                "redis_subscription_up",
                "gauge",
                "Whether the Redis subscription is up (1) or down (0).",
                &[("", u64::from(up))],
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_help_and_type() {
        let metrics = Metrics::default();
        Metrics::count(&metrics.pings_accepted_total);
        metrics.count_refused(&Rejection::TooLarge("x".into()));
        metrics.connection_budget.store(100, Ordering::Relaxed);
        let text = metrics.render(&Readings {
            streams: 3,
            subscribers_dropped_slow: 2,
            feed_up: Some(true),
        });
        for line in [
            "# TYPE heartbeat_pings_accepted_total counter",
            "heartbeat_pings_accepted_total 1",
            "heartbeat_pings_refused_total{reason=\"too_large\"} 1",
            "heartbeat_pings_refused_total{reason=\"invalid\"} 0",
            "heartbeat_streams 3",
            "heartbeat_subscribers_dropped_total 2",
            "heartbeat_redis_subscription_up 1",
            "heartbeat_connection_budget 100",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line is `name{labels} value`, with a number for the value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap();
        }
        let memory = metrics.render(&Readings {
            streams: 0,
            subscribers_dropped_slow: 0,
            feed_up: None,
        });
        assert!(!memory.contains("redis_subscription_up"));
    }
}
