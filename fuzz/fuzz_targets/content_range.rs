//! `Content-Range` parsing: never panics; whatever it accepts is consistent and prints back to
//! a value that parses to the same range.
#![no_main]

use bits_http::content_range::ContentRange;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(range) = ContentRange::parse(text) else { return };
    match range {
        ContentRange::Satisfied { first, last, complete } => {
            assert!(first <= last, "{text:?}");
            if let Some(complete) = complete {
                assert!(last < complete, "{text:?}");
            }
        }
        ContentRange::Unsatisfied { .. } => {}
    }
    assert_eq!(ContentRange::parse(&range.to_string()), Ok(range), "{text:?}");
});
