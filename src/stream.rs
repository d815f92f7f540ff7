//! One subscriber's event stream: the cached ping first, then every newer ping, with
//! keepalives in between, until the client goes away or the hub lets go.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use crate::http::EventStream;
use crate::hub::Subscription;
use crate::metrics::Metrics;
use crate::ping::Event;
use crate::store::Store;

/// How often to retry reading the cached ping while the store is unreachable.
const CACHED_RETRY: Duration = Duration::from_secs(1);

/// Streams `subscription`'s events to `out` until writing fails (the client left or stopped
/// reading past the socket's write timeout) or the subscription's channel disconnects (too
/// slow, or shutdown), which ends the stream cleanly.
///
/// The subscription must be registered before this is called, so no ping falls between the
/// cached read and the live feed. Never writes an event whose sequence number is not above
/// the last one written: a stream never repeats a ping or goes back in time.
pub fn serve<W: Write>(
    mut out: EventStream<W>,
    subscription: &Subscription,
    store: &dyn Store,
    keepalive: Duration,
    metrics: &Metrics,
) -> io::Result<()> {
    let mut sent_seq = 0;
    let mut cached_pending = true;
    let mut last_write = Instant::now();
    let mut send = |out: &mut EventStream<W>, event: &Event| -> io::Result<bool> {
        if event.seq <= sent_seq {
            return Ok(false);
        }
        out.event(&event.data)?;
        sent_seq = event.seq;
        Metrics::count(&metrics.events_delivered_total);
        Ok(true)
    };
    loop {
        if cached_pending {
            match store.last(subscription.user()) {
                Ok(cached) => {
                    cached_pending = false;
                    if let Some(ping) = cached
                        && send(&mut out, &Event::from(&ping))?
                    {
                        last_write = Instant::now();
                    }
                }
                Err(e) => log::debug!(
                    "cached ping of {:?} unavailable, retrying: {e}",
                    subscription.user()
                ),
            }
        }
        let mut wait = keepalive.saturating_sub(last_write.elapsed());
        if cached_pending {
            wait = wait.min(CACHED_RETRY);
        }
        match subscription.events.recv_timeout(wait) {
            Ok(event) => {
                if send(&mut out, &event)? {
                    last_write = Instant::now();
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if last_write.elapsed() >= keepalive {
                    out.keepalive()?;
                    last_write = Instant::now();
                }
            }
            Err(RecvTimeoutError::Disconnected) => return out.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::ping::LastPing;
    use crate::store::{MemoryStore, StoreError};
    use std::sync::Arc;

    /// The `data:` lines a finished stream wrote, and whether it ended with the last chunk.
    fn events_written(out: &[u8]) -> (Vec<String>, bool) {
        let text = String::from_utf8_lossy(out);
        let data = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_owned)
            .collect();
        (data, text.ends_with("0\r\n\r\n"))
    }

    fn event(seq: u64, time: u64) -> Arc<Event> {
        Arc::new(Event::from(&LastPing {
            seq,
            time,
            status: "1".into(),
        }))
    }

    #[test]
    fn the_cached_ping_comes_first_then_only_newer_ones() {
        let hub = Hub::new(16);
        let store = MemoryStore::new(Arc::clone(&hub));
        store.record("u", "0", 5_000_000).unwrap(); // seq 5_000_000, the cached one
        let sub = hub.subscribe("u");
        // Queued live events racing the cached read: an older one, the same one, a newer one.
        hub.publish("u", event(4_000_000, 4));
        hub.publish("u", event(5_000_000, 5));
        hub.publish("u", event(6_000_000, 6));
        hub.publish("u", event(5_500_000, 5));
        hub.close();

        let mut out = Vec::new();
        let stream = EventStream::start(&mut out, 1, &[]).unwrap();
        serve(
            stream,
            &sub,
            &store,
            Duration::from_secs(60),
            &Metrics::default(),
        )
        .unwrap();
        let (data, finished) = events_written(&out);
        assert_eq!(
            data,
            [r#"{"time":5,"status":"0"}"#, r#"{"time":6,"status":"1"}"#]
        );
        assert!(finished, "a closed hub ends the stream with the last chunk");
    }

    #[test]
    fn keepalives_are_written_while_quiet() {
        let hub = Hub::new(4);
        let store = MemoryStore::new(Arc::clone(&hub));
        let sub = hub.subscribe("u");
        let closer = {
            let hub = Arc::clone(&hub);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(130));
                hub.close();
            })
        };
        let mut out = Vec::new();
        let stream = EventStream::start(&mut out, 1, &[]).unwrap();
        serve(
            stream,
            &sub,
            &store,
            Duration::from_millis(20),
            &Metrics::default(),
        )
        .unwrap();
        closer.join().unwrap();
        let keepalives = String::from_utf8_lossy(&out)
            .matches("3\r\n:\n\n\r\n")
            .count();
        assert!(
            keepalives >= 3,
            "{keepalives} keepalives in 130 ms at 20 ms"
        );
    }

    /// A store that is down for its first `failures` reads.
    struct Flaky {
        inner: MemoryStore,
        failures: std::sync::atomic::AtomicU32,
    }

    impl Store for Flaky {
        fn record(&self, user: &str, status: &str, now: u64) -> Result<LastPing, StoreError> {
            self.inner.record(user, status, now)
        }
        fn health(&self) -> Result<(), String> {
            Ok(())
        }
        fn subscription_up(&self) -> Option<bool> {
            None
        }
        fn last(&self, user: &str) -> Result<Option<LastPing>, StoreError> {
            let left = self.failures.load(std::sync::atomic::Ordering::SeqCst);
            if left > 0 {
                self.failures
                    .store(left - 1, std::sync::atomic::Ordering::SeqCst);
                return Err(StoreError::Unavailable("down".into()));
            }
            self.inner.last(user)
        }
    }

    #[test]
    fn a_cached_ping_unreadable_at_first_is_sent_once_the_store_answers() {
        let hub = Hub::new(4);
        let store = Flaky {
            inner: MemoryStore::new(Hub::new(1)),
            failures: 1.into(),
        };
        store.inner.record("u", "2", 7_000_000).unwrap();
        let sub = hub.subscribe("u");
        let closer = {
            let hub = Arc::clone(&hub);
            std::thread::spawn(move || {
                std::thread::sleep(CACHED_RETRY + Duration::from_millis(300));
                hub.close();
            })
        };
        let mut out = Vec::new();
        let stream = EventStream::start(&mut out, 1, &[]).unwrap();
        serve(
            stream,
            &sub,
            &store,
            Duration::from_secs(60),
            &Metrics::default(),
        )
        .unwrap();
        closer.join().unwrap();
        assert_eq!(events_written(&out).0, [r#"{"time":7,"status":"2"}"#]);
    }
}
