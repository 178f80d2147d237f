//! TLS for the relay: reads the PEM certificate chain and private key named by
//! `--tls-cert` and `--tls-key`, checks that they belong together, and turns them into
//! tonic's [`ServerTlsConfig`].
//!
//! tonic itself would only find a bad file when the server starts, with an error that
//! names neither file; checking here lets start-up fail with one line that says which
//! file is wrong and why.

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tonic::transport::{Identity, ServerTlsConfig};

use super::ServerError;

/// How long a peer has to complete the TLS handshake. A connection counts against
/// `--max-connections` from the moment it is accepted, so without a bound, peers that
/// open TCP connections and never say hello would use up every slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const CERTIFICATE: &str = "certificate";
const PRIVATE_KEY: &str = "private key";

/// Loads the certificate chain (leaf first) from `cert` and its private key from `key`,
/// both PEM.
pub fn load(cert: &Path, key: &Path) -> Result<ServerTlsConfig, ServerError> {
    let cert_pem = read(cert, CERTIFICATE)?;
    let key_pem = read(key, PRIVATE_KEY)?;

    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(cert, CERTIFICATE, crate::pem::describe(&error)))?;
    if chain.is_empty() {
        return Err(invalid(
            cert,
            CERTIFICATE,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".to_owned(),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
        let reason = match error {
            pem::Error::NoItemsFound => "no PEM private key (-----BEGIN PRIVATE KEY-----, \
                 RSA PRIVATE KEY or EC PRIVATE KEY; not encrypted) in it"
                .to_owned(),
            other => crate::pem::describe(&other),
        };
        invalid(key, PRIVATE_KEY, reason)
    })?;

    // The same provider tonic serves with, so that what passes here also serves.
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|error| invalid(key, PRIVATE_KEY, format!("unusable key: {error}")))?;
    match CertifiedKey::new(chain, signing_key).keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(invalid(
                key,
                PRIVATE_KEY,
                format!("it does not match the certificate in {}", cert.display()),
            ));
        }
        Err(error) => {
            return Err(invalid(
                cert,
                CERTIFICATE,
                format!("its first certificate does not parse: {error}"),
            ));
        }
    }

    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(HANDSHAKE_TIMEOUT))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|error| invalid(path, what, error.to_string()))
}

fn invalid(path: &Path, what: &'static str, reason: String) -> ServerError {
    ServerError::Tls {
        what,
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn certified(name: &str) -> rcgen::CertifiedKey<rcgen::KeyPair> {
        rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap()
    }

    #[test]
    fn a_matching_pair_loads() {
        let dir = tempfile::tempdir().unwrap();
        let pair = certified("localhost");
        let cert = write(dir.path(), "cert.pem", &pair.cert.pem());
        let key = write(dir.path(), "key.pem", &pair.signing_key.serialize_pem());
        load(&cert, &key).unwrap();
    }

    #[test]
    fn each_bad_file_is_named_with_its_fault() {
        let dir = tempfile::tempdir().unwrap();
        let pair = certified("localhost");
        let other = certified("localhost");
        let cert = write(dir.path(), "cert.pem", &pair.cert.pem());
        let key = write(dir.path(), "key.pem", &pair.signing_key.serialize_pem());
        let other_key = write(dir.path(), "other.pem", &other.signing_key.serialize_pem());
        let garbage = write(dir.path(), "garbage.pem", "hello\n");
        let open = write(
            dir.path(),
            "open.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n",
        );
        let missing = dir.path().join("missing.pem");

        let error = |cert: &Path, key: &Path| load(cert, key).unwrap_err().to_string();
        let cases = [
            (
                error(&missing, &key),
                "certificate",
                &missing,
                "No such file",
            ),
            (
                error(&cert, &missing),
                "private key",
                &missing,
                "No such file",
            ),
            (
                error(&garbage, &key),
                "certificate",
                &garbage,
                "no PEM certificate",
            ),
            (error(&open, &key), "certificate", &open, "no END line"),
            (
                error(&cert, &cert),
                "private key",
                &cert,
                "no PEM private key",
            ),
            (
                error(&cert, &other_key),
                "private key",
                &other_key,
                "does not match",
            ),
        ];
        for (text, what, path, reason) in cases {
            let prefix = format!("cannot use the TLS {what} {}: ", path.display());
            assert!(text.starts_with(&prefix), "{text:?} lacks {prefix:?}");
            assert!(text.contains(reason), "{text:?} lacks {reason:?}");
            assert!(!text.contains('\n'), "{text:?}");
        }
    }
}
