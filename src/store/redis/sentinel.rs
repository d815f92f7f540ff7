//! `REDIS=sentinel://...`: the master that Redis Sentinel names, followed through failovers.
//!
//! The master is found by asking each sentinel in turn (`SENTINEL GET-MASTER-ADDR-BY-NAME`)
//! and checking with `ROLE` that the server named really is a master. The `redis-sentinel`
//! thread holds a `SUBSCRIBE +switch-master` on one sentinel (the next one when it is lost),
//! and looks again at every `+switch-master` of this master and whenever a connection to the
//! master could not be made. A new master becomes the store's connector's target: pooled and
//! writer connections to the old one are not reused, and the feed is made to reconnect, which
//! resubscribes and resyncs every watched user's last ping. While none answers as master, the
//! target is none and calls fail at once.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use redis::{RedisError, Value};

use super::connect::Connector;
use super::feed::session::{Ended, Session, reconnect, stopping};
use super::tls::Tls;
use crate::config::SentinelConfig;
use crate::metrics::Metrics;
use crate::store::StoreError;
use crate::worker::Worker;

/// The longest a `+switch-master` subscription waits quietly before it `PING`s.
const TICK: Duration = Duration::from_millis(250);

/// Fewest time between two searches that connection failures asked for.
const SEARCH_GAP: Duration = Duration::from_millis(100);

/// The sentinels of one master.
pub struct Sentinels {
    config: SentinelConfig,
    /// A connector per sentinel, with the sentinels' credentials.
    sentinels: Vec<(String, Connector)>,
    tls: Option<Arc<Tls>>,
    timeout: Duration,
}

impl Sentinels {
    pub fn new(
        config: &SentinelConfig,
        timeout: Duration,
        tls: Option<&Arc<Tls>>,
    ) -> Result<Sentinels, RedisError> {
        let userinfo = config.auth.as_ref().map(|(user, password)| {
            format!(
                "{}:{}",
                encode(user.as_deref().unwrap_or("")),
                encode(password)
            )
        });
        let sentinels = config
            .sentinels
            .iter()
            .map(|addr| {
                let url = crate::config::node_url(config.tls, userinfo.as_deref(), addr);
                Ok((addr.clone(), Connector::new(&url, timeout, tls)?))
            })
            .collect::<Result<_, RedisError>>()?;
        Ok(Sentinels {
            config: config.clone(),
            sentinels,
            tls: tls.cloned(),
            timeout,
        })
    }

    /// The name of the master they watch.
    pub fn name(&self) -> &str {
        &self.config.master
    }

    /// The master's `host:port`: the first one a sentinel names that answers `ROLE` as a
    /// master; else the last reason none did.
    pub fn find(&self) -> Result<(String, u16), StoreError> {
        let mut last = None;
        for (addr, sentinel) in &self.sentinels {
            let named = sentinel.connect(self.timeout).and_then(|mut con| {
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(&self.config.master)
                    .query::<Option<(String, u16)>>(&mut con)
            });
            let (host, port) = match named {
                Ok(Some(master)) => master,
                Ok(None) => {
                    last = Some(no_master(&format!("sentinel {addr} does not know it")));
                    continue;
                }
                Err(e) => {
                    log::debug!("sentinel {addr}: {e}");
                    last = Some(StoreError::from(e));
                    continue;
                }
            };
            match self.role(&host, port) {
                Ok(role) if role == "master" => return Ok((host, port)),
                Ok(role) => {
                    let why = format!("sentinel {addr} names {host}:{port}, whose role is {role}");
                    last = Some(no_master(&why));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| no_master("no sentinel answered")))
    }

    /// The `ROLE` of the server at `host:port`, asked with the master's credentials.
    fn role(&self, host: &str, port: u16) -> Result<String, StoreError> {
        let url = self
            .config
            .master_url(&crate::config::host_port(host, port));
        let connector = Connector::new(&url, self.timeout, self.tls.as_ref())?;
        let mut con = connector.connect(self.timeout)?;
        let reply: Value = redis::cmd("ROLE").query(&mut con)?;
        match reply {
            Value::Array(items) => match items.first() {
                Some(Value::BulkString(role)) => Ok(String::from_utf8_lossy(role).into_owned()),
                _ => Err(no_master("ROLE answered nothing readable")),
            },
            _ => Err(no_master("ROLE answered nothing readable")),
        }
    }
}

/// The error of there being no master to use, and why.
fn no_master(why: &str) -> StoreError {
    let error = std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        format!("no master: {why}"),
    );
    StoreError::Unavailable(error.into())
}

/// `text` percent-encoded for a URL's user information.
fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                encoded.push(byte as char)
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

/// The `redis-sentinel` thread's work: keeping `master` (the store's connector) on the master.
pub struct Follow {
    pub sentinels: Arc<Sentinels>,
    pub master: Arc<Connector>,
    /// Told when a connection to the master could not be made.
    pub failures: Receiver<()>,
    /// Makes the feed reconnect, to the new master.
    pub switched: Box<dyn Fn() + Send>,
    pub metrics: Arc<Metrics>,
}

impl Follow {
    /// Looks for the master now and makes it the target; logs a change.
    pub fn search(&self) {
        let name = self.sentinels.name();
        let found = self.sentinels.find();
        let changed = match &found {
            Ok((host, port)) => self.master.retarget(Some((host, *port))),
            Err(_) => self.master.retarget(None),
        };
        match (changed, found) {
            (Ok(true), Ok(_)) => {
                let addr = self.master.target().unwrap_or_default();
                log::info!("sentinel: the master of {name} is {addr}");
                (self.switched)();
            }
            (Ok(true), Err(e)) => {
                log::warn!("sentinel: no master of {name} now: {e}");
                (self.switched)();
            }
            (Ok(false), _) => {}
            (Err(e), _) => log::warn!("sentinel: cannot use the master of {name}: {e}"),
        }
    }

    /// Starts the `redis-sentinel` thread; it runs until the worker is stopped.
    pub fn spawn(self) -> std::io::Result<Worker> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let socket = Arc::new(parking_lot::Mutex::new(None));
        let held = Arc::clone(&socket);
        Worker::spawn(
            "redis-sentinel",
            move || self.run(&stopped, &held),
            move || {
                drop(stop);
                if let Some(socket) = &*socket.lock() {
                    let _ = super::tls::Wire::shutdown(socket, std::net::Shutdown::Both);
                }
            },
        )
    }

    fn run(self, stop: &Receiver<()>, socket: &parking_lot::Mutex<Option<super::tls::Wire>>) {
        let mut next = 0;
        reconnect(
            "sentinel subscription",
            stop,
            &self.metrics,
            |up| {
                let count = self.sentinels.sentinels.len();
                let (addr, sentinel) = &self.sentinels.sentinels[next % count];
                next += 1;
                let mut session = match Session::open(sentinel, TICK) {
                    Ok(session) => session,
                    Err(e) => return Ended::Lost(e),
                };
                match session.socket() {
                    Ok(wire) => *socket.lock() = Some(wire),
                    Err(e) => return Ended::Lost(RedisError::from(e).into()),
                }
                if stopping(stop) {
                    return Ended::Stopped;
                }
                let subscribe = redis::cmd("SUBSCRIBE")
                    .arg("+switch-master")
                    .get_packed_command();
                if let Err(e) = session.write(&subscribe) {
                    return Ended::Lost(RedisError::from(e).into());
                }
                up.subscribed();
                log::info!("sentinel subscription up at {addr}");
                // After subscribing, so no switch falls between the search and the watch.
                self.search();
                let searched = Cell::new(Instant::now());
                let ping = redis::cmd("PING").get_packed_command();
                let writer = match session.socket() {
                    Ok(writer) => writer,
                    Err(e) => return Ended::Lost(RedisError::from(e).into()),
                };
                session.pump(
                    stop,
                    || {
                        self.search_if_asked(&searched);
                        std::io::Write::write_all(&mut &writer, &ping)
                    },
                    |value| {
                        if self.is_switch(&value) {
                            self.search();
                            searched.set(Instant::now());
                        } else {
                            self.search_if_asked(&searched);
                        }
                        Ok(())
                    },
                )
            },
            |_| {
                *socket.lock() = None;
                true
            },
        );
    }

    /// Searches if a connection failure asked for it, at most every [`SEARCH_GAP`].
    fn search_if_asked(&self, searched: &Cell<Instant>) {
        if searched.get().elapsed() >= SEARCH_GAP && self.failures.try_recv().is_ok() {
            self.search();
            searched.set(Instant::now());
        }
    }

    /// Whether `value` is a `+switch-master` of this master.
    fn is_switch(&self, value: &Value) -> bool {
        let (Value::Array(items) | Value::Push { data: items, .. }) = value else {
            return false;
        };
        match &items[..] {
            [Value::BulkString(kind), _, Value::BulkString(payload)] if kind == b"message" => {
                let payload = String::from_utf8_lossy(payload);
                payload.split(' ').next() == Some(self.sentinels.name())
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_percent_encoded() {
        assert_eq!(encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
        assert_eq!(encode("plain-1.2_3~"), "plain-1.2_3~");
    }
}
