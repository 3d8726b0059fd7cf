//! VERSION payloads: major, minor, then (maybe) NUL-terminated JSON. Parsing never panics, and a
//! reply is never larger than the request (QEMU refuses one that is).
#![no_main]

use faultline_server::version::{build_reply, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    let Ok(caps) = parse_request(payload) else {
        return;
    };
    for max_dma_maps in [1, 1024] {
        let reply = build_reply(&caps, payload.len(), max_dma_maps);
        assert!(
            reply.len() <= payload.len().max(4),
            "reply larger than the request"
        );
        assert!(reply.len() >= 4);
        if reply.len() > 4 {
            assert_eq!(reply.last(), Some(&0), "JSON is NUL-terminated");
            let text = std::str::from_utf8(&reply[4..reply.len() - 1]).expect("UTF-8 reply");
            let v: serde_json::Value = serde_json::from_str(text).expect("reply is JSON");
            // A reply too short for any capability is `{}`.
            if let Some(c) = v.get("capabilities") {
                let c = c.as_object().expect("capabilities is an object");
                for name in c.keys() {
                    assert!(
                        caps.proposed.iter().any(|p| p == name),
                        "{name} not proposed"
                    );
                }
            }
        }
    }
});
