//! TLS to Redis (`rediss://`, `clusters://`, `sentinels://`): which certificates to trust and
//! to show, for the redis crate's connections and for the feeds' own ([`Wire`]).
//!
//! The server's certificate is checked against the webpki roots built into the binary (a
//! `scratch` image has no CA store), and the CAs of `REDIS_CA_FILE` besides, and must name the
//! host heartbeat connects to; nothing turns that check off. Both kinds of connection use
//! rustls with the same roots and client certificate.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;

use parking_lot::Mutex;
use redis::{RedisError, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::config::RedisTls;

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// How heartbeat speaks TLS to Redis.
pub struct Tls {
    /// For the redis crate's connections: `None` keeps the crate's built-in webpki roots;
    /// with a CA file, the same roots as whole certificates and the file's, as PEM.
    certificates: Option<TlsCertificates>,
    /// For the feeds' connections: the same roots and client certificate.
    config: Arc<ClientConfig>,
}

impl Tls {
    /// Reads the PEM files `files` holds; an error says which file and why.
    pub fn new(files: &RedisTls) -> Result<Tls, String> {
        let mut roots = RootCertStore::empty();
        // With a CA file: the built-in roots and the file's CAs, also as PEM for the crate.
        let mut root_pem = None;
        match &files.ca {
            Some((path, pem)) => {
                let certs = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("REDIS_CA_FILE {path}: not PEM certificates: {e}"))?;
                if certs.is_empty() {
                    return Err(format!("REDIS_CA_FILE {path}: holds no certificate"));
                }
                let built_in = webpki_root_certs::TLS_SERVER_ROOT_CERTS;
                roots.add_parsable_certificates(built_in.iter().cloned());
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| format!("REDIS_CA_FILE {path}: not a CA certificate: {e}"))?;
                }
                let mut all: Vec<u8> = built_in.iter().flat_map(|c| to_pem(c)).collect();
                all.extend_from_slice(pem);
                root_pem = Some(all);
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = ClientConfig::builder().with_root_certificates(roots);
        let config = match &files.client {
            Some(((cert_path, cert), (key_path, key))) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("REDIS_CLIENT_CERT_FILE {cert_path}: not PEM: {e}"))?;
                if chain.is_empty() {
                    return Err(format!(
                        "REDIS_CLIENT_CERT_FILE {cert_path}: holds no certificate"
                    ));
                }
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                    format!("REDIS_CLIENT_KEY_FILE {key_path}: no private key: {e}")
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    format!("REDIS_CLIENT_CERT_FILE {cert_path} and REDIS_CLIENT_KEY_FILE {key_path}: {e}")
                })?
            }
            None => builder.with_no_client_auth(),
        };
        let certificates =
            (files.ca.is_some() || files.client.is_some()).then(|| TlsCertificates {
                client_tls: files.client.as_ref().map(|((_, cert), (_, key))| {
                    redis::ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.clone(),
                    }
                }),
                root_cert: root_pem,
            });
        Ok(Tls {
            certificates,
            config: Arc::new(config),
        })
    }

    /// A redis crate client for the `rediss://` `info`, trusting what this trusts.
    pub fn client(&self, info: redis::ConnectionInfo) -> Result<redis::Client, RedisError> {
        match &self.certificates {
            Some(certificates) => redis::Client::build_with_tls(info, certificates.clone()),
            None => redis::Client::open(info),
        }
    }

    /// Runs the TLS handshake with `host` on `socket` (whose timeouts bound it), for a feed.
    pub fn handshake(&self, host: &str, mut socket: TcpStream) -> Result<Wire, RedisError> {
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "not a TLS server name",
                e.to_string(),
            ))
        })?;
        let mut tls = ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|e| RedisError::from(io::Error::other(e)))?;
        while tls.is_handshaking() {
            tls.complete_io(&mut socket)?;
        }
        Ok(Wire {
            socket,
            tls: Some(Arc::new(Mutex::new(tls))),
        })
    }
}

/// `cert` as a PEM block.
fn to_pem(cert: &CertificateDer<'_>) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut base64 = Vec::with_capacity(cert.len() * 4 / 3 + 4);
    for chunk in cert.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            base64.push(match i <= chunk.len() {
                true => ALPHABET[(n >> (18 - 6 * i) & 63) as usize],
                false => b'=',
            });
        }
    }
    let mut pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
    for line in base64.chunks(64) {
        pem.extend_from_slice(line);
        pem.push(b'\n');
    }
    pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    pem
}

/// A feed's connection to Redis, plain or TLS: read by the feed's thread while other threads
/// write commands on a clone of it.
///
/// A TLS read waits for bytes with `peek` on the socket, without holding the TLS state, so a
/// writer is never kept waiting by a read that has nothing to read; the socket's read timeout
/// bounds that wait as it bounds a plain read.
pub struct Wire {
    socket: TcpStream,
    tls: Option<Arc<Mutex<ClientConnection>>>,
}

impl Wire {
    pub fn plain(socket: TcpStream) -> Wire {
        Wire { socket, tls: None }
    }

    /// Another handle on the same connection.
    pub fn try_clone(&self) -> io::Result<Wire> {
        Ok(Wire {
            socket: self.socket.try_clone()?,
            tls: self.tls.clone(),
        })
    }

    /// Shuts the socket down, which wakes a read in progress.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.socket.shutdown(how)
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            return self.socket.read(buf);
        };
        loop {
            match tls.lock().reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            // Nothing decrypted yet: wait for the socket, then take what came.
            self.socket.peek(&mut [0])?;
            let mut tls = tls.lock();
            tls.read_tls(&mut &self.socket)?;
            let processed = tls.process_new_packets();
            while tls.wants_write() {
                tls.write_tls(&mut &self.socket)?;
            }
            processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        (&*self).write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return (&self.socket).write_all(buf);
        };
        let mut tls = tls.lock();
        tls.writer().write_all(buf)?;
        while tls.wants_write() {
            tls.write_tls(&mut &self.socket)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How rustls's errors of a failed handshake begin (`rustls::Error`'s `Display`): a
/// certificate refused by either side, an alert, a peer that does not speak TLS.
const TLS_FAILURES: &[&str] = &[
    "invalid peer certificate",
    "peer sent no certificates",
    "received fatal alert",
    "peer is incompatible",
    "peer misbehaved",
    "received corrupt message",
];

/// Whether `error` is TLS failing: a certificate refused (by heartbeat or by Redis) or a
/// handshake that went wrong, rather than Redis being out of reach.
///
/// By its text, because the redis crate keeps the `rustls::Error` of its own connections
/// behind a private field; an I/O error's text is its inner error's, there and in [`Wire`].
pub fn is_tls_failure(error: &RedisError) -> bool {
    let text = error.to_string();
    error.kind() == redis::ErrorKind::Io && TLS_FAILURES.iter().any(|f| text.starts_with(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As rustls's `StreamOwned` and `complete_io` report a TLS error.
    fn as_io(error: rustls::Error) -> RedisError {
        io::Error::new(io::ErrorKind::InvalidData, error).into()
    }

    #[test]
    fn a_ca_file_is_added_to_the_built_in_roots() {
        let built_in = webpki_root_certs::TLS_SERVER_ROOT_CERTS;
        let first = to_pem(&built_in[0]);
        let again: Vec<CertificateDer> = CertificateDer::pem_slice_iter(&first)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(again, [built_in[0].clone()], "PEM round trip");
        let files = RedisTls {
            ca: Some(("ca.pem".into(), first)),
            client: None,
        };
        let tls = Tls::new(&files).unwrap();
        let pem = tls.certificates.unwrap().root_cert.unwrap();
        let count = CertificateDer::pem_slice_iter(&pem).count();
        assert_eq!(count, built_in.len() + 1);
    }

    #[test]
    fn tls_failures_are_told_from_redis_being_away() {
        let refused = as_io(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert!(is_tls_failure(&refused), "{refused}");
        let alert = as_io(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired,
        ));
        assert!(is_tls_failure(&alert), "{alert}");
        let away: RedisError = io::Error::from(io::ErrorKind::ConnectionRefused).into();
        assert!(!is_tls_failure(&away));
    }
}
