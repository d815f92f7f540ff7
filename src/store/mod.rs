//! Where last pings live and how they reach subscribers: one small trait, two implementations,
//! and the `cached-reads` thread that serves both.
//!
//! [`memory::MemoryStore`] keeps state in the process and delivers to its hub directly.
//! [`redis::RedisStore`] keeps state in Redis and publishes; its feed brings every instance's
//! pings back into that instance's hub. Either way, delivery goes through the same
//! [`Hub`](crate::hub::Hub), and [`cached::CachedReads`] gives new streams their users' last
//! pings. This file imports none of them: they implement it.

pub mod cached;
mod error;
pub mod memory;
pub mod redis;

pub use self::error::{ShardProblem, StoreError, Unhealthy};
use crate::ping::LastPing;

/// The last ping of each user, shared by every instance on the same store.
pub trait Store: Send + Sync {
    /// Makes `status`, received at `now_micros` (UTC epoch microseconds), the user's last
    /// ping, with a sequence number from [`next_seq`], and delivers it to every subscriber of
    /// the user on every instance. Storing and delivering are one atomic step: on error, the
    /// ping was neither stored nor delivered.
    fn record(&self, user: &str, status: &str, now_micros: u64) -> Result<LastPing, StoreError>;

    /// The last pings of those of `users` that have one, in one round trip.
    fn last_many(&self, users: &[String]) -> Result<Vec<(String, LastPing)>, StoreError>;

    /// Which store this is, for `/healthz` and `/metrics`.
    fn kind(&self) -> Kind;

    /// Whether pings can be stored and delivered now.
    fn health(&self) -> Result<(), Unhealthy>;

    /// Whether the feed that brings other instances' pings is up; `None` for a store that
    /// needs none.
    fn feed_up(&self) -> Option<bool>;
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

/// The sequence number of a user's next ping: one past the stored one, but never below the
/// clock in microseconds. Numbers thus increase with every ping, and keep increasing after a
/// store that lost its data (a Redis restarted without persistence) starts over, so open
/// streams, which skip anything not newer than what they sent, do not ignore new pings.
pub fn next_seq(stored: Option<u64>, now_micros: u64) -> u64 {
    stored.map_or(0, |s| s + 1).max(now_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_increase_and_survive_a_store_that_starts_over() {
        assert_eq!(next_seq(None, 1_000), 1_000);
        assert_eq!(next_seq(Some(1_000), 1_000), 1_001, "same microsecond");
        assert_eq!(next_seq(Some(5_000), 1_000), 5_001, "a clock behind");
        // Data lost: no stored seq, yet the next one is above anything sent before.
        assert!(next_seq(None, 2_000) > next_seq(Some(1_000), 1_500));
    }
}
