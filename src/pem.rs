//! What is wrong with a PEM file, in words a person can act on: shared by the server's
//! certificate and key and the client's CA file.

use rustls::pki_types::pem;

/// A one-line description of why a PEM file could not be read.
pub(crate) fn describe(error: &pem::Error) -> String {
    match error {
        // Its own text prints the marker as a list of bytes.
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".to_owned(),
        other => format!("not valid PEM: {other}"),
    }
}
