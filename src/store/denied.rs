//! A store whose refusals by Redis's ACL show in `/healthz`: the last `NOPERM` of any call (a
//! ping's script, a read, a contacts check) is reported as `permission_denied` for
//! [`REPORTED_FOR`] after it, even while `PING` and the feed work. A rule that lacks a
//! command the service needs then fails the health check, not only the calls that need it,
//! and stops failing it once the rule is mended and that long has passed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Kind, Store, StoreError, Unhealthy};
use crate::presence::Presence;

/// How long a permission refused keeps `/healthz` failing.
pub const REPORTED_FOR: Duration = Duration::from_secs(30);

/// `inner`, with its last permission refusal noted.
pub struct Denials<S: ?Sized> {
    inner: Arc<S>,
    last: Mutex<Option<(Instant, StoreError)>>,
}

impl<S: Store + ?Sized> Denials<S> {
    pub fn new(inner: Arc<S>) -> Denials<S> {
        Denials {
            inner,
            last: Mutex::new(None),
        }
    }

    /// `result`, having noted it if it is a permission refused: logged as a warning when
    /// none was noted within [`REPORTED_FOR`], so a flood of refused pings logs one line.
    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e @ StoreError::PermissionDenied(_)) = &result {
            let mut last = self.last.lock();
            if last
                .as_ref()
                .is_none_or(|(when, _)| when.elapsed() >= REPORTED_FOR)
            {
                log::warn!(
                    "Redis refused a command: {e}; the Redis user lacks a right heartbeat \
                     needs (heartbeat acl-rule prints the rule)"
                );
            }
            *last = Some((Instant::now(), e.clone()));
        }
        result
    }

    /// The refusal to report now, if any.
    fn recent(&self) -> Option<StoreError> {
        let last = self.last.lock();
        let (when, error) = last.as_ref()?;
        (when.elapsed() < REPORTED_FOR).then(|| error.clone())
    }
}

impl<S: Store + ?Sized> Store for Denials<S> {
    fn record(
        &self,
        user: &str,
        device: &str,
        status: Option<&str>,
        now_micros: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.note(self.inner.record(user, device, status, now_micros))
    }

    fn last_many(
        &self,
        users: &[String],
        watcher: Option<&str>,
    ) -> Result<Vec<(String, Presence)>, StoreError> {
        self.note(self.inner.last_many(users, watcher))
    }

    fn allowed(&self, watcher: &str, users: &[String]) -> Result<Vec<bool>, StoreError> {
        self.note(self.inner.allowed(watcher, users))
    }

    fn allowed_many(&self, checks: &[(&str, &[String])]) -> Result<Vec<Vec<bool>>, StoreError> {
        self.note(self.inner.allowed_many(checks))
    }

    fn kind(&self) -> Kind {
        self.inner.kind()
    }

    /// The store's own health first; then a permission refused within [`REPORTED_FOR`].
    fn health(&self) -> Result<(), Unhealthy> {
        self.inner.health()?;
        match self.recent() {
            Some(e) => Err(Unhealthy::Unreachable(e)),
            None => Ok(()),
        }
    }

    fn feed_up(&self) -> Option<bool> {
        self.inner.feed_up()
    }

    fn master(&self) -> Option<Option<String>> {
        self.inner.master()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::Rules;
    use crate::store::memory::MemoryStore;

    #[test]
    fn a_permission_refused_fails_the_health_check_and_other_errors_do_not() {
        let hub = crate::hub::Hub::new(8);
        let store = Denials::new(Arc::new(MemoryStore::new(hub, Rules::default())));
        assert!(store.health().is_ok());
        let _ = store.note::<()>(Err(StoreError::TimedOut));
        assert!(
            store.health().is_ok(),
            "a timeout is the store's own health"
        );
        let refused = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm),
            "no permissions to run the 'evalsha' command",
        ));
        let _ = store.note::<()>(Err(StoreError::from(refused)));
        let unhealthy = store.health().unwrap_err();
        assert_eq!(unhealthy.cause(), "permission_denied");
        assert!(unhealthy.to_string().contains("evalsha"), "{unhealthy}");
        *store.last.lock() = Some((Instant::now() - REPORTED_FOR, StoreError::TimedOut));
        assert!(store.health().is_ok(), "forgotten after REPORTED_FOR");
    }
}
