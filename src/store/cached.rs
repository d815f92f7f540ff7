//! The `cached-reads` thread: gives each new subscriber its user's last ping, through the hub,
//! and after a Redis resubscription, every watched user's.
//!
//! Streams do not read the store themselves: a Redis read on every stream thread would leave
//! its stack and heap a few KiB larger for the stream's whole life (measured: 16.2 against
//! 11.3 KiB per stream). Instead a stream registers in the hub, then asks for its user here;
//! this thread reads the last pings of every user asked for meanwhile in one round trip and
//! publishes them through the hub. Streams skip what is not newer than what they sent, so a
//! cached ping racing a live one cannot go backwards. A failed read is retried every second
//! for as long as the user is watched.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::Store;
use crate::hub::Hub;
use crate::worker::Worker;

/// Users per read, so a reconnect storm makes a few round trips rather than one huge one.
const BATCH: usize = 500;
/// Wait before reading again the users whose read failed.
const RETRY: Duration = Duration::from_secs(1);

/// Where streams (and the resync after a Redis resubscription) ask for a user's last ping.
#[derive(Clone)]
pub struct CachedReads {
    requests: Sender<Ask>,
}

/// What the thread's queue carries.
enum Ask {
    /// Publish this user's last ping to the user's subscribers.
    User(String),
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

    /// Asks for `user`'s last ping to be published to the user's subscribers. Call it after
    /// registering the subscriber, so that nothing falls between the read and the live feed.
    pub fn request(&self, user: &str) {
        // The queue is unbounded and only this handle's clones send: after shutdown stopped
        // the thread, a request is dropped with the process.
        let _ = self.requests.send(Ask::User(user.to_owned()));
    }
}

fn run(store: &dyn Store, hub: &Hub, queue: &Receiver<Ask>) {
    let mut failed: HashSet<String> = HashSet::new();
    let mut retry_at: Option<Instant> = None;
    loop {
        let first = match retry_at {
            Some(at) => queue.recv_deadline(at),
            None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let mut users: HashSet<String> = HashSet::new();
        match first {
            Ok(ask) => {
                for ask in std::iter::once(ask).chain(queue.try_iter().take(BATCH - 1)) {
                    match ask {
                        Ask::User(user) => users.insert(user),
                        Ask::Stop => return,
                    };
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if retry_at.is_some_and(|at| at <= Instant::now()) {
            users.extend(failed.drain());
            retry_at = None;
        }
        let users: Vec<String> = users.into_iter().filter(|u| hub.is_watched(u)).collect();
        if users.is_empty() {
            continue;
        }
        match store.last_many(&users) {
            Ok(pings) => {
                for (user, ping) in pings {
                    hub.publish_ping(&user, &ping);
                }
            }
            Err(e) => {
                log::debug!(
                    "cached pings of {} users unavailable, retrying: {e}",
                    users.len()
                );
                failed.extend(users);
                retry_at.get_or_insert_with(|| Instant::now() + RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ping::LastPing;
    use crate::store::memory::MemoryStore;
    use crate::store::{Kind, StoreError, Unhealthy};
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_new_subscriber_gets_the_cached_ping_through_the_hub() {
        let hub = Hub::new(8);
        let store = Arc::new(MemoryStore::new(Arc::clone(&hub)));
        store.record("u", "1", 5_000_000).unwrap();
        let (reads, _worker) =
            CachedReads::start(Arc::clone(&store) as Arc<dyn Store>, Arc::clone(&hub)).unwrap();
        let sub = hub.subscribe("u");
        reads.request("u");
        let event = sub.events.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!(event.data, r#"{"time":5,"status":"1"}"#);
        reads.request("nobody"); // no ping, no subscriber: nothing happens
    }

    /// A store whose reads fail `failures` times first.
    struct Flaky {
        inner: MemoryStore,
        failures: AtomicU32,
    }

    impl Store for Flaky {
        fn record(&self, user: &str, status: &str, now: u64) -> Result<LastPing, StoreError> {
            self.inner.record(user, status, now)
        }
        fn last_many(&self, users: &[String]) -> Result<Vec<(String, LastPing)>, StoreError> {
            if self.failures.load(Ordering::SeqCst) > 0 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
                return Err(StoreError::Unavailable("down".into()));
            }
            self.inner.last_many(users)
        }
        fn kind(&self) -> Kind {
            Kind::Memory
        }
        fn health(&self) -> Result<(), Unhealthy> {
            Ok(())
        }
        fn feed_up(&self) -> Option<bool> {
            None
        }
    }

    #[test]
    fn a_failed_read_is_retried_while_the_user_is_watched() {
        let hub = Hub::new(8);
        let store = Arc::new(Flaky {
            inner: MemoryStore::new(Hub::new(1)),
            failures: AtomicU32::new(1),
        });
        store.inner.record("u", "2", 7_000_000).unwrap();
        let (reads, _worker) = CachedReads::start(store, Arc::clone(&hub)).unwrap();
        let sub = hub.subscribe("u");
        reads.request("u");
        let started = Instant::now();
        let event = sub.events.recv_timeout(RETRY * 3).unwrap();
        assert_eq!(event.data, r#"{"time":7,"status":"2"}"#);
        assert!(started.elapsed() >= RETRY / 2, "delivered on the retry");
    }
}
