//! What `/metrics` reports: counters, gauges and latency histograms.
//!
//! Recording is atomics only: no lock and no allocation on the paths measured (a ping, a
//! delivery, a Redis call), where thousands of threads record at once. prometheus-client's own
//! `Histogram` takes a mutex per observation, so the histograms here are arrays of atomic
//! counters; the exposition is prometheus-client's (the Prometheus project's crate), written
//! by a [`Collector`] that reads the atomics at each scrape, in the OpenMetrics text format.

mod histogram;
mod scrape;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use prometheus_client::registry::Registry;

pub use self::histogram::{Histogram, LATENCY_BUCKETS, LIFETIME_BUCKETS};
use self::scrape::Scrape;
use crate::ping::Rejection;

/// How a ping was answered, for `heartbeat_ping_duration_seconds{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingOutcome {
    Stored = 0,
    /// A 4xx.
    Refused = 1,
    /// The store did not answer: 503.
    Unavailable = 2,
}

/// Redis calls timed by `heartbeat_redis_call_duration_seconds{call}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisCall {
    /// Storing and publishing a ping, from queueing it for a writer to its answer.
    Record = 0,
    CachedRead = 1,
    Health = 2,
    /// Which of a new stream's users its watcher may see (`WATCH_POLICY=contacts`).
    Contacts = 3,
}

/// Why a stream or a `/status` was refused, for `heartbeat_watch_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchRefusal {
    /// No `X-User-Claim` under `claimed` or `contacts` (`401`).
    NoClaim = 0,
    /// A claim from a peer not in `TRUSTED_PROXIES` under `claimed` or `contacts` (`401`).
    UntrustedPeer = 1,
    /// The watcher holds `MAX_STREAMS_PER_WATCHER` streams already (`429`).
    TooManyStreams = 2,
}

/// How a stream ended, for `heartbeat_stream_duration_seconds{end}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The client closed or reset the connection.
    ClientGone = 0,
    /// It fell `SUBSCRIBER_QUEUE` events behind.
    TooSlow = 1,
    /// An event's write did not finish within `WRITE_TIMEOUT_SECS`.
    WriteTimeout = 2,
    Shutdown = 3,
    /// It reached `MAX_STREAM_SECS`.
    MaxAge = 4,
}

/// The label values, each table indexed by its enum's discriminants.
pub(super) const PING_OUTCOMES: [&str; 3] = ["stored", "refused", "unavailable"];
pub(super) const REDIS_CALLS: [&str; 4] = ["record", "cached_read", "health", "contacts"];
pub(super) const WATCH_REFUSALS: [&str; 3] = ["no_claim", "untrusted_peer", "too_many_streams"];
pub(super) const STREAM_ENDS: [&str; 5] = [
    "client_gone",
    "too_slow",
    "write_timeout",
    "shutdown",
    "max_age",
];

/// Everything `/metrics` reports that the process counts itself. Shared by the server, the
/// routes, the streams and the Redis store; every field is updated without a lock.
#[derive(Debug)]
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
    /// Pings over `MAX_PINGS_PER_MINUTE` (`429`).
    pub pings_refused_rate_total: AtomicU64,
    /// Streams and `/status` requests refused, by [`WatchRefusal`].
    pub(super) watch_refused: [AtomicU64; 3],
    /// Events written to streams (one per event per subscriber).
    pub events_delivered_total: AtomicU64,
    /// Failed Redis calls, from the pool, the writers and the feed.
    pub redis_errors_total: AtomicU64,
    /// Times the feed came back after being down.
    pub redis_resubscribes_total: AtomicU64,
    /// Messages the Redis feed received (every instance's pings, watched here or not).
    pub feed_messages_total: AtomicU64,
    /// Channels and patterns the Redis feed is subscribed to now: the one pattern on a single
    /// Redis, the watched users' shard channels on a cluster. Signed, as cluster feeds add
    /// and take away their own counts.
    pub feed_channels: AtomicI64,
    /// By [`PingOutcome`].
    pub(super) ping_duration: [Histogram; 3],
    /// A live ping's store time (from its sequence number) to its event's write on a stream.
    pub delivery_lag: Histogram,
    /// By [`RedisCall`].
    pub(super) redis_call_duration: [Histogram; 4],
    /// By [`StreamEnd`].
    pub(super) stream_duration: [Histogram; 5],
}

impl Default for Metrics {
    fn default() -> Metrics {
        let latency = || Histogram::new(LATENCY_BUCKETS);
        let lifetime = || Histogram::new(LIFETIME_BUCKETS);
        Metrics {
            connections: AtomicUsize::new(0),
            connection_budget: AtomicUsize::new(0),
            connections_total: AtomicU64::new(0),
            connections_refused_total: AtomicU64::new(0),
            pings_accepted_total: AtomicU64::new(0),
            pings_refused_invalid_total: AtomicU64::new(0),
            pings_refused_too_large_total: AtomicU64::new(0),
            pings_refused_unavailable_total: AtomicU64::new(0),
            pings_refused_rate_total: AtomicU64::new(0),
            watch_refused: Default::default(),
            events_delivered_total: AtomicU64::new(0),
            redis_errors_total: AtomicU64::new(0),
            redis_resubscribes_total: AtomicU64::new(0),
            feed_messages_total: AtomicU64::new(0),
            feed_channels: AtomicI64::new(0),
            ping_duration: [latency(), latency(), latency()],
            delivery_lag: latency(),
            redis_call_duration: [latency(), latency(), latency(), latency()],
            stream_duration: [lifetime(), lifetime(), lifetime(), lifetime(), lifetime()],
        }
    }
}

/// Values that live elsewhere (the streams, the hub, the store), read when `/metrics` is
/// rendered.
#[derive(Debug, Clone, Copy)]
pub struct Readings {
    /// Streams open now.
    pub streams: usize,
    pub subscribers_dropped_slow: u64,
    /// Whether the Redis feed is up; `None` in memory mode.
    pub feed_up: Option<bool>,
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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

    /// Counts a refused stream or `/status` under its reason.
    pub fn count_watch_refused(&self, refusal: WatchRefusal) {
        Metrics::count(&self.watch_refused[refusal as usize]);
    }

    pub fn ping_duration(&self, outcome: PingOutcome) -> &Histogram {
        &self.ping_duration[outcome as usize]
    }

    pub fn redis_call(&self, call: RedisCall) -> &Histogram {
        &self.redis_call_duration[call as usize]
    }

    pub fn stream_duration(&self, end: StreamEnd) -> &Histogram {
        &self.stream_duration[end as usize]
    }

    /// Everything, in the OpenMetrics text format (see [`CONTENT_TYPE`]).
    pub fn render(self: &Arc<Self>, readings: &Readings) -> String {
        let mut registry = Registry::with_prefix("heartbeat");
        registry.register_collector(Box::new(Scrape {
            metrics: Arc::clone(self),
            readings: *readings,
        }));
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn assert_has_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(
                text.lines().any(|l| l == *line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    fn readings() -> Readings {
        Readings {
            streams: 3,
            subscribers_dropped_slow: 2,
            feed_up: Some(true),
        }
    }

    #[test]
    fn renders_every_metric_in_openmetrics_text() {
        let metrics = Arc::new(Metrics::default());
        Metrics::count(&metrics.pings_accepted_total);
        metrics.count_refused(&Rejection::TooLarge("x".into()));
        metrics.connection_budget.store(100, Ordering::Relaxed);
        let text = metrics.render(&readings());
        assert_has_lines(
            &text,
            &[
                "# TYPE heartbeat_pings_accepted counter",
                "heartbeat_pings_accepted_total 1",
                "heartbeat_pings_refused_total{reason=\"too_large\"} 1",
                "heartbeat_pings_refused_total{reason=\"invalid\"} 0",
                "heartbeat_pings_refused_total{reason=\"rate_limited\"} 0",
                "heartbeat_watch_refused_total{reason=\"no_claim\"} 0",
                "heartbeat_watch_refused_total{reason=\"too_many_streams\"} 0",
                "heartbeat_streams 3",
                "heartbeat_subscribers_dropped_total 2",
                "heartbeat_redis_subscription_up 1",
                "heartbeat_connection_budget 100",
                concat!(
                    "heartbeat_build_info{version=\"",
                    env!("CARGO_PKG_VERSION"),
                    "\"} 1"
                ),
                "# TYPE heartbeat_ping_duration_seconds histogram",
                "heartbeat_ping_duration_seconds_count{outcome=\"stored\"} 0",
                "# EOF",
            ],
        );
        // Every sample line is `name{labels} value`, with a number for the value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
        let memory = metrics.render(&Readings {
            feed_up: None,
            ..readings()
        });
        assert!(!memory.contains("redis_subscription_up"));
    }

    #[test]
    fn a_histogram_counts_each_observation_in_its_bucket_cumulatively() {
        let metrics = Arc::new(Metrics::default());
        let stored = metrics.ping_duration(PingOutcome::Stored);
        for micros in [50, 100, 300, 2_000_000, 60_000_000] {
            stored.observe(Duration::from_micros(micros));
        }
        metrics
            .stream_duration(StreamEnd::MaxAge)
            .observe(Duration::from_secs(30));
        assert_eq!(stored.count(), 5);
        let text = metrics.render(&readings());
        assert_has_lines(
            &text,
            &[
                "heartbeat_ping_duration_seconds_bucket{le=\"0.0001\",outcome=\"stored\"} 2",
                "heartbeat_ping_duration_seconds_bucket{le=\"0.0005\",outcome=\"stored\"} 3",
                "heartbeat_ping_duration_seconds_bucket{le=\"2.5\",outcome=\"stored\"} 4",
                "heartbeat_ping_duration_seconds_bucket{le=\"+Inf\",outcome=\"stored\"} 5",
                "heartbeat_ping_duration_seconds_count{outcome=\"stored\"} 5",
                "heartbeat_ping_duration_seconds_sum{outcome=\"stored\"} 62.00045",
                "heartbeat_stream_duration_seconds_bucket{le=\"60.0\",end=\"max_age\"} 1",
                "heartbeat_stream_duration_seconds_count{end=\"client_gone\"} 0",
            ],
        );
    }
}
