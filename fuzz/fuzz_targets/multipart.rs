//! `multipart/byteranges`: the Content-Type boundary parser and the body parser never panic; every
//! accepted part holds exactly as many bytes as its Content-Range says; feeding the body in
//! chunks gives the same result as parsing it whole.
//!
//! Input layout: the first line (up to `\n`) is tried as a Content-Type value; the body parser
//! always uses the boundary `B`, with the first byte choosing the chunk size for the streamed run.
#![no_main]

use bits_http::multipart::{self, Event, MultipartParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first_line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    if let Ok(text) = std::str::from_utf8(first_line)
        && let Ok(boundary) = multipart::boundary_from_content_type(text)
    {
        assert!(MultipartParser::new(&boundary).is_ok(), "{text:?}");
    }

    let Some((&chunk, body)) = data.split_first() else { return };
    let whole = multipart::parse(body, "B", 64);
    if let Ok(parts) = &whole {
        assert!(!parts.is_empty());
        for part in parts {
            assert_eq!(part.body.len() as u64, part.span().len());
        }
        let spans: Vec<_> = parts.iter().map(|p| p.span()).collect();
        assert!(multipart::check_parts_match_request(parts, &spans).is_ok());
    }

    // The same body fed in chunks of 1..=256 bytes.
    let chunk = usize::from(chunk) + 1;
    let mut parser = MultipartParser::new("B").expect("valid boundary").with_max_parts(64);
    let mut streamed: Vec<(bits_core::Span, Vec<u8>)> = Vec::new();
    let mut result = Ok(());
    'feed: for mut piece in body.chunks(chunk) {
        loop {
            match parser.next(piece) {
                Err(e) => {
                    result = Err(e);
                    break 'feed;
                }
                Ok((used, event)) => {
                    piece = &piece[used..];
                    match event {
                        None => break,
                        Some(Event::PartStart { span, .. }) => streamed.push((span, Vec::new())),
                        Some(Event::Body(bytes)) => streamed
                            .last_mut()
                            .expect("body after a part start")
                            .1
                            .extend_from_slice(bytes),
                        Some(_) => {}
                    }
                }
            }
        }
    }
    let result = result.and_then(|()| parser.finish());
    match (&whole, &result) {
        (Ok(parts), Ok(())) => {
            let whole: Vec<_> = parts.iter().map(|p| (p.span(), p.body.to_vec())).collect();
            assert_eq!(whole, streamed);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("whole {whole:?} but streamed {result:?}"),
    }
});
