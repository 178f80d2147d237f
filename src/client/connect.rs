//! Opening the channel to the relay: `http://` in clear, `https://` over TLS with the
//! server's certificate checked against a CA file the user names or, without one, the
//! public web PKI roots. Every failure, a handshake refused included, comes back as a
//! one-line [`ClientError`] rather than a hang.

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::{ClientError, error_chain};

/// How long TCP connect, and then the TLS handshake, may each take: a peer that accepts
/// but never answers would otherwise hold the client forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the client pings the relay, and how long it waits for the answer before it
/// takes the connection for dead.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `url` is plaintext `http://` to a host that is not this machine: the login,
/// the session token and all metadata would then cross the network in clear.
pub fn is_plaintext_beyond_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    if uri.scheme_str() != Some("http") {
        return false;
    }
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback());
    !loopback
}

/// Connects to the relay at `url`: `http://host:port`, or `https://host:port` with the
/// server's certificate checked against the PEM certificates in `ca_cert` if given, else
/// against the web PKI roots built into the client.
pub async fn connect(url: &str, ca_cert: Option<&Path>) -> Result<Channel, ClientError> {
    endpoint(url, ca_cert)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // A relay that hangs (frozen, or its machine gone without closing the
        // connection) answers no ping: the connection is dropped, and the client moves on
        // to another relay, instead of waiting on a stream that will never speak again.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|error| {
            let mut reason = error_chain(&error);
            if let Some(hint) = tls_hint(&error) {
                reason.push_str("; ");
                reason.push_str(hint);
            }
            ClientError::Unreachable {
                url: url.to_owned(),
                reason,
            }
        })
}

/// The endpoint `url` names, checked without touching the network, so that a bad URL
/// anywhere in a list is reported before the first one is tried.
fn endpoint(url: &str, ca_cert: Option<&Path>) -> Result<Endpoint, ClientError> {
    // A password in the URL would be repeated in every error that names it: refused,
    // and named without it.
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority = rest.split('/').next().unwrap_or_default();
        if let Some((_, host)) = authority.rsplit_once('@') {
            return Err(ClientError::BadUrl {
                url: format!("{scheme}://…@{host}"),
                reason: "a relay's URL holds no user name or password (you log in with your \
                         keys); use https://HOST:PORT"
                    .to_owned(),
            });
        }
    }
    let bad_url = |reason: &str| ClientError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let endpoint =
        Endpoint::from_shared(url.to_owned()).map_err(|error| bad_url(&error_chain(&error)))?;
    let uri = endpoint.uri().clone();
    let use_tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        Some(scheme) => {
            return Err(bad_url(&format!(
                "unsupported scheme {scheme:?}; use https:// or http://"
            )));
        }
        None => {
            return Err(bad_url(
                "missing scheme; use https://HOST:PORT or http://HOST:PORT",
            ));
        }
    };
    let Some(host) = uri.host() else {
        return Err(bad_url(
            "missing host; use https://HOST:PORT or http://HOST:PORT",
        ));
    };
    if use_tls {
        // The URI keeps an IPv6 host in brackets; a certificate names it without.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        endpoint
            .tls_config(tls_config(host, ca_cert)?)
            .map_err(|error| bad_url(&error_chain(&error)))
    } else if ca_cert.is_some() {
        Err(bad_url(
            "a CA certificate (--ca-cert) only applies to TLS, and http:// is plaintext; \
             use https://",
        ))
    } else {
        Ok(endpoint)
    }
}

/// The relays of one deployment (they share its database, so any of them serves any
/// user), in the order the user gave them, and the one in use.
///
/// The first URL names the deployment: what the client saves per server (its progress)
/// is saved under it whichever relay is in use, so that a client that failed over, or
/// that is started with more relays than before, finds where it was.
#[derive(Debug, Clone)]
pub struct Relays {
    urls: Vec<String>,
    current: usize,
}

impl Relays {
    /// The relays at `urls`, each checked as [`connect`] would (scheme, host, CA file)
    /// without connecting; the first bad one is the error.
    pub fn new(urls: Vec<String>, ca_cert: Option<&Path>) -> Result<Self, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::BadUrl {
                url: String::new(),
                reason: "no server URL given".to_owned(),
            });
        }
        for url in &urls {
            endpoint(url, ca_cert)?;
        }
        Ok(Self { urls, current: 0 })
    }

    /// Every relay, in order.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The name the deployment's saved state is kept under: its first URL.
    pub fn deployment(&self) -> &str {
        &self.urls[0]
    }

    /// The relay to use now.
    pub fn current(&self) -> &str {
        &self.urls[self.current]
    }

    /// The next relay in the list takes the current one's place, after the last the first.
    pub fn move_on(&mut self) {
        self.current = (self.current + 1) % self.urls.len();
    }

    /// Whether the relay in use is the first of the list: a round through them starts.
    pub fn at_first(&self) -> bool {
        self.current == 0
    }
}

/// What to do about a refused handshake whose own text does not say it.
fn tls_hint(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        // tokio-rustls hands rustls' error up inside an io::Error, whose `source` skips it.
        let tls = error.downcast_ref::<rustls::Error>().or_else(|| {
            error
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        match tls {
            // BadSignature: a trusted CA has the issuer's name but not its key.
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
            )) => {
                return Some(
                    "the server's certificate is not signed by a CA this client trusts; \
                     pass that CA with --ca-cert",
                );
            }
            Some(rustls::Error::InvalidMessage(_)) => {
                return Some("the server does not speak TLS; is its URL http://?");
            }
            _ => cause = error.source(),
        }
    }
    None
}

fn tls_config(host: &str, ca_cert: Option<&Path>) -> Result<ClientTlsConfig, ClientError> {
    let config = ClientTlsConfig::new()
        .domain_name(host)
        .timeout(CONNECT_TIMEOUT);
    Ok(match ca_cert {
        Some(path) => config.ca_certificate(read_ca(path)?),
        None => config.with_webpki_roots(),
    })
}

/// Reads a CA file, checking that it holds at least one certificate: tonic would take
/// any other file as an empty set of roots, and every handshake would then fail with a
/// message that does not point at the file.
fn read_ca(path: &Path) -> Result<Certificate, ClientError> {
    let unusable = |reason: String| ClientError::CaCertUnusable {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|error| unusable(error.to_string()))?;
    let mut certificates = 0;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        certificate.map_err(|error| unusable(crate::pem::describe(&error)))?;
        certificates += 1;
    }
    if certificates == 0 {
        return Err(unusable(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".to_owned(),
        ));
    }
    Ok(Certificate::from_pem(pem))
}

#[cfg(test)]
mod tests {
    use super::{ClientError, Relays, is_plaintext_beyond_loopback};

    #[test]
    fn relays_go_round_in_order_and_the_first_names_the_deployment() {
        let urls = [
            "http://127.0.0.1:1",
            "https://b.example:5555",
            "http://[::1]:2",
        ];
        let mut relays = Relays::new(urls.map(String::from).to_vec(), None).unwrap();
        let mut used = vec![relays.current().to_owned()];
        for _ in 0..3 {
            relays.move_on();
            assert_eq!(relays.deployment(), urls[0]);
            used.push(relays.current().to_owned());
        }
        assert_eq!(used, [urls[0], urls[1], urls[2], urls[0]]);
    }

    #[test]
    fn a_url_with_a_password_is_refused_without_repeating_it() {
        let error = Relays::new(vec!["http://alice:s3cret@127.0.0.1:5555".to_owned()], None)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("no user name or password"), "{error}");
        assert!(error.contains("127.0.0.1:5555"), "{error}");
        assert!(
            !error.contains("s3cret") && !error.contains("alice"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_url_anywhere_in_the_list_is_named() {
        for (urls, bad) in [
            (
                vec!["http://127.0.0.1:1", "ftp://127.0.0.1:2"],
                "ftp://127.0.0.1:2",
            ),
            (vec!["127.0.0.1:3", "http://127.0.0.1:1"], "127.0.0.1:3"),
            (vec!["http://127.0.0.1:1", ""], ""),
        ] {
            let urls = urls.into_iter().map(String::from).collect();
            match Relays::new(urls, None) {
                Err(ClientError::BadUrl { url, .. }) => assert_eq!(url, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(matches!(
            Relays::new(Vec::new(), None),
            Err(ClientError::BadUrl { .. })
        ));
    }

    #[test]
    fn plaintext_is_flagged_only_beyond_this_machine() {
        assert!(is_plaintext_beyond_loopback("http://chat.example.org:5555"));
        assert!(is_plaintext_beyond_loopback("http://10.0.0.2:5555"));
        assert!(!is_plaintext_beyond_loopback("http://127.0.0.1:5555"));
        assert!(!is_plaintext_beyond_loopback("http://[::1]:5555"));
        assert!(!is_plaintext_beyond_loopback("http://localhost:5555"));
        assert!(!is_plaintext_beyond_loopback(
            "https://chat.example.org:5555"
        ));
    }
}
