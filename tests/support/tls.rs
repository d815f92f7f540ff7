//! Certificates of the test's own, made with the `openssl` command: a CA, a server certificate
//! it signs for `localhost` and `127.0.0.1`, one it signs for another name, a client
//! certificate, and a second CA that signed none of them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::TempDir;
use super::redis::{Redis, free_port};

/// The files, in a directory of their own.
pub struct Pki {
    pub dir: TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let pki = Pki {
            dir: TempDir::new("pki"),
        };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.signed("server", "subjectAltName=DNS:localhost,IP:127.0.0.1");
        pki.signed("misnamed", "subjectAltName=DNS:elsewhere.example");
        pki.signed("client", "extendedKeyUsage=clientAuth");
        pki
    }

    /// `name.crt`, `name.key` or another file here.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.0.join(file)
    }

    /// `path(file)` as text, for an environment variable.
    pub fn file(&self, file: &str) -> String {
        self.path(file).to_str().expect("a UTF-8 path").to_owned()
    }

    /// `redis-server` arguments for TLS only (no plain port), with `name`'s certificate;
    /// clients must show a certificate if `clients` is true.
    pub fn server_args(&self, tls_port: u16, name: &str, clients: bool) -> Vec<String> {
        let mut args = vec!["--port".into(), "0".into(), "--tls-port".into()];
        args.push(tls_port.to_string());
        args.extend(["--tls-cert-file".into(), self.file(&format!("{name}.crt"))]);
        args.extend(["--tls-key-file".into(), self.file(&format!("{name}.key"))]);
        args.extend(["--tls-ca-cert-file".into(), self.file("ca.crt")]);
        let auth = if clients { "yes" } else { "no" };
        args.extend(["--tls-auth-clients".into(), auth.into()]);
        args
    }

    /// A TLS-only `redis-server` on a free port, showing `name`'s certificate, asking clients
    /// for theirs if `clients`.
    pub fn redis(&self, name: &str, clients: bool) -> Redis {
        for _ in 0..20 {
            if let Some(redis) = self.redis_on(free_port(), name, clients) {
                return redis;
            }
        }
        panic!("could not start a TLS redis-server on a free port after 20 tries");
    }

    /// As [`Pki::redis`], on `port`, or `None` if it exits (most likely the port was taken).
    pub fn redis_on(&self, port: u16, name: &str, clients: bool) -> Option<Redis> {
        let args = self.server_args(port, name, clients);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Redis::try_start_tls(port, &args, Some(self.client_certificates()))
    }

    /// The redis crate's certificates: trust the CA, show the client certificate.
    pub fn client_certificates(&self) -> redis::TlsCertificates {
        let read = |f: &str| std::fs::read(self.path(f)).expect("read a test certificate");
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read("client.crt"),
                client_key: read("client.key"),
            }),
            root_cert: Some(read("ca.crt")),
        }
    }

    fn ca(&self, name: &str) {
        openssl(
            &self.dir.0,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=heartbeat test {name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }

    /// A key and a certificate signed by `ca`, with the extension `ext`.
    fn signed(&self, name: &str, ext: &str) {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        openssl(
            &self.dir.0,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        let ext_file = self.path(&format!("{name}.ext"));
        std::fs::write(&ext_file, format!("{ext}\n")).unwrap();
        openssl(
            &self.dir.0,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                ext_file.to_str().unwrap(),
            ],
        );
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (apt-get install -y openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
