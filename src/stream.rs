//! The whole life of a stream: register its subscriber in the hub, ask for its user's cached
//! ping, write the head, then every newer event with keepalives in between, and the end; and
//! at shutdown, end them all and wait for them.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::http::EventStream;
use crate::hub::{Hub, Subscriber, WaitError};
use crate::metrics::Metrics;
use crate::store::cached::CachedReads;

/// A request to watch a user, as the routes parsed it.
#[derive(Debug, PartialEq, Eq)]
pub struct Subscribe {
    pub user: String,
    /// The watching device, for logs.
    pub client: Option<String>,
    /// Headers for the stream's response head (CORS).
    pub headers: Vec<(&'static str, String)>,
}

/// Everything a stream needs, shared by all of them, and the count of open ones.
pub struct Streams {
    hub: Arc<Hub>,
    cached: CachedReads,
    /// Silence after which a stream gets a `:` comment line.
    keepalive: Duration,
    metrics: Arc<Metrics>,
    /// Streams open now; `ended` is notified when it falls to zero.
    open: Mutex<usize>,
    ended: Condvar,
}

impl Streams {
    pub fn new(
        hub: Arc<Hub>,
        cached: CachedReads,
        keepalive: Duration,
        metrics: Arc<Metrics>,
    ) -> Streams {
        Streams {
            hub,
            cached,
            keepalive,
            metrics,
            open: Mutex::new(0),
            ended: Condvar::new(),
        }
    }

    /// Serves `subscribe` on `socket`, on the calling thread, until the client leaves or
    /// stops reading (past the socket's write timeout), the hub drops the subscriber (too
    /// slow), or shutdown ends it with the last chunk.
    pub fn serve(&self, socket: &TcpStream, minor_version: u8, subscribe: &Subscribe) {
        let _open = self.enter();
        // Registered before the cached ping is read, so no ping falls in between.
        let subscriber = self.hub.subscribe(&subscribe.user);
        self.cached.request(&subscribe.user);
        let client = subscribe.client.as_deref().unwrap_or("-");
        let result =
            EventStream::start(socket, minor_version, &subscribe.headers).and_then(|out| {
                log::debug!("stream of {:?} to {client} opened", subscribe.user);
                pump(out, &subscriber, self.keepalive, &self.metrics)
            });
        match result {
            Ok(()) => log::debug!("stream of {:?} to {client} ended", subscribe.user),
            Err(e) => log::debug!("stream of {:?} to {client} closed: {e}", subscribe.user),
        }
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        *self.open.lock()
    }

    /// How many subscribers the hub dropped for falling behind.
    pub fn dropped_slow(&self) -> u64 {
        self.hub.dropped_slow()
    }

    /// Ends every stream (each writes its last chunk, so browsers reconnect elsewhere), refuses
    /// new ones, and waits up to `grace` for them to end. Returns how many had not.
    pub fn close(&self, grace: Duration) -> usize {
        self.hub.close();
        let deadline = Instant::now() + grace;
        let mut open = self.open.lock();
        while *open > 0 && !self.ended.wait_until(&mut open, deadline).timed_out() {}
        *open
    }

    /// Counts a stream as open until the guard is dropped.
    fn enter(&self) -> Open<'_> {
        *self.open.lock() += 1;
        Open(self)
    }
}

/// One open stream, counted in [`Streams`] until dropped.
struct Open<'a>(&'a Streams);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let mut open = self.0.open.lock();
        *open -= 1;
        if *open == 0 {
            self.0.ended.notify_all();
        }
    }
}

/// Writes `subscriber`'s events to `out` until writing fails or the subscriber's channel
/// disconnects (too slow, or shutdown), which ends the stream cleanly.
///
/// Never writes an event whose sequence number is not above the last one written: a stream
/// never repeats a ping or goes back in time, whatever order the cached read and the live
/// feed deliver in.
fn pump<W: Write>(
    mut out: EventStream<W>,
    subscriber: &Subscriber,
    keepalive: Duration,
    metrics: &Metrics,
) -> io::Result<()> {
    let mut sent_seq = 0;
    let mut last_write = Instant::now();
    loop {
        match subscriber.wait(last_write + keepalive) {
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
        pump(stream, &sub, Duration::from_secs(60), &metrics).unwrap();
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
        pump(stream, &sub, Duration::from_millis(20), &Metrics::default()).unwrap();
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
