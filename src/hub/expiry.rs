//! Offline by expiry: what the hub knows of each watched user's presence, and the expiry
//! times of all of them in one calendar of 100 ms buckets, the one timer structure of an
//! instance. The `presence` thread sleeps until the earliest bucket opens, then announces each
//! of its users at the user's own expiry and grace (to a millisecond): the user's subscribers
//! are told the user went offline, with the exact expiry time as the event's id, the id every
//! other instance derives for the same expiry.
//!
//! A bucket holds only the users' names (16 bytes each); a user's place in its bucket is kept
//! with what the hub knows of the user, so a rescheduled or forgotten user leaves its bucket at
//! once (a swap with the bucket's last). An ordered set of (time, name) was measured at 49
//! bytes a user: expiries arrive in time order, which leaves its nodes half full.
//!
//! The hub learns a user's presence from what the store publishes and from what cached reads
//! find, whichever is newer by id; a user no longer watched here is forgotten, expiry and all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Hub, Inner};
use crate::ping::{Event, now_micros};
use crate::presence::{GRACE_MICROS, Presence, State, Update};

/// The width of one bucket of expiries.
const BUCKET_MICROS: u64 = 100_000;
/// The shortest sleep between announcements within a bucket: expiries a millisecond apart
/// are announced together.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// What the hub knows of a watched user's presence: enough to announce its expiry.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Known {
    /// The id of the newest update learnt.
    id: u64,
    /// When the presence expires (UTC epoch microseconds), as scheduled; 0 for none.
    expires: u64,
    /// The last visible ping's time (UTC epoch seconds), for the offline event.
    time: u32,
    /// The user's place in the bucket of `expires`.
    slot: u32,
}

/// Every watched user's pending expiry, by bucket of [`BUCKET_MICROS`], earliest first.
#[derive(Debug, Default)]
pub(super) struct Expiries(BTreeMap<u64, Vec<Arc<str>>>);

impl Expiries {
    /// Puts `user`, whose `known.expires` is set, in its bucket; returns whether that bucket
    /// is now the earliest and was not before (the `presence` thread must wake).
    fn insert(&mut self, user: Arc<str>, known: &mut Known) -> bool {
        let bucket = known.expires / BUCKET_MICROS;
        let earlier = self
            .0
            .first_key_value()
            .is_none_or(|(first, _)| bucket < *first);
        let users = self.0.entry(bucket).or_default();
        known.slot = users.len() as u32;
        users.push(user);
        earlier
    }

    /// Takes the user that `known` places out of its bucket; returns the user moved into its
    /// place, whose slot the caller must set to `known.slot`.
    fn remove(&mut self, known: &Known) -> Option<Arc<str>> {
        let bucket = known.expires / BUCKET_MICROS;
        let users = self.0.get_mut(&bucket)?;
        let slot = known.slot as usize;
        if slot >= users.len() {
            return None;
        }
        users.swap_remove(slot);
        let moved = users.get(slot).cloned();
        if users.is_empty() {
            self.0.remove(&bucket);
        }
        moved
    }

    /// Takes `user` out of the earliest bucket by name, for a user the hub no longer knows.
    fn forget(&mut self, user: &Arc<str>) {
        if let Some(mut first) = self.0.first_entry() {
            first.get_mut().retain(|u| !Arc::ptr_eq(u, user));
            if first.get().is_empty() {
                first.remove();
            }
        }
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

impl Inner {
    /// Drops the pending expiry that `known` (a user's, taken out of or still in the map)
    /// holds, if any.
    pub(super) fn cancel_expiry(&mut self, known: &mut Known) {
        if known.expires == 0 {
            return;
        }
        if let Some(moved) = self.expiries.remove(known)
            && let Some(watched) = self.users.get_mut(&moved)
        {
            watched.known.slot = known.slot;
        }
        known.expires = 0;
    }

    /// Takes in that `user` is, as of update `id`, online until `online`'s expiry (with its
    /// last visible time), or offline (`None`); ignored if not newer than what is known.
    /// Returns whether the earliest expiry moved earlier (the `presence` thread must wake).
    fn learn(&mut self, user: &str, id: u64, online: Option<(u64, u64)>) -> bool {
        let Some((name, watched)) = self.users.get_key_value(user) else {
            return false;
        };
        let (name, mut known) = (Arc::clone(name), watched.known);
        if id <= known.id {
            return false;
        }
        known.id = id;
        self.cancel_expiry(&mut known);
        let earlier = match online {
            Some((expires, time)) => {
                known.expires = expires;
                known.time = u32::try_from(time).unwrap_or(u32::MAX);
                self.expiries.insert(name, &mut known)
            }
            None => false,
        };
        if let Some(watched) = self.users.get_mut(user) {
            watched.known = known;
        }
        earlier
    }
}

impl Hub {
    /// Publishes what the store says changed for `user`, and keeps the user's expiry.
    pub fn publish_update(&self, user: &str, update: &Update) -> usize {
        let (event, wake) = {
            let mut inner = self.inner.lock();
            match update {
                Update::Online { ping, expires } => (
                    Event::new(user, ping),
                    inner.learn(user, ping.seq, Some((*expires, ping.time))),
                ),
                Update::Offline { id, time } => (
                    Event::offline(user, *id, *time),
                    inner.learn(user, *id, None),
                ),
            }
        };
        if wake {
            self.expiry_due.notify_one();
        }
        self.publish(user, Arc::new(event))
    }

    /// The events that tell a new watcher `user`'s `presence` now: the last visible ping,
    /// then the offline event if the user is offline; the hub also learns the presence.
    pub fn events_of(&self, user: &str, presence: &Presence) -> Vec<Arc<Event>> {
        let now = now_micros();
        let mut ping = Event::new(user, &presence.ping);
        ping.cached = true;
        let mut events = vec![Arc::new(ping)];
        let wake = match (presence.offline_at(now), presence.state) {
            (Some(id), _) => {
                let mut offline = Event::offline(user, id, presence.ping.time);
                offline.cached = true;
                events.push(Arc::new(offline));
                self.inner
                    .lock()
                    .learn(user, id.max(presence.ping.seq), None)
            }
            (None, State::Until(expires)) => {
                let online = Some((expires, presence.ping.time));
                self.inner.lock().learn(user, presence.ping.seq, online)
            }
            (None, State::Offline(_)) => false, // offline_at says Some
        };
        if wake {
            self.expiry_due.notify_one();
        }
        events
    }

    /// The `presence` thread's body: announces each watched user's expiry once its grace has
    /// passed, until [`stop_expiries`](Self::stop_expiries).
    pub fn run_expiries(&self) {
        let mut inner = self.inner.lock();
        while !inner.expiries_stopped {
            let now = now_micros();
            let Some((&bucket, users)) = inner.expiries.0.first_key_value() else {
                self.expiry_due.wait(&mut inner);
                continue;
            };
            let opens = bucket * BUCKET_MICROS + GRACE_MICROS;
            if opens > now {
                self.expiry_due
                    .wait_for(&mut inner, Duration::from_micros(opens - now));
                continue;
            }
            // The bucket is open: each of its users is announced at its own expiry and grace,
            // so a bucket's offline events do not all go out at once.
            let (mut due, mut next) = (Vec::new(), u64::MAX);
            for user in users {
                let at = inner.users.get(user).map_or(0, |w| w.known.expires);
                match at + GRACE_MICROS <= now {
                    true => due.push(Arc::clone(user)),
                    false => next = next.min(at + GRACE_MICROS),
                }
            }
            for user in due {
                self.expire(&mut inner, &user);
            }
            if next != u64::MAX {
                let wait = Duration::from_micros(next.saturating_sub(now)).max(MIN_WAIT);
                self.expiry_due.wait_for(&mut inner, wait);
            }
        }
    }

    /// Announces that `user`'s presence expired, and takes the user out of the calendar.
    fn expire(&self, inner: &mut Inner, user: &Arc<str>) {
        let Some(watched) = inner.users.get(user) else {
            // Never so (a user leaves the calendar as it leaves the hub), but a name left
            // behind would be due at every wake-up.
            inner.expiries.forget(user);
            return;
        };
        let mut known = watched.known;
        let at = known.expires;
        inner.cancel_expiry(&mut known);
        known.id = known.id.max(at);
        if let Some(watched) = inner.users.get_mut(user) {
            watched.known = known;
        }
        let mut event = Event::offline(user, at, u64::from(known.time));
        // Announced a grace after its time: its lag is no measure of delivery.
        event.cached = true;
        self.deliver(inner, user, Arc::new(event));
    }

    /// Ends [`run_expiries`](Self::run_expiries).
    pub fn stop_expiries(&self) {
        self.inner.lock().expiries_stopped = true;
        self.expiry_due.notify_all();
    }

    /// How many expiries are pending.
    #[cfg(test)]
    pub(super) fn pending_expiries(&self) -> usize {
        self.inner.lock().expiries.0.values().map(Vec::len).sum()
    }
}
