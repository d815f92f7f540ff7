//! Reaching Redis within a time budget: new connections, and reused ones made ready for a
//! call's deadline, for the pool and the writers; and [`Wire`]s (a socket, with TLS where the
//! URL says `rediss://`), authenticated the same way, for the feeds, which read what Redis
//! pushes with their own parser.

use std::io::{BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{
    Client, Connection, ConnectionAddr, ConnectionLike, ErrorKind, IntoConnectionInfo, RedisError,
    Value,
};

use super::tls::{Tls, Wire};

/// How to reach Redis within a time budget.
pub struct Connector {
    client: Client,
    /// How a `rediss://` URL's connections speak TLS.
    tls: Option<Arc<Tls>>,
    /// Replies the redis crate waits for while setting a connection up (`AUTH`, `SELECT`).
    setup_replies: u32,
    /// How far a reused connection's timeout may fall short of the time a call has left
    /// before it is set again: a sixteenth of the Redis timeout.
    slack: Duration,
}

/// A Redis connection and the read and write timeout set on it.
pub struct Link {
    pub con: Connection,
    timeout: Duration,
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
        let (client, tls) = match (info.addr(), tls) {
            (ConnectionAddr::TcpTls { .. }, Some(tls)) => {
                (tls.client(info)?, Some(Arc::clone(tls)))
            }
            (ConnectionAddr::TcpTls { .. }, None) => {
                let e = (
                    ErrorKind::InvalidClientConfig,
                    "rediss:// without TLS settings",
                );
                return Err(e.into());
            }
            _ => (Client::open(info)?, None),
        };
        Ok(Connector {
            client,
            tls,
            setup_replies,
            slack: timeout / 16,
        })
    }

    /// Connects within `budget`, leaving the connection with `budget` as its read and write
    /// timeout. The crate applies its timeout to the TCP connect and again to each setup reply,
    /// so the budget is shared out among them.
    pub fn connect(&self, budget: Duration) -> Result<Connection, RedisError> {
        let con = self
            .client
            .get_connection_with_timeout(budget / (self.setup_replies + 1))?;
        con.set_read_timeout(Some(budget))?;
        con.set_write_timeout(Some(budget))?;
        Ok(con)
    }

    /// A connection for a feed, over TLS if the URL says so, authenticated as the URL says,
    /// whose connect, handshake, reads and writes each time out after `timeout`; and a
    /// buffered reader of it.
    pub fn subscriber(&self, timeout: Duration) -> Result<(Wire, BufReader<Wire>), RedisError> {
        let info = self.client.get_connection_info();
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
        match reused.filter(|link| link.con.is_open()) {
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
            }),
        }
    }
}

/// The shortest timeout a call is given; less counts as no time left.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

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
