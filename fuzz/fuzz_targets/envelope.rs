//! The JSON envelope inside every message, as a recipient parses it after decryption:
//! arbitrary bytes must parse or be refused with an error, and whatever parses must
//! round-trip through the encoder unchanged.

#![no_main]

use e2ee_chat::protocol::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = Envelope::from_json(data) else {
        return;
    };
    assert_eq!(envelope.version, Envelope::VERSION);
    let json = envelope.to_json();
    let again = Envelope::from_json(&json)
        .unwrap_or_else(|error| panic!("a re-encoded envelope does not parse: {error}"));
    assert_eq!(again, envelope);
    assert_eq!(again.to_json(), json, "encoding is not deterministic");
});
