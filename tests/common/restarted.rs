//! A relay restarted between a login's two calls, as a test double: the first
//! `CreateChallenge` calls reach the relay as it was before, everything after them the
//! relay as it is after (two real relays, forwarded to over real gRPC).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use e2ee_chat::proto::auth_service_client::AuthServiceClient;
use e2ee_chat::proto::auth_service_server::{AuthService, AuthServiceServer};
use e2ee_chat::proto::{
    CreateChallengeRequest, CreateChallengeResponse, LoginRequest, LoginResponse,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

pub struct RestartedRelay {
    pub url: String,
    challenges: Arc<AtomicUsize>,
}

impl RestartedRelay {
    /// Listens on 127.0.0.1:0; sends the first `challenges_before` challenge requests to
    /// the relay at `before`, the rest and every login to the relay at `after`.
    pub async fn start(before: &str, after: &str, challenges_before: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let challenges = Arc::new(AtomicUsize::new(0));
        let forward = Forward {
            before: e2ee_chat::client::connect(before, None).await.unwrap(),
            after: e2ee_chat::client::connect(after, None).await.unwrap(),
            challenges_before,
            challenges: challenges.clone(),
        };
        tokio::spawn(
            Server::builder()
                .add_service(AuthServiceServer::new(forward))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Self { url, challenges }
    }

    /// How many challenges clients asked for.
    pub fn challenges(&self) -> usize {
        self.challenges.load(Ordering::SeqCst)
    }
}

struct Forward {
    before: Channel,
    after: Channel,
    challenges_before: usize,
    challenges: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl AuthService for Forward {
    async fn create_challenge(
        &self,
        request: Request<CreateChallengeRequest>,
    ) -> Result<Response<CreateChallengeResponse>, Status> {
        let asked_before = self.challenges.fetch_add(1, Ordering::SeqCst);
        let relay = if asked_before < self.challenges_before {
            &self.before
        } else {
            &self.after
        };
        AuthServiceClient::new(relay.clone())
            .create_challenge(request.into_inner())
            .await
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        AuthServiceClient::new(self.after.clone())
            .login(request.into_inner())
            .await
    }
}
