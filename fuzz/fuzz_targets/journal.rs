//! Any bytes read as a journal: opening must never panic, whatever a crash or a disk left behind,
//! and the good records it reports must end inside the file, on a record boundary.
#![no_main]

use libfuzzer_sys::fuzz_target;
use payments_store_file::fuzzing::{parse_record, read_journal};

fuzz_target!(|bytes: &[u8]| {
    if let Ok((payments, end)) = read_journal(bytes) {
        assert!(end <= bytes.len() as u64, "the good part cannot end past the file");
        // Walking the good part record by record must find exactly that many payments.
        let mut at = 16;
        let mut found = 0;
        while (at as u64) < end {
            let len = parse_record(&bytes[at..]).expect("the good part holds only valid records");
            at += len;
            found += 1;
        }
        assert_eq!(at as u64, end, "the good part ends on a record boundary");
        assert_eq!(found, payments);
    }
    let _ = parse_record(bytes);
});
