//! A small bounded pool of Redis connections for cached reads and health checks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use redis::{Connection, ConnectionLike, RedisError};

use super::connect::{Connector, Link};
use crate::store::StoreError;

/// At most `size` Redis connections, made on demand, reused most recent first, and dropped
/// when they fail.
///
/// Each call runs under one deadline, the Redis timeout: waiting for a free connection,
/// connecting and the command itself all come out of it, so a call is answered within about
/// that time even when Redis is frozen.
pub struct Pool {
    connector: Arc<Connector>,
    timeout: Duration,
    idle: Mutex<Vec<Link>>,
    /// One token per connection that may exist; holding one is the right to use one.
    give_back: Sender<()>,
    take: Receiver<()>,
}

impl Pool {
    pub fn new(connector: Arc<Connector>, size: usize, timeout: Duration) -> Pool {
        let (give_back, take) = crossbeam_channel::bounded(size);
        for _ in 0..size {
            give_back.send(()).expect("the pool holds its receiver");
        }
        Pool {
            connector,
            timeout,
            idle: Mutex::new(Vec::with_capacity(size)),
            give_back,
            take,
        }
    }

    /// Runs `f` on a pooled connection. A connection that failed is dropped, not reused.
    ///
    /// An idle connection whose server has gone (Redis restarted) fails at once; then every
    /// idle connection, being as stale, is dropped and `f` runs once more on a new one, so a
    /// restart costs clients nothing. A timeout is not retried.
    pub fn with<T>(
        &self,
        mut f: impl FnMut(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        let deadline = Instant::now() + self.timeout;
        self.take
            .recv_timeout(self.timeout)
            .map_err(|_| StoreError::Busy)?;
        let _token = Token(&self.give_back);
        let pooled = self.idle.lock().pop().filter(|link| link.con.is_open());
        let reused = pooled.is_some();
        let mut link = self
            .connector
            .ready(pooled, deadline)
            .map_err(StoreError::from)?;
        let value = match f(&mut link.con) {
            Err(e) if reused && e.is_connection_dropped() => {
                log::debug!("a pooled Redis connection was dropped ({e}); reconnecting");
                self.idle.lock().clear();
                link = self.connector.ready(None, deadline)?;
                f(&mut link.con)?
            }
            other => other?,
        };
        self.idle.lock().push(link);
        Ok(value)
    }
}

/// Gives a pool token back when dropped, however the call ended.
struct Token<'a>(&'a Sender<()>);

impl Drop for Token<'_> {
    fn drop(&mut self) {
        // Cannot fail: the pool owns the receiver, and there is room for every token.
        let _ = self.0.try_send(());
    }
}
