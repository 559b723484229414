//! bench-download: `bitsctl download` against `curl -o` for the same file from nginx on loopback.
//!
//!     cargo build --release --workspace --bins && cargo run --release -p bits-tests --bin bench-download -- --runs 5
//!
//! Options: `--size-mib N` (default 1024), `--runs N` (default 5), `--dir PATH` (where the source
//! file, the daemon's data dir and the destinations go; default: the system temp dir).
//!
//! The source file is generated once and served by a private nginx (sendfile on) from the page
//! cache. Each run downloads it to the same destination directory, which is on the same filesystem
//! as the daemon's data dir, and deletes the result afterwards. bitsd and curl alternate, and swap
//! who goes first every run. Wall time is measured until the command exits: for bitsctl that
//! includes Complete (fsync of the file, rename, fsync of the directory); curl does not fsync.
//! bitsd's CPU time comes from /proc/PID/stat (utime + stime) around each run, its peak RSS from
//! VmHWM in /proc/PID/status at the end.

// A benchmark prints its results and stops on the first failed setup step.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bits_tests::daemon::{TestDaemon, own_target_dir};
use bits_tests::data::{sha256_file, write_random_file};
use bits_tests::nginx::{Nginx, nginx_binary};

/// USER_HZ: the unit of utime/stime in /proc/PID/stat, 100 on every Linux ABI.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

struct Options {
    size_mib: u64,
    runs: usize,
    dir: PathBuf,
}

fn parse_options() -> Options {
    let mut options = Options { size_mib: 1024, runs: 5, dir: std::env::temp_dir() };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--size-mib" => {
                options.size_mib = value().parse().unwrap_or_else(|_| usage("bad --size-mib"))
            }
            "--runs" => options.runs = value().parse().unwrap_or_else(|_| usage("bad --runs")),
            "--dir" => options.dir = PathBuf::from(value()),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if options.runs == 0 || options.size_mib == 0 {
        usage("--runs and --size-mib must be positive");
    }
    options
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("bench-download: {problem}");
    }
    eprintln!("usage: bench-download [--size-mib N] [--runs N] [--dir PATH]");
    std::process::exit(2);
}

/// `target/release` if both binaries are there, else `target/debug`.
fn binary_dir() -> PathBuf {
    let target = own_target_dir().parent().unwrap().to_path_buf();
    let release = target.join("release");
    if release.join("bitsd").is_file() && release.join("bitsctl").is_file() {
        release
    } else {
        target.join("debug")
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / CLOCK_TICKS_PER_SEC
}

/// VmHWM (peak resident set) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024.0
}

fn run_timed(command: &mut Command) -> Duration {
    let started = Instant::now();
    let output = command.stdin(Stdio::null()).stdout(Stdio::null()).output().unwrap();
    let elapsed = started.elapsed();
    if !output.status.success() {
        panic!(
            "{command:?} failed with {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    elapsed
}

fn check_and_remove(dest: &Path, size: u64, expected: Option<&str>) {
    let len = std::fs::metadata(dest).unwrap().len();
    assert_eq!(len, size, "{} has the wrong size", dest.display());
    if let Some(expected) = expected {
        assert_eq!(
            sha256_file(dest).unwrap(),
            expected,
            "{} has the wrong content",
            dest.display()
        );
    }
    std::fs::remove_file(dest).unwrap();
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(times: &[Duration]) -> Stats {
    let mut secs: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
    secs.sort_by(f64::total_cmp);
    let n = secs.len();
    let median = if n % 2 == 1 { secs[n / 2] } else { (secs[n / 2 - 1] + secs[n / 2]) / 2.0 };
    Stats { median, min: secs[0], max: secs[n - 1] }
}

#[tokio::main]
async fn main() {
    let options = parse_options();
    let size = options.size_mib << 20;
    let bin_dir = binary_dir();
    println!("bitsd/bitsctl: {}", bin_dir.display());
    if bin_dir.ends_with("debug") {
        println!(
            "  (debug build: run `cargo build --release --workspace --bins` for real numbers)"
        );
    }
    let nginx_version = Command::new(nginx_binary()).arg("-v").output().unwrap();
    println!("nginx: {}", String::from_utf8_lossy(&nginx_version.stderr).trim());
    let curl = Command::new("curl").arg("--version").output();
    let Ok(curl) = curl else {
        eprintln!("bench-download: curl is not installed (apt-get install curl)");
        std::process::exit(1);
    };
    println!("curl: {}", String::from_utf8_lossy(&curl.stdout).lines().next().unwrap_or(""));

    let root = tempfile::Builder::new().prefix("bench-src-").tempdir_in(&options.dir).unwrap();
    let source = root.path().join("bench.bin");
    println!("generating {} MiB in {}", options.size_mib, root.path().display());
    let generated = Instant::now();
    let expected = write_random_file(&source, 42, size).unwrap();
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_557_126_489);
    std::fs::File::options().write(true).open(&source).unwrap().set_modified(past).unwrap();
    println!("  done in {:.1} s", generated.elapsed().as_secs_f64());
    let nginx = Nginx::start(root.path());
    let url = nginx.url("bench.bin");

    // The daemon's temp dir holds its data dir and the destination directory (one filesystem).
    let daemon = TestDaemon::start_from(&bin_dir, &options.dir, &[]).await;
    let dest = daemon.out_dir().join("bench.bin");
    println!("destination: {} (data dir {})", dest.display(), daemon.data_dir().display());
    println!("warm-up: reading the source once so both tools start from the page cache");
    sha256_file(&source).unwrap();

    let mut bitsd_times = Vec::new();
    let mut curl_times = Vec::new();
    let mut bitsd_cpu = 0.0;
    for run in 0..options.runs {
        let verify = run == 0;
        for tool in if run % 2 == 0 { ["bitsd", "curl"] } else { ["curl", "bitsd"] } {
            if tool == "bitsd" {
                let cpu_before = cpu_seconds(daemon.pid());
                let t = run_timed(
                    Command::new(daemon.bitsctl_path())
                        .arg("--socket")
                        .arg(daemon.socket())
                        .arg("download")
                        .arg(&url)
                        .arg(&dest),
                );
                bitsd_cpu += cpu_seconds(daemon.pid()) - cpu_before;
                check_and_remove(&dest, size, verify.then_some(expected.as_str()));
                println!("run {}: bitsctl download {:.2} s", run + 1, t.as_secs_f64());
                bitsd_times.push(t);
            } else {
                let t = run_timed(
                    Command::new("curl").arg("-s").arg("--fail").arg("-o").arg(&dest).arg(&url),
                );
                check_and_remove(&dest, size, verify.then_some(expected.as_str()));
                println!("run {}: curl -o          {:.2} s", run + 1, t.as_secs_f64());
                curl_times.push(t);
            }
        }
    }

    let mib = options.size_mib as f64;
    let (b, c) = (stats(&bitsd_times), stats(&curl_times));
    println!();
    println!("{} MiB from nginx on loopback, {} runs each", options.size_mib, options.runs);
    println!("{:<18} {:>9} {:>17} {:>12}", "tool", "median s", "min–max s", "MiB/s (med)");
    for (name, s) in [("bitsctl download", &b), ("curl -o", &c)] {
        println!(
            "{:<18} {:>9.2} {:>17} {:>12.0}",
            name,
            s.median,
            format!("{:.2}–{:.2}", s.min, s.max),
            mib / s.median
        );
    }
    println!("ratio bitsd/curl (median time): {:.2}", b.median / c.median);
    println!(
        "bitsd CPU: {:.2} s per download (user+sys), peak RSS {:.1} MiB",
        bitsd_cpu / options.runs as f64,
        peak_rss_mib(daemon.pid())
    );
}
