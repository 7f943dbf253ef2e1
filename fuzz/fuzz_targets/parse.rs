//! Fuzzes the frame parser of all four directions: it must never panic, and
//! whatever it accepts must serialize to a frame that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tolk_protocol::{ClientToServer, Message, NodeToServer, ServerToClient, ServerToNode};

fn check<M: Message + PartialEq + std::fmt::Debug>(text: &str) {
    if let Ok(msg) = M::parse(text) {
        let again = M::parse(&msg.to_json()).expect("a serialized message parses");
        assert_eq!(again, msg);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    check::<ClientToServer>(text);
    check::<ServerToClient>(text);
    check::<NodeToServer>(text);
    check::<ServerToNode>(text);
});
