//! `heartbeat healthcheck`: asks the instance on `LISTEN` for `/healthz`, for a container
//! `HEALTHCHECK` where there is no curl.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::config::{Config, ConfigError, host_port};

/// How long the check may take to connect, and then to get its answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Why the check failed.
#[derive(Debug)]
pub enum CheckError {
    Config(ConfigError),
    /// The address could not be resolved, connected to or written to.
    Unreachable(String, io::Error),
    /// The instance answered, with another status than `200`: the status and the body.
    Unhealthy(String, String, String),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Config(e) => write!(f, "{e}"),
            CheckError::Unreachable(target, e) => write!(f, "{target}: {e}"),
            CheckError::Unhealthy(target, status, body) => {
                write!(f, "{target}/healthz: {status} {body}")
            }
        }
    }
}

impl std::error::Error for CheckError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckError::Config(e) => Some(e),
            CheckError::Unreachable(_, e) => Some(e),
            CheckError::Unhealthy(..) => None,
        }
    }
}

/// `Ok` if the instance configured by the environment answered `/healthz` with `200`; else
/// what it answered, or why it could not be asked.
pub fn check() -> Result<(), CheckError> {
    let config = Config::from_env().map_err(CheckError::Config)?;
    let host = match config.listen.host.as_str() {
        "" | "0.0.0.0" => "127.0.0.1",
        "::" => "::1",
        h => h,
    };
    let target = host_port(host, config.listen.port);
    let unreachable = |e| CheckError::Unreachable(target.clone(), e);
    let addr = target
        .to_socket_addrs()
        .map_err(unreachable)?
        .next()
        .ok_or_else(|| unreachable(io::Error::other("no address")))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(unreachable)?;
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(unreachable)?;
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let status = reply.split(' ').nth(1).unwrap_or("no answer");
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    match status {
        "200" => Ok(()),
        _ => Err(CheckError::Unhealthy(target, status.into(), body.into())),
    }
}
