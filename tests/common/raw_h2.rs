//! Raw HTTP/2 to a relay, for peers that misbehave in ways tonic's client never would:
//! a message that declares more than it sends, or stops half-way.

use std::net::SocketAddr;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::PATIENCE;

/// One HTTP/2 connection, its frames driven by a task.
pub struct RawH2 {
    addr: SocketAddr,
    send: SendRequest<Bytes>,
    /// Ends when the server closes the connection.
    pub connection: JoinHandle<Result<(), h2::Error>>,
}

/// A gRPC call started by hand: its response, and the request body still open.
pub struct RawCall {
    pub response: ResponseFuture,
    pub body: SendStream<Bytes>,
}

impl RawH2 {
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (send, connection) = h2::client::handshake(tcp).await.unwrap();
        Self {
            addr,
            send,
            connection: tokio::spawn(connection),
        }
    }

    /// Opens a gRPC call to `path` (`/package.Service/Method`) with `metadata`, and
    /// sends `bytes` on it without ending the request.
    pub async fn call(&mut self, path: &str, metadata: &[(&str, &str)], bytes: &[u8]) -> RawCall {
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (key, value) in metadata {
            request = request.header(*key, *value);
        }
        let mut send = self.send.clone().ready().await.unwrap();
        let (response, mut body) = send.send_request(request.body(()).unwrap(), false).unwrap();
        body.send_data(Bytes::copy_from_slice(bytes), false)
            .unwrap();
        RawCall { response, body }
    }

    /// Waits until the server has closed the connection. (Holding `self` matters: the
    /// client closes the connection itself once nothing can use it any more.)
    pub async fn closed(&mut self) {
        let _ = tokio::time::timeout(PATIENCE, &mut self.connection)
            .await
            .expect("the server did not close the connection");
    }
}

/// The 5-byte gRPC prefix of a message of `len` bytes.
pub fn prefix(len: u32) -> Vec<u8> {
    let mut prefix = vec![0];
    prefix.extend_from_slice(&len.to_be_bytes());
    prefix
}

/// The gRPC status a call ended with, as (code, message): from a trailers-only
/// response, or from the trailers after reading every message.
pub async fn final_status(call: RawCall) -> (tonic::Code, String) {
    tokio::time::timeout(PATIENCE, async {
        let response = call.response.await.unwrap();
        if let Some(status) = tonic::Status::from_header_map(response.headers()) {
            return (status.code(), status.message().to_owned());
        }
        let mut body: RecvStream = response.into_body();
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            let _ = body.flow_control().release_capacity(data.len());
        }
        let trailers = body.trailers().await.unwrap().expect("no trailers");
        let status = tonic::Status::from_header_map(&trailers).expect("no grpc-status");
        (status.code(), status.message().to_owned())
    })
    .await
    .expect("the call was not answered")
}
