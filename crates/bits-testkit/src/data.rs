//! Test content: a fast, seeded pseudo-random byte generator (so a file is reproducible from its
//! seed and never compresses or repeats by accident) and SHA-256 helpers.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// SplitMix64: tiny, fast and good enough to make every 8-byte word of a test file distinct.
#[derive(Clone, Debug)]
pub struct Generator {
    state: u64,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator { state: seed ^ 0x5DEE_CE66_D1CE_4E5B }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let word = self.next_u64().to_le_bytes();
            rest.copy_from_slice(&word[..rest.len()]);
        }
    }
}

/// `len` reproducible pseudo-random bytes for `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    Generator::new(seed).fill(&mut buf);
    buf
}

/// Writes `len` bytes of the `seed` stream to `path` (in 1 MiB blocks, so large files are cheap)
/// and returns their SHA-256 in hex.
pub fn write_random_file(path: &Path, seed: u64, len: u64) -> io::Result<String> {
    let mut generator = Generator::new(seed);
    let mut file = io::BufWriter::new(File::create(path)?);
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        generator.fill(&mut block[..n]);
        hasher.update(&block[..n]);
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 of `data` in lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// SHA-256 of a file's content in lowercase hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_seed_dependent() {
        assert_eq!(random_bytes(7, 1001), random_bytes(7, 1001));
        assert_ne!(random_bytes(7, 64), random_bytes(8, 64));
        // A shorter request is a prefix of a longer one, including a partial last word.
        assert_eq!(random_bytes(7, 13)[..], random_bytes(7, 64)[..13]);
    }

    #[test]
    fn file_hash_matches_memory_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let hash = write_random_file(&path, 3, (1 << 20) + 5).unwrap();
        assert_eq!(hash, sha256_hex(&random_bytes(3, (1 << 20) + 5)));
        assert_eq!(hash, sha256_file(&path).unwrap());
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
