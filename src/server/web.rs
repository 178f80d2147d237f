//! What browsers need besides the gRPC services: gRPC-Web on the same port (tonic-web
//! turns it into gRPC before the relay's own layers see it), CORS for the origins the
//! operator names, and the web client's files at `/` for every request that is not
//! gRPC.

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

/// Where the web client comes from, and which other origins may use the relay.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WebOptions {
    /// Directory of the built web client, served at / (build it with
    /// scripts/build-web.sh). Only the files it holds at start-up are served (no
    /// dotfiles, no symbolic links): restart after a new build. Default:
    /// the web/dist of the source tree chat-server was built from, when it is there.
    #[arg(long, env = "CHAT_WEB_DIR", value_name = "DIR")]
    pub web_dir: Option<PathBuf>,
    /// An origin, such as https://chat.example.org or http://localhost:8080, whose pages
    /// may call the relay from a browser, for a web client served from elsewhere; repeat it or separate origins with
    /// commas. Default: none, so only the pages the relay serves itself.
    #[arg(
        long = "web-origin",
        env = "CHAT_WEB_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ',',
        value_parser = origin
    )]
    pub web_origins: Vec<HeaderValue>,
}

/// The source tree's built client, the default of `--web-dir`.
const BUILT_IN_TREE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/web/dist");

impl WebOptions {
    /// The directory to serve the client from, if it holds a built client.
    pub fn client_dir(&self) -> Option<PathBuf> {
        let dir = self
            .web_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(BUILT_IN_TREE));
        dir.join("index.html").is_file().then_some(dir)
    }
}

/// An origin as browsers send it (RFC 6454): scheme and host in lower case, no default
/// port; so that `https://Chat.example.org:443/` matches what the browser says.
fn origin(text: &str) -> Result<HeaderValue, String> {
    let text = text.trim().trim_end_matches('/').to_ascii_lowercase();
    let text = text
        .strip_suffix(":443")
        .filter(|_| text.starts_with("https://"))
        .or_else(|| {
            text.strip_suffix(":80")
                .filter(|_| text.starts_with("http://"))
        })
        .unwrap_or(&text);
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or("an origin starts with https:// or http://")?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '*', ' ']) {
        return Err("an origin is a scheme and a host, with a port or not, and no path".to_owned());
    }
    HeaderValue::from_str(text).map_err(|error| error.to_string())
}

/// CORS for the named origins; with none, no header allows another origin, so only
/// the relay's own pages can read its answers.
pub(crate) fn cors(options: &WebOptions) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(options.web_origins.iter().cloned()))
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(24 * 60 * 60))
}

/// The pages' policy: everything from the relay itself, nothing inline, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; manifest-src 'self'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Answers the requests that are not gRPC (nor gRPC-Web) with [`files`], before
/// tonic-web, which would refuse them, sees them.
#[derive(Clone)]
pub(crate) struct FilesLayer {
    files: axum::Router,
}

impl FilesLayer {
    pub(crate) fn new(dir: Option<&Path>) -> Self {
        Self { files: files(dir) }
    }
}

impl<S> Layer<S> for FilesLayer {
    type Service = WithFiles<S>;

    fn layer(&self, inner: S) -> WithFiles<S> {
        WithFiles {
            inner,
            files: self.files.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct WithFiles<S> {
    inner: S,
    files: axum::Router,
}

type HttpResponse = http::Response<Body>;

impl<S> Service<http::Request<Body>> for WithFiles<S>
where
    S: Service<http::Request<Body>, Response = HttpResponse> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/grpc"));
        if grpc {
            return Box::pin(self.inner.call(request));
        }
        let files = self.files.clone();
        Box::pin(async move {
            let request = request.map(axum::body::Body::new);
            let response = match files.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(Body::new))
        })
    }
}

/// The client's files from `dir`, or, without a built client, a page that says how to
/// get one.
fn files(dir: Option<&Path>) -> axum::Router {
    let router = match dir {
        Some(dir) => {
            let client = Arc::new(ClientFiles::scan(dir));
            axum::Router::new().fallback(move |request| client.clone().answer(request))
        }
        None => axum::Router::new().fallback(not_built),
    };
    let headers = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // A new build must reach the browser at once: every file is checked each time.
        (header::CACHE_CONTROL, "no-cache"),
    ];
    headers.into_iter().fold(router, |router, (name, value)| {
        router.layer(SetResponseHeaderLayer::overriding(
            name,
            HeaderValue::from_static(value),
        ))
    })
}

/// The files of the built client, as they were at start-up: only these are served, so
/// that a dotfile, a symbolic link out of the directory or a file added later never is.
struct ClientFiles {
    serve: ServeDir,
    /// Their paths in URLs: `/index.html`, `/app.js`...
    paths: HashSet<String>,
}

/// Bounds on what a scan of the client's directory reads, against a `--web-dir` given
/// by mistake (`/`, say).
const MAX_CLIENT_FILES: usize = 1_000;
const MAX_CLIENT_DEPTH: usize = 8;

impl ClientFiles {
    fn scan(dir: &Path) -> Self {
        let mut paths = HashSet::new();
        let mut pending = vec![(dir.to_owned(), String::new(), 0)];
        while let Some((folder, prefix, depth)) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str().filter(|name| !name.starts_with('.')) else {
                    continue;
                };
                // `file_type` does not follow symbolic links: they are neither.
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let path = format!("{prefix}/{name}");
                if kind.is_file() && paths.len() < MAX_CLIENT_FILES {
                    paths.insert(path);
                } else if kind.is_dir() && depth < MAX_CLIENT_DEPTH {
                    pending.push((entry.path(), path, depth + 1));
                }
            }
        }
        Self {
            serve: ServeDir::new(dir),
            paths,
        }
    }

    async fn answer(self: Arc<Self>, request: axum::extract::Request) -> axum::response::Response {
        use axum::response::IntoResponse;

        let path = match request.uri().path() {
            "/" => "/index.html",
            path => path,
        };
        if !self.paths.contains(path) {
            return (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "no such file",
            )
                .into_response();
        }
        match self.serve.clone().oneshot(request).await {
            Ok(response) => response.into_response(),
            Err(never) => match never {},
        }
    }
}

async fn not_built() -> (StatusCode, [(HeaderName, &'static str); 1], &'static str) {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        NOT_BUILT_PAGE,
    )
}

const NOT_BUILT_PAGE: &str = "<!doctype html><meta charset=utf-8><title>chat</title>\
<h1>The web client is not built here</h1>\
<p>This relay serves native gRPC clients (chat-client) and gRPC-Web. To chat from a browser, \
build the web client with <code>scripts/build-web.sh</code> (it needs Node.js 20 and npm), \
then restart chat-server, or start it with <code>--web-dir DIR</code>.</p>";

#[cfg(test)]
mod tests {
    use super::origin;

    #[test]
    fn an_origin_is_a_scheme_and_a_host() {
        assert_eq!(
            origin("https://chat.example.org/").unwrap(),
            "https://chat.example.org"
        );
        assert_eq!(
            origin("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            origin("HTTPS://Chat.Example.org:443").unwrap(),
            "https://chat.example.org"
        );
        assert_eq!(origin("http://localhost:80").unwrap(), "http://localhost");
        assert_eq!(
            origin("http://localhost:443").unwrap(),
            "http://localhost:443"
        );
        for bad in [
            "chat.example.org",
            "https://",
            "https://a/b",
            "*",
            "https://*.a",
        ] {
            assert!(origin(bad).is_err(), "{bad}");
        }
    }
}
