//! Static range lists (AddFileWithRanges): `validate_static_ranges` never panics and agrees with
//! the spec §3.C rule written out independently here; for an accepted list, `Layout::new` either
//! refuses the remote size or lays the ranges out back to back in caller order.
//!
//! Input layout: 8 bytes of remote size, then 9 bytes per range: a tag byte and 8 bytes. The tag
//! picks small values (offsets and lengths below 64, so overlaps are common) or raw u64s (so
//! sums near and past 2^64 occur), and whether the length or the offset is BG_LENGTH_TO_EOF.
#![no_main]

use bits_core::{ByteRange, Code, LENGTH_TO_EOF, Layout, validate_static_ranges};
use libfuzzer_sys::fuzz_target;

const MAX_RANGES: usize = 8;

fn u64_at(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
    u64::from_le_bytes(buf)
}

fn decode(data: &[u8]) -> (u64, Vec<ByteRange>) {
    let (size_bytes, rest) = data.split_at(data.len().min(8));
    let raw_size = u64_at(size_bytes);
    let size = if raw_size & 1 == 0 { (raw_size >> 1) % 128 } else { raw_size >> 1 };
    let ranges = rest
        .chunks(9)
        .map(|c| {
            let tag = c[0];
            let v = u64_at(&c[1..]);
            let (offset, length) =
                if tag & 1 == 0 { (v % 64, (v >> 8) % 64) } else { (v, (!v) >> (tag >> 4)) };
            let length = if tag & 2 != 0 { LENGTH_TO_EOF } else { length };
            let offset = if tag & 0xfc == 0xfc { LENGTH_TO_EOF } else { offset };
            ByteRange::new(offset, length)
        })
        .collect();
    (size, ranges)
}

/// Spec §3.C, steps 1–4, as a plain model.
fn model(ranges: &[ByteRange]) -> Option<Code> {
    if ranges.is_empty() {
        return Some(Code::E_INVALIDARG);
    }
    for r in ranges {
        if r.offset == LENGTH_TO_EOF
            || (r.length != LENGTH_TO_EOF && r.offset.checked_add(r.length).is_none())
        {
            return Some(Code::BG_E_INVALID_RANGE);
        }
    }
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| r.offset);
    for i in 1..sorted.len() {
        let (a, b) = (sorted[i - 1], sorted[i]);
        if a.length == LENGTH_TO_EOF || a.offset + a.length > b.offset {
            return Some(Code::BG_E_OVERLAPPING_RANGES);
        }
    }
    if ranges.len() > MAX_RANGES {
        return Some(Code::BG_E_TOO_MANY_RANGES_IN_FILE);
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let (size, ranges) = decode(data);
    let got = validate_static_ranges(&ranges, MAX_RANGES).err().map(|e| e.code);
    assert_eq!(got, model(&ranges), "{ranges:?}");
    if got.is_some() {
        return;
    }
    let Ok(layout) = Layout::new(&ranges, size) else {
        // Refused only when some range is not inside the file.
        assert!(ranges.iter().any(|r| if r.length == LENGTH_TO_EOF {
            r.offset >= size
        } else {
            r.offset + r.length > size
        }));
        return;
    };
    let mut local = 0u64;
    for r in &ranges {
        let len = if r.length == LENGTH_TO_EOF { size - r.offset } else { r.length };
        if len > 0 {
            assert_eq!(layout.to_local(r.offset), Some((local, len)), "{ranges:?} size {size}");
            let last = r.offset + len - 1;
            assert_eq!(layout.to_local(last), Some((local + len - 1, 1)));
        }
        local += len;
    }
    assert_eq!(layout.local_len(), local, "{ranges:?} size {size}");
    assert_eq!(layout.wanted().total_len(), local);
});
