//! Feeds arbitrary bytes to the framer and the message decoder: they must never panic, and
//! whatever decodes must re-encode and decode to the same value.
#![no_main]

use felis_bgp::packet::CodecOptions;
use felis_bgp::packet::Message;
use felis_bgp::packet::frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for opts in [CodecOptions::FOUR_OCTET, CodecOptions::default()] {
        if let Ok(Some((len, _))) = frame(data) {
            if let Some(msg) = data.get(..len).and_then(|m| Message::decode(m, &opts).ok()) {
                if let Ok(bytes) = msg.to_bytes(&opts) {
                    assert_eq!(Message::decode(&bytes, &opts).ok(), Some(msg));
                }
            }
        }
    }
});
