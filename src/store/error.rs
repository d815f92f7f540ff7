//! What can go wrong in the store, as a type: each cause its own variant, with the Redis error
//! behind it where there is one, so `/healthz`, the routes and the logs tell a refusal from a
//! timeout from an unreachable server without reading the text.

use std::fmt;

use redis::{ErrorKind, RedisError, ServerError, ServerErrorKind};

/// The store could not do what was asked; the client may retry (`503`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StoreError {
    /// Redis did not answer within the time the call had.
    TimedOut,
    /// Redis could not be reached, or the connection broke during the call.
    Unavailable(RedisError),
    /// TLS with Redis failed: a certificate refused by either side, or a handshake gone wrong.
    Tls(RedisError),
    /// Redis answered with an error, or with a reply heartbeat cannot read.
    Refused(RedisError),
    /// The Redis user may not run a command or use a key or channel (ACL `NOPERM`), or its
    /// credentials were refused.
    PermissionDenied(RedisError),
    /// No cluster master serves the key's slot now, or the slot kept moving.
    Moved(String),
    /// Every pooled Redis connection, or every place in a node's writer queue, stayed taken.
    Busy,
    /// Stored on the master, but fewer replicas than `REDIS_WAIT_REPLICAS` confirmed it.
    Unreplicated { confirmed: i64, wanted: u32 },
    /// The writers have stopped: the process is shutting down.
    Stopped,
}

impl StoreError {
    /// A short name of the cause, for `/healthz` and logs.
    pub fn cause(&self) -> &'static str {
        match self {
            StoreError::TimedOut => "timed_out",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Tls(_) => "tls",
            StoreError::Refused(_) => "refused",
            StoreError::PermissionDenied(_) => "permission_denied",
            StoreError::Moved(_) => "moved",
            StoreError::Busy => "busy",
            StoreError::Unreplicated { .. } => "unreplicated",
            StoreError::Stopped => "stopped",
        }
    }
}

impl From<RedisError> for StoreError {
    fn from(error: RedisError) -> StoreError {
        if error.is_timeout() {
            return StoreError::TimedOut;
        }
        if crate::store::redis::tls::is_tls_failure(&error) {
            return StoreError::Tls(error);
        }
        match error.kind() {
            ErrorKind::Server(ServerErrorKind::NoPerm) | ErrorKind::AuthenticationFailed => {
                StoreError::PermissionDenied(error)
            }
            ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask) => {
                StoreError::Moved(one_line(&error))
            }
            ErrorKind::Server(_)
            | ErrorKind::Extension
            | ErrorKind::Parse
            | ErrorKind::UnexpectedReturnType => StoreError::Refused(error),
            _ => StoreError::Unavailable(error),
        }
    }
}

/// A reply of another type than asked for.
impl From<redis::ParsingError> for StoreError {
    fn from(error: redis::ParsingError) -> StoreError {
        StoreError::Refused(error.into())
    }
}

/// An error reply to one command of a pipeline.
impl From<ServerError> for StoreError {
    fn from(error: ServerError) -> StoreError {
        RedisError::from(error).into()
    }
}

impl fmt::Display for StoreError {
    /// One line, for a `503` body.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::TimedOut => f.write_str("store unavailable: Redis did not answer in time"),
            StoreError::Unavailable(e) => write!(f, "store unavailable: {}", one_line(e)),
            StoreError::Tls(e) => write!(
                f,
                "store unavailable: TLS with Redis failed: {}",
                one_line(e)
            ),
            StoreError::Refused(e) => {
                write!(f, "store unavailable: Redis refused: {}", one_line(e))
            }
            StoreError::PermissionDenied(e) => {
                write!(f, "store unavailable: permission denied: {}", one_line(e))
            }
            StoreError::Moved(why) => write!(f, "store unavailable: {why}"),
            StoreError::Busy => f.write_str("store busy: no Redis connection free in time"),
            StoreError::Unreplicated { confirmed, wanted } => write!(
                f,
                "store unavailable: stored on the master, but {confirmed} of {wanted} replicas \
                 confirmed it in time"
            ),
            StoreError::Stopped => f.write_str("store unavailable: shutting down"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Unavailable(e)
            | StoreError::Tls(e)
            | StoreError::Refused(e)
            | StoreError::PermissionDenied(e) => Some(e),
            _ => None,
        }
    }
}

/// `error` on one line.
fn one_line(error: &RedisError) -> String {
    error.to_string().replace(['\r', '\n'], " ")
}

/// Why pings cannot be stored and delivered now.
#[derive(Debug, Clone)]
pub enum Unhealthy {
    /// The store does not answer.
    Unreachable(StoreError),
    /// Commands work, but the feed that brings other instances' pings is down: why, if it
    /// has been up and lost, or failed to come up.
    FeedDown(Option<StoreError>),
    /// Some shards of a cluster cannot store or deliver pings now.
    Shards(Vec<ShardProblem>),
}

/// What is wrong with one part of a cluster.
#[derive(Debug, Clone)]
pub enum ShardProblem {
    /// This many slots have no master.
    Uncovered(usize),
    /// The master at the address does not answer, or refuses.
    Failing(String, StoreError),
    /// The master at the address answers, but its feed is down (why, if known).
    FeedDown(String, Option<StoreError>),
}

impl Unhealthy {
    /// A short name of the cause, for `/healthz`: the store error's, `feed_down` or `shards`;
    /// but a permission or TLS error, which retrying will not mend, is named as such wherever
    /// it is (a feed's, or a shard's).
    pub fn cause(&self) -> &'static str {
        let lasting = |e: &StoreError| {
            matches!(e, StoreError::PermissionDenied(_) | StoreError::Tls(_)).then(|| e.cause())
        };
        match self {
            Unhealthy::Unreachable(e) => e.cause(),
            Unhealthy::FeedDown(e) => e.as_ref().and_then(lasting).unwrap_or("feed_down"),
            Unhealthy::Shards(problems) => problems
                .iter()
                .find_map(|problem| match problem {
                    ShardProblem::Failing(_, e) | ShardProblem::FeedDown(_, Some(e)) => lasting(e),
                    _ => None,
                })
                .unwrap_or("shards"),
        }
    }
}

impl fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unhealthy::Unreachable(e) => write!(f, "{e}"),
            Unhealthy::FeedDown(None) => f.write_str("redis subscription down"),
            Unhealthy::FeedDown(Some(e)) => write!(f, "redis subscription down: {e}"),
            Unhealthy::Shards(problems) => {
                for (i, problem) in problems.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    match problem {
                        ShardProblem::Uncovered(n) => write!(f, "{n} slots have no master")?,
                        ShardProblem::Failing(addr, e) => write!(f, "shard {addr}: {e}")?,
                        ShardProblem::FeedDown(addr, None) => {
                            write!(f, "shard {addr}: redis subscription down")?
                        }
                        ShardProblem::FeedDown(addr, Some(e)) => {
                            write!(f, "shard {addr}: redis subscription down: {e}")?
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(reply: &[u8]) -> StoreError {
        match redis::parse_redis_value(reply).unwrap() {
            redis::Value::ServerError(error) => error.into(),
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn redis_errors_are_told_apart_by_their_kind() {
        let denied =
            server_error(b"-NOPERM User hb has no permissions to run the 'eval' command\r\n");
        assert_eq!(denied.cause(), "permission_denied");
        assert!(
            std::error::Error::source(&denied).is_some(),
            "the cause is kept"
        );
        assert_eq!(
            server_error(b"-MOVED 3999 127.0.0.1:6381\r\n").cause(),
            "moved"
        );
        assert_eq!(server_error(b"-ERR unknown command\r\n").cause(), "refused");
        assert_eq!(
            server_error(b"-READONLY You can't write\r\n").cause(),
            "refused"
        );
        let timeout: RedisError = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow").into();
        assert_eq!(StoreError::from(timeout).cause(), "timed_out");
        let refused: RedisError =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no").into();
        let refused = StoreError::from(refused);
        assert_eq!(refused.cause(), "unavailable");
        assert!(!refused.to_string().contains('\n'));
    }

    #[test]
    fn a_clusters_problems_are_named_shard_by_shard() {
        let unhealthy = Unhealthy::Shards(vec![
            ShardProblem::Uncovered(12),
            ShardProblem::Failing("a:1".into(), StoreError::TimedOut),
            ShardProblem::FeedDown("b:2".into(), None),
        ]);
        assert_eq!(
            unhealthy.to_string(),
            "12 slots have no master; shard a:1: store unavailable: Redis did not answer in \
             time; shard b:2: redis subscription down"
        );
        assert_eq!(unhealthy.cause(), "shards");
    }
}
