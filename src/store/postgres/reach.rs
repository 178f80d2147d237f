//! How the relay reaches its PostgreSQL database: the driver's settings from the
//! `--database` URL, and TLS.
//!
//! TLS is asked for as libpq asks for it, in the URL: `sslmode=require` (or `verify-ca`,
//! `verify-full`) encrypts the connection, and then the server's certificate is always
//! checked, chain and host name (what libpq calls `verify-full`): against the CA
//! certificates in the PEM file `sslrootcert=PATH` names, or, without one, the public web
//! roots. An encrypted connection to a server nobody checked would stop only a passive
//! eavesdropper, so it is not offered: no `sslmode`, or `disable`, connects in clear, as
//! before; `prefer` and `allow`, which libpq users take for encryption, are refused, and
//! so are `sslrootcert` without `sslmode=require` and a parameter given twice.

use std::sync::Arc;

use percent_encoding::percent_decode_str;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::CONNECT_TIMEOUT;
use crate::store::StoreError;

/// How long one of the relay's transactions may wait on the relay before PostgreSQL ends
/// it: each runs its statements back to back, so only a relay that stopped waits this
/// long.
const STALLED_TRANSACTION: &str = "-c idle_in_transaction_session_timeout=10000";

/// The database a URL names, and how to connect to it.
pub(in crate::store) struct Reach {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    /// The server and database, for errors: never the password.
    pub target: String,
}

/// Reads `url` (a `postgres://` or `postgresql://` URL, which [`super::super::open`]
/// checked); an error names neither the password nor more of the URL than it must.
pub(in crate::store) fn reach(url: &str) -> Result<Reach, StoreError> {
    let given = |reason: String| StoreError::Open {
        path: "given by --database".to_owned(),
        reason,
    };
    let (
        url,
        Tls {
            required,
            root_cert,
        },
    ) = split_tls(url).map_err(given)?;
    // The driver takes the first `@` as the end of the user and password, and what
    // follows another `@` as the host: part of a password would show in every error.
    let authority = url
        .split_once("://")
        .map_or("", |(_, rest)| rest.split(['/', '?']).next().unwrap_or(""));
    if authority.matches('@').count() > 1 {
        return Err(given(
            "its user name or password holds an '@': write it as %40".to_owned(),
        ));
    }
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|error| given(format!("{error}")))?;
    let target = target(&config);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    // A transaction left open by a relay that stopped (frozen, its machine gone) would
    // hold its locks, and a stand-by waiting for them, for ever: PostgreSQL ends it.
    let options = match config.get_options() {
        Some(given) => format!("{given} {STALLED_TRANSACTION}"),
        None => STALLED_TRANSACTION.to_owned(),
    };
    config.options(&options);
    if !required && root_cert.is_some() {
        return Err(given(
            "sslrootcert is only used with sslmode=require: add it, or the connection is not \
             encrypted"
                .to_owned(),
        ));
    }
    // Not the driver's default, `prefer`: a server offering TLS would get it unchecked.
    config.ssl_mode(if required {
        SslMode::Require
    } else {
        SslMode::Disable
    });
    let roots = match &root_cert {
        Some(path) => roots_in(path).map_err(|reason| StoreError::Open {
            path: target.clone(),
            reason: format!("sslrootcert {path}: {reason}"),
        })?,
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| StoreError::Open {
            path: target.clone(),
            reason: format!("cannot set up TLS: {error}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Reach {
        config,
        tls: MakeRustlsConnect::new(tls),
        target,
    })
}

/// What the URL's query says of TLS, which the relay reads itself.
#[derive(Debug, PartialEq, Eq)]
struct Tls {
    /// `sslmode=require` (or `verify-ca`, `verify-full`: the certificate is always checked).
    required: bool,
    /// `sslrootcert`, percent-decoded.
    root_cert: Option<String>,
}

/// `url` without its `sslmode` and `sslrootcert` parameters, and what they say. A
/// parameter given twice is refused (the driver would silently take the last), and so
/// is an `sslmode` that would connect in clear to a server offering TLS (`prefer`,
/// `allow`) or that the relay does not know.
fn split_tls(url: &str) -> Result<(String, Tls), String> {
    let mut tls = Tls {
        required: false,
        root_cert: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), tls));
    };
    let mut seen = std::collections::HashSet::new();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // The driver decodes names too: `ssl%6Dode` would be an `sslmode` nobody checked.
        if key.contains('%') {
            return Err(format!(
                "its parameter names must be written plainly, not percent-encoded ({key:?})"
            ));
        }
        if !seen.insert(key) {
            return Err(format!("its parameter {key:?} is given twice"));
        }
        // What the URL says before its query is what the relay names in its messages.
        let before_query = base.split_once("://").map_or("", |(_, rest)| rest);
        let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
        let in_url = match key {
            "user" | "password" => authority.contains('@'),
            "dbname" => !path.is_empty(),
            "host" | "hostaddr" | "port" => !authority.rsplit('@').next().unwrap_or("").is_empty(),
            _ => false,
        };
        if in_url {
            return Err(format!(
                "its parameter {key:?} says again what the URL before it says"
            ));
        }
        match key {
            "sslrootcert" => {
                tls.root_cert = Some(percent_decode_str(value).decode_utf8_lossy().into_owned());
            }
            "sslmode" => {
                tls.required = match value {
                    "disable" => false,
                    "require" | "verify-ca" | "verify-full" => true,
                    "prefer" | "allow" => {
                        return Err(format!(
                            "sslmode={value} would connect in clear, or with TLS nobody checked: \
                             use sslmode=require (TLS, the certificate always checked) or \
                             sslmode=disable"
                        ));
                    }
                    _ => {
                        return Err(
                            "sslmode must be disable, require, verify-ca or verify-full".to_owned()
                        );
                    }
                };
            }
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, tls))
}

/// The most bytes a CA file may hold: a few hundred certificates.
const MAX_ROOT_CERT_BYTES: u64 = 1024 * 1024;

/// The CA certificates of a PEM file: a regular file of at most [`MAX_ROOT_CERT_BYTES`]
/// (not a device or a pipe, which could hold the relay for ever or fill its memory).
fn roots_in(path: &str) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use std::io::Read;
    // Looked at before it is opened: opening a FIFO waits for a writer, for ever.
    let regular = |metadata: std::fs::Metadata| {
        if metadata.is_file() {
            Ok(metadata)
        } else {
            Err("not a regular file".to_owned())
        }
    };
    regular(std::fs::metadata(path).map_err(|error| error.to_string())?)?;
    let file = std::fs::File::open(path).map_err(|error| error.to_string())?;
    let metadata = regular(file.metadata().map_err(|error| error.to_string())?)?;
    if metadata.len() > MAX_ROOT_CERT_BYTES {
        return Err(format!(
            "larger than {} KiB: not a CA file",
            MAX_ROOT_CERT_BYTES / 1024
        ));
    }
    let mut pem = Vec::new();
    file.take(MAX_ROOT_CERT_BYTES)
        .read_to_end(&mut pem)
        .map_err(|error| error.to_string())?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| error.to_string())?;
    if certificates.is_empty() {
        return Err("no certificate in it (PEM expected)".to_owned());
    }
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|error| format!("not a usable CA certificate: {error}"))?;
    }
    Ok(roots)
}

/// The server and database `config` names, for errors: never the password.
fn target(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map_or("localhost".to_owned(), |host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        });
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or_default();
    format!("postgres://{host}:{port}/{database}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url() {
        assert_eq!(
            split_tls("postgres://u@h/db?sslmode=require&sslrootcert=%2Fetc%2Fca.pem&x=1"),
            Ok((
                "postgres://u@h/db?x=1".to_owned(),
                Tls {
                    required: true,
                    root_cert: Some("/etc/ca.pem".to_owned())
                }
            ))
        );
        for mode in ["verify-full", "verify-ca"] {
            let (url, tls) = split_tls(&format!("postgres://u@h/db?sslmode={mode}")).unwrap();
            assert_eq!((url.as_str(), tls.required), ("postgres://u@h/db", true));
        }
        let (url, tls) = split_tls("postgres://u@h/db").unwrap();
        assert_eq!((url.as_str(), tls.required), ("postgres://u@h/db", false));
        for (url, expected) in [
            ("postgres://u@h/db?sslmode=require&sslmode=disable", "twice"),
            ("postgres://u@h/db?sslrootcert=/a&sslrootcert=/b", "twice"),
            ("postgres://u@h/db?sslmode=prefer", "in clear"),
            ("postgres://u@h/db?sslmode=allow", "in clear"),
            ("postgres://u@h/db?sslmode=REQUIRE", "must be"),
            ("postgres://u@h/db?ssl%6Dode=prefer", "percent-encoded"),
            (
                "postgres://u@h/db?sslmode=disable&ssl%6Dode=require",
                "percent-encoded",
            ),
            ("postgres://u@h/t2?dbname=postgres", "says again"),
            ("postgres://u:pw@h/db?password=other", "says again"),
            ("postgres://u@h:5432/db?port=1", "says again"),
        ] {
            let error = split_tls(url).err().unwrap();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }

    #[test]
    fn only_sslmode_require_encrypts_and_a_root_cert_without_it_is_refused() {
        let plain = reach("postgres://u:pw@127.0.0.1:1/db").unwrap();
        assert_eq!(plain.config.get_ssl_mode(), SslMode::Disable);
        let disabled = reach("postgres://u:pw@127.0.0.1:1/db?sslmode=disable").unwrap();
        assert_eq!(disabled.config.get_ssl_mode(), SslMode::Disable);
        let required = reach("postgres://u:pw@127.0.0.1:1/db?sslmode=require").unwrap();
        assert_eq!(required.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(required.target, "postgres://127.0.0.1:1/db");
        let error = reach("postgres://u:pw@127.0.0.1:1/db?sslrootcert=/ca.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("sslmode=require"), "{error}");
        assert!(!error.contains("pw"), "{error}");
        for (root_cert, expected) in [
            ("/nonexistent.pem", "No such file"),
            ("/dev/zero", "not a regular file"),
            ("/tmp", "not a regular file"),
        ] {
            let error = reach(&format!(
                "postgres://u:pw@h/db?sslmode=require&sslrootcert={root_cert}"
            ))
            .err()
            .unwrap()
            .to_string();
            assert!(
                error.contains(root_cert) && error.contains(expected),
                "{error}"
            );
        }
        // A FIFO is refused, not opened (which would wait for a writer for ever).
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("ca.pem");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let error = reach(&format!(
            "postgres://u:pw@h/db?sslmode=require&sslrootcert={}",
            fifo.display()
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("not a regular file"), "{error}");
        let big = tempfile::NamedTempFile::new().unwrap();
        big.as_file().set_len(MAX_ROOT_CERT_BYTES + 1).unwrap();
        let error = reach(&format!(
            "postgres://u:pw@h/db?sslmode=require&sslrootcert={}",
            big.path().display()
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("larger than"), "{error}");
        // An '@' in the password, not encoded: refused without a word of it.
        let error = reach("postgres://u:SECRET@TAIL@127.0.0.1/db")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("%40"), "{error}");
        assert!(
            !error.contains("SECRET") && !error.contains("TAIL"),
            "{error}"
        );
    }
}
