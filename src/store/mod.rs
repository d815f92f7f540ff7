//! Where last pings live and how they reach subscribers: one small trait, two implementations,
//! and the `cached-reads` thread that serves both.
//!
//! [`memory::MemoryStore`] keeps state in the process and delivers to its hub directly.
//! [`redis::RedisStore`] keeps state in Redis and publishes; its feed brings every instance's
//! pings back into that instance's hub. Either way, delivery goes through the same
//! [`Hub`](crate::hub::Hub), and [`cached::CachedReads`] gives new streams their users' last
//! pings. This file imports none of them: they implement it.

pub mod cached;
pub mod contacts;
pub mod denied;
mod error;
pub mod memory;
pub mod redis;

pub use self::error::{ShardProblem, StoreError, Unhealthy};
use crate::presence::Presence;

/// Each user's devices and presence, shared by every instance on the same store.
pub trait Store: Send + Sync {
    /// Records that `device` of `user` pinged `status` (`Some`) or left (`None`) at
    /// `now_micros` (UTC epoch microseconds), applies the presence rules, and delivers what
    /// changed for watchers to every subscriber of the user on every instance. Returns the
    /// id of what was delivered, or `None` when nothing a watcher sees changed (an invisible
    /// user's ping). Storing and delivering are one atomic step: on error, the ping was
    /// neither stored nor delivered.
    fn record(
        &self,
        user: &str,
        device: &str,
        status: Option<&str>,
        now_micros: u64,
    ) -> Result<Option<u64>, StoreError>;

    /// The presence of those of `users` that have one, in one round trip (one per master on
    /// a cluster). With a `watcher`, only of those the watcher may see ([`Store::allowed`]),
    /// checked in the same round trip, at the same cost for a user hidden or not.
    fn last_many(
        &self,
        users: &[String],
        watcher: Option<&str>,
    ) -> Result<Vec<(String, Presence)>, StoreError>;

    /// Which of `users`, in order, the app lets `watcher` see: the watcher themself, and those
    /// whose set `<prefix>watchers:<user>` holds the watcher or `*`. In one round trip (one
    /// per master on a cluster).
    fn allowed(&self, watcher: &str, users: &[String]) -> Result<Vec<bool>, StoreError>;

    /// [`Store::allowed`] of each of `checks`, `(watcher, users)`, in as few round trips as
    /// the store can: one on a single Redis.
    fn allowed_many(&self, checks: &[(&str, &[String])]) -> Result<Vec<Vec<bool>>, StoreError> {
        let check = |&(watcher, users): &(&str, &[String])| self.allowed(watcher, users);
        checks.iter().map(check).collect()
    }

    /// Which store this is, for `/healthz` and `/metrics`.
    fn kind(&self) -> Kind;

    /// Whether pings can be stored and delivered now.
    fn health(&self) -> Result<(), Unhealthy>;

    /// Whether the feed that brings other instances' pings is up; `None` for a store that
    /// needs none.
    fn feed_up(&self) -> Option<bool>;

    /// Under Sentinel, the master in use (`host:port`), or `Some(None)` while there is none;
    /// `None` for a store that does not follow one.
    fn master(&self) -> Option<Option<String>> {
        None
    }
}

/// Which store backs the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Redis,
    Cluster,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Redis => "redis",
            Kind::Cluster => "redis-cluster",
        }
    }
}
