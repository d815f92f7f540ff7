//! The files of TLS to Redis: `REDIS_CA_FILE` (CAs to trust besides the built-in public
//! roots) and `REDIS_CLIENT_CERT_FILE` with `REDIS_CLIENT_KEY_FILE` (a certificate to show, for
//! mutual TLS). Read at start; what they hold is checked when the store is made.

use super::{ConfigError, StoreConfig, Vars};

/// A file's path and its contents.
pub type PemFile = (String, Vec<u8>);

/// The TLS files, read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca: Option<PemFile>,
    /// The client certificate (chain) and its key.
    pub client: Option<(PemFile, PemFile)>,
}

/// Reads the TLS files. They need a TLS store, and the certificate and key go together.
pub(super) fn read_tls<F: Fn(&str) -> Option<String>>(
    vars: &Vars<'_, F>,
    store: &StoreConfig,
) -> Result<RedisTls, ConfigError> {
    let ca = read_file(vars, "REDIS_CA_FILE")?;
    let cert = read_file(vars, "REDIS_CLIENT_CERT_FILE")?;
    let key = read_file(vars, "REDIS_CLIENT_KEY_FILE")?;
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some((path, _)), None) => return Err(alone("REDIS_CLIENT_CERT_FILE", path)),
        (None, Some((path, _))) => return Err(alone("REDIS_CLIENT_KEY_FILE", path)),
    };
    let tls = RedisTls { ca, client };
    if tls != RedisTls::default() && !store.tls() {
        return Err(ConfigError::Invalid {
            var: "REDIS",
            value: store.to_string(),
            expected: "a TLS address (rediss://, clusters://) when REDIS_CA_FILE or \
                       REDIS_CLIENT_CERT_FILE is set"
                .into(),
        });
    }
    Ok(tls)
}

fn alone(var: &'static str, path: String) -> ConfigError {
    let other = match var {
        "REDIS_CLIENT_CERT_FILE" => "REDIS_CLIENT_KEY_FILE",
        _ => "REDIS_CLIENT_CERT_FILE",
    };
    ConfigError::Invalid {
        var,
        value: path,
        expected: format!("{other} set as well: a client certificate needs its key"),
    }
}

/// The variable's file, read; `None` if the variable is empty.
fn read_file<F: Fn(&str) -> Option<String>>(
    vars: &Vars<'_, F>,
    var: &'static str,
) -> Result<Option<PemFile>, ConfigError> {
    let path = vars.value(var).trim().to_owned();
    if path.is_empty() {
        return Ok(None);
    }
    match std::fs::read(&path) {
        Ok(pem) => Ok(Some((path, pem))),
        Err(e) => Err(ConfigError::Invalid {
            var,
            value: path,
            expected: format!("a readable PEM file ({e})"),
        }),
    }
}
