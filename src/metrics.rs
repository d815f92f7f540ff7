//! What `/metrics` reports: counters, gauges and latency histograms.
//!
//! Recording is atomics only: no lock and no allocation on the paths measured (a ping, a
//! delivery, a Redis call), where thousands of threads record at once. prometheus-client's own
//! `Histogram` takes a mutex per observation, so the histograms here are arrays of atomic
//! counters; the exposition is prometheus-client's (the Prometheus project's crate), written
//! by a [`Collector`] that reads the atomics at each scrape, in the OpenMetrics text format.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::ping::Rejection;

/// Buckets of the latency histograms, in seconds: 100 us to 10 s, about three a decade. A
/// ping is answered in well under a millisecond, a delivery in about one; the top buckets
/// are for a Redis frozen up to its timeout.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of stream lifetimes, in seconds: a second to a day. A page that reconnects at once
/// lands in the first; a tab left open all day, in the last.
pub const LIFETIME_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14_400.0, 28_800.0, 86_400.0,
];

/// A histogram of durations recorded with atomic adds: one per observation into its bucket,
/// the count and the sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket, not cumulative; the last one is above every bound (`+Inf`).
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = self.bounds.partition_point(|&bound| bound < seconds);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Per bucket, not cumulative: the encoder adds them up.
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
                (bound, n.load(Ordering::Relaxed))
            })
            .collect();
        // The count is the buckets' total, so that a scrape racing an observation agrees
        // with itself.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// How a ping was answered, for `heartbeat_ping_duration_seconds{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingOutcome {
    Stored,
    /// A 4xx.
    Refused,
    /// The store did not answer: 503.
    Unavailable,
}

/// Redis calls timed by `heartbeat_redis_call_duration_seconds{call}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisCall {
    /// Storing and publishing a ping, from queueing it for a writer to its answer.
    Record,
    CachedRead,
    Health,
}

/// How a stream ended, for `heartbeat_stream_duration_seconds{end}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The client closed or reset the connection.
    ClientGone,
    /// It fell `SUBSCRIBER_QUEUE` events behind.
    TooSlow,
    /// An event's write did not finish within `WRITE_TIMEOUT_SECS`.
    WriteTimeout,
    Shutdown,
    /// It reached `MAX_STREAM_SECS`.
    MaxAge,
}

const PING_OUTCOMES: [(PingOutcome, &str); 3] = [
    (PingOutcome::Stored, "stored"),
    (PingOutcome::Refused, "refused"),
    (PingOutcome::Unavailable, "unavailable"),
];
const REDIS_CALLS: [(RedisCall, &str); 3] = [
    (RedisCall::Record, "record"),
    (RedisCall::CachedRead, "cached_read"),
    (RedisCall::Health, "health"),
];
const STREAM_ENDS: [(StreamEnd, &str); 5] = [
    (StreamEnd::ClientGone, "client_gone"),
    (StreamEnd::TooSlow, "too_slow"),
    (StreamEnd::WriteTimeout, "write_timeout"),
    (StreamEnd::Shutdown, "shutdown"),
    (StreamEnd::MaxAge, "max_age"),
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
    /// Events written to streams (one per event per subscriber).
    pub events_delivered_total: AtomicU64,
    /// Failed Redis calls, from the pool, the writers and the feed.
    pub redis_errors_total: AtomicU64,
    /// Times the feed came back after being down.
    pub redis_resubscribes_total: AtomicU64,
    /// By [`PingOutcome`], in the order of `PING_OUTCOMES`.
    ping_duration: [Histogram; 3],
    /// A live ping's store time (from its sequence number) to its event's write on a stream.
    pub delivery_lag: Histogram,
    /// By [`RedisCall`].
    redis_call_duration: [Histogram; 3],
    /// By [`StreamEnd`].
    stream_duration: [Histogram; 5],
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
            events_delivered_total: AtomicU64::new(0),
            redis_errors_total: AtomicU64::new(0),
            redis_resubscribes_total: AtomicU64::new(0),
            ping_duration: [latency(), latency(), latency()],
            delivery_lag: latency(),
            redis_call_duration: [latency(), latency(), latency()],
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

    pub fn ping_duration(&self, outcome: PingOutcome) -> &Histogram {
        &self.ping_duration[PING_OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0)]
    }

    pub fn redis_call(&self, call: RedisCall) -> &Histogram {
        &self.redis_call_duration[REDIS_CALLS
            .iter()
            .position(|(c, _)| *c == call)
            .unwrap_or(0)]
    }

    pub fn stream_duration(&self, end: StreamEnd) -> &Histogram {
        &self.stream_duration[STREAM_ENDS.iter().position(|(e, _)| *e == end).unwrap_or(0)]
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

/// One scrape: the metrics and the readings, encoded by prometheus-client.
#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    readings: Readings,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let r = &self.readings;

        let info = [("version", env!("CARGO_PKG_VERSION"))];
        encoder
            .encode_descriptor(
                "build",
                "Version of the running binary.",
                None,
                MetricType::Info,
            )?
            .encode_info(&info)?;
        let gauges: [(&str, &str, u64); 4] = [
            (
                "connections",
                "Open connections, streams included.",
                m.connections.load(Ordering::Relaxed) as u64,
            ),
            (
                "connection_budget",
                "Most connections served at once.",
                m.connection_budget.load(Ordering::Relaxed) as u64,
            ),
            ("streams", "Open event streams.", r.streams as u64),
            (
                "redis_subscription_up",
                "Whether the Redis subscription is up (1) or down (0).",
                u64::from(r.feed_up.unwrap_or(false)),
            ),
        ];
        for (name, help, value) in gauges {
            if name == "redis_subscription_up" && r.feed_up.is_none() {
                continue; // memory mode has no feed
            }
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&value)?;
        }
        let counters: [(&str, &str, u64); 7] = [
            (
                "connections",
                "Connections accepted.",
                get(&m.connections_total),
            ),
            (
                "connections_refused",
                "Connections answered 503 for being over the connection budget.",
                get(&m.connections_refused_total),
            ),
            (
                "pings_accepted",
                "Pings stored and delivered.",
                get(&m.pings_accepted_total),
            ),
            (
                "events_delivered",
                "Events written to streams.",
                get(&m.events_delivered_total),
            ),
            (
                "subscribers_dropped",
                "Subscribers disconnected for falling too far behind.",
                r.subscribers_dropped_slow,
            ),
            (
                "redis_errors",
                "Failed Redis calls.",
                get(&m.redis_errors_total),
            ),
            (
                "redis_resubscribes",
                "Times the Redis subscription came back after being down.",
                get(&m.redis_resubscribes_total),
            ),
        ];
        for (name, help, value) in counters {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        let refused = [
            ("invalid", get(&m.pings_refused_invalid_total)),
            ("too_large", get(&m.pings_refused_too_large_total)),
            ("store_unavailable", get(&m.pings_refused_unavailable_total)),
        ];
        let mut family = encoder.encode_descriptor(
            "pings_refused",
            "Pings refused, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, value) in refused {
            let labels = [("reason", reason)];
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }

        let mut family = encoder.encode_descriptor(
            "ping_duration_seconds",
            "Time from a ping fully read to its answer written, by outcome.",
            None,
            MetricType::Histogram,
        )?;
        for ((_, label), histogram) in PING_OUTCOMES.iter().zip(&m.ping_duration) {
            histogram.encode(family.encode_family(&[("outcome", *label)])?)?;
        }
        m.delivery_lag.encode(encoder.encode_descriptor(
            "delivery_lag_seconds",
            "Time from a live ping's store (its sequence number's clock) to its event's write on a stream.",
            None,
            MetricType::Histogram,
        )?)?;
        let mut family = encoder.encode_descriptor(
            "redis_call_duration_seconds",
            "Duration of Redis calls, by call.",
            None,
            MetricType::Histogram,
        )?;
        for ((_, label), histogram) in REDIS_CALLS.iter().zip(&m.redis_call_duration) {
            histogram.encode(family.encode_family(&[("call", *label)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "stream_duration_seconds",
            "How long streams lived, by how they ended.",
            None,
            MetricType::Histogram,
        )?;
        for ((_, label), histogram) in STREAM_ENDS.iter().zip(&m.stream_duration) {
            histogram.encode(family.encode_family(&[("end", *label)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for line in [
            "# TYPE heartbeat_pings_accepted counter",
            "heartbeat_pings_accepted_total 1",
            "heartbeat_pings_refused_total{reason=\"too_large\"} 1",
            "heartbeat_pings_refused_total{reason=\"invalid\"} 0",
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
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
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
        for line in [
            "heartbeat_ping_duration_seconds_bucket{le=\"0.0001\",outcome=\"stored\"} 2",
            "heartbeat_ping_duration_seconds_bucket{le=\"0.0005\",outcome=\"stored\"} 3",
            "heartbeat_ping_duration_seconds_bucket{le=\"2.5\",outcome=\"stored\"} 4",
            "heartbeat_ping_duration_seconds_bucket{le=\"+Inf\",outcome=\"stored\"} 5",
            "heartbeat_ping_duration_seconds_count{outcome=\"stored\"} 5",
            "heartbeat_ping_duration_seconds_sum{outcome=\"stored\"} 62.00045",
            "heartbeat_stream_duration_seconds_bucket{le=\"60.0\",end=\"max_age\"} 1",
            "heartbeat_stream_duration_seconds_count{end=\"client_gone\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
