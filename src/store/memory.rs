//! The in-process store behind `REDIS=memory`: one instance, state lost on exit.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Kind, Store, StoreError, Unhealthy};
use crate::hub::Hub;
use crate::presence::{Devices, Presence, Rules, Update};

/// Users' devices and presence in a map, delivered straight to the local hub.
pub struct MemoryStore {
    state: Mutex<State>,
    hub: Arc<Hub>,
    rules: Rules,
}

#[derive(Default)]
struct State {
    users: HashMap<String, Devices>,
    /// The last id given to any user: in one process, ids increase across users strictly,
    /// not just by the clock.
    seq: u64,
}

impl MemoryStore {
    pub fn new(hub: Arc<Hub>, rules: Rules) -> MemoryStore {
        MemoryStore {
            state: Mutex::default(),
            hub,
            rules,
        }
    }
}

impl Store for MemoryStore {
    fn record(
        &self,
        user: &str,
        device: &str,
        status: Option<&str>,
        now_micros: u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut state = self.state.lock();
        let State { users, seq } = &mut *state;
        let devices = users.entry(user.to_owned()).or_default();
        let last = *seq;
        let Some(update) = devices.apply(&self.rules, device, status, now_micros, |floor| {
            floor.max(now_micros).max(last + 1)
        }) else {
            return Ok(None);
        };
        let id = match &update {
            Update::Online { ping, .. } => ping.seq,
            Update::Offline { id, .. } => *id,
        };
        *seq = id;
        // Publishing under the lock keeps each user's events in id order.
        self.hub.publish_update(user, &update);
        Ok(Some(id))
    }

    /// With a watcher, only the watcher's own: memory mode has no contact sets (and the
    /// configuration refuses `WATCH_POLICY=contacts` with it).
    fn last_many(
        &self,
        users: &[String],
        watcher: Option<&str>,
    ) -> Result<Vec<(String, Presence)>, StoreError> {
        let state = self.state.lock();
        Ok(users
            .iter()
            .filter(|u| watcher.is_none_or(|w| w == u.as_str()))
            .filter_map(|u| Some((u.clone(), state.users.get(u)?.presence.clone()?)))
            .collect())
    }

    /// Only the watcher themself, as no app can write contact sets here.
    fn allowed(&self, watcher: &str, users: &[String]) -> Result<Vec<bool>, StoreError> {
        Ok(users.iter().map(|u| u == watcher).collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_numbers_pings_in_storing_order_and_delivers_them_in_order() {
        let hub = Hub::new(16);
        let store = MemoryStore::new(Arc::clone(&hub), Rules::default());
        let watcher = hub.subscribe(&["alice".into()]);
        assert!(store.last_many(&["alice".into()], None).unwrap().is_empty());

        // The same microsecond thrice: sequence numbers still increase by one.
        for (i, status) in ["0", "1", "2"].iter().enumerate() {
            let id = store
                .record("alice", "d", Some(status), 100_000_000)
                .unwrap();
            assert_eq!(id, Some(100_000_000 + i as u64));
        }
        // Another user, stored later with a clock behind: still a larger id.
        assert_eq!(
            store.record("bob", "d", Some("a"), 5_000_000).unwrap(),
            Some(100_000_003)
        );

        let past = std::time::Instant::now();
        let got: Vec<(u64, String)> = std::iter::from_fn(|| watcher.wait(past).ok())
            .map(|(_, e)| (e.seq, e.without_user().concat()))
            .collect();
        assert_eq!(
            got,
            [
                (100_000_000, r#"{"time":100,"status":"0"}"#.to_owned()),
                (100_000_001, r#"{"time":100,"status":"1"}"#.to_owned()),
                (100_000_002, r#"{"time":100,"status":"2"}"#.to_owned()),
            ]
        );
        let (_, last) = store.last_many(&["alice".into()], None).unwrap().remove(0);
        assert_eq!(
            (last.ping.seq, last.ping.time, last.ping.status.as_str()),
            (100_000_002, 100, "2")
        );
    }
}
