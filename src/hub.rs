//! The hub: which local subscribers watch which user, and the fan-out of events to them.
//!
//! Publishing never blocks: each subscriber has a bounded channel, and a subscriber whose
//! channel is full is dropped from the hub (its stream then ends and the client reconnects,
//! getting the latest ping first) instead of holding memory or slowing anyone else.
//!
//! The bound is the hub's own length check on a crossbeam list channel rather than
//! `crossbeam_channel::bounded`, whose slot array is allocated up front: at a bound of 1,024
//! that is 16 KiB per stream before any event, while a list channel allocates its blocks of
//! 31 slots only as events queue. Only the hub sends, under its lock, so the check cannot race.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, Thread};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::Mutex;

use crate::ping::{Event, LastPing};

/// Local subscribers by user.
pub struct Hub {
    inner: Mutex<Inner>,
    /// Events a subscriber may have queued; one more drops it.
    queue: usize,
    dropped_slow: AtomicU64,
}

struct Inner {
    next_id: u64,
    users: HashMap<String, Vec<Slot>>,
    /// Set by `close`: no new subscriber is registered after it.
    closed: bool,
}

struct Slot {
    id: u64,
    /// Always `Some` until dropped.
    events: Option<Sender<Arc<Event>>>,
    /// The subscriber's thread, woken after each event and when the slot is dropped.
    waiter: Thread,
}

/// What became of an event offered to a subscriber.
enum Offer {
    Queued,
    /// The subscriber has `queue` events waiting already: too slow.
    Full,
    /// The subscriber went away and has not unregistered yet.
    Gone,
}

impl Slot {
    /// Queues `event` and wakes the subscriber, unless it is too slow or gone.
    fn offer(&self, event: &Arc<Event>, queue: usize) -> Offer {
        let Some(events) = &self.events else {
            return Offer::Gone;
        };
        if events.len() >= queue {
            return Offer::Full;
        }
        if events.send(Arc::clone(event)).is_err() {
            return Offer::Gone;
        }
        self.waiter.unpark();
        Offer::Queued
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Disconnect first, then wake the subscriber, so that it sees the disconnect.
        drop(self.events.take());
        self.waiter.unpark();
    }
}

/// One subscriber's registration, made on the thread that will wait for its events
/// ([`Subscriber::wait`]). The events disconnect when the hub drops the subscriber (too
/// slow) or closes. Dropping it unregisters it.
pub struct Subscriber {
    hub: Arc<Hub>,
    user: String,
    id: u64,
    pub events: Receiver<Arc<Event>>,
}

impl Hub {
    /// A hub whose subscribers may each fall `queue` events behind.
    pub fn new(queue: usize) -> Arc<Hub> {
        Arc::new(Hub {
            inner: Mutex::new(Inner {
                next_id: 0,
                users: HashMap::new(),
                closed: false,
            }),
            queue,
            dropped_slow: AtomicU64::new(0),
        })
    }

    /// Registers a subscriber of `user`, whose events the calling thread will wait for.
    /// After `close`, the subscriber's channel is already disconnected.
    pub fn subscribe(self: &Arc<Self>, user: &str) -> Subscriber {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut inner = self.inner.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        if !inner.closed {
            let slot = Slot {
                id,
                events: Some(tx),
                waiter: thread::current(),
            };
            inner.users.entry(user.to_owned()).or_default().push(slot);
        }
        Subscriber {
            hub: Arc::clone(self),
            user: user.to_owned(),
            id,
            events: rx,
        }
    }

    /// Offers `event` to every local subscriber of `user` without blocking; a subscriber
    /// whose channel is full is dropped. Returns how many subscribers took it.
    pub fn publish(&self, user: &str, event: Arc<Event>) -> usize {
        let mut inner = self.inner.lock();
        let Some(slots) = inner.users.get_mut(user) else {
            return 0;
        };
        let mut slow = 0;
        slots.retain(|slot| match slot.offer(&event, self.queue) {
            Offer::Queued => true,
            Offer::Full => {
                log::warn!(
                    "dropping a subscriber of {user:?}: {} events behind",
                    self.queue
                );
                slow += 1;
                false
            }
            Offer::Gone => false,
        });
        let delivered = slots.len();
        if slots.is_empty() {
            inner.users.remove(user);
        }
        self.dropped_slow.fetch_add(slow, Ordering::Relaxed);
        delivered
    }

    /// Publishes `user`'s ping as an event rendered once for all of the user's subscribers.
    pub fn publish_ping(&self, user: &str, ping: &LastPing) -> usize {
        self.publish(user, Arc::new(Event::from(ping)))
    }

    /// Whether `user` has a local subscriber: a cheap check before building an event.
    pub fn is_watched(&self, user: &str) -> bool {
        self.inner.lock().users.contains_key(user)
    }

    /// The users that have at least one local subscriber.
    pub fn users(&self) -> Vec<String> {
        self.inner.lock().users.keys().cloned().collect()
    }

    /// How many subscribers are registered.
    #[cfg(test)]
    fn subscriber_count(&self) -> usize {
        self.inner.lock().users.values().map(Vec::len).sum()
    }

    /// How many subscribers were dropped for falling behind.
    pub fn dropped_slow(&self) -> u64 {
        self.dropped_slow.load(Ordering::Relaxed)
    }

    /// Ends every subscriber (their channels disconnect) and refuses new ones.
    pub fn close(&self) {
        let mut inner = self.inner.lock();
        inner.closed = true;
        inner.users.clear();
    }

    fn unsubscribe(&self, user: &str, id: u64) {
        let mut inner = self.inner.lock();
        if let Some(slots) = inner.users.get_mut(user) {
            slots.retain(|slot| slot.id != id);
            if slots.is_empty() {
                inner.users.remove(user);
            }
        }
    }
}

impl Subscriber {
    /// The next event, waiting for it until `deadline`; `Timeout` if none came by then,
    /// `Disconnected` once the hub has let go and every queued event was taken. Call it on
    /// the thread that subscribed: that is the thread the hub wakes.
    pub fn wait(&self, deadline: Instant) -> Result<Arc<Event>, WaitError> {
        loop {
            match self.events.try_recv() {
                Ok(event) => return Ok(event),
                Err(TryRecvError::Disconnected) => return Err(WaitError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(WaitError::Timeout);
            };
            // Returns at once if the hub unparked us since the last look; a wake-up meant
            // for something else only costs another look.
            thread::park_timeout(left);
        }
    }
}

/// Why [`Subscriber::wait`] returned no event.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitError {
    Timeout,
    Disconnected,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.user, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::TryRecvError;

    fn event(seq: u64) -> Arc<Event> {
        Arc::new(Event {
            seq,
            data: format!("{{\"seq\":{seq}}}"),
        })
    }

    fn seqs(sub: &Subscriber) -> Vec<u64> {
        sub.events.try_iter().map(|e| e.seq).collect()
    }

    #[test]
    fn publish_reaches_every_subscriber_of_the_user_in_order_and_no_one_else() {
        let hub = Hub::new(8);
        let (a1, a2, b) = (hub.subscribe("a"), hub.subscribe("a"), hub.subscribe("b"));
        for seq in 1..=3 {
            assert_eq!(hub.publish("a", event(seq)), 2);
        }
        assert_eq!(seqs(&a1), [1, 2, 3]);
        assert_eq!(seqs(&a2), [1, 2, 3]);
        assert_eq!(seqs(&b), [] as [u64; 0]);
        assert_eq!(hub.publish("nobody", event(1)), 0);
    }

    #[test]
    fn a_full_subscriber_is_dropped_without_blocking_the_others() {
        let hub = Hub::new(2);
        let (slow, fast) = (hub.subscribe("u"), hub.subscribe("u"));
        for seq in 1..=2 {
            hub.publish("u", event(seq));
        }
        assert_eq!(seqs(&fast), [1, 2]);
        assert_eq!(hub.publish("u", event(3)), 1, "the slow one is full");
        assert_eq!(hub.dropped_slow(), 1);
        assert_eq!(seqs(&fast), [3]);
        // The slow one still gets what it had queued, then sees the disconnect.
        assert_eq!(seqs(&slow), [1, 2]);
        assert_eq!(slow.events.try_recv(), Err(TryRecvError::Disconnected));
        assert_eq!(hub.subscriber_count(), 1);
    }

    #[test]
    fn dropping_a_subscriber_unregisters_it() {
        let hub = Hub::new(2);
        let a = hub.subscribe("u");
        let b = hub.subscribe("u");
        drop(a);
        assert_eq!(hub.subscriber_count(), 1);
        drop(b);
        assert_eq!(hub.subscriber_count(), 0);
        assert!(hub.users().is_empty());
    }

    #[test]
    fn close_disconnects_everyone_and_refuses_newcomers() {
        let hub = Hub::new(2);
        let before = hub.subscribe("u");
        hub.close();
        assert_eq!(before.events.try_recv(), Err(TryRecvError::Disconnected));
        let after = hub.subscribe("u");
        assert_eq!(after.events.try_recv(), Err(TryRecvError::Disconnected));
        assert_eq!(hub.publish("u", event(1)), 0);
    }
}
