//! The whole life of a stream: register its subscriber in the hub, ask for its users' cached
//! pings, write the head, then every newer event with keepalives in between, and the end; and
//! at shutdown, end them all and wait for them.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use socket2::SockRef;

use crate::flood::StreamSlot;
use crate::hangup::Hangups;
use crate::http::{DeadlineWriter, EventStream};
use crate::hub::{End, Hub, Subscriber, WaitError};
use crate::metrics::{Metrics, StreamEnd};
use crate::ping;
use crate::routes::StreamCounts;
use crate::store::cached::CachedReads;

/// A request to watch users, as the routes parsed it.
#[derive(Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// The watched users: distinct, at least one, in the order asked.
    pub users: Vec<String>,
    pub form: Form,
    /// The watching device, for logs.
    pub client: Option<String>,
    /// The request's `Last-Event-ID` (0 without one): only events with a larger id are sent.
    pub after: u64,
    /// Headers for the stream's response head (CORS).
    pub headers: Vec<(&'static str, String)>,
    /// The watcher's count of streams, held for the stream's life (`claimed` and `contacts`).
    pub slot: Option<StreamSlot>,
    /// Under `contacts`, the watcher against whose contacts the users are still to be checked
    /// ([`Routes::check_contacts`](crate::routes::Routes::check_contacts)).
    pub unchecked_for: Option<String>,
}

/// Which route a stream came by, and so the shape of its events' data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `/subscribe/:userid`: `{"time","status"}`, as the seed's clients expect.
    Single,
    /// `/subscribe?user=...`: `{"user","time","status"}`.
    Multi,
}

/// How streams write to their clients.
#[derive(Debug, Clone, Copy)]
pub struct Writing {
    /// Silence after which a stream gets a `:` comment line.
    pub keepalive: Duration,
    /// When set, a stream ends (cleanly, with the last chunk) this long after it began.
    pub max_stream: Option<Duration>,
    /// An event's write not done this long after it began ends the stream.
    pub timeout: Duration,
    /// Each stream socket's kernel send buffer (`SO_SNDBUF`; the kernel doubles it for its
    /// bookkeeping): what a client that stopped reading can hold of the kernel's memory.
    pub send_buffer: usize,
}

/// Everything a stream needs, shared by all of them, and the count of open ones.
pub struct Streams {
    hub: Arc<Hub>,
    cached: CachedReads,
    hangups: Arc<Hangups>,
    writing: Writing,
    metrics: Arc<Metrics>,
    /// Streams open now; `ended` is notified (under `ending`) when it falls to zero. A
    /// counter, not a count under a lock: at shutdown every stream ends at once, and a
    /// lock would make them queue.
    open: AtomicUsize,
    /// Set by `close`: the service is stopping.
    closing: AtomicBool,
    ending: Mutex<()>,
    ended: Condvar,
}

impl Streams {
    pub fn new(
        hub: Arc<Hub>,
        cached: CachedReads,
        hangups: Arc<Hangups>,
        writing: Writing,
        metrics: Arc<Metrics>,
    ) -> Streams {
        Streams {
            hub,
            cached,
            hangups,
            writing,
            metrics,
            open: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            ending: Mutex::new(()),
            ended: Condvar::new(),
        }
    }

    /// Serves `subscribe` on `socket`, on the calling thread, until the client hangs up or
    /// stops reading (an event not written within the write timeout), the hub drops the
    /// subscriber (too slow), or shutdown ends it with the last chunk.
    ///
    /// Registering is kept in this small frame and the rest in [`Streams::stream`]: the new
    /// subscriber's channel is built on the stack in the allocator's deepest path, and every
    /// page a stream thread's stack touches stays resident for the stream's life (measured:
    /// with the whole stream inlined here, a third stack page, 4 KiB more per stream).
    pub fn serve(&self, socket: &TcpStream, minor_version: u8, subscribe: Subscribe) {
        let _open = self.enter();
        // Registered before the cached pings are read, so no ping falls in between.
        let subscriber = self.hub.subscribe(&subscribe.users);
        self.stream(socket, minor_version, subscribe, &subscriber);
    }

    #[inline(never)]
    fn stream(
        &self,
        socket: &TcpStream,
        minor_version: u8,
        mut subscribe: Subscribe,
        subscriber: &Subscriber,
    ) {
        if let Err(e) = SockRef::from(socket).set_send_buffer_size(self.writing.send_buffer) {
            log::warn!("cannot cap a stream's send buffer: {e}");
        }
        let _watch = self
            .hangups
            .watch(socket, subscriber.mailbox())
            .inspect_err(|e| log::warn!("cannot watch a stream for hang-ups: {e}"));
        self.cached.request(subscriber.mailbox());
        // The subscriber holds the ids now, shared with the hub; a stream of 100 users would
        // otherwise keep a second copy for its whole life (about 5 KiB).
        subscribe.users = Vec::new();
        let who = Who(subscriber, subscribe.client.as_deref().unwrap_or("-"));
        let out = DeadlineWriter::new(socket, self.writing.timeout);
        let began = Instant::now();
        let result = EventStream::start(out, minor_version, &subscribe.headers).and_then(|out| {
            log::debug!("stream of {who} opened");
            pump(out, subscriber, &subscribe, &self.writing, &self.metrics)
        });
        let end = match result {
            Ok(end) => end,
            Err(e) => {
                log::debug!("stream of {who}: {e}");
                match e.kind() {
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => StreamEnd::WriteTimeout,
                    _ => StreamEnd::ClientGone,
                }
            }
        };
        log::debug!("stream of {who} ended: {end:?}");
        self.metrics.stream_duration(end).observe(began.elapsed());
    }

    /// Ends every stream (each writes its last chunk, so browsers reconnect elsewhere), refuses
    /// new ones, and waits up to `grace` for them to end. Returns how many had not.
    pub fn close(&self, grace: Duration) -> usize {
        self.closing.store(true, Ordering::Release);
        self.hub.close();
        let deadline = Instant::now() + grace;
        let mut ending = self.ending.lock();
        while self.open.load(Ordering::Acquire) > 0
            && !self.ended.wait_until(&mut ending, deadline).timed_out()
        {}
        self.open.load(Ordering::Acquire)
    }

    /// Called by a connection's thread when its connection is done, its socket closed: once
    /// the service is stopping, the thread waits here for the process to exit instead of
    /// exiting itself. Thousands of threads ending at once queue for the address space's
    /// lock (each frees its stack) and starve the main thread, whose joins then wait for
    /// them: measured with 10,000 streams, 850 ms from the last stream's end to the exit.
    pub fn linger(&self) {
        if self.closing.load(Ordering::Acquire) {
            loop {
                std::thread::park();
            }
        }
    }

    /// Counts a stream as open until the guard is dropped.
    fn enter(&self) -> Open<'_> {
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self)
    }
}

impl StreamCounts for Streams {
    fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn dropped_slow(&self) -> u64 {
        self.hub.dropped_slow()
    }
}

/// One open stream, counted in [`Streams`] until dropped.
struct Open<'a>(&'a Streams);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Under the lock `close` checks the count under, so its wait cannot miss this.
            let _ending = self.0.ending.lock();
            self.0.ended.notify_all();
        }
    }
}

/// Writes `subscriber`'s events to `out` until writing fails or the hub lets go (too slow,
/// or shutdown), which ends the stream cleanly.
///
/// Never writes an event whose id is not above both the request's `Last-Event-ID` and the
/// last one written for its user: a stream never repeats a ping or goes back in time,
/// whatever order the cached reads and the live feed deliver in.
fn pump<W: Write>(
    mut out: EventStream<W>,
    subscriber: &Subscriber,
    subscribe: &Subscribe,
    writing: &Writing,
    metrics: &Metrics,
) -> io::Result<StreamEnd> {
    let keepalive = writing.keepalive;
    let mut sent = vec![subscribe.after; subscriber.user_count()];
    let mut last_write = Instant::now();
    let end = writing.max_stream.map(|max| last_write + max);
    loop {
        if end.is_some_and(|end| Instant::now() >= end) {
            return out.finish().map(|()| StreamEnd::MaxAge);
        }
        let wake = (last_write + keepalive).min(end.unwrap_or(last_write + keepalive));
        match subscriber.wait(wake) {
            Ok((index, event)) if event.seq > sent[index as usize] => {
                match subscribe.form {
                    Form::Single => out.event(event.seq, event.name, &event.without_user())?,
                    Form::Multi => out.event(event.seq, event.name, &[event.with_user()])?,
                }
                sent[index as usize] = event.seq;
                last_write = Instant::now();
                Metrics::count(&metrics.events_delivered_total);
                if !event.cached {
                    let stored = Duration::from_micros(event.seq);
                    let now = Duration::from_micros(ping::now_micros());
                    metrics.delivery_lag.observe(now.saturating_sub(stored));
                }
            }
            Ok(_) => {} // not newer than what was sent
            Err(WaitError::Timeout) => {
                if last_write.elapsed() >= keepalive && end.is_none_or(|end| Instant::now() < end) {
                    out.keepalive()?;
                    last_write = Instant::now();
                }
            }
            Err(WaitError::Ended(End::ClientGone)) => return Ok(StreamEnd::ClientGone),
            Err(WaitError::Ended(End::TooSlow)) => {
                return out.finish().map(|()| StreamEnd::TooSlow);
            }
            Err(WaitError::Ended(End::Shutdown)) => {
                return out.finish().map(|()| StreamEnd::Shutdown);
            }
        }
    }
}

/// A stream's users and client, for logs.
struct Who<'a>(&'a Subscriber, &'a str);

impl std::fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.users() {
            [one] => write!(f, "{one:?}")?,
            [first, rest @ ..] => write!(f, "{first:?} and {} more", rest.len())?,
            [] => f.write_str("nobody")?,
        }
        write!(f, " to {}", self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::ping::{Event, LastPing};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    /// The `id:` and `data:` lines a finished stream wrote, and whether it ended with the
    /// last chunk.
    fn events_written(out: &[u8]) -> (Vec<(u64, String)>, bool) {
        let text = String::from_utf8_lossy(out);
        let mut events = Vec::new();
        let mut id = None;
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("id: ") {
                id = Some(n.parse().unwrap());
            }
            if let Some(data) = line.strip_prefix("data: ") {
                events.push((id.take().expect("an id before the data"), data.to_owned()));
            }
        }
        (events, text.ends_with("0\r\n\r\n"))
    }

    fn event(user: &str, seq: u64) -> Arc<Event> {
        Arc::new(Event::new(
            user,
            &LastPing {
                seq,
                time: seq,
                status: "1".into(),
            },
        ))
    }

    fn subscribe(users: &[&str], form: Form, after: u64) -> Subscribe {
        Subscribe {
            users: users.iter().map(|u| u.to_string()).collect(),
            form,
            client: None,
            after,
            headers: Vec::new(),
            slot: None,
            unchecked_for: None,
        }
    }

    fn writing(keepalive_secs: u64, max_stream: Option<Duration>) -> Writing {
        Writing {
            keepalive: Duration::from_secs(keepalive_secs),
            max_stream,
            timeout: Duration::from_secs(10),
            send_buffer: 65536,
        }
    }

    #[test]
    fn a_stream_ends_cleanly_at_its_maximum_age_with_keepalives_before() {
        let hub = Hub::new(4);
        let request = subscribe(&["u"], Form::Single, 0);
        let sub = hub.subscribe(&request.users);
        hub.publish("u", event("u", 1));
        let mut out = Vec::new();
        let stream = EventStream::start(&mut out, 1, &[]).unwrap();
        let mut limited = writing(0, Some(Duration::from_millis(150)));
        limited.keepalive = Duration::from_millis(40);
        let started = Instant::now();
        pump(stream, &sub, &request, &limited, &Metrics::default()).unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_millis(500),
            "{took:?}"
        );
        let (events, finished) = events_written(&out);
        assert_eq!(events.len(), 1);
        assert!(finished, "ended with the last chunk");
        let keepalives = String::from_utf8_lossy(&out).matches(":\n\n").count();
        assert!((2..=4).contains(&keepalives), "{keepalives} keepalives");
    }

    /// Runs a stream of `request` over what the hub had queued for it, until the hub closes.
    fn written(hub: &Hub, sub: &Subscriber, request: &Subscribe) -> (Vec<(u64, String)>, bool) {
        hub.close();
        let mut out = Vec::new();
        let stream = EventStream::start(&mut out, 1, &[]).unwrap();
        pump(
            stream,
            sub,
            request,
            &writing(60, None),
            &Metrics::default(),
        )
        .unwrap();
        events_written(&out)
    }

    #[test]
    fn only_newer_events_are_written_whatever_order_they_come_in() {
        let hub = Hub::new(16);
        let request = subscribe(&["u"], Form::Single, 0);
        let sub = hub.subscribe(&request.users);
        // The cached ping and live ones racing it: newer, older, the same, newer, older.
        for seq in [5, 4, 5, 6, 5] {
            hub.publish("u", event("u", seq));
        }
        hub.close();

        let mut out = Vec::new();
        let metrics = Metrics::default();
        let stream = EventStream::start(&mut out, 1, &[]).unwrap();
        pump(stream, &sub, &request, &writing(60, None), &metrics).unwrap();
        let (events, finished) = events_written(&out);
        assert_eq!(
            events,
            [
                (5, r#"{"time":5,"status":"1"}"#.to_owned()),
                (6, r#"{"time":6,"status":"1"}"#.to_owned())
            ]
        );
        assert!(finished, "a closed hub ends the stream with the last chunk");
        assert_eq!(metrics.events_delivered_total.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_stream_of_many_users_orders_each_user_on_its_own_and_names_it() {
        let hub = Hub::new(16);
        let request = subscribe(&["a", "b"], Form::Multi, 0);
        let sub = hub.subscribe(&request.users);
        // b's pings are older than a's, yet each is newer than b's own last one.
        for (user, seq) in [("a", 10), ("b", 3), ("a", 9), ("b", 4), ("b", 4), ("c", 99)] {
            hub.publish(user, event(user, seq));
        }
        let (events, _) = written(&hub, &sub, &request);
        assert_eq!(
            events,
            [
                (10, r#"{"user":"a","time":10,"status":"1"}"#.to_owned()),
                (3, r#"{"user":"b","time":3,"status":"1"}"#.to_owned()),
                (4, r#"{"user":"b","time":4,"status":"1"}"#.to_owned()),
            ]
        );
    }

    #[test]
    fn nothing_at_or_below_the_last_event_id_is_written() {
        let hub = Hub::new(16);
        let request = subscribe(&["a", "b"], Form::Multi, 7);
        let sub = hub.subscribe(&request.users);
        for (user, seq) in [("a", 5), ("b", 7), ("a", 8), ("b", 9)] {
            hub.publish(user, event(user, seq));
        }
        let (events, _) = written(&hub, &sub, &request);
        let ids: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [8, 9]);
    }

    #[test]
    fn keepalives_are_written_while_quiet() {
        let hub = Hub::new(4);
        let request = subscribe(&["u"], Form::Single, 0);
        let sub = hub.subscribe(&request.users);
        let closer = {
            let hub = Arc::clone(&hub);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(130));
                hub.close();
            })
        };
        let mut out = Vec::new();
        let stream = EventStream::start(&mut out, 1, &[]).unwrap();
        let mut keepalive = writing(0, None);
        keepalive.keepalive = Duration::from_millis(20);
        pump(stream, &sub, &request, &keepalive, &Metrics::default()).unwrap();
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
