//! Any bytes given to the event decoder: it must never panic, an accepted event must be valid and
//! survive encoding and decoding again, and a rejection must say why.
#![no_main]

use libfuzzer_sys::fuzz_target;
use payments_domain::event;

fuzz_target!(|bytes: &[u8]| {
    match event::decode(bytes) {
        Ok(payment) => {
            let mut line = Vec::new();
            event::encode(&payment, &mut line);
            assert_eq!(event::decode(&line), Ok(payment), "an accepted event must round-trip");
        }
        Err(reason) => assert!(!reason.to_string().is_empty(), "a rejection must say why"),
    }
});
