//! The expected SHA-256 of a file (a bitsd extension): how a caller writes it and how bitsd
//! keeps it.

use crate::code::{BitsError, Code};

/// How many characters of a refused digest an error message echoes.
const ECHO_CHARS: usize = 64;

/// Checks an expected SHA-256 given at AddFile: exactly 64 hex digits, either case. Returns it
/// in lowercase, the one form bitsd stores and shows; anything else is `E_INVALIDARG` naming the
/// value (at most 64 characters of it).
pub fn parse_sha256(text: &str) -> Result<String, BitsError> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(text.to_ascii_lowercase());
    }
    let shown: String = text.chars().take(ECHO_CHARS).collect();
    let more = if text.chars().count() > ECHO_CHARS { "…" } else { "" };
    Err(BitsError::new(
        Code::E_INVALIDARG,
        format!("sha256 {shown:?}{more} is not 64 hexadecimal digits"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixty_four_hex_digits_of_either_case() {
        let upper = "AB".repeat(32);
        assert_eq!(parse_sha256(&upper), Ok("ab".repeat(32)));
        for bad in ["", "ab", &"ab".repeat(33), &format!("{}zz", "a".repeat(62)), &"é".repeat(32)]
        {
            let e = parse_sha256(bad).unwrap_err();
            assert_eq!(e.code, Code::E_INVALIDARG, "{bad}");
        }
        let long = "x".repeat(500);
        let e = parse_sha256(&long).unwrap_err();
        assert!(e.message.contains(&"x".repeat(64)) && !e.message.contains(&"x".repeat(65)));
    }
}
