//! Arbitrary bytes as a TR-ISUP stream (the gateway's line side): the decoder never panics,
//! stays within its buffer bound, and every message it yields encodes and decodes back to
//! itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pstn::codec::{Decoder, MAX_BUFFER, decode_body, encode_to_vec};

fuzz_target!(|data: &[u8]| {
    let mut dec = Decoder::new();
    for chunk in data.chunks(97) {
        if dec.push(chunk).is_err() {
            break;
        }
        assert!(dec.buffered() <= MAX_BUFFER);
        while let Some(item) = dec.pop() {
            match item {
                Ok(msg) => {
                    let bytes = encode_to_vec(&msg).expect("a decoded message encodes");
                    assert_eq!(decode_body(&bytes[2..]).as_ref(), Ok(&msg));
                }
                Err(e) if e.is_fatal() => return,
                Err(_) => {}
            }
        }
    }
});
