//! The status a client gets when what it sent cannot be read: tonic reports bytes that
//! are not a protobuf message as INTERNAL and a message over the size limit as
//! OUT_OF_RANGE, while the fault is the client's and `chat.proto` documents
//! INVALID_ARGUMENT and RESOURCE_EXHAUSTED.

use tonic::{Code, Status};

/// How tonic's INTERNAL statuses for a request it could not decode begin (tonic's
/// codec, tonic-prost's decoder and tonic's unary handler, and tonic-web's for a
/// gRPC-Web body that is not base64 or not framed); other INTERNAL statuses are the
/// server's own faults and stay as they are.
const UNDECODABLE: [&str; 7] = [
    "failed to decode Protobuf message",
    "Unexpected EOF decoding stream",
    "protocol error: received message with",
    "Missing request message",
    "tonic-web: malformed base64 request",
    "tonic-web: Invalid ",
    "tonic-web: unexpected frame type",
];

/// The status for a request that could not be decoded, naming `what` (say "the
/// request to /chat.v2.AuthService/Login"); `None` when `status` is not tonic's
/// report of such a request.
pub(crate) fn decode_fault(status: &Status, what: &str) -> Option<Status> {
    let message = status.message();
    match status.code() {
        // tonic refuses a message whose declared length is over the limit before
        // reading it.
        Code::OutOfRange => Some(Status::resource_exhausted(format!(
            "{what} is too large ({message}); send a smaller one"
        ))),
        Code::Internal if UNDECODABLE.iter().any(|start| message.starts_with(start)) => Some(
            Status::invalid_argument(format!("could not decode {what}: {message}")),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tonic_decode_errors_are_the_clients_fault() {
        let what = "the request";
        let undecodable = decode_fault(
            &Status::internal("failed to decode Protobuf message: x"),
            what,
        )
        .unwrap();
        assert_eq!(undecodable.code(), Code::InvalidArgument);
        assert!(
            undecodable
                .message()
                .starts_with("could not decode the request: ")
        );
        let large = decode_fault(
            &Status::out_of_range("Error, decoded message length too large: found 9 bytes"),
            what,
        )
        .unwrap();
        assert_eq!(large.code(), Code::ResourceExhausted);
        assert!(large.message().contains("too large"), "{large:?}");
        let not_base64 = decode_fault(
            &Status::internal("tonic-web: Invalid symbol 33, offset 0."),
            what,
        )
        .unwrap();
        assert_eq!(not_base64.code(), Code::InvalidArgument);
        assert!(decode_fault(&Status::internal("the server's RNG failed"), what).is_none());
        assert!(decode_fault(&Status::resource_exhausted("full"), what).is_none());
    }
}
