//! `heartbeat healthcheck`: asks the instance on `LISTEN` for `/healthz`, for a container
//! `HEALTHCHECK` where there is no curl.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::config::{Config, host_port};

/// How long the check may take to connect, and then to get its answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// `Ok` if the instance configured by the environment answered `/healthz` with `200`; else
/// what it answered, or why it could not be asked.
pub fn check() -> Result<(), String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let host = match config.listen.host.as_str() {
        "" | "0.0.0.0" => "127.0.0.1",
        "::" => "::1",
        h => h,
    };
    let target = host_port(host, config.listen.port);
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("{target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{target}: {e}"))?;
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("{target}: {e}"))?;
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let status = reply.split(' ').nth(1).unwrap_or("no answer");
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    match status {
        "200" => Ok(()),
        _ => Err(format!("{target}/healthz: {status} {body}")),
    }
}
