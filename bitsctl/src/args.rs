//! The command line: clap definitions and the value parsers for job ids and byte ranges.

use std::net::SocketAddr;
use std::path::PathBuf;

use bits_core::{ByteRange, JobId, LENGTH_TO_EOF, Priority};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "bitsctl",
    version,
    about = "Control bitsd, the background download daemon",
    propagate_version = true
)]
pub struct Cli {
    /// The daemon's Unix socket.
    #[arg(
        long,
        global = true,
        env = "BITSD_SOCKET",
        value_name = "PATH",
        default_value_os_t = bits_client::default_socket()
    )]
    pub socket: PathBuf,

    /// Talk to the daemon's loopback TCP listener at ADDR (bitsd's `[tcp] listen`, e.g.
    /// 127.0.0.1:7781) instead of the Unix socket. Needs --token-file (checked when connecting:
    /// clap's `requires` on a global flag refused the flag given after the subcommand).
    #[arg(
        long,
        global = true,
        env = "BITSD_TCP",
        value_name = "ADDR",
        value_parser = parse_tcp_addr
    )]
    pub tcp: Option<SocketAddr>,

    /// The file holding the TCP listener's bearer token (surrounding whitespace is ignored).
    /// Read only with --tcp, so that a BITSD_TOKEN_FILE left in the environment cannot break
    /// commands over the Unix socket.
    #[arg(
        id = "token",
        long = "token-file",
        global = true,
        env = "BITSD_TOKEN_FILE",
        value_name = "PATH"
    )]
    pub token_file: Option<PathBuf>,

    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a download job (suspended) and print its id.
    Create {
        /// Display name of the job.
        #[arg(long, default_value = "bitsctl job")]
        name: String,
        #[arg(long, value_enum, default_value_t = PriorityArg::Normal)]
        priority: PriorityArg,
    },
    /// Add a file to a job and print its index.
    Add {
        #[arg(value_parser = parse_job_id)]
        job: JobId,
        url: String,
        /// Destination; made absolute against the current directory.
        dest: PathBuf,
        /// Download only these bytes (repeatable; the local file is their concatenation in order).
        #[arg(long = "range", value_name = "OFFSET:LENGTH", value_parser = parse_range)]
        ranges: Vec<ByteRange>,
    },
    /// Start or restart transferring a job.
    Resume {
        #[arg(value_parser = parse_job_id)]
        job: JobId,
    },
    /// Pause a job.
    Suspend {
        #[arg(value_parser = parse_job_id)]
        job: JobId,
    },
    /// Cancel a job and delete its temporary files.
    Cancel {
        #[arg(value_parser = parse_job_id)]
        job: JobId,
    },
    /// Move a transferred job's files into place and end it.
    Complete {
        #[arg(value_parser = parse_job_id)]
        job: JobId,
    },
    /// List your jobs (or, for administrators, everyone's with --all-users).
    List {
        /// Every user's jobs (BG_JOB_ENUM_ALL_USERS; administrators only)
        #[arg(long)]
        all_users: bool,
    },
    /// Become the owner of another user's job (administrators only). Drops its custom headers.
    TakeOwnership {
        #[arg(value_parser = parse_job_id)]
        job: JobId,
    },
    /// Show a job and its files.
    Info {
        #[arg(value_parser = parse_job_id)]
        job: JobId,
    },
    /// Show the downloaded ranges of a file, one OFFSET:LENGTH per line.
    Ranges {
        #[arg(value_parser = parse_job_id)]
        job: JobId,
        file_index: u32,
    },
    /// Ask for ranges of a file to be downloaded first.
    RequestRanges {
        #[arg(value_parser = parse_job_id)]
        job: JobId,
        file_index: u32,
        #[arg(value_name = "OFFSET:LENGTH", required = true, value_parser = parse_range)]
        ranges: Vec<ByteRange>,
    },
    /// Print a job's notifications as they happen, one line each (--json: one object a line),
    /// until the job is completed or cancelled.
    Watch {
        #[arg(value_parser = parse_job_id)]
        job: JobId,
        /// Notify flags for this watcher (e.g. 0x3F for every event); default: the job's own.
        #[arg(long, value_name = "FLAGS", value_parser = parse_flags)]
        flags: Option<u32>,
    },
    /// Download one URL to DEST: create a job, wait for it, complete it.
    Download {
        url: String,
        dest: PathBuf,
        #[arg(long = "range", value_name = "OFFSET:LENGTH", value_parser = parse_range)]
        ranges: Vec<ByteRange>,
        #[arg(long, value_enum, default_value_t = PriorityArg::Normal)]
        priority: PriorityArg,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PriorityArg {
    Foreground,
    High,
    Normal,
    Low,
}

impl From<PriorityArg> for Priority {
    fn from(p: PriorityArg) -> Priority {
        match p {
            PriorityArg::Foreground => Priority::Foreground,
            PriorityArg::High => Priority::High,
            PriorityArg::Normal => Priority::Normal,
            PriorityArg::Low => Priority::Low,
        }
    }
}

/// `--tcp`: an IP:PORT on loopback, the only addresses bitsd listens on; anywhere else the token
/// would cross a network in clear text.
pub fn parse_tcp_addr(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr =
        text.trim().parse().map_err(|_| format!("'{text}' is not IP:PORT, e.g. 127.0.0.1:7781"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "'{text}' is not a loopback address (bitsd listens on 127.0.0.0/8 or ::1 only)"
        ));
    }
    Ok(addr)
}

/// A job id as printed by `bitsctl create` (a UUID).
pub fn parse_job_id(text: &str) -> Result<JobId, String> {
    JobId::parse(text.trim()).ok_or_else(|| format!("'{text}' is not a job id (expected a UUID)"))
}

/// Notify flags: `0x`-prefixed hexadecimal or decimal.
pub fn parse_flags(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("'{text}' is not a flags value (0x3F or 63)"))
}

/// `OFFSET:LENGTH`, decimal, with `eof` as LENGTH for "to the end of the file".
pub fn parse_range(text: &str) -> Result<ByteRange, String> {
    let bad = |why: &str| format!("'{text}' is not a byte range OFFSET:LENGTH ({why})");
    let (offset, length) = text.split_once(':').ok_or_else(|| bad("missing ':'"))?;
    let offset: u64 = offset.trim().parse().map_err(|_| bad("OFFSET is not a number"))?;
    let length = length.trim();
    let length = if length.eq_ignore_ascii_case("eof") {
        LENGTH_TO_EOF
    } else {
        length.parse().map_err(|_| bad("LENGTH is not a number or 'eof'"))?
    };
    Ok(ByteRange::new(offset, length))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("0:100").unwrap(), ByteRange::new(0, 100));
        assert_eq!(parse_range("111:eof").unwrap(), ByteRange::new(111, LENGTH_TO_EOF));
        assert_eq!(parse_range("5:EOF").unwrap(), ByteRange::new(5, LENGTH_TO_EOF));
        assert_eq!(parse_range("7:0").unwrap(), ByteRange::new(7, 0));
        for bad in ["", "10", "a:1", "1:b", "-1:5", "1:-5", ":", "1:2:3", "18446744073709551616:1"]
        {
            let err = parse_range(bad).unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }

    #[test]
    fn tcp_takes_a_loopback_address_and_a_token_file_anywhere() {
        let cli = Cli::try_parse_from([
            "bitsctl",
            "--tcp",
            "127.0.0.1:7781",
            "--token-file",
            "/run/tcp.token",
            "list",
        ])
        .unwrap();
        assert_eq!(cli.tcp, Some("127.0.0.1:7781".parse().unwrap()));
        assert_eq!(cli.token_file, Some(PathBuf::from("/run/tcp.token")));
        // Global: after the subcommand too.
        let cli = Cli::try_parse_from([
            "bitsctl",
            "list",
            "--tcp",
            "[::1]:1",
            "--token-file",
            "/run/tcp.token",
        ])
        .unwrap();
        assert_eq!(cli.tcp, Some("[::1]:1".parse().unwrap()));

        let usage = |args: &[&str]| {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
            err.to_string()
        };
        // The token file may come before or after the subcommand; without one, `cmd::connect`
        // refuses (a usage error too, see main.rs).
        let cli = Cli::try_parse_from([
            "bitsctl",
            "--tcp",
            "127.0.0.1:7781",
            "list",
            "--token-file",
            "/run/tcp.token",
        ])
        .unwrap();
        assert_eq!(cli.token_file, Some(PathBuf::from("/run/tcp.token")));
        for (addr, why) in
            [("10.0.0.1:7781", "not a loopback address"), ("localhost", "is not IP:PORT")]
        {
            let err = usage(&["bitsctl", "--tcp", addr, "--token-file", "/run/tcp.token", "list"]);
            assert!(err.contains(why), "{err}");
        }
    }

    /// The file is read when connecting, and only with --tcp (`cmd::connect`), so parsing never
    /// looks at it: a missing one is no concern of a command over the Unix socket.
    #[test]
    fn parsing_does_not_read_the_token_file() {
        let cli =
            Cli::try_parse_from(["bitsctl", "--token-file", "/nonexistent/tcp.token", "list"])
                .unwrap();
        assert_eq!(cli.tcp, None);
        assert_eq!(cli.token_file, Some(PathBuf::from("/nonexistent/tcp.token")));
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_values_are_usage_errors_naming_them() {
        let id = "0b3e4a9e-8d4f-4a32-9c55-1f0d6d2c8e11";
        let err = Cli::try_parse_from(["bitsctl", "add", id, "http://h/f", "f", "--range", "x:1"])
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("'x:1'"), "{err}");
        let err = Cli::try_parse_from(["bitsctl", "info", "nope"]).unwrap_err();
        assert!(err.to_string().contains("'nope'"), "{err}");
        let err = Cli::try_parse_from(["bitsctl", "request-ranges", id, "0"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);

        let cli = Cli::try_parse_from([
            "bitsctl",
            "--socket",
            "/s",
            "download",
            "http://h/f",
            "out",
            "--range",
            "0:10",
            "--range",
            "20:eof",
            "--priority",
            "high",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket, PathBuf::from("/s"));
        match cli.command {
            Command::Download { ranges, priority, .. } => {
                assert_eq!(ranges, vec![ByteRange::new(0, 10), ByteRange::new(20, LENGTH_TO_EOF)]);
                assert_eq!(priority, PriorityArg::High);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["bitsctl", "create"]).unwrap();
        match cli.command {
            Command::Create { name, priority } => {
                assert_eq!(name, "bitsctl job");
                assert_eq!(priority, PriorityArg::Normal);
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Property tests of the `OFFSET:LENGTH` parser. bitsctl has no proptest dev-dependency, so a
/// seeded xorshift generator drives them (deterministic; failures print the offending input).
#[cfg(test)]
mod range_property_tests {
    use super::*;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    /// Small numbers, numbers at the u64 and power-of-ten edges, and anything at all.
    fn any_u64(rng: &mut Rng) -> u64 {
        match rng.below(4) {
            0 => rng.below(1000),
            1 => *rng.pick(&[0, 1, 9, 10, 99, 100, u64::MAX, u64::MAX - 1, 1 << 63, 10u64.pow(19)]),
            2 => rng.next() >> rng.below(64),
            _ => rng.next(),
        }
    }

    fn any_range(rng: &mut Rng) -> ByteRange {
        let offset = any_u64(rng);
        let length = if rng.below(4) == 0 { LENGTH_TO_EOF } else { any_u64(rng) };
        ByteRange::new(offset, length)
    }

    #[test]
    fn display_then_parse_is_the_identity() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let range = any_range(&mut rng);
            let text = range.display();
            assert_eq!(parse_range(&text), Ok(range), "{text:?}");
            // `eof` is case-insensitive; u64::MAX as a number is the same as `eof`.
            if range.is_to_eof() {
                assert_eq!(parse_range(&format!("{}:EoF", range.offset)), Ok(range));
                assert_eq!(parse_range(&format!("{}:{}", range.offset, u64::MAX)), Ok(range));
            }
        }
    }

    /// Strings built from the grammar `DIGITS ':' (DIGITS | eof)` are accepted exactly when both
    /// numbers fit in a u64, and then mean those numbers.
    #[test]
    fn grammar_strings_parse_to_their_numbers() {
        let mut rng = Rng(0x0123_4567_89AB_CDEF);
        let digits = |rng: &mut Rng| -> String {
            let len = 1 + rng.below(22) as usize;
            (0..len).map(|_| char::from(b'0' + rng.below(10) as u8)).collect()
        };
        for _ in 0..20_000 {
            let offset = digits(&mut rng);
            let length = if rng.below(5) == 0 {
                rng.pick(&["eof", "EOF", "Eof"]).to_string()
            } else {
                digits(&mut rng)
            };
            let text = format!("{offset}:{length}");
            let want_offset = offset.parse::<u128>().ok().and_then(|v| u64::try_from(v).ok());
            let want_length = if length.eq_ignore_ascii_case("eof") {
                Some(LENGTH_TO_EOF)
            } else {
                length.parse::<u128>().ok().and_then(|v| u64::try_from(v).ok())
            };
            let want = want_offset.zip(want_length).map(|(o, l)| ByteRange::new(o, l));
            assert_eq!(parse_range(&text).ok(), want, "{text:?}");
        }
    }

    /// Arbitrary strings (biased towards the characters the grammar uses) never panic; a rejected
    /// string is named in the message; an accepted one has a canonical form meaning the same.
    #[test]
    fn arbitrary_strings_never_panic() {
        let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
        let alphabet: Vec<char> = "0123456789:eofEOF +-\t\n_x".chars().collect();
        let exotic = ['\u{0}', '\u{7f}', 'é', '٣', '１', '\u{200b}', '🦀', '：'];
        for _ in 0..50_000 {
            let len = rng.below(30) as usize;
            let text: String = (0..len)
                .map(|_| if rng.below(10) == 0 { *rng.pick(&exotic) } else { *rng.pick(&alphabet) })
                .collect();
            match parse_range(&text) {
                Ok(range) => assert_eq!(parse_range(&range.display()), Ok(range), "{text:?}"),
                Err(err) => assert!(err.contains(&format!("'{text}'")), "{text:?}: {err}"),
            }
        }
    }
}
