//! A writer's connection to its node: made when first needed, made again after it broke, and
//! given the time each pipeline has left.

use std::sync::Arc;
use std::time::Instant;

use redis::{ConnectionLike, RedisError, Value};

use super::Pipelines;
use crate::store::redis::connect::Link;
use crate::store::redis::node::Node;

/// One connection to a node, for one writer.
pub(super) struct NodeLink {
    node: Arc<Node>,
    link: Option<Link>,
}

impl NodeLink {
    pub(super) fn new(node: &Arc<Node>) -> NodeLink {
        NodeLink {
            node: Arc::clone(node),
            link: None,
        }
    }

    fn query(
        &mut self,
        pipe: &redis::Pipeline,
        deadline: Instant,
    ) -> Result<Vec<Value>, RedisError> {
        let mut link = self.node.connector.ready(self.link.take(), deadline)?;
        let result = pipe.query::<Vec<Value>>(&mut link.con);
        // A server error leaves the connection usable; a broken one is dropped.
        if result.as_ref().map_or_else(|e| !e.is_io_error(), |_| true) {
            self.link = Some(link);
        }
        result
    }
}

impl Pipelines for NodeLink {
    /// A reused connection whose server is gone (a restarted Redis) gets one more try:
    /// nothing ran.
    fn run(&mut self, pipe: &redis::Pipeline, deadline: Instant) -> Result<Vec<Value>, RedisError> {
        let reused = self.link.as_ref().is_some_and(|link| link.con.is_open());
        match self.query(pipe, deadline) {
            Err(e) if reused && e.is_connection_dropped() => {
                log::debug!(
                    "the writer's connection to {} was dropped ({e}); reconnecting",
                    self.node.addr
                );
                self.query(pipe, deadline)
            }
            other => other,
        }
    }
}
