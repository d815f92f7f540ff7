//! One Redis server heartbeat talks to, and which server a key lives on: always the one for a
//! single Redis, the owner of the key's slot on a cluster.

use std::sync::Arc;
use std::time::Duration;

use redis::RedisError;

use super::connect::Connector;
use super::pool::Pool;
use crate::store::StoreError;

/// A Redis server: its address, how to connect to it, and its pool for reads and checks.
pub struct Node {
    /// `host:port`, as the cluster names it (or the configured URL for a single Redis).
    pub addr: String,
    pub connector: Arc<Connector>,
    pub pool: Pool,
}

impl Node {
    /// A node at the `redis://` `url`, named `addr`, whose calls get `timeout` each.
    pub fn new(
        addr: &str,
        url: &str,
        pool_size: usize,
        timeout: Duration,
    ) -> Result<Node, RedisError> {
        let connector = Arc::new(Connector::new(url, timeout)?);
        Ok(Node {
            addr: addr.to_owned(),
            pool: Pool::new(Arc::clone(&connector), pool_size, timeout),
            connector,
        })
    }
}

/// Which node serves a key, and what to do when a node says otherwise.
pub trait Router: Send + Sync {
    /// The node that serves `key`.
    fn node_for(&self, key: &str) -> Result<Arc<Node>, StoreError>;

    /// A node answered `MOVED <slot> <addr>` for `key`: the slot is served at `addr` from now
    /// on. The node there, if it can be reached.
    fn moved(&self, key: &str, addr: &str) -> Option<Arc<Node>>;

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

    fn moved(&self, _key: &str, _addr: &str) -> Option<Arc<Node>> {
        None
    }

    fn node_at(&self, _addr: &str) -> Option<Arc<Node>> {
        None
    }

    fn failed(&self, _node: &Node) {}
}
