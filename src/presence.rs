//! Presence: what watchers see of a user, derived from the pings of the user's devices.
//!
//! A device (the claim's `clientid`) is live for the device TTL after its last ping. The user's
//! visible status is the status of the live device ranked first by the priority list (a status
//! not listed ranks after the listed ones; a tie goes to the newest ping), and its time is the
//! newest ping of a live device. While any live device is invisible, the user appears offline.
//! When the last live visible device expires, leaves, or the user goes invisible, watchers get
//! one offline event.
//!
//! The rules run in two places: here for `REDIS=memory` ([`Devices`]), and in the Redis store's
//! script (`store::redis::schema`), which applies them atomically where the data is. An
//! explicit offline (a leave, going invisible) gets a sequence number like a ping; an offline
//! by expiry takes the expiry time in microseconds as its id, so every instance derives the same
//! one without being told, and the next ping's number is above it.

use std::time::Duration;

use crate::ping::LastPing;

/// How long after an expiry an instance announces it: a ping stored just before the expiry
/// may still be on its way through pub/sub, and would otherwise follow an offline event whose
/// id is above its own. Clocks of the instances must agree within about this much.
pub const GRACE_MICROS: u64 = 250_000;

/// The presence rules, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// How long a device is live after its last ping.
    pub device_ttl: Duration,
    /// Most devices a user holds; a new one past it evicts the oldest.
    pub max_devices: usize,
    /// Statuses, best first.
    pub priority: Vec<String>,
    /// Statuses that keep a device live but hide the user.
    pub invisible: Vec<String>,
}

impl Default for Rules {
    /// The rules of [`DEFAULTS`](crate::config::DEFAULTS).
    fn default() -> Rules {
        crate::config::Config::from_lookup(|_| None)
            .expect("the defaults are valid")
            .presence
    }
}

impl Rules {
    pub fn ttl_micros(&self) -> u64 {
        self.device_ttl.as_micros() as u64
    }

    /// The rank of `status`: its place in the priority list, or after every listed one.
    fn rank(&self, status: &str) -> usize {
        self.priority
            .iter()
            .position(|s| s == status)
            .unwrap_or(self.priority.len())
    }

    pub fn is_invisible(&self, status: &str) -> bool {
        self.invisible.iter().any(|s| s == status)
    }
}

/// A user's presence as stored: the last visible ping, and how it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub ping: LastPing,
    pub state: State,
}

/// Whether a user is online, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Online until this time (UTC epoch microseconds), unless a ping comes first.
    Until(u64),
    /// Offline since an explicit offline (a leave, going invisible): that event's id.
    Offline(u64),
}

impl Presence {
    /// The id of the offline event that ends this presence, if it has ended at `now_micros`
    /// (an expiry counts once its grace has passed).
    pub fn offline_at(&self, now_micros: u64) -> Option<u64> {
        match self.state {
            State::Until(expires) if expires + GRACE_MICROS <= now_micros => Some(expires),
            State::Until(_) => None,
            State::Offline(id) => Some(id),
        }
    }
}

/// What a store tells watchers of a user: a new visible presence, or that the user went
/// offline (explicitly: expiries are derived by each instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Online { ping: LastPing, expires: u64 },
    Offline { id: u64, time: u64 },
}

/// One live device of a user, as `REDIS=memory` keeps it.
#[derive(Debug, Clone)]
struct Device {
    name: String,
    /// Its last ping, UTC epoch microseconds.
    at: u64,
    status: String,
}

/// A user's devices and presence in `REDIS=memory`: the same rules as the Redis script.
#[derive(Debug, Clone, Default)]
pub struct Devices {
    devices: Vec<Device>,
    /// The last presence, once the user has pinged visibly.
    pub presence: Option<Presence>,
}

/// A user's devices merged: the visible status, the newest visible ping and when the
/// presence expires; `None` when the user is hidden or has no live visible device.
struct Merged<'a> {
    status: &'a str,
    newest: u64,
    expires: u64,
}

impl Devices {
    /// `device` pinged `status` at `now_micros` (`Some`), or left (`None`). Returns what
    /// watchers are told, if anything changes for them; `next_id` gives the update's id from
    /// the lowest it may be.
    pub fn apply(
        &mut self,
        rules: &Rules,
        device: &str,
        status: Option<&str>,
        now_micros: u64,
        next_id: impl FnOnce(u64) -> u64,
    ) -> Option<Update> {
        let ttl = rules.ttl_micros();
        self.devices
            .retain(|d| d.name != device && d.at + ttl > now_micros);
        if let Some(status) = status {
            if self.devices.len() >= rules.max_devices.max(1) {
                let oldest = (0..self.devices.len()).min_by_key(|&i| self.devices[i].at);
                self.devices.remove(oldest.expect("at least one device"));
            }
            self.devices.push(Device {
                name: device.to_owned(),
                at: now_micros,
                status: status.to_owned(),
            });
        }
        let floor = self.floor(now_micros);
        let id = next_id(floor);
        let was_online = self
            .presence
            .as_ref()
            .is_some_and(|p| matches!(p.state, State::Until(e) if e > now_micros));
        let update = match self.merged(rules) {
            Some(merged) => {
                let ping = LastPing {
                    seq: id,
                    time: merged.newest / 1_000_000,
                    status: merged.status.to_owned(),
                };
                let unchanged = self.presence.as_ref().is_some_and(|p| {
                    p.ping.status == ping.status && p.state == State::Until(merged.expires)
                });
                if status.is_none() && unchanged {
                    return None; // a leave that changes nothing a watcher sees
                }
                let expires = merged.expires;
                Update::Online { ping, expires }
            }
            None if was_online => {
                let time = self.presence.as_ref().map_or(0, |p| p.ping.time);
                Update::Offline { id, time }
            }
            None => return None,
        };
        match &update {
            Update::Online { ping, expires } => {
                self.presence = Some(Presence {
                    ping: ping.clone(),
                    state: State::Until(*expires),
                });
            }
            Update::Offline { id, .. } => {
                if let Some(presence) = &mut self.presence {
                    presence.state = State::Offline(*id);
                }
            }
        }
        Some(update)
    }

    /// The lowest id the next update may take: above every id watchers may have seen, the
    /// derived offline of an expiry that has passed included.
    fn floor(&self, now_micros: u64) -> u64 {
        match &self.presence {
            None => 0,
            Some(p) => match p.state {
                State::Until(expires) if expires <= now_micros => p.ping.seq.max(expires) + 1,
                State::Until(_) => p.ping.seq + 1,
                State::Offline(id) => p.ping.seq.max(id) + 1,
            },
        }
    }

    fn merged(&self, rules: &Rules) -> Option<Merged<'_>> {
        if self.devices.iter().any(|d| rules.is_invisible(&d.status)) {
            return None;
        }
        let best = self
            .devices
            .iter()
            .min_by_key(|d| (rules.rank(&d.status), std::cmp::Reverse(d.at)))?;
        let newest = self.devices.iter().map(|d| d.at).max()?;
        Some(Merged {
            status: &best.status,
            newest,
            expires: newest + rules.ttl_micros(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn rules() -> Rules {
        Rules {
            device_ttl: Duration::from_secs(60),
            max_devices: 3,
            priority: vec!["2".into(), "0".into(), "1".into()],
            invisible: vec!["3".into()],
        }
    }

    /// Applies a ping (or a leave, for `None`) with ids from the clock, as the stores do.
    fn apply(devices: &mut Devices, device: &str, status: Option<&str>, at: u64) -> Option<Update> {
        devices.apply(&rules(), device, status, at, |floor| floor.max(at))
    }

    fn online(status: &str, time: u64, expires: u64) -> impl Fn(&Option<Update>) -> bool {
        let status = status.to_owned();
        move |u| {
            matches!(u, Some(Update::Online { ping, expires: e })
                if ping.status == status && ping.time == time && *e == expires)
        }
    }

    #[test]
    fn devices_merge_by_priority_and_the_newest_ping_sets_the_time() {
        let mut user = Devices::default();
        assert!(online("1", 100, 160 * S)(&apply(
            &mut user,
            "phone",
            Some("1"),
            100 * S
        )));
        assert!(online("0", 110, 170 * S)(&apply(
            &mut user,
            "laptop",
            Some("0"),
            110 * S
        )));
        // The phone pings away again: the laptop's active still ranks first.
        assert!(online("0", 120, 180 * S)(&apply(
            &mut user,
            "phone",
            Some("1"),
            120 * S
        )));
        assert!(online("2", 121, 181 * S)(&apply(
            &mut user,
            "tablet",
            Some("2"),
            121 * S
        )));
        // Unlisted statuses rank last; the newest wins a tie.
        let mut other = Devices::default();
        apply(&mut other, "a", Some("x"), 100 * S);
        assert!(online("y", 101, 161 * S)(&apply(
            &mut other,
            "b",
            Some("y"),
            101 * S
        )));
        assert!(online("1", 102, 162 * S)(&apply(
            &mut other,
            "c",
            Some("1"),
            102 * S
        )));
    }

    #[test]
    fn invisible_hides_the_user_once_and_visible_pings_return_them() {
        let mut user = Devices::default();
        let first = apply(&mut user, "phone", Some("0"), 100 * S);
        let went = apply(&mut user, "laptop", Some("3"), 101 * S);
        assert_eq!(
            went,
            Some(Update::Offline {
                id: 101 * S,
                time: 100
            })
        );
        // Hidden: nothing for watchers, whichever device pings.
        assert_eq!(apply(&mut user, "phone", Some("0"), 110 * S), None);
        assert_eq!(apply(&mut user, "laptop", Some("3"), 120 * S), None);
        // Once the invisible device has expired, the next visible ping shows the user.
        let back = apply(&mut user, "phone", Some("0"), 185 * S);
        assert!(online("0", 185, 245 * S)(&back));
        assert!(matches!(first, Some(Update::Online { .. })));
        // A user never seen who pings invisibly tells no one anything.
        assert_eq!(apply(&mut Devices::default(), "x", Some("3"), 1), None);
    }

    #[test]
    fn a_leave_ends_the_device_and_the_last_one_announces_offline() {
        let mut user = Devices::default();
        apply(&mut user, "phone", Some("1"), 100 * S);
        apply(&mut user, "laptop", Some("2"), 101 * S);
        // The laptop leaves: the phone's away is what is left.
        assert!(online("1", 100, 160 * S)(&apply(
            &mut user,
            "laptop",
            None,
            102 * S
        )));
        let gone = apply(&mut user, "phone", None, 103 * S);
        assert_eq!(
            gone,
            Some(Update::Offline {
                id: 103 * S,
                time: 100
            })
        );
        assert_eq!(apply(&mut user, "phone", None, 104 * S), None, "once");
    }

    #[test]
    fn expired_devices_are_dropped_and_the_next_id_is_above_the_expiry() {
        let mut user = Devices::default();
        apply(&mut user, "phone", Some("2"), 100 * S);
        let presence = user.presence.clone().unwrap();
        assert_eq!(presence.offline_at(160 * S), None, "not before the grace");
        assert_eq!(presence.offline_at(160 * S + GRACE_MICROS), Some(160 * S));
        // Pinged again after expiring, with a clock that says the same microsecond.
        let back = user.apply(&rules(), "laptop", Some("0"), 160 * S, |floor| floor);
        match back {
            Some(Update::Online { ping, .. }) => assert_eq!(ping.seq, 160 * S + 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(user.devices.len(), 1, "the expired phone is gone");
    }

    #[test]
    fn a_new_device_past_the_limit_evicts_the_oldest() {
        let mut user = Devices::default();
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            apply(&mut user, name, Some("1"), (100 + i as u64) * S);
        }
        let names: Vec<&str> = user.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["b", "c", "d"]);
    }
}
