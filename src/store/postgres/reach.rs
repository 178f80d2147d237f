//! How the relay reaches its PostgreSQL database: the driver's settings from the
//! `--database` URL, and TLS.
//!
//! TLS is asked for as libpq asks for it, in the URL: `sslmode=require` encrypts the
//! connection, and then the server's certificate is always checked, chain and host name
//! (what libpq calls `verify-full`): against the CA certificates in the PEM file
//! `sslrootcert=PATH` names, or, without one, the public web roots. An encrypted
//! connection to a server nobody checked would stop only a passive eavesdropper, so it is
//! not offered: `sslmode=prefer` (the driver's default) and `disable` connect in clear,
//! as before, and `sslrootcert` without `sslmode=require` is refused rather than ignored.

use std::sync::Arc;

use percent_encoding::percent_decode_str;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::CONNECT_TIMEOUT;
use crate::store::StoreError;

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
    let (url, root_cert) = split_root_cert(url);
    let given = |reason: String| StoreError::Open {
        path: "given by --database".to_owned(),
        reason,
    };
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|error| given(format!("{error}")))?;
    let target = target(&config);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let encrypted = config.get_ssl_mode() == SslMode::Require;
    if !encrypted {
        if root_cert.is_some() {
            return Err(given(
                "sslrootcert is only used with sslmode=require: add it, or the connection is \
                 not encrypted"
                    .to_owned(),
            ));
        }
        // Not `prefer`: a server offering TLS would get it unchecked (see above).
        config.ssl_mode(SslMode::Disable);
    }
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

/// `url` without its `sslrootcert` parameter, which the driver does not know, and that
/// parameter's value (percent-decoded).
fn split_root_cert(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut root_cert = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some(("sslrootcert", value)) => {
                root_cert = Some(percent_decode_str(value).decode_utf8_lossy().into_owned());
                false
            }
            _ => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, root_cert)
}

/// The CA certificates of a PEM file.
fn roots_in(path: &str) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| error.to_string())?
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
    fn sslrootcert_is_taken_out_of_the_url_and_decoded() {
        assert_eq!(
            split_root_cert("postgres://u@h/db?sslmode=require&sslrootcert=%2Fetc%2Fca.pem"),
            (
                "postgres://u@h/db?sslmode=require".to_owned(),
                Some("/etc/ca.pem".to_owned())
            )
        );
        assert_eq!(
            split_root_cert("postgres://u@h/db?sslrootcert=/ca.pem"),
            ("postgres://u@h/db".to_owned(), Some("/ca.pem".to_owned()))
        );
        assert_eq!(
            split_root_cert("postgres://u@h/db"),
            ("postgres://u@h/db".to_owned(), None)
        );
    }

    #[test]
    fn only_sslmode_require_encrypts_and_a_root_cert_without_it_is_refused() {
        let plain = reach("postgres://u:pw@127.0.0.1:1/db").unwrap();
        assert_eq!(plain.config.get_ssl_mode(), SslMode::Disable);
        let preferred = reach("postgres://u:pw@127.0.0.1:1/db?sslmode=prefer").unwrap();
        assert_eq!(preferred.config.get_ssl_mode(), SslMode::Disable);
        let required = reach("postgres://u:pw@127.0.0.1:1/db?sslmode=require").unwrap();
        assert_eq!(required.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(required.target, "postgres://127.0.0.1:1/db");
        let error = reach("postgres://u:pw@127.0.0.1:1/db?sslrootcert=/ca.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("sslmode=require"), "{error}");
        assert!(!error.contains("pw"), "{error}");
        let error = reach("postgres://u:pw@h/db?sslmode=require&sslrootcert=/nonexistent.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("/nonexistent.pem"), "{error}");
    }
}
