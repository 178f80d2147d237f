//! Why the relay could not start, or stopped.

use std::path::PathBuf;

use crate::store::StoreError;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use the TLS {what} {path}: {reason}")]
    Tls {
        /// "certificate" or "private key".
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the operating system's random number generator failed: {0}")]
    Rng(getrandom::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored identity of {user:?} does not verify: {reason}")]
    BadStoredIdentity { user: String, reason: String },
    #[error("cannot set up gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot start the store's writer thread: {0}")]
    Writer(std::io::Error),
    #[error("cannot use NATS (--nats): {0}")]
    Nats(String),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}
