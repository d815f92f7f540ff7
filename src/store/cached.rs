//! The `cached-reads` thread: gives each new stream the last pings of its users, and after a
//! Redis resubscription, every watched user's.
//!
//! Streams do not read the store themselves: a Redis read on every stream thread would leave
//! its stack and heap a few KiB larger for the stream's whole life (measured: 16.2 against
//! 11.3 KiB per stream). Instead a stream registers in the hub, then asks here with its
//! mailbox; this thread reads the last pings of every user asked for meanwhile in one round
//! trip and delivers each stream its own (not to every subscriber of those users, who have
//! them already). A resync publishes through the hub, to every subscriber. Streams skip what
//! is not newer than what they sent, so a cached ping racing a live one cannot go backwards.
//! A failed read is retried every second for as long as the stream is open, or the user
//! watched.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::Store;
use crate::hub::{Hub, Mailbox};
use crate::ping::Event;
use crate::presence::Presence;
use crate::worker::Worker;

/// Users per read, so a reconnect storm makes a few round trips rather than one huge one. A
/// stream's users are never split between reads.
const BATCH: usize = 500;
/// Wait before reading again what could not be read.
const RETRY: Duration = Duration::from_secs(1);

/// Where streams (and the resync after a Redis resubscription) ask for last pings.
#[derive(Clone)]
pub struct CachedReads {
    requests: Sender<Ask>,
}

/// What the thread's queue carries.
enum Ask {
    /// Deliver a new stream the last pings of its users.
    Stream(Mailbox),
    /// Publish this user's last ping to all the user's subscribers.
    Resync(String),
    /// Stop, at shutdown.
    Stop,
}

impl CachedReads {
    pub fn start(store: Arc<dyn Store>, hub: Arc<Hub>) -> std::io::Result<(CachedReads, Worker)> {
        let (requests, queue) = crossbeam_channel::unbounded();
        let stop = requests.clone();
        let worker = Worker::spawn(
            "cached-reads",
            move || run(store.as_ref(), &hub, &queue),
            move || drop(stop.send(Ask::Stop)),
        )?;
        Ok((CachedReads { requests }, worker))
    }

    /// Asks for the last pings of the subscriber's users to be delivered to it. Call it after
    /// registering the subscriber, so that nothing falls between the read and the live feed.
    pub fn request(&self, mailbox: Mailbox) {
        self.send(Ask::Stream(mailbox));
    }

    /// Asks for `user`'s last ping to be published to all the user's subscribers.
    pub fn resync(&self, user: &str) {
        self.send(Ask::Resync(user.to_owned()));
    }

    fn send(&self, ask: Ask) {
        // The queue is unbounded and only this handle's clones send: after shutdown stopped
        // the thread, a request is dropped with the process.
        let _ = self.requests.send(ask);
    }
}

/// What one read is for.
#[derive(Default)]
struct Batch {
    streams: Vec<Mailbox>,
    resync: HashSet<String>,
}

impl Batch {
    /// Users to read, counted with repeats (a bound, not an exact size).
    fn size(&self) -> usize {
        self.streams.iter().map(|m| m.users().len()).sum::<usize>() + self.resync.len()
    }

    /// Drops streams that have ended and users no longer watched.
    fn retain_wanted(&mut self, hub: &Hub) {
        self.streams.retain(Mailbox::is_open);
        self.resync.retain(|user| hub.is_watched(user));
    }

    fn users(&self) -> Vec<String> {
        let mut users: HashSet<&str> = self.resync.iter().map(String::as_str).collect();
        for mailbox in &self.streams {
            users.extend(mailbox.users().iter().map(|u| &**u));
        }
        users.into_iter().map(str::to_owned).collect()
    }

    fn merge(&mut self, other: Batch) {
        self.streams.extend(other.streams);
        self.resync.extend(other.resync);
    }
}

fn run(store: &dyn Store, hub: &Hub, queue: &Receiver<Ask>) {
    let mut failed = Batch::default();
    let mut retry_at: Option<Instant> = None;
    loop {
        let first = match retry_at {
            Some(at) => queue.recv_deadline(at),
            None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let mut batch = Batch::default();
        let mut next = match first {
            Ok(ask) => Some(ask),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        while let Some(ask) = next {
            match ask {
                Ask::Stream(mailbox) => batch.streams.push(mailbox),
                Ask::Resync(user) => drop(batch.resync.insert(user)),
                Ask::Stop => return,
            }
            next = (batch.size() < BATCH)
                .then(|| queue.try_recv().ok())
                .flatten();
        }
        if retry_at.is_some_and(|at| at <= Instant::now()) {
            batch.merge(std::mem::take(&mut failed));
            retry_at = None;
        }
        batch.retain_wanted(hub);
        let users = batch.users();
        if users.is_empty() {
            continue;
        }
        match store.last_many(&users, None) {
            Ok(pings) => {
                log::debug!(
                    "cached pings: {} of {} users read, for {} streams and {} resyncs",
                    pings.len(),
                    users.len(),
                    batch.streams.len(),
                    batch.resync.len()
                );
                deliver(hub, &batch, pings)
            }
            Err(e) => {
                log::debug!(
                    "cached pings of {} users unavailable, retrying: {e}",
                    users.len()
                );
                failed.merge(batch);
                retry_at.get_or_insert_with(|| Instant::now() + RETRY);
            }
        }
    }
}

/// Hands each stream of `batch` its users' presences (the last visible ping, and the offline
/// event of a user who is offline), and publishes the resynced users'.
fn deliver(hub: &Hub, batch: &Batch, presences: Vec<(String, Presence)>) {
    let events: HashMap<String, Vec<Arc<Event>>> = presences
        .into_iter()
        .map(|(user, presence)| {
            let events = hub.events_of(&user, &presence);
            (user, events)
        })
        .collect();
    for mailbox in &batch.streams {
        for (index, user) in mailbox.users().iter().enumerate() {
            for event in events.get(&**user).into_iter().flatten() {
                mailbox.deliver(index as u32, Arc::clone(event));
            }
        }
    }
    for user in &batch.resync {
        for event in events.get(user).into_iter().flatten() {
            hub.publish(user, Arc::clone(event));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ping::now_micros;
    use crate::presence::Rules;
    use crate::store::memory::MemoryStore;
    use crate::store::{Kind, StoreError, Unhealthy};
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_new_stream_gets_its_cached_pings_and_a_resync_reaches_every_subscriber() {
        let hub = Hub::new(8);
        let store = Arc::new(MemoryStore::new(Arc::clone(&hub), Rules::default()));
        let now = now_micros();
        let id = store.record("u", "d", Some("1"), now).unwrap().unwrap();
        let (reads, _worker) =
            CachedReads::start(Arc::clone(&store) as Arc<dyn Store>, Arc::clone(&hub)).unwrap();
        let watcher = hub.subscribe(&["u".into()]);
        let sub = hub.subscribe(&["nobody".into(), "u".into()]);
        reads.request(sub.mailbox());
        let (index, event) = sub.wait(Instant::now() + Duration::from_secs(2)).unwrap();
        let data = format!(r#"{{"user":"u","time":{},"status":"1"}}"#, now / 1_000_000);
        assert_eq!((index, event.with_user()), (1, data.as_str()));
        assert!(
            sub.wait(Instant::now() + Duration::from_millis(50))
                .is_err(),
            "nobody has none"
        );
        assert!(
            watcher.wait(Instant::now()).is_err(),
            "only the new stream gets it"
        );
        reads.resync("u");
        let (_, event) = watcher
            .wait(Instant::now() + Duration::from_secs(2))
            .unwrap();
        assert_eq!(event.seq, id, "a resync reaches every subscriber");
    }

    #[test]
    fn a_user_found_offline_gets_the_last_ping_then_the_offline_event() {
        let hub = Hub::new(8);
        let store = Arc::new(MemoryStore::new(Arc::clone(&hub), Rules::default()));
        // Pinged long ago: expired by now.
        store.record("u", "d", Some("1"), 5_000_000).unwrap();
        let (reads, _worker) =
            CachedReads::start(Arc::clone(&store) as Arc<dyn Store>, Arc::clone(&hub)).unwrap();
        let sub = hub.subscribe(&["u".into()]);
        reads.request(sub.mailbox());
        let soon = || Instant::now() + Duration::from_secs(2);
        let (_, ping) = sub.wait(soon()).unwrap();
        assert_eq!(ping.without_user().concat(), r#"{"time":5,"status":"1"}"#);
        let (_, offline) = sub.wait(soon()).unwrap();
        assert_eq!(offline.name, Some("offline"));
        assert_eq!(offline.without_user().concat(), r#"{"time":5}"#);
        assert_eq!(
            offline.seq, 65_000_000,
            "the expiry is the offline event's id"
        );
    }

    /// A store whose reads fail `failures` times first.
    struct Flaky {
        inner: MemoryStore,
        failures: AtomicU32,
    }

    impl Store for Flaky {
        fn record(
            &self,
            user: &str,
            device: &str,
            status: Option<&str>,
            now: u64,
        ) -> Result<Option<u64>, StoreError> {
            self.inner.record(user, device, status, now)
        }
        fn last_many(
            &self,
            users: &[String],
            watcher: Option<&str>,
        ) -> Result<Vec<(String, Presence)>, StoreError> {
            if self.failures.load(Ordering::SeqCst) > 0 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
                return Err(StoreError::TimedOut);
            }
            self.inner.last_many(users, watcher)
        }
        fn allowed(&self, watcher: &str, users: &[String]) -> Result<Vec<bool>, StoreError> {
            self.inner.allowed(watcher, users)
        }
        fn kind(&self) -> Kind {
            self.inner.kind()
        }
        fn health(&self) -> Result<(), Unhealthy> {
            self.inner.health()
        }
        fn feed_up(&self) -> Option<bool> {
            self.inner.feed_up()
        }
    }

    #[test]
    fn a_failed_read_is_retried_while_the_user_is_watched() {
        let hub = Hub::new(8);
        let store = Arc::new(Flaky {
            inner: MemoryStore::new(Hub::new(1), Rules::default()),
            failures: AtomicU32::new(1),
        });
        let now = now_micros();
        store.inner.record("u", "d", Some("2"), now).unwrap();
        let (reads, _worker) = CachedReads::start(store, Arc::clone(&hub)).unwrap();
        let sub = hub.subscribe(&["u".into()]);
        reads.request(sub.mailbox());
        let started = Instant::now();
        let (_, event) = sub.wait(started + RETRY * 3).unwrap();
        let data = format!(r#"{{"time":{},"status":"2"}}"#, now / 1_000_000);
        assert_eq!(event.without_user().concat(), data);
        assert!(started.elapsed() >= RETRY / 2, "delivered on the retry");
    }
}
