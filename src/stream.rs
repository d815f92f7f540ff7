//! One subscriber's event stream: every newer ping of its user (the cached one, from the
//! `cached-reads` thread, comes the same way), with keepalives in between, until the client
//! goes away or the hub lets go.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::http::EventStream;
use crate::hub::{Subscription, WaitError};
use crate::metrics::Metrics;

/// Streams `subscription`'s events to `out`, on the thread that subscribed, until writing
/// fails (the client left or stopped reading past the socket's write timeout) or the
/// subscription's channel disconnects (too slow, or shutdown), which ends the stream cleanly.
///
/// Never writes an event whose sequence number is not above the last one written: a stream
/// never repeats a ping or goes back in time, whatever order the cached read and the live
/// feed deliver in.
pub fn serve<W: Write>(
    mut out: EventStream<W>,
    subscription: &Subscription,
    keepalive: Duration,
    metrics: &Metrics,
) -> io::Result<()> {
    let mut sent_seq = 0;
    let mut last_write = Instant::now();
    loop {
        match subscription.wait(last_write + keepalive) {
            Ok(event) if event.seq > sent_seq => {
                out.event(&event.data)?;
                sent_seq = event.seq;
                last_write = Instant::now();
                Metrics::count(&metrics.events_delivered_total);
            }
            Ok(_) => {} // not newer than what was sent
            Err(WaitError::Timeout) => {
                if last_write.elapsed() >= keepalive {
                    out.keepalive()?;
                    last_write = Instant::now();
                }
            }
            Err(WaitError::Disconnected) => return out.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::ping::{Event, LastPing};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

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
    fn only_newer_events_are_written_whatever_order_they_come_in() {
        let hub = Hub::new(16);
        let sub = hub.subscribe("u");
        // The cached ping and live ones racing it: newer, older, the same, newer, older.
        for (seq, time) in [(5, 5), (4, 4), (5, 5), (6, 6), (5, 5)] {
            hub.publish("u", event(seq, time));
        }
        hub.close();

        let mut out = Vec::new();
        let metrics = Metrics::default();
        let stream = EventStream::start(&mut out, 1, &[]).unwrap();
        serve(stream, &sub, Duration::from_secs(60), &metrics).unwrap();
        let (data, finished) = events_written(&out);
        assert_eq!(
            data,
            [r#"{"time":5,"status":"1"}"#, r#"{"time":6,"status":"1"}"#]
        );
        assert!(finished, "a closed hub ends the stream with the last chunk");
        assert_eq!(metrics.events_delivered_total.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn keepalives_are_written_while_quiet() {
        let hub = Hub::new(4);
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
        serve(stream, &sub, Duration::from_millis(20), &Metrics::default()).unwrap();
        closer.join().unwrap();
        let keepalives = String::from_utf8_lossy(&out)
            .matches("3\r\n:\n\n\r\n")
            .count();
        assert!(
            keepalives >= 3,
            "{keepalives} keepalives in 130 ms at 20 ms"
        );
    }
}
