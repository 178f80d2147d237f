//! Decrypted bytes parsed as the JSON envelope (`protocol::Envelope`), as a recipient
//! does after opening a message: never a panic, and what parses writes back to the same.
#![no_main]

use e2ee_chat::protocol::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::from_json(data) {
        assert_eq!(envelope.version, Envelope::VERSION);
        let again = Envelope::from_json(&envelope.to_json()).expect("what parsed re-parses");
        assert_eq!(again, envelope);
    }
});
