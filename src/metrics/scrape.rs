//! One scrape of `/metrics`: the atomics read and written out by prometheus-client's encoder.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::{
    Histogram, Metrics, PING_OUTCOMES, REDIS_CALLS, Readings, STREAM_ENDS, WATCH_REFUSALS,
};

/// One scrape: the metrics and the readings, encoded by prometheus-client.
#[derive(Debug)]
pub(super) struct Scrape {
    pub(super) metrics: Arc<Metrics>,
    pub(super) readings: Readings,
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
        let gauges: [(&str, &str, u64); 5] = [
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
            (
                "feed_channels",
                "Redis pub/sub channels and patterns the feed is subscribed to.",
                m.feed_channels.load(Ordering::Relaxed).max(0) as u64,
            ),
        ];
        for (name, help, value) in gauges {
            let no_feed = matches!(name, "redis_subscription_up" | "feed_channels");
            if no_feed && r.feed_up.is_none() {
                continue; // memory mode has no feed
            }
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&value)?;
        }
        let counters: [(&str, &str, u64); 8] = [
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
            (
                "feed_messages",
                "Messages received from Redis pub/sub, watched here or not.",
                get(&m.feed_messages_total),
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
            ("rate_limited", get(&m.pings_refused_rate_total)),
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
            "watch_refused",
            "Streams and /status requests refused, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, value) in WATCH_REFUSALS.into_iter().zip(&m.watch_refused) {
            family
                .encode_family(&[("reason", reason)])?
                .encode_counter::<NoLabelSet, _, u64>(&get(value), None)?;
        }

        histograms(
            &mut encoder,
            (
                "ping_duration_seconds",
                "Time from a ping fully read to its answer written, by outcome.",
            ),
            "outcome",
            PING_OUTCOMES.into_iter().zip(&m.ping_duration),
        )?;
        m.delivery_lag.encode(encoder.encode_descriptor(
            "delivery_lag_seconds",
            "Time from a live ping's store (its sequence number's clock) to its event's write on a stream.",
            None,
            MetricType::Histogram,
        )?)?;
        histograms(
            &mut encoder,
            (
                "redis_call_duration_seconds",
                "Duration of Redis calls, by call.",
            ),
            "call",
            REDIS_CALLS.into_iter().zip(&m.redis_call_duration),
        )?;
        histograms(
            &mut encoder,
            (
                "stream_duration_seconds",
                "How long streams lived, by how they ended.",
            ),
            "end",
            STREAM_ENDS.into_iter().zip(&m.stream_duration),
        )?;
        Ok(())
    }
}

/// A histogram family `(name, help)`: one histogram per value of the label `key`.
fn histograms<'h>(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    key: &'static str,
    members: impl Iterator<Item = (&'static str, &'h Histogram)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (value, histogram) in members {
        histogram.encode(family.encode_family(&[(key, value)])?)?;
    }
    Ok(())
}
