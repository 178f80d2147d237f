//! A malicious relay, as a test double: it forwards everything to a real relay, records
//! what clients send, and presents an impostor's keys in place of a victim's.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use e2ee_chat::proto::auth_service_client::AuthServiceClient;
use e2ee_chat::proto::auth_service_server::{AuthService, AuthServiceServer};
use e2ee_chat::proto::chat_service_client::ChatServiceClient;
use e2ee_chat::proto::chat_service_server::{ChatService, ChatServiceServer};
use e2ee_chat::proto::{
    ClientFrame, CreateChallengeRequest, CreateChallengeResponse, KeyExchangeRequest,
    KeyExchangeResponse, LoginRequest, LoginResponse, PublicIdentity, ServerFrame, server_frame,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};

/// A relay that swaps `victim`'s keys for `impostor`'s.
pub struct KeySwappingRelay {
    pub url: String,
    sent: Arc<Mutex<Vec<ClientFrame>>>,
}

impl KeySwappingRelay {
    /// Listens on 127.0.0.1:0 and forwards to the relay at `upstream`.
    pub async fn start(upstream: &str, victim: &str, impostor: PublicIdentity) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sent = Arc::new(Mutex::new(Vec::new()));
        let forward = Forward {
            upstream: e2ee_chat::client::connect(upstream, None).await.unwrap(),
            victim: victim.to_owned(),
            impostor,
            sent: sent.clone(),
        };
        tokio::spawn(
            Server::builder()
                .add_service(AuthServiceServer::new(forward.clone()))
                .add_service(ChatServiceServer::new(forward))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Self { url, sent }
    }

    /// Every frame clients sent through this relay.
    pub fn sent(&self) -> Vec<ClientFrame> {
        self.sent.lock().unwrap().clone()
    }
}

#[derive(Clone)]
struct Forward {
    upstream: Channel,
    victim: String,
    impostor: PublicIdentity,
    sent: Arc<Mutex<Vec<ClientFrame>>>,
}

impl Forward {
    fn swap(&self, identity: &mut PublicIdentity) {
        if identity.user == self.victim {
            *identity = self.impostor.clone();
        }
    }

    fn rewrite(&self, mut frame: ServerFrame) -> ServerFrame {
        match &mut frame.kind {
            Some(server_frame::Kind::Joined(joined)) => {
                joined.members.iter_mut().for_each(|m| self.swap(m));
            }
            Some(server_frame::Kind::MemberJoined(joined)) => {
                joined.member.iter_mut().for_each(|m| self.swap(m));
            }
            _ => {}
        }
        frame
    }
}

/// `inner` with the `authorization` metadata of `from`.
fn with_token<T, U>(from: &Request<U>, inner: T) -> Request<T> {
    let mut request = Request::new(inner);
    if let Some(token) = from.metadata().get("authorization") {
        request
            .metadata_mut()
            .insert("authorization", token.clone());
    }
    request
}

#[tonic::async_trait]
impl AuthService for Forward {
    async fn create_challenge(
        &self,
        request: Request<CreateChallengeRequest>,
    ) -> Result<Response<CreateChallengeResponse>, Status> {
        AuthServiceClient::new(self.upstream.clone())
            .create_challenge(request.into_inner())
            .await
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        AuthServiceClient::new(self.upstream.clone())
            .login(request.into_inner())
            .await
    }
}

type Frames = Pin<Box<dyn Stream<Item = Result<ServerFrame, Status>> + Send>>;

#[tonic::async_trait]
impl ChatService for Forward {
    async fn key_exchange(
        &self,
        request: Request<KeyExchangeRequest>,
    ) -> Result<Response<KeyExchangeResponse>, Status> {
        let upstream = with_token(&request, request.get_ref().clone());
        let mut answer = ChatServiceClient::new(self.upstream.clone())
            .key_exchange(upstream)
            .await?
            .into_inner();
        for bundle in &mut answer.bundles {
            if let Some(identity) = bundle.identity.as_mut() {
                self.swap(identity);
            }
        }
        Ok(Response::new(answer))
    }

    async fn chat(
        &self,
        request: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<Frames>, Status> {
        let (frames, outbound) = mpsc::channel(64);
        let upstream = with_token(&request, ReceiverStream::new(outbound));
        let mut inbound = request.into_inner();
        let sent = self.sent.clone();
        tokio::spawn(async move {
            while let Ok(Some(frame)) = inbound.message().await {
                sent.lock().unwrap().push(frame.clone());
                if frames.send(frame).await.is_err() {
                    return;
                }
            }
        });
        let answers = ChatServiceClient::new(self.upstream.clone())
            .chat(upstream)
            .await?
            .into_inner();
        let this = self.clone();
        let rewritten = answers.map(move |frame| frame.map(|frame| this.rewrite(frame)));
        Ok(Response::new(Box::pin(rewritten)))
    }
}
