//! Which master serves which slot: asked of the cluster with `CLUSTER SLOTS`, corrected by
//! `MOVED` answers at once, and asked again when a node fails or says a slot moved.

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use redis::{ErrorKind, RedisError, Value};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::super::node::{Node, Reach, Router};
use super::super::slot::{SLOTS, slot};
use crate::config::ClusterSeeds;
use crate::store::StoreError;

/// The cluster as this instance knows it.
pub struct Topology {
    seeds: ClusterSeeds,
    reach: Reach,
    map: RwLock<SlotMap>,
    /// Every node met so far, by address, with its connections.
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    /// Wakes the thread that refreshes the map (the cluster feed's).
    stale: Sender<()>,
}

/// No node answered `CLUSTER SLOTS`: each node asked, with its error.
#[derive(Debug)]
pub struct NoSlotMap(pub Vec<(String, StoreError)>);

impl fmt::Display for NoSlotMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no cluster node answered CLUSTER SLOTS (")?;
        for (i, (addr, e)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{addr}: {e}")?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for NoSlotMap {}

/// The master of each slot.
#[derive(Default)]
pub struct SlotMap {
    /// Indexes into `masters`, by slot; `None` for a slot no master serves.
    slots: Vec<Option<u16>>,
    masters: Vec<Arc<Node>>,
    /// Counts the changes, so users of the map can tell it changed.
    pub version: u64,
}

impl SlotMap {
    pub fn masters(&self) -> &[Arc<Node>] {
        &self.masters
    }

    /// The master serving `slot`, if one does.
    pub fn master_of(&self, slot: u16) -> Option<&Arc<Node>> {
        let index = (*self.slots.get(usize::from(slot))?)?;
        self.masters.get(usize::from(index))
    }

    /// How many slots no master serves.
    pub fn uncovered(&self) -> usize {
        match self.slots.len() {
            0 => SLOTS,
            _ => self.slots.iter().filter(|s| s.is_none()).count(),
        }
    }

    /// Which master serves each slot, by address, to compare two maps.
    fn layout(&self) -> Vec<Option<&str>> {
        (0..SLOTS as u16)
            .map(|s| self.master_of(s).map(|n| n.addr.as_str()))
            .collect()
    }
}

impl Topology {
    /// A topology not yet asked for; `stale` receives a message whenever it should be.
    pub fn new(seeds: ClusterSeeds, reach: Reach) -> (Arc<Topology>, Receiver<()>) {
        let (stale, wake) = crossbeam_channel::bounded(1);
        let topology = Topology {
            seeds,
            reach,
            map: RwLock::new(SlotMap::default()),
            nodes: Mutex::new(HashMap::new()),
            stale,
        };
        (Arc::new(topology), wake)
    }

    /// Runs `f` on the map as it is now.
    pub fn read<T>(&self, f: impl FnOnce(&SlotMap) -> T) -> T {
        f(&self.map.read())
    }

    /// The master serving `key`'s slot.
    pub fn master_for(&self, key: &str) -> Option<Arc<Node>> {
        self.map.read().master_of(slot(key.as_bytes())).cloned()
    }

    /// Asks for a refresh soon.
    pub fn mark_stale(&self) {
        let _ = self.stale.try_send(());
    }

    /// Where to first ask for the cluster's nodes.
    pub fn seeds(&self) -> &[String] {
        &self.seeds.seeds
    }

    /// The node at `addr`, made on first use.
    pub fn node(&self, addr: &str) -> Option<Arc<Node>> {
        let mut nodes = self.nodes.lock();
        if let Some(node) = nodes.get(addr) {
            return Some(Arc::clone(node));
        }
        match Node::new(addr, &self.seeds.url(addr), &self.reach) {
            Ok(node) => {
                let node = Arc::new(node);
                nodes.insert(addr.to_owned(), Arc::clone(&node));
                Some(node)
            }
            Err(e) => {
                log::warn!("cannot use the cluster node {addr}: {e}");
                None
            }
        }
    }

    /// Asks the known masters, then the seeds, for the slot map, and adopts the first answer.
    /// Returns whether the map changed.
    pub fn refresh(&self) -> Result<bool, NoSlotMap> {
        let mut asked: Vec<String> =
            self.read(|map| map.masters.iter().map(|node| node.addr.clone()).collect());
        asked.extend(self.seeds.seeds.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        asked.retain(|addr| seen.insert(addr.clone()));
        let mut errors = Vec::new();
        for addr in &asked {
            let Some(node) = self.node(addr) else {
                continue;
            };
            let reply = node
                .pool
                .with(|con| redis::cmd("CLUSTER").arg("SLOTS").query::<Value>(con));
            let ranges = reply.and_then(|v| {
                parse_slots(&v, host_of(addr)).ok_or_else(|| {
                    StoreError::Refused(RedisError::from((
                        ErrorKind::UnexpectedReturnType,
                        "unexpected CLUSTER SLOTS reply",
                        format!("{v:?}"),
                    )))
                })
            });
            match ranges {
                Ok(ranges) => return Ok(self.adopt(&ranges)),
                Err(e) => errors.push((addr.clone(), e)),
            }
        }
        Err(NoSlotMap(errors))
    }

    /// Makes `ranges` the map; returns whether it changed.
    fn adopt(&self, ranges: &[(u16, u16, String)]) -> bool {
        let mut map = SlotMap {
            slots: vec![None; SLOTS],
            ..SlotMap::default()
        };
        for (first, last, addr) in ranges {
            let index = match map.masters.iter().position(|n| &n.addr == addr) {
                Some(index) => index,
                None => match self.node(addr) {
                    Some(node) => {
                        map.masters.push(node);
                        map.masters.len() - 1
                    }
                    None => continue,
                },
            };
            for slot in *first..=*last {
                if let Some(entry) = map.slots.get_mut(usize::from(slot)) {
                    *entry = Some(index as u16);
                }
            }
        }
        let mut current = self.map.write();
        if current.layout() == map.layout() {
            return false;
        }
        map.version = current.version + 1;
        let masters: Vec<&str> = map.masters.iter().map(|n| n.addr.as_str()).collect();
        log::info!(
            "redis cluster: {} masters ({}), {} slots unserved",
            masters.len(),
            masters.join(", "),
            map.uncovered()
        );
        *current = map;
        true
    }
}

impl Router for Topology {
    fn node_for(&self, key: &str) -> Result<Arc<Node>, StoreError> {
        let slot = slot(key.as_bytes());
        self.map.read().master_of(slot).cloned().ok_or_else(|| {
            self.mark_stale();
            StoreError::Moved(format!("no Redis Cluster master serves slot {slot} now"))
        })
    }

    fn moved(&self, slot: u16, addr: &str) -> Option<Arc<Node>> {
        let node = self.node(addr)?;
        let slot = usize::from(slot);
        {
            let mut map = self.map.write();
            let index = match map.masters.iter().position(|n| n.addr == node.addr) {
                Some(index) => index,
                None => {
                    map.masters.push(Arc::clone(&node));
                    map.masters.len() - 1
                }
            };
            if let Some(entry) = map.slots.get_mut(slot) {
                *entry = Some(index as u16);
                map.version += 1;
            }
        }
        self.mark_stale();
        Some(node)
    }

    fn node_at(&self, addr: &str) -> Option<Arc<Node>> {
        self.node(addr)
    }

    fn failed(&self, _node: &Node) {
        self.mark_stale();
    }
}

/// The host part of `host:port`, for nodes that a reply names by port alone.
fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

/// Reads a `CLUSTER SLOTS` reply: `[[first, last, [host, port, id, ...], replicas...], ...]`.
/// A master with an empty or unknown host is on `asked_host`, the host that answered.
fn parse_slots(reply: &Value, asked_host: &str) -> Option<Vec<(u16, u16, String)>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut parsed = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return None;
        };
        let host = match master.first() {
            Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
            _ => return None,
        };
        let Some(Value::Int(port)) = master.get(1) else {
            return None;
        };
        let host = match host.as_str() {
            "" | "?" => asked_host.to_owned(),
            _ => host,
        };
        let addr =
            crate::config::host_port(host.trim_matches(['[', ']']), u16::try_from(*port).ok()?);
        parsed.push((
            u16::try_from(*first).ok()?,
            u16::try_from(*last).ok()?,
            addr,
        ));
    }
    Some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_cluster_slots_reply_gives_each_range_its_master() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(30001), bulk("id1")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(30004), bulk("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk(""), Value::Int(30002), bulk("id2")]),
            ]),
        ]);
        assert_eq!(
            parse_slots(&reply, "redis-a").unwrap(),
            [
                (0, 5460, "127.0.0.1:30001".to_owned()),
                (5461, 16383, "redis-a:30002".to_owned())
            ]
        );
        assert_eq!(parse_slots(&Value::Int(1), "h"), None);
        assert_eq!(host_of("[::1]:7000"), "[::1]");
    }

    fn topology() -> (Arc<Topology>, Receiver<()>) {
        let seeds = ClusterSeeds {
            seeds: vec!["127.0.0.1:1".into()],
            userinfo: None,
            tls: false,
        };
        let reach = Reach {
            pool_size: 1,
            timeout: Duration::from_millis(100),
            tls: None,
        };
        Topology::new(seeds, reach)
    }

    #[test]
    fn the_map_follows_cluster_slots_and_moved_answers() {
        let (topology, stale) = topology();
        let key = "hb:last:{u:alice}"; // slot 5797
        assert!(topology.node_for(key).is_err(), "nothing known yet");
        assert!(stale.try_recv().is_ok(), "and a refresh is asked for");
        let ranges = [(0, 8000, "a:1".to_owned()), (8001, 16383, "b:2".to_owned())];
        assert!(topology.adopt(&ranges));
        assert!(!topology.adopt(&ranges), "the same map is no change");
        assert_eq!(topology.node_for(key).unwrap().addr, "a:1");
        assert_eq!(topology.read(|m| (m.version, m.uncovered())), (1, 0));

        let moved = topology.moved(slot(key.as_bytes()), "c:3").unwrap();
        assert_eq!(moved.addr, "c:3");
        assert_eq!(topology.node_for(key).unwrap().addr, "c:3");
        assert_eq!(
            topology.master_for("foo").unwrap().addr,
            "b:2",
            "slot 12182 stays"
        );
        assert_eq!(topology.read(|m| m.version), 2);
        assert!(stale.try_recv().is_ok(), "a MOVED asks for a refresh");

        assert!(topology.adopt(&[(0, 99, "a:1".to_owned())]));
        assert_eq!(topology.read(|m| m.uncovered()), 16_284);
        assert!(topology.node_for("foo").is_err());
    }
}
