//! Reaching Redis within a time budget: new connections, and reused ones made ready for a
//! call's deadline, for the pool and the writers; and [`Wire`]s (a socket, with TLS where the
//! URL says `rediss://`), authenticated the same way, for the feeds, which read what Redis
//! pushes with their own parser.

use std::io::{BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::RwLock;

use redis::{
    Client, Connection, ConnectionAddr, ConnectionInfo, ConnectionLike, ErrorKind,
    IntoConnectionInfo, RedisError, Value,
};

use super::tls::{Tls, Wire};

/// How to reach Redis within a time budget.
pub struct Connector {
    /// Where connections go now: fixed, or (under Sentinel) the master last found, or none.
    target: RwLock<Target>,
    /// The URL's credentials and database, for a new target.
    template: ConnectionInfo,
    /// How a `rediss://` URL's connections speak TLS.
    tls: Option<Arc<Tls>>,
    /// Bumped at each new target: a connection made for an older one is not reused.
    generation: AtomicU64,
    /// Told when a connection could not be made, so the master is looked for again.
    on_failure: Option<Sender<()>>,
    /// Replies the redis crate waits for while setting a connection up (`AUTH`, `SELECT`).
    setup_replies: u32,
    /// How far a reused connection's timeout may fall short of the time a call has left
    /// before it is set again: a sixteenth of the Redis timeout.
    slack: Duration,
}

/// Where a connector connects: a client for the server at `addr`.
struct Target {
    client: Option<Client>,
    addr: Option<String>,
}

/// A Redis connection and the read and write timeout set on it.
pub struct Link {
    pub con: Connection,
    timeout: Duration,
    /// The connector's target generation it was made for.
    generation: u64,
}

impl Connector {
    /// A connector for `url` whose calls get `timeout` each, speaking TLS as `tls` says if
    /// the URL is `rediss://`. The crate's `CLIENT SETINFO` is skipped: it costs a round trip
    /// per connection and Redis before 7.2 refuses it anyway.
    pub fn new(
        url: &str,
        timeout: Duration,
        tls: Option<&Arc<Tls>>,
    ) -> Result<Connector, RedisError> {
        let info = url.into_connection_info()?;
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let setup_replies =
            u32::from(settings.password().is_some()) + u32::from(settings.db() != 0);
        let info = info.set_redis_settings(settings);
        let tls = match (info.addr(), tls) {
            (ConnectionAddr::TcpTls { .. }, Some(tls)) => Some(Arc::clone(tls)),
            (ConnectionAddr::TcpTls { .. }, None) => {
                let e = (
                    ErrorKind::InvalidClientConfig,
                    "rediss:// without TLS settings",
                );
                return Err(e.into());
            }
            _ => None,
        };
        let connector = Connector {
            target: RwLock::new(Target {
                client: None,
                addr: None,
            }),
            template: info.clone(),
            tls,
            generation: AtomicU64::new(0),
            on_failure: None,
            setup_replies,
            slack: timeout / 16,
        };
        let client = connector.client(info)?;
        connector.target.write().client = Some(client);
        Ok(connector)
    }

    /// A connector with no target yet, for a master that Sentinel names: `url` gives the
    /// scheme, credentials and database (its address is a placeholder); `on_failure` is told
    /// whenever a connection cannot be made.
    pub fn following(
        url: &str,
        timeout: Duration,
        tls: Option<&Arc<Tls>>,
        on_failure: Sender<()>,
    ) -> Result<Connector, RedisError> {
        let mut connector = Connector::new(url, timeout, tls)?;
        connector.target.get_mut().client = None;
        connector.on_failure = Some(on_failure);
        Ok(connector)
    }

    fn client(&self, info: ConnectionInfo) -> Result<Client, RedisError> {
        match &self.tls {
            Some(tls) => tls.client(info),
            None => Client::open(info),
        }
    }

    /// Connects from now on to the server at `host:port`, or to none; connections made for
    /// the old target are not reused. `false` if `addr` was already the target.
    pub fn retarget(&self, addr: Option<(&str, u16)>) -> Result<bool, RedisError> {
        let shown = addr.map(|(host, port)| crate::config::host_port(host, port));
        if self.target.read().addr == shown {
            return Ok(false);
        }
        let client = match addr {
            None => None,
            Some((host, port)) => {
                let (host, port) = (host.to_owned(), port);
                let addr = match self.tls {
                    Some(_) => ConnectionAddr::TcpTls {
                        host,
                        port,
                        insecure: false,
                        tls_params: None,
                    },
                    None => ConnectionAddr::Tcp(host, port),
                };
                Some(self.client(self.template.clone().set_addr(addr))?)
            }
        };
        let mut target = self.target.write();
        *target = Target {
            client,
            addr: shown,
        };
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// The `host:port` connections go to, when it was set by [`Connector::retarget`].
    pub fn target(&self) -> Option<String> {
        self.target.read().addr.clone()
    }

    /// The current target's client, or the error of having none.
    fn current(&self) -> Result<Client, RedisError> {
        self.target
            .read()
            .client
            .clone()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotConnected, NO_MASTER).into())
    }

    /// `result`, having told `on_failure` if it failed.
    fn noted<T>(&self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if result.is_err()
            && let Some(on_failure) = &self.on_failure
        {
            let _ = on_failure.try_send(());
        }
        result
    }

    /// Connects within `budget`, leaving the connection with `budget` as its read and write
    /// timeout. The crate applies its timeout to the TCP connect and again to each setup reply,
    /// so the budget is shared out among them.
    pub fn connect(&self, budget: Duration) -> Result<Connection, RedisError> {
        let client = self.noted(self.current())?;
        let con =
            self.noted(client.get_connection_with_timeout(budget / (self.setup_replies + 1)))?;
        con.set_read_timeout(Some(budget))?;
        con.set_write_timeout(Some(budget))?;
        Ok(con)
    }

    /// A connection for a feed, over TLS if the URL says so, authenticated as the URL says,
    /// whose connect, handshake, reads and writes each time out after `timeout`; and a
    /// buffered reader of it.
    pub fn subscriber(&self, timeout: Duration) -> Result<(Wire, BufReader<Wire>), RedisError> {
        let client = self.noted(self.current())?;
        let info = client.get_connection_info();
        let (host, port) = match info.addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                (host, port)
            }
            _ => return Err((ErrorKind::InvalidClientConfig, "not a TCP address").into()),
        };
        let mut last = None;
        for addr in (host.as_str(), *port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(timeout))?;
                    stream.set_write_timeout(Some(timeout))?;
                    let stream = match &self.tls {
                        Some(tls) => tls.handshake(host, stream)?,
                        None => Wire::plain(stream),
                    };
                    let mut reader = BufReader::new(stream.try_clone()?);
                    let settings = info.redis_settings();
                    if let Some(password) = settings.password() {
                        let mut auth = redis::cmd("AUTH");
                        if let Some(user) = settings.username() {
                            auth.arg(user);
                        }
                        (&stream).write_all(&auth.arg(password).get_packed_command())?;
                        if let Value::ServerError(e) =
                            redis::Parser::new().parse_value(&mut reader)?
                        {
                            return Err(e.into());
                        }
                    }
                    return Ok((stream, reader));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || {
                (
                    ErrorKind::InvalidClientConfig,
                    "the host resolves to nothing",
                )
                    .into()
            },
            RedisError::from,
        ))
    }

    /// `reused` if it is still open, else a new connection made in the time left before
    /// `deadline`; either way with read and write timeouts that expire by the deadline.
    ///
    /// A reused connection keeps the timeout it has unless that would outlast the deadline or
    /// expire more than `slack` before it. Setting it costs two system calls, which under load
    /// would be paid on every pipeline, while every pipeline's deadline is about the same
    /// distance away.
    pub fn ready(&self, reused: Option<Link>, deadline: Instant) -> Result<Link, RedisError> {
        let left = left_until(deadline)?;
        let generation = self.generation.load(Ordering::Relaxed);
        let reused = reused.filter(|link| link.con.is_open() && link.generation == generation);
        match reused {
            Some(mut link) if link.timeout > left || link.timeout + self.slack < left => {
                let timeout = left.saturating_sub(self.slack / 2).max(MIN_TIMEOUT);
                link.con.set_read_timeout(Some(timeout))?;
                link.con.set_write_timeout(Some(timeout))?;
                link.timeout = timeout;
                Ok(link)
            }
            Some(link) => Ok(link),
            None => Ok(Link {
                con: self.connect(left)?,
                timeout: left,
                generation,
            }),
        }
    }
}

/// The shortest timeout a call is given; less counts as no time left.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// What a call says while Sentinel names no master.
const NO_MASTER: &str = "no master: Sentinel names none that answers as one";

/// What a call that ran out of time says.
const TIMED_OUT: &str = "Redis did not answer in time";

/// Time left before `deadline`, or a timeout error once it has passed.
fn left_until(deadline: Instant) -> Result<Duration, RedisError> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| *left >= MIN_TIMEOUT)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, TIMED_OUT).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn a_feed_connection_authenticates_with_the_urls_credentials_decoded() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut got = vec![0; 64];
            let n = socket.read(&mut got).unwrap();
            socket.write_all(b"+OK\r\n").unwrap();
            String::from_utf8(got[..n].to_vec()).unwrap()
        });
        let url = format!("redis://hb:p%40ss@127.0.0.1:{port}");
        let connector = Connector::new(&url, Duration::from_secs(2), None).unwrap();
        connector.subscriber(Duration::from_secs(2)).unwrap();
        assert_eq!(
            server.join().unwrap(),
            "*3\r\n$4\r\nAUTH\r\n$2\r\nhb\r\n$4\r\np@ss\r\n"
        );
    }
}
