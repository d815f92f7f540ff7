//! The hub: which local subscribers watch which users, and the fan-out of events to them.
//!
//! A subscriber watches one user or many (one stream for a whole contact list): it has one
//! channel and one thread, registered under each of its users with the user's index in its
//! list, so an extra watched user costs one entry in the hub and nothing else.
//!
//! Publishing never blocks: a subscriber whose channel already holds `queue` events is
//! dropped from the hub (its stream then ends and the client reconnects, getting the latest
//! pings first) instead of holding memory or slowing anyone else.
//!
//! The bound is the hub's own length check on a crossbeam list channel rather than
//! `crossbeam_channel::bounded`, whose slot array is allocated up front: at a bound of 1,024
//! that is 16 KiB per stream before any event, while a list channel allocates its blocks of
//! 31 slots only as events queue. Only the hub sends live events, under its lock, so the
//! check cannot race.

mod expiry;
mod subscriber;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::thread::{self, Thread};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use self::expiry::{Expiries, Known};
pub use self::subscriber::{Mailbox, Subscriber, WaitError};
use crate::ping::Event;

/// An event for a subscriber: the index of its user in the subscriber's list, and the event.
pub type Delivery = (u32, Arc<Event>);

/// Local subscribers by user.
pub struct Hub {
    inner: Mutex<Inner>,
    /// Wakes the `presence` thread when the earliest expiry moved earlier, or at its stop.
    expiry_due: Condvar,
    /// Events a subscriber may have queued; one more drops it.
    queue: usize,
    dropped_slow: AtomicU64,
}

struct Inner {
    next_id: u64,
    /// Each watched user's subscribers and presence. Keys are shared with the subscribers'
    /// lists. Each user's entry is boxed: a map slot is then 24 bytes, and the map's spare
    /// slots (up to half of them just after it grows) carry only those, not the entry itself.
    users: HashMap<Arc<str>, Box<Watched>>,
    expiries: Expiries,
    /// Set to end the `presence` thread.
    expiries_stopped: bool,
    /// Set by `close`: no new subscriber is registered after it.
    closed: bool,
    /// Where to name each user who gains a first subscriber or loses the last, if anyone
    /// asked (the cluster feed, which subscribes to just those users).
    changes: Option<Sender<Arc<str>>>,
}

/// A watched user: the local subscribers, and what is known of the user's presence.
#[derive(Default)]
struct Watched {
    registrations: Vec<Registration>,
    known: Known,
}

/// One subscriber registered under one of its users.
struct Registration {
    slot: Arc<Slot>,
    /// The user's index in the subscriber's list.
    index: u32,
}

/// The hub's side of a subscriber, shared by its registrations, the subscriber and its mailbox.
struct Slot {
    id: u64,
    events: Sender<Delivery>,
    /// The subscriber's thread, woken after each event and when the hub lets go.
    waiter: Thread,
    /// `OPEN` until the hub lets go (an [`End`]) or the subscriber leaves (`LEFT`): the
    /// subscriber then takes what is queued and ends.
    ended: AtomicU8,
    users: Box<[Arc<str>]>,
}

/// What became of an event offered to a subscriber.
enum Offer {
    Queued,
    /// The subscriber has `queue` events waiting already: too slow.
    Full,
    /// The subscriber was let go or went away.
    Gone,
}

/// Why a subscriber's events ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It fell `queue` events behind.
    TooSlow,
    /// The hub closed: the service is stopping.
    Shutdown,
    /// Its client closed or reset the connection.
    ClientGone,
}

const OPEN: u8 = 0;
const LEFT: u8 = u8::MAX;

impl End {
    fn code(self) -> u8 {
        match self {
            End::TooSlow => 1,
            End::Shutdown => 2,
            End::ClientGone => 3,
        }
    }

    fn from_code(code: u8) -> Option<End> {
        match code {
            1 => Some(End::TooSlow),
            2 => Some(End::Shutdown),
            3 => Some(End::ClientGone),
            _ => None,
        }
    }
}

impl Slot {
    fn is_open(&self) -> bool {
        self.ended.load(Ordering::Acquire) == OPEN
    }

    /// Queues `event` and wakes the subscriber, unless it is gone or has `bound` queued.
    fn offer(&self, delivery: Delivery, bound: usize) -> Offer {
        if !self.is_open() {
            return Offer::Gone;
        }
        if self.events.len() >= bound {
            return Offer::Full;
        }
        if self.events.send(delivery).is_err() {
            return Offer::Gone;
        }
        self.waiter.unpark();
        Offer::Queued
    }

    /// Ends the subscription, unless it has ended already: the subscriber takes what is
    /// queued, then sees `end`.
    fn release(&self, end: End) {
        let ended =
            self.ended
                .compare_exchange(OPEN, end.code(), Ordering::AcqRel, Ordering::Acquire);
        if ended.is_ok() {
            self.waiter.unpark();
        }
    }
}

impl Inner {
    /// Removes `slot` from every user it watches.
    fn unregister(&mut self, slot: &Slot) {
        for user in &slot.users {
            if let Some(watched) = self.users.get_mut(user) {
                watched.registrations.retain(|w| w.slot.id != slot.id);
                if watched.registrations.is_empty() {
                    self.forget(user);
                }
            }
        }
    }

    /// Removes `user`, who has no subscriber left.
    fn forget(&mut self, user: &str) {
        if let Some((name, mut watched)) = self.users.remove_entry(user) {
            self.cancel_expiry(&mut watched.known);
            self.changed(name);
        }
    }

    /// Tells whoever asked that `user` gained a first subscriber or lost the last.
    fn changed(&self, user: Arc<str>) {
        if let Some(changes) = &self.changes {
            // Unbounded; the receiver lives as long as the service.
            let _ = changes.send(user);
        }
    }
}

impl Hub {
    /// Bytes of what the hub knows of each watched user's presence (for its expiry), kept in
    /// the user's boxed entry.
    pub const KNOWN_BYTES: usize = std::mem::size_of::<Known>();

    /// A hub whose subscribers may each fall `queue` events behind.
    pub fn new(queue: usize) -> Arc<Hub> {
        Arc::new(Hub {
            inner: Mutex::new(Inner {
                next_id: 0,
                users: HashMap::new(),
                expiries: Expiries::default(),
                expiries_stopped: false,
                closed: false,
                changes: None,
            }),
            expiry_due: Condvar::new(),
            queue,
            dropped_slow: AtomicU64::new(0),
        })
    }

    /// Registers a subscriber of `users` (distinct, at least one), whose events the calling
    /// thread will wait for; a [`Delivery`] names the user by its index in `users`. After
    /// `close`, the subscriber is already released.
    pub fn subscribe(self: &Arc<Self>, users: &[String]) -> Subscriber {
        let (tx, rx) = channel();
        let waiter = thread::current();
        let mut inner = self.inner.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let names: Box<[Arc<str>]> = users
            .iter()
            .map(|user| match inner.users.get_key_value(user.as_str()) {
                Some((name, _)) => Arc::clone(name),
                None => Arc::from(user.as_str()),
            })
            .collect();
        let slot = Arc::new(Slot {
            id,
            events: tx,
            waiter,
            ended: AtomicU8::new(if inner.closed {
                End::Shutdown.code()
            } else {
                OPEN
            }),
            users: names,
        });
        if !inner.closed {
            for (index, name) in slot.users.iter().enumerate() {
                let watch = Registration {
                    slot: Arc::clone(&slot),
                    index: index as u32,
                };
                let watched = inner.users.entry(Arc::clone(name)).or_default();
                watched.registrations.push(watch);
                if watched.registrations.len() == 1 {
                    inner.changed(Arc::clone(name));
                }
            }
        }
        Subscriber::new(Arc::clone(self), slot, rx)
    }

    /// Offers `event` to every local subscriber of `user` without blocking; a subscriber
    /// whose channel is full is dropped. Returns how many subscribers took it.
    pub fn publish(&self, user: &str, event: Arc<Event>) -> usize {
        let mut inner = self.inner.lock();
        self.deliver(&mut inner, user, event)
    }

    /// [`publish`](Self::publish), under the lock already taken.
    fn deliver(&self, inner: &mut Inner, user: &str, event: Arc<Event>) -> usize {
        let Some(watched) = inner.users.get_mut(user) else {
            return 0;
        };
        let watches = &mut watched.registrations;
        let mut slow = Vec::new();
        watches.retain(
            |w| match w.slot.offer((w.index, Arc::clone(&event)), self.queue) {
                Offer::Queued => true,
                Offer::Full => {
                    slow.push(Arc::clone(&w.slot));
                    false
                }
                Offer::Gone => false,
            },
        );
        let delivered = watches.len();
        if watches.is_empty() {
            inner.forget(user);
        }
        for slot in &slow {
            log::warn!(
                "dropping a subscriber of {user:?}: {} events behind",
                self.queue
            );
            slot.release(End::TooSlow);
            inner.unregister(slot);
        }
        self.dropped_slow
            .fetch_add(slow.len() as u64, Ordering::Relaxed);
        delivered
    }

    /// From now on, sends `changes` each user who gains a first local subscriber or loses
    /// the last. Whoever receives them checks [`is_watched`](Self::is_watched) for the state
    /// now: a name says only that it may have changed.
    pub fn report_changes(&self, changes: Sender<Arc<str>>) {
        self.inner.lock().changes = Some(changes);
    }

    /// Whether `user` has a local subscriber: a cheap check before building an event.
    pub fn is_watched(&self, user: &str) -> bool {
        self.inner.lock().users.contains_key(user)
    }

    /// The users that have at least one local subscriber (the hub's own shared names).
    pub fn users(&self) -> Vec<Arc<str>> {
        let inner = self.inner.lock();
        inner.users.keys().cloned().collect()
    }

    /// How many subscriber registrations (subscriber and user) there are.
    #[cfg(test)]
    fn watch_count(&self) -> usize {
        (self.inner.lock().users.values())
            .map(|w| w.registrations.len())
            .sum()
    }

    /// How many subscribers were dropped for falling behind.
    pub fn dropped_slow(&self) -> u64 {
        self.dropped_slow.load(Ordering::Relaxed)
    }

    /// Ends every subscription (each takes what it has queued, then ends) and refuses new
    /// ones.
    pub fn close(&self) {
        let mut inner = self.inner.lock();
        inner.closed = true;
        for watched in inner.users.values() {
            for watch in &watched.registrations {
                watch.slot.release(End::Shutdown);
            }
        }
        inner.users.clear();
        inner.expiries.clear();
    }
}

/// A new subscriber's channel, made outside [`Hub::subscribe`]'s frame: the channel is built
/// on the stack before it is boxed, and every stream thread's deepest stack page stays
/// resident for the stream's life.
#[inline(never)]
fn channel() -> (Sender<Delivery>, Receiver<Delivery>) {
    crossbeam_channel::unbounded()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ping::{LastPing, now_micros};
    use crate::presence::{GRACE_MICROS, Update};
    use std::time::{Duration, Instant};

    fn event(user: &str, seq: u64) -> Arc<Event> {
        let ping = LastPing {
            seq,
            time: seq,
            status: "s".into(),
        };
        Arc::new(Event::new(user, &ping))
    }

    fn users(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// What the subscriber has queued, as (user, seq), without waiting.
    fn queued(sub: &Subscriber) -> Vec<(String, u64)> {
        let past = Instant::now();
        std::iter::from_fn(|| sub.wait(past).ok())
            .map(|(index, event)| (sub.users()[index as usize].to_string(), event.seq))
            .collect()
    }

    fn seqs(sub: &Subscriber) -> Vec<u64> {
        queued(sub).into_iter().map(|(_, seq)| seq).collect()
    }

    #[test]
    fn publish_reaches_every_subscriber_of_the_user_in_order_and_no_one_else() {
        let hub = Hub::new(8);
        let a1 = hub.subscribe(&users(&["a"]));
        let a2 = hub.subscribe(&users(&["a"]));
        let b = hub.subscribe(&users(&["b"]));
        for seq in 1..=3 {
            assert_eq!(hub.publish("a", event("a", seq)), 2);
        }
        assert_eq!(seqs(&a1), [1, 2, 3]);
        assert_eq!(seqs(&a2), [1, 2, 3]);
        assert_eq!(seqs(&b), [] as [u64; 0]);
        assert_eq!(hub.publish("nobody", event("nobody", 1)), 0);
    }

    #[test]
    fn one_subscriber_of_many_users_gets_each_users_events_by_index() {
        let hub = Hub::new(8);
        let many = hub.subscribe(&users(&["a", "b", "c"]));
        let just_b = hub.subscribe(&users(&["b"]));
        hub.publish("b", event("b", 1));
        hub.publish("z", event("z", 2));
        hub.publish("a", event("a", 3));
        hub.publish("c", event("c", 4));
        assert_eq!(
            queued(&many),
            [("b".into(), 1), ("a".into(), 3), ("c".into(), 4)]
        );
        assert_eq!(queued(&just_b), [("b".into(), 1)]);
        assert_eq!(hub.watch_count(), 4);
        drop(many);
        assert_eq!(hub.watch_count(), 1);
        assert_eq!(hub.users(), [Arc::from("b")]);
    }

    #[test]
    fn a_full_subscriber_is_dropped_from_all_its_users_without_blocking_the_others() {
        let hub = Hub::new(2);
        let slow = hub.subscribe(&users(&["u", "v"]));
        let fast = hub.subscribe(&users(&["u"]));
        for seq in 1..=2 {
            hub.publish("u", event("u", seq));
        }
        assert_eq!(seqs(&fast), [1, 2]);
        assert_eq!(hub.publish("u", event("u", 3)), 1, "the slow one is full");
        assert_eq!(hub.dropped_slow(), 1);
        assert_eq!(seqs(&fast), [3]);
        assert_eq!(hub.publish("v", event("v", 4)), 0, "gone from v too");
        // The slow one still gets what it had queued, then sees the end.
        assert_eq!(seqs(&slow), [1, 2]);
        assert_eq!(
            slow.wait(Instant::now() + std::time::Duration::from_secs(5)),
            Err(WaitError::Ended(End::TooSlow))
        );
        assert_eq!(hub.watch_count(), 1);
    }

    #[test]
    fn a_mailbox_reaches_only_its_subscriber_and_not_after_it_left() {
        let hub = Hub::new(1);
        let new = hub.subscribe(&users(&["u", "v"]));
        let old = hub.subscribe(&users(&["u"]));
        let mailbox = new.mailbox();
        assert_eq!(&*mailbox.users()[1], "v");
        // Past the queue bound: cached pings are at most one per user.
        mailbox.deliver(0, event("u", 1));
        mailbox.deliver(1, event("v", 2));
        assert_eq!(queued(&new), [("u".into(), 1), ("v".into(), 2)]);
        assert_eq!(seqs(&old), [] as [u64; 0]);
        drop(new);
        assert!(!mailbox.is_open());
    }

    #[test]
    fn close_ends_everyone_and_refuses_newcomers() {
        let hub = Hub::new(2);
        let before = hub.subscribe(&users(&["u"]));
        hub.publish("u", event("u", 1));
        hub.close();
        assert_eq!(seqs(&before), [1], "what was queued is still taken");
        assert_eq!(
            before.wait(Instant::now()),
            Err(WaitError::Ended(End::Shutdown))
        );
        let after = hub.subscribe(&users(&["u"]));
        assert_eq!(
            after.wait(Instant::now()),
            Err(WaitError::Ended(End::Shutdown))
        );
        assert_eq!(hub.publish("u", event("u", 2)), 0);
    }

    fn online(seq: u64, expires: u64) -> Update {
        let ping = LastPing {
            seq,
            time: 7,
            status: "0".into(),
        };
        Update::Online { ping, expires }
    }

    #[test]
    fn a_watched_users_expiry_is_announced_once_with_the_expiry_as_its_id() {
        let hub = Hub::new(8);
        let expiring = Arc::clone(&hub);
        let timers = std::thread::spawn(move || expiring.run_expiries());
        let sub = hub.subscribe(&users(&["a", "b"]));
        let now = now_micros();
        hub.publish_update("a", &online(now, now + 50_000));
        // b pings on: its first expiry is replaced by the later one.
        hub.publish_update("b", &online(now, now + 40_000));
        hub.publish_update("b", &online(now + 1, now + 10_000_000));
        assert_eq!(hub.pending_expiries(), 2);

        let within = Instant::now() + Duration::from_micros(50_000 + GRACE_MICROS + 500_000);
        let mut got = Vec::new();
        while let Ok((index, event)) = sub.wait(within) {
            got.push((index, event.seq, event.name));
            if event.name.is_some() {
                break;
            }
        }
        assert_eq!(
            got,
            [
                (0, now, None),
                (1, now, None),
                (1, now + 1, None),
                (0, now + 50_000, Some("offline"))
            ]
        );
        assert!(Instant::now() < within, "announced in time");
        assert!(
            sub.wait(Instant::now() + Duration::from_millis(100))
                .is_err(),
            "once"
        );
        assert_eq!(hub.pending_expiries(), 1, "b's is still pending");

        // An explicit offline cancels b's; a user no longer watched takes its expiry along.
        hub.publish_update(
            "b",
            &Update::Offline {
                id: now + 2,
                time: 7,
            },
        );
        assert_eq!(hub.pending_expiries(), 0);
        // An update older than the offline a got does not bring back an expiry.
        hub.publish_update("a", &online(now + 3, now + 10_000_000));
        assert_eq!(hub.pending_expiries(), 0);
        hub.publish_update("a", &online(now + 60_000, now + 10_000_000));
        assert_eq!(hub.pending_expiries(), 1);
        drop(sub);
        hub.publish("a", event("a", now + 60_001)); // finds the subscriber gone
        assert_eq!(hub.pending_expiries(), 0);
        hub.stop_expiries();
        timers.join().unwrap();
    }
}
