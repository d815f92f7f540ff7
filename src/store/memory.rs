//! The in-process store behind `REDIS=memory`: one instance, state lost on exit.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Kind, Store, StoreError, Unhealthy, next_seq};
use crate::hub::Hub;
use crate::ping::LastPing;

/// Last pings in a map, delivered straight to the local hub.
pub struct MemoryStore {
    state: Mutex<State>,
    hub: Arc<Hub>,
}

#[derive(Default)]
struct State {
    last: HashMap<String, LastPing>,
    /// The last sequence number given to any user: in one process, ids increase across users
    /// strictly, not just by the clock.
    seq: u64,
}

impl MemoryStore {
    pub fn new(hub: Arc<Hub>) -> MemoryStore {
        MemoryStore {
            state: Mutex::default(),
            hub,
        }
    }
}

impl Store for MemoryStore {
    fn record(&self, user: &str, status: &str, now_micros: u64) -> Result<LastPing, StoreError> {
        let mut state = self.state.lock();
        let seq = next_seq(state.last.get(user).map(|p| p.seq), now_micros).max(state.seq + 1);
        state.seq = seq;
        let ping = LastPing {
            seq,
            time: now_micros / 1_000_000,
            status: status.to_owned(),
        };
        // Publishing under the lock keeps each user's events in sequence order.
        self.hub.publish_ping(user, &ping);
        state.last.insert(user.to_owned(), ping.clone());
        Ok(ping)
    }

    fn last_many(&self, users: &[String]) -> Result<Vec<(String, LastPing)>, StoreError> {
        let last = &self.state.lock().last;
        Ok(users
            .iter()
            .filter_map(|u| Some((u.clone(), last.get(u)?.clone())))
            .collect())
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
        let store = MemoryStore::new(Arc::clone(&hub));
        let watcher = hub.subscribe(&["alice".into()]);
        assert!(store.last_many(&["alice".into()]).unwrap().is_empty());

        // The same microsecond thrice: sequence numbers still increase by one.
        for (i, status) in ["0", "1", "2"].iter().enumerate() {
            let ping = store.record("alice", status, 100_000_000).unwrap();
            assert_eq!(ping.seq, 100_000_000 + i as u64);
        }
        // Another user, stored later with a clock behind: still a larger id.
        assert_eq!(
            store.record("bob", "a", 5_000_000).unwrap().seq,
            100_000_003
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
        let (_, last) = store.last_many(&["alice".into()]).unwrap().remove(0);
        assert_eq!(
            (last.seq, last.time, last.status.as_str()),
            (100_000_002, 100, "2")
        );
    }
}
