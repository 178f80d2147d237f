//! [`connection_of`] and [`ConnectionHandle`] over real connections, plaintext and TLS,
//! behind the relay's own admission and layer, with a probe service in place of the
//! relay's.

use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use super::connection::connection_of;
use super::{BoundsLayer, NetworkLimits, admit};
use crate::proto::auth_service_client::AuthServiceClient;
use crate::proto::auth_service_server::{AuthService, AuthServiceServer};
use crate::proto::{CreateChallengeRequest, CreateChallengeResponse, LoginRequest, LoginResponse};

/// How long a test waits for what must happen.
const PATIENCE: Duration = Duration::from_secs(10);

/// Answers a challenge with the caller's address as the request's connection knows it;
/// for the user "stuck" with a response too large for a client that grants no window,
/// and closes the connection soon after. A login closes its own connection and never
/// answers.
struct Probe;

#[tonic::async_trait]
impl AuthService for Probe {
    async fn create_challenge(
        &self,
        request: Request<CreateChallengeRequest>,
    ) -> Result<Response<CreateChallengeResponse>, Status> {
        let connection =
            connection_of(&request).ok_or_else(|| Status::internal("no connection"))?;
        let challenge = if request.get_ref().user == "stuck" {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                connection.close();
            });
            vec![0; 256 * 1024]
        } else {
            connection.peer_ip().to_string().into_bytes()
        };
        Ok(Response::new(CreateChallengeResponse {
            challenge: challenge.into(),
        }))
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        connection_of(&request)
            .ok_or_else(|| Status::internal("no connection"))?
            .close();
        std::future::pending().await
    }
}

/// Serves [`Probe`] on 127.0.0.1:0 as the relay serves its services.
async fn serve_probe(tls: Option<ServerTlsConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = NetworkLimits {
        // Longer than PATIENCE: a call that ends did not end by this deadline.
        request_timeout_ms: 60_000,
        ..NetworkLimits::DEFAULT
    };
    let incoming = admit(TcpIncoming::from(listener), 100, &limits);
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).unwrap();
    }
    let router = builder
        .layer(BoundsLayer::new(&limits))
        .add_service(AuthServiceServer::new(Probe));
    tokio::spawn(router.serve_with_incoming(incoming));
    addr
}

async fn peer_ip_seen(mut client: AuthServiceClient<tonic::transport::Channel>) -> String {
    let request = CreateChallengeRequest { user: "me".into() };
    let challenge = client.create_challenge(request).await.unwrap().into_inner();
    String::from_utf8(challenge.challenge.to_vec()).unwrap()
}

#[tokio::test]
async fn a_request_knows_its_connection_in_plaintext_and_over_tls() {
    let addr = serve_probe(None).await;
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        peer_ip_seen(AuthServiceClient::new(channel)).await,
        "127.0.0.2"
    );

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(
        certified.cert.pem(),
        certified.signing_key.serialize_pem(),
    ));
    let addr = serve_probe(Some(tls)).await;
    let url = format!("https://localhost:{}", addr.port());
    let channel = crate::client::connect(&url, Some(&ca)).await.unwrap();
    assert_eq!(
        peer_ip_seen(AuthServiceClient::new(channel)).await,
        "127.0.0.1"
    );
}

#[tokio::test]
async fn close_ends_an_rpc_in_progress() {
    let addr = serve_probe(None).await;
    let mut client = AuthServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let login = tokio::time::timeout(PATIENCE, client.login(LoginRequest::default()))
        .await
        .expect("the closed connection's RPC did not end");
    let status = login.expect_err("a login on a closed connection was answered");
    assert_ne!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test]
async fn close_ends_a_connection_whose_client_grants_no_window() {
    let addr = serve_probe(None).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let mut connection = tokio::spawn(connection);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/chat.v2.AuthService/CreateChallenge"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let message = CreateChallengeRequest {
        user: "stuck".into(),
    }
    .encode_to_vec();
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let mut send = send.ready().await.unwrap();
    let (response, mut request_body) = send.send_request(request, false).unwrap();
    request_body.send_data(body.into(), true).unwrap();
    // The headers need no window; the challenge never gets any.
    let _response = tokio::time::timeout(PATIENCE, response)
        .await
        .unwrap()
        .unwrap();
    let _ = tokio::time::timeout(PATIENCE, &mut connection)
        .await
        .expect("the connection outlived close()");
    drop(send);
}
