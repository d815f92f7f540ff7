//! One Redis server heartbeat talks to, and which server a key lives on: always the one for a
//! single Redis, the owner of the key's slot on a cluster.

use std::sync::Arc;
use std::time::Duration;

use redis::{RedisError, ServerError, ServerErrorKind};

use super::connect::Connector;
use super::pool::Pool;
use super::tls::Tls;
use crate::store::StoreError;

/// How heartbeat reaches each node: the same for every node of a cluster.
#[derive(Clone)]
pub struct Reach {
    /// Most pooled connections (reads and health checks), per node.
    pub pool_size: usize,
    /// Connect, read and write timeout, and each call's deadline.
    pub timeout: Duration,
    /// TLS, for `rediss://` nodes.
    pub tls: Option<Arc<Tls>>,
}

/// A Redis server: its address, how to connect to it, and its pool for reads and checks.
pub struct Node {
    /// `host:port`, as the cluster names it (or the configured URL for a single Redis).
    pub addr: String,
    pub connector: Arc<Connector>,
    pub pool: Pool,
}

impl Node {
    /// A node at the `redis://` or `rediss://` `url`, named `addr`, reached as `reach` says.
    pub fn new(addr: &str, url: &str, reach: &Reach) -> Result<Node, RedisError> {
        let connector = Arc::new(Connector::new(url, reach.timeout, reach.tls.as_ref())?);
        Ok(Node::with(addr, connector, reach))
    }

    /// A node named `addr` that `connector` reaches (the master Sentinel names).
    pub fn with(addr: &str, connector: Arc<Connector>, reach: &Reach) -> Node {
        Node {
            addr: addr.to_owned(),
            pool: Pool::new(Arc::clone(&connector), reach.pool_size, reach.timeout),
            connector,
        }
    }
}

/// Where a cluster node's `MOVED` or `ASK` answer sends a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Redirect<'a> {
    /// The slot is served at the address from now on.
    Moved(u16, &'a str),
    /// This one call goes to the address, after `ASKING`.
    Ask(&'a str),
}

impl<'a> Redirect<'a> {
    /// The redirect `error` is, if it is one: `MOVED <slot> <addr>` or `ASK <slot> <addr>`.
    pub fn of(error: &'a ServerError) -> Option<Redirect<'a>> {
        let (slot, addr) = error.details()?.split_once(' ')?;
        match error.kind()? {
            ServerErrorKind::Moved => Some(Redirect::Moved(slot.parse().ok()?, addr)),
            ServerErrorKind::Ask => Some(Redirect::Ask(addr)),
            _ => None,
        }
    }
}

/// Which node serves a key, and what to do when a node says otherwise.
pub trait Router: Send + Sync {
    /// The node that serves `key`.
    fn node_for(&self, key: &str) -> Result<Arc<Node>, StoreError>;

    /// A node answered `MOVED <slot> <addr>`: the slot is served at `addr` from now on. The
    /// node there, if it can be reached.
    fn moved(&self, slot: u16, addr: &str) -> Option<Arc<Node>>;

    /// A node answered `ASK <slot> <addr>`: the node at `addr`, for this one call.
    fn node_at(&self, addr: &str) -> Option<Arc<Node>>;

    /// A call to `node` failed: what is known of the topology may be stale.
    fn failed(&self, node: &Node);
}

/// A single Redis: every key on the one node, which never redirects.
pub struct OneNode(pub Arc<Node>);

impl Router for OneNode {
    fn node_for(&self, _key: &str) -> Result<Arc<Node>, StoreError> {
        Ok(Arc::clone(&self.0))
    }

    fn moved(&self, _slot: u16, _addr: &str) -> Option<Arc<Node>> {
        None
    }

    fn node_at(&self, _addr: &str) -> Option<Arc<Node>> {
        None
    }

    fn failed(&self, _node: &Node) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(reply: &[u8]) -> ServerError {
        match redis::parse_redis_value(reply).unwrap() {
            redis::Value::ServerError(error) => error,
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn moved_and_ask_answers_name_where_to_go() {
        let moved = error(b"-MOVED 3999 127.0.0.1:6381\r\n");
        assert_eq!(
            Redirect::of(&moved),
            Some(Redirect::Moved(3999, "127.0.0.1:6381"))
        );
        let ask = error(b"-ASK 3999 10.0.0.2:7000\r\n");
        assert_eq!(Redirect::of(&ask), Some(Redirect::Ask("10.0.0.2:7000")));
        assert_eq!(
            Redirect::of(&error(b"-NOSCRIPT No matching script\r\n")),
            None
        );
        assert_eq!(Redirect::of(&error(b"-MOVED x 127.0.0.1:6381\r\n")), None);
    }
}
