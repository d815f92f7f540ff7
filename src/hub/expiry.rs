//! Offline by expiry: what the hub knows of each watched user's presence, and the expiry
//! times of all of them in one ordered set, the one timer structure of an instance. The
//! `presence` thread sleeps until the earliest expiry (and its grace) has passed, then tells
//! that user's subscribers the user went offline, with the expiry time as the event's id: the
//! id every other instance derives for the same expiry.
//!
//! The hub learns a user's presence from what the store publishes and from what cached reads
//! find, whichever is newer by id; a user no longer watched here is forgotten, expiry and all.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::{Hub, Inner};
use crate::ping::{Event, now_micros};
use crate::presence::{GRACE_MICROS, Presence, State, Update};

/// What the hub knows of a watched user's presence: enough to announce its expiry.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Known {
    /// The id of the newest update learnt.
    id: u64,
    /// When the presence expires (UTC epoch microseconds), as scheduled; 0 for none.
    expires: u64,
    /// The last visible ping's time, for the offline event.
    time: u64,
}

/// Every watched user's pending expiry, earliest first.
#[derive(Debug, Default)]
pub(super) struct Expiries(BTreeSet<(u64, Arc<str>)>);

impl Expiries {
    /// Drops `user`'s pending expiry, if it has one.
    pub(super) fn cancel(&mut self, user: &Arc<str>, known: &mut Known) {
        if known.expires != 0 {
            self.0.remove(&(known.expires, Arc::clone(user)));
            known.expires = 0;
        }
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

impl Inner {
    /// Takes in that `user` is, as of update `id`, online until `online`'s expiry (with its
    /// last visible time), or offline (`None`); ignored if not newer than what is known.
    /// Returns whether the earliest expiry moved earlier (the `presence` thread must wake).
    fn learn(&mut self, user: &str, id: u64, online: Option<(u64, u64)>) -> bool {
        let Some(name) = self
            .users
            .get_key_value(user)
            .map(|(name, _)| Arc::clone(name))
        else {
            return false;
        };
        let known = &mut self.users.get_mut(user).expect("just found").known;
        if id <= known.id {
            return false;
        }
        known.id = id;
        self.expiries.cancel(&name, known);
        let Some((expires, time)) = online else {
            return false;
        };
        known.expires = expires;
        known.time = time;
        let earlier = self.expiries.0.first().is_none_or(|(at, _)| expires < *at);
        self.expiries.0.insert((expires, name));
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
            let Some(&(at, _)) = inner.expiries.0.first() else {
                self.expiry_due.wait(&mut inner);
                continue;
            };
            if at + GRACE_MICROS > now {
                let wait = Duration::from_micros(at + GRACE_MICROS - now);
                self.expiry_due.wait_for(&mut inner, wait);
                continue;
            }
            let (at, user) = inner.expiries.0.pop_first().expect("the first is there");
            let Some(watched) = inner.users.get_mut(&user) else {
                continue;
            };
            watched.known.expires = 0;
            watched.known.id = watched.known.id.max(at);
            let mut event = Event::offline(&user, at, watched.known.time);
            // Announced a grace after its time: its lag is no measure of delivery.
            event.cached = true;
            self.deliver(&mut inner, &user, Arc::new(event));
        }
    }

    /// Ends [`run_expiries`](Self::run_expiries).
    pub fn stop_expiries(&self) {
        self.inner.lock().expiries_stopped = true;
        self.expiry_due.notify_all();
    }

    /// How many expiries are pending.
    #[cfg(test)]
    pub(super) fn pending_expiries(&self) -> usize {
        self.inner.lock().expiries.0.len()
    }
}
