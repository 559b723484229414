//! Data-path benchmark: bitsd against curl, aria2c and wget2, the same downloads from the same
//! nginx on loopback, in one run, with a table of medians and ratios at the end (issue 5, item 1).
//!
//!     cargo build --release --workspace --bins
//!     cargo run --release -p bits-bench --bin download -- --runs 5
//!
//! Options: `--runs N` (default 5), `--size-mib N` (the large file, default 1024), `--cases LIST`
//! (`all` or a comma list of `single,multi4,multi16,many,ranges`), `--dir PATH` (sources, the
//! daemon's data dir and the destinations; default: the system temp dir), `--bitsd-only` (no
//! peers: for profiling the daemon; no ratios are printed).
//!
//! Comparing two builds: on ext4 without a journal, creating a file skips the inodes freed in the
//! last minutes (five, once their table block is dirty), so an invocation that follows another
//! pays for the 5,000+ files the previous one deleted: medians drift up 30–50% over a session.
//! Give every invocation a fresh `--dir` under a directory marked `chattr +T` (ext4 then puts each
//! new subdirectory in another block group), and alternate the builds.
//!
//! Cases:
//! - `single`: the large file over one connection: bitsd (default settings; through the client
//!   and through `bitsctl download`) vs `curl -o` and `aria2c -x1 -s1`.
//! - `multi4`, `multi16`: the large file with 4 / 16 connections: bitsd with
//!   SetExtensions(connections_per_file) vs `aria2c -xN -sN`.
//! - `many`: 1,000 files of 64 KiB in one job: bitsd AddFileSet with SetExtensions(files_at_once
//!   = 16) vs `aria2c -j16 -i LIST`, `curl --parallel --parallel-max 16` and
//!   `wget2 --max-threads=16 -i LIST`; the same curl followed by an fdatasync of each file it
//!   wrote (16 threads), a peer that promises what bitsd does (every file on disk before it
//!   reports done), since none of the peers syncs; and a floor that is no download: the same
//!   files copied from the sources by 16 threads, each fdatasynced (what durability alone costs
//!   on this disk).
//! - `ranges`: 500 scattered 4 KiB ranges of the large file: bitsd AddFileWithRanges vs one curl
//!   invocation with 500 single-range transfers (`range`/`url`/`next` blocks of a config file;
//!   curl keeps one keep-alive connection across them and writes the bodies, in order, to stdout,
//!   which gives the same concatenated file bitsd produces).
//!
//! bitsd is driven through the gRPC client in this process: CreateJob, (SetExtensions), AddFile…,
//! WatchJob, Resume, wait for JOB_TRANSFERRED, Complete (which fsyncs and renames). Its wall time
//! covers all of that. Its CPU time is the daemon's utime+stime delta (/proc/PID/stat) plus this
//! process's (the client); its peak RSS is the daemon's VmHWM, reset before each run
//! (/proc/PID/clear_refs). The peers run under `/usr/bin/time`, which reports their CPU time and
//! peak RSS from wait4. Tools alternate within a run and the order is reversed every other run;
//! outputs are deleted after every run (then `sync`); the page cache is never dropped, so every
//! tool reads the same warm source files.

// A benchmark's output is its printed results.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail, ensure};
use bits_bench::measure::{
    GNU_TIME, Sample, cpu_seconds, machine_cpu_ticks, peak_rss_mib, reset_peak_rss, run_under_time,
    summarize,
};
use bits_bench::table::Table;
use bits_client::{Client, EventInfo};
use bits_core::job::notify;
use bits_core::{ByteRange, Code, JobId, Priority};
use bits_testkit::data::{Generator, sha256_file, sha256_hex, write_random_file};
use bits_tests::daemon::{TestDaemon, own_target_dir};
use bits_tests::nginx::{Nginx, nginx_binary};

const MANY_FILES: usize = 1000;
const MANY_FILE_SIZE: usize = 64 << 10;
const RANGE_COUNT: u64 = 500;
const RANGE_SIZE: u64 = 4 << 10;
/// Parallelism of the many-files case (files at once / -j / --parallel-max / --max-threads).
const MANY_PARALLEL: u32 = 16;
const BIG_NAME: &str = "big.bin";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    Single,
    Multi4,
    Multi16,
    Many,
    Ranges,
}

impl Case {
    const ALL: [Case; 5] = [Case::Single, Case::Multi4, Case::Multi16, Case::Many, Case::Ranges];

    fn name(self) -> &'static str {
        match self {
            Case::Single => "single",
            Case::Multi4 => "multi4",
            Case::Multi16 => "multi16",
            Case::Many => "many",
            Case::Ranges => "ranges",
        }
    }

    fn describe(self, size_mib: u64) -> String {
        match self {
            Case::Single => format!("1 × {size_mib} MiB, 1 connection"),
            Case::Multi4 => format!("1 × {size_mib} MiB, 4 connections"),
            Case::Multi16 => format!("1 × {size_mib} MiB, 16 connections"),
            Case::Many => {
                format!("{MANY_FILES} × {} KiB, {MANY_PARALLEL} at once", MANY_FILE_SIZE >> 10)
            }
            Case::Ranges => {
                format!("{RANGE_COUNT} × {} KiB ranges of {size_mib} MiB", RANGE_SIZE >> 10)
            }
        }
    }
}

/// Who downloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Bitsd,
    /// `bitsctl download URL DEST`: the same daemon through the command line (a process start,
    /// CreateJob, AddFile, two setters, WatchJob, Resume, GetJob and Complete), with its progress
    /// lines on stderr (to GNU time's report file).
    Bitsctl,
    Curl,
    Aria2,
    Wget2,
    /// `curl --parallel` as [`Tool::Curl`], then every file it wrote fdatasynced by 16 threads:
    /// a peer held to bitsd's promise that a file's bytes are on disk before the download reports
    /// done (bitsd also syncs the directory after its renames; this peer renames nothing).
    /// Its CPU is curl's plus the syncs'; its peak RSS is curl's.
    CurlSynced,
    /// Not a download: the many case's files copied from the (page-cached) sources by 16
    /// threads, each written and fdatasynced. What any tool that makes every file durable before
    /// it reports success pays on this disk, with no network and no bookkeeping.
    DiskFloor,
}

impl Tool {
    /// The label in the tables for this case.
    fn label(self, case: Case) -> &'static str {
        match (self, case) {
            (Tool::Bitsd, Case::Single) => "bitsd",
            (Tool::Bitsd, Case::Multi4) => "bitsd conns=4",
            (Tool::Bitsd, Case::Multi16) => "bitsd conns=16",
            (Tool::Bitsd, Case::Many) => "bitsd files_at_once=16",
            (Tool::Bitsd, Case::Ranges) => "bitsd AddFileWithRanges",
            (Tool::Bitsctl, _) => "bitsctl download",
            (Tool::Curl, Case::Many) => "curl --parallel-max 16",
            (Tool::Curl, Case::Ranges) => "curl 500 × -r (keep-alive)",
            (Tool::Curl, _) => "curl -o",
            (Tool::CurlSynced, _) => "curl --parallel + fdatasync ×16",
            (Tool::Aria2, Case::Single) => "aria2c -x1 -s1",
            (Tool::Aria2, Case::Multi4) => "aria2c -x4 -s4",
            (Tool::Aria2, Case::Multi16) => "aria2c -x16 -s16",
            (Tool::Aria2, _) => "aria2c -j16",
            (Tool::Wget2, _) => "wget2 --max-threads=16",
            (Tool::DiskFloor, _) => "floor: copy+fdatasync ×16",
        }
    }
}

struct Options {
    runs: usize,
    size_mib: u64,
    cases: Vec<Case>,
    dir: PathBuf,
    bitsd_only: bool,
}

fn usage_text() -> &'static str {
    "usage: download [--runs N] [--size-mib N] [--cases all|single,multi4,multi16,many,ranges] [--dir PATH] [--bitsd-only]"
}

fn parse_options() -> Result<Options> {
    let mut options = Options {
        runs: 5,
        size_mib: 1024,
        cases: Case::ALL.to_vec(),
        dir: std::env::temp_dir(),
        bitsd_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .with_context(|| format!("{flag} needs a value\n{}", usage_text()))
        };
        match flag.as_str() {
            "--runs" => options.runs = value()?.parse().context("bad --runs")?,
            "--size-mib" => options.size_mib = value()?.parse().context("bad --size-mib")?,
            "--dir" => options.dir = PathBuf::from(value()?),
            "--cases" => options.cases = parse_cases(&value()?)?,
            "--bitsd-only" => options.bitsd_only = true,
            "-h" | "--help" => {
                println!("{}", usage_text());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{}", usage_text()),
        }
    }
    ensure!(options.runs > 0 && options.size_mib > 0, "--runs and --size-mib must be positive");
    // The ranges case needs room for 500 disjoint 4 KiB ranges.
    ensure!(
        !options.cases.contains(&Case::Ranges)
            || options.size_mib << 20 >= RANGE_COUNT * RANGE_SIZE * 2,
        "--size-mib is too small for {RANGE_COUNT} ranges of {RANGE_SIZE} bytes"
    );
    Ok(options)
}

fn parse_cases(list: &str) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "all" {
            cases.extend(Case::ALL);
            continue;
        }
        let case = Case::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .with_context(|| format!("unknown case {name:?}\n{}", usage_text()))?;
        cases.push(case);
    }
    cases.sort();
    cases.dedup();
    ensure!(!cases.is_empty(), "--cases names no case");
    Ok(cases)
}

// ---- tools ------------------------------------------------------------------------------------

fn on_path(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Installs missing Debian packages (`apt-get update` once, then `apt-get install -y`).
struct Installer {
    updated: bool,
    root: bool,
}

impl Installer {
    /// Makes sure `program` exists, installing `package` if needed. `Ok(false)` (with a printed
    /// note) when it cannot be had.
    fn ensure(&mut self, program: &str, package: &str) -> Result<bool> {
        if on_path(program).is_some() {
            return Ok(true);
        }
        if !self.root {
            println!("note: {program} is missing and this is not root: apt-get install {package}");
            return Ok(false);
        }
        if !self.updated {
            println!("apt-get update");
            let out = Command::new("apt-get")
                .args(["update", "-q"])
                .stdin(Stdio::null())
                .output()
                .context("running apt-get update")?;
            if !out.status.success() {
                println!(
                    "note: apt-get update failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            self.updated = true;
        }
        println!("apt-get install -y {package}");
        let out = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .context("running apt-get install")?;
        if !out.status.success() || on_path(program).is_none() {
            println!(
                "note: could not install {package} ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Ok(false);
        }
        Ok(true)
    }
}

fn version_line(program: &str, arg: &str) -> String {
    match Command::new(program).arg(arg).stdin(Stdio::null()).output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string()
        }
        Err(e) => format!("({e})"),
    }
}

// ---- test content -----------------------------------------------------------------------------

/// What the cases download, served by nginx from `root`.
struct Fixtures {
    root: tempfile::TempDir,
    big_size: u64,
    big_sha: Option<String>,
    /// `(name, sha256)` of the small files (empty unless the many case runs).
    many: Vec<(String, String)>,
    ranges: Vec<ByteRange>,
    /// The ranges' bytes, concatenated in order: the expected output of the ranges case.
    ranges_bytes: Vec<u8>,
}

impl Fixtures {
    fn generate(options: &Options) -> Result<Fixtures> {
        let root = tempfile::Builder::new()
            .prefix("bits-bench-src-")
            .tempdir_in(&options.dir)
            .with_context(|| format!("creating a temp dir in {}", options.dir.display()))?;
        let big_size = options.size_mib << 20;
        let started = Instant::now();
        let needs_big = options.cases.iter().any(|c| *c != Case::Many);
        let mut fixtures = Fixtures {
            root,
            big_size,
            big_sha: None,
            many: Vec::new(),
            ranges: Vec::new(),
            ranges_bytes: Vec::new(),
        };
        // An mtime in the past, as for any published file.
        let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_557_126_489);
        if needs_big {
            let path = fixtures.root.path().join(BIG_NAME);
            println!("generating {BIG_NAME} ({} MiB)", options.size_mib);
            fixtures.big_sha = Some(write_random_file(&path, 42, big_size)?);
            std::fs::File::options().write(true).open(&path)?.set_modified(past)?;
        }
        if options.cases.contains(&Case::Many) {
            println!("generating {MANY_FILES} files of {} KiB", MANY_FILE_SIZE >> 10);
            let dir = fixtures.root.path().join("many");
            std::fs::create_dir(&dir)?;
            let mut block = vec![0u8; MANY_FILE_SIZE];
            for i in 0..MANY_FILES {
                let name = format!("f{i:04}.bin");
                Generator::new(1000 + i as u64).fill(&mut block);
                let path = dir.join(&name);
                std::fs::write(&path, &block)?;
                std::fs::File::options().write(true).open(&path)?.set_modified(past)?;
                fixtures.many.push((name, sha256_hex(&block)));
            }
        }
        if options.cases.contains(&Case::Ranges) {
            fixtures.ranges = scattered_ranges(big_size);
            let mut file = std::fs::File::open(fixtures.root.path().join(BIG_NAME))?;
            for r in &fixtures.ranges {
                let mut buf = vec![0u8; r.length as usize];
                file.seek(SeekFrom::Start(r.offset))?;
                file.read_exact(&mut buf)?;
                fixtures.ranges_bytes.extend_from_slice(&buf);
            }
        }
        // Written back now, so that no timed run shares the disk with the generator's writes.
        rustix::fs::sync();
        println!("  done in {:.1} s", started.elapsed().as_secs_f64());
        Ok(fixtures)
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    /// Bytes one run of `case` downloads.
    fn bytes(&self, case: Case) -> u64 {
        match case {
            Case::Single | Case::Multi4 | Case::Multi16 => self.big_size,
            Case::Many => (MANY_FILES * MANY_FILE_SIZE) as u64,
            Case::Ranges => RANGE_COUNT * RANGE_SIZE,
        }
    }
}

/// 500 disjoint 4 KiB ranges, 4 KiB-aligned, one at a pseudo-random place in each of 500 equal
/// slices of the file, in ascending order.
fn scattered_ranges(size: u64) -> Vec<ByteRange> {
    let mut generator = Generator::new(7);
    let slot = size / RANGE_COUNT;
    let pages_per_slot = (slot / RANGE_SIZE).max(1);
    (0..RANGE_COUNT)
        .map(|i| {
            let page = generator.next_u64() % pages_per_slot;
            ByteRange::new(i * slot + page * RANGE_SIZE, RANGE_SIZE)
        })
        .collect()
}

// ---- runs -------------------------------------------------------------------------------------

struct Bench {
    options: Options,
    fixtures: Fixtures,
    nginx: Nginx,
    daemon: TestDaemon,
    client: Client,
    /// Per-run scratch: destinations go here, and it is emptied after every run.
    work: PathBuf,
    /// GNU time's reports and the peers' URL lists.
    scratch: tempfile::TempDir,
    has_wget2: bool,
    /// Runs that started while the machine was busy with something else.
    disturbed: std::cell::Cell<usize>,
    /// Outputs of the `many` case moved aside (deleted with the daemon's dir at the end).
    kept: std::cell::Cell<usize>,
}

impl Bench {
    fn tools(&self, case: Case) -> Vec<Tool> {
        if self.options.bitsd_only {
            return vec![Tool::Bitsd];
        }
        match case {
            Case::Single => vec![Tool::Bitsd, Tool::Bitsctl, Tool::Curl, Tool::Aria2],
            Case::Multi4 | Case::Multi16 => vec![Tool::Bitsd, Tool::Aria2],
            Case::Many => {
                let mut tools = vec![Tool::Bitsd, Tool::Aria2, Tool::Curl];
                if self.has_wget2 {
                    tools.push(Tool::Wget2);
                }
                tools.extend([Tool::CurlSynced, Tool::DiskFloor]);
                tools
            }
            Case::Ranges => vec![Tool::Bitsd, Tool::Curl],
        }
    }

    fn big_url(&self) -> String {
        self.nginx.url(BIG_NAME)
    }

    fn many_url(&self, name: &str) -> String {
        self.nginx.url(&format!("many/{name}"))
    }

    async fn run(&self, case: Case, tool: Tool, verify: bool) -> Result<Sample> {
        // Nothing of the previous run (or anything else) may still be running.
        if !settle(&self.daemon.pid().to_string(), false).await? {
            self.disturbed.set(self.disturbed.get() + 1);
        }
        let _ = std::fs::remove_dir_all(&self.work);
        std::fs::create_dir(&self.work)
            .with_context(|| format!("creating {}", self.work.display()))?;
        let sample = match tool {
            Tool::Bitsd => self.run_bitsd(case).await?,
            Tool::Bitsctl => self.run_bitsctl().await?,
            Tool::DiskFloor => self.run_disk_floor()?,
            Tool::CurlSynced => self.run_curl_synced()?,
            _ => self.run_peer(case, tool)?,
        };
        self.check_output(case, tool, verify)
            .with_context(|| format!("{} wrote a wrong result", tool.label(case)))?;
        if case == Case::Many {
            // Not deleted until the end: ext4 skips inodes freed in the last ~30 s when it
            // allocates new ones, so 1,000 files deleted just before a run made that run's
            // creates scan past them — a cost that landed on whichever tool ran next (medians
            // swung 3× between runs). Kept aside, every tool creates into the same conditions.
            let kept = self.daemon.out_dir().join(format!("kept-{}", self.kept.get()));
            self.kept.set(self.kept.get() + 1);
            std::fs::rename(&self.work, &kept)
                .with_context(|| format!("moving {} aside", self.work.display()))?;
        } else {
            std::fs::remove_dir_all(&self.work)
                .with_context(|| format!("removing {}", self.work.display()))?;
        }
        rustix::fs::sync();
        Ok(sample)
    }

    async fn run_bitsd(&self, case: Case) -> Result<Sample> {
        let pid = self.daemon.pid().to_string();
        reset_peak_rss(&pid)?;
        let cpu_before = cpu_seconds(&pid)? + cpu_seconds("self")?;
        let started = Instant::now();
        let job = self.client.create_job("bits-bench", Priority::Foreground).await?;
        let outcome = self.bitsd_job(case, job).await;
        let wall = started.elapsed().as_secs_f64();
        if let Err(e) = outcome {
            let _ = self.client.cancel(job).await;
            return Err(e.context(format!(
                "bitsd job {job} ({})\n--- bitsd log ---\n{}",
                case.name(),
                self.daemon.log_tail(30)
            )));
        }
        // Work the daemon does after Complete returned is its cost too.
        settle(&pid, true).await?;
        let cpu = cpu_seconds(&pid)? + cpu_seconds("self")? - cpu_before;
        Ok(Sample { wall, cpu, peak_rss_mib: peak_rss_mib(&pid)? })
    }

    /// `bitsctl download` of the large file, under GNU time: its wall time, its CPU plus the
    /// daemon's, the daemon's peak RSS.
    async fn run_bitsctl(&self) -> Result<Sample> {
        let pid = self.daemon.pid().to_string();
        reset_peak_rss(&pid)?;
        let cpu_before = cpu_seconds(&pid)?;
        let bitsctl = self.daemon.bitsctl_path().display().to_string();
        let args = [
            "--socket".to_string(),
            self.daemon.socket().display().to_string(),
            "download".to_string(),
            self.big_url(),
            self.work.join(BIG_NAME).display().to_string(),
        ];
        let ctl = run_under_time(&bitsctl, &args, Stdio::null(), self.scratch.path())?;
        settle(&pid, true).await?;
        let cpu = cpu_seconds(&pid)? - cpu_before + ctl.cpu;
        Ok(Sample { wall: ctl.wall, cpu, peak_rss_mib: peak_rss_mib(&pid)? })
    }

    /// Everything after CreateJob: extensions, files, Resume, wait, Complete.
    async fn bitsd_job(&self, case: Case, job: JobId) -> Result<()> {
        let setup_from = Instant::now();
        let client = &self.client;
        match case {
            Case::Single => {}
            Case::Multi4 => ensure_ok(client.set_extensions(job, Some(4), None).await?)?,
            Case::Multi16 => ensure_ok(client.set_extensions(job, Some(16), None).await?)?,
            Case::Many => ensure_ok(client.set_extensions(job, None, Some(MANY_PARALLEL)).await?)?,
            Case::Ranges => {}
        }
        match case {
            Case::Single | Case::Multi4 | Case::Multi16 => {
                client.add_file(job, &self.big_url(), &self.work.join(BIG_NAME)).await?;
            }
            Case::Many => {
                let files: Vec<(String, PathBuf)> = self
                    .fixtures
                    .many
                    .iter()
                    .map(|(name, _)| (self.many_url(name), self.work.join(name)))
                    .collect();
                let refs: Vec<(&str, &Path)> =
                    files.iter().map(|(u, p)| (u.as_str(), p.as_path())).collect();
                client.add_file_set(job, &refs).await?;
            }
            Case::Ranges => {
                client
                    .add_file_with_ranges(
                        job,
                        &self.big_url(),
                        &self.work.join("ranges.bin"),
                        &self.fixtures.ranges,
                    )
                    .await?;
            }
        }
        let transfer_from = Instant::now();
        let mut events =
            client.watch_job(job, Some(notify::JOB_TRANSFERRED | notify::JOB_ERROR)).await?;
        client.resume(job).await?;
        loop {
            match events.next().await {
                Some(Ok(event)) => match event.event {
                    EventInfo::JobTransferred => break,
                    EventInfo::JobError(error) => {
                        bail!("job error: {} {}", error.code.name(), error.description)
                    }
                    _ => {}
                },
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the event stream ended before the job was transferred"),
            }
        }
        drop(events);
        let complete_from = Instant::now();
        ensure_ok(client.complete(job).await?)?;
        // Where bitsd's time goes: printed above the run's line.
        println!(
            "        bitsd phases: AddFile… {:.3} s, Resume to JOB_TRANSFERRED {:.3} s, Complete {:.3} s",
            (transfer_from - setup_from).as_secs_f64(),
            (complete_from - transfer_from).as_secs_f64(),
            complete_from.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn run_peer(&self, case: Case, tool: Tool) -> Result<Sample> {
        let work = self.work.display().to_string();
        let scratch = self.scratch.path();
        let quiet_aria2 = [
            "-q",
            "--no-conf",
            "--file-allocation=none",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
        ]
        .map(String::from);
        let (program, args, stdout) = match (tool, case) {
            (Tool::Curl, Case::Single) => {
                let dest = self.work.join(BIG_NAME).display().to_string();
                let args = ["-s", "--fail", "-o", &dest, &self.big_url()].map(String::from);
                ("curl", args.to_vec(), Stdio::null())
            }
            (Tool::Aria2, Case::Single | Case::Multi4 | Case::Multi16) => {
                let n = match case {
                    Case::Multi4 => 4,
                    Case::Multi16 => 16,
                    _ => 1,
                };
                let mut args = quiet_aria2.to_vec();
                args.extend([
                    format!("-x{n}"),
                    format!("-s{n}"),
                    "-d".into(),
                    work.clone(),
                    "-o".into(),
                    BIG_NAME.into(),
                    self.big_url(),
                ]);
                ("aria2c", args, Stdio::null())
            }
            (Tool::Aria2, Case::Many) => {
                let mut args = quiet_aria2.to_vec();
                args.extend([
                    format!("-j{MANY_PARALLEL}"),
                    "-d".into(),
                    work.clone(),
                    "-i".into(),
                    self.url_list()?.display().to_string(),
                ]);
                ("aria2c", args, Stdio::null())
            }
            (Tool::Curl, Case::Many) => {
                let config = scratch.join("many.curl");
                let mut text = String::new();
                for (name, _) in &self.fixtures.many {
                    writeln!(text, "url = \"{}\"", self.many_url(name))?;
                }
                std::fs::write(&config, text)?;
                let args = [
                    "-s",
                    "--fail",
                    "--parallel",
                    "--parallel-max",
                    &MANY_PARALLEL.to_string(),
                    "--output-dir",
                    &work,
                    "--remote-name-all",
                    "-K",
                    &config.display().to_string(),
                ]
                .map(String::from);
                ("curl", args.to_vec(), Stdio::null())
            }
            (Tool::Wget2, Case::Many) => {
                let args = [
                    "-q",
                    "--no-config",
                    &format!("--max-threads={MANY_PARALLEL}"),
                    "-P",
                    &work,
                    "-i",
                    &self.url_list()?.display().to_string(),
                ]
                .map(String::from);
                ("wget2", args.to_vec(), Stdio::null())
            }
            (Tool::Curl, Case::Ranges) => {
                // One operation per range, separated by `next`; one invocation, so the transfers
                // share curl's connection pool (one keep-alive connection, used in sequence).
                let config = scratch.join("ranges.curl");
                let mut text = String::new();
                for (i, r) in self.fixtures.ranges.iter().enumerate() {
                    if i > 0 {
                        text.push_str("next\n");
                    }
                    writeln!(
                        text,
                        "silent\nfail\nrange = \"{}-{}\"\nurl = \"{}\"",
                        r.offset,
                        r.offset + r.length - 1,
                        self.big_url()
                    )?;
                }
                std::fs::write(&config, text)?;
                let out = std::fs::File::create(self.work.join("ranges.bin"))?;
                let args = ["-K".to_string(), config.display().to_string()];
                ("curl", args.to_vec(), Stdio::from(out))
            }
            (tool, case) => bail!("no command for {tool:?} in case {}", case.name()),
        };
        run_under_time(program, &args, stdout, scratch)
    }

    /// [`Tool::DiskFloor`]: its CPU and peak RSS are this process's.
    fn run_disk_floor(&self) -> Result<Sample> {
        reset_peak_rss("self")?;
        let cpu_before = cpu_seconds("self")?;
        let started = Instant::now();
        let (sources, work) = (self.fixtures.root().join("many"), &self.work);
        self.each_many_file(|name| {
            let data = std::fs::read(sources.join(name))?;
            let mut file = std::fs::File::create(work.join(name))?;
            std::io::Write::write_all(&mut file, &data)?;
            Ok(file.sync_data()?)
        })?;
        let wall = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds("self")? - cpu_before;
        Ok(Sample { wall, cpu, peak_rss_mib: peak_rss_mib("self")? })
    }

    /// [`Tool::CurlSynced`]: curl's sample, with the syncs' wall and CPU time added.
    fn run_curl_synced(&self) -> Result<Sample> {
        let curl = self.run_peer(Case::Many, Tool::Curl)?;
        let cpu_before = cpu_seconds("self")?;
        let started = Instant::now();
        let work = &self.work;
        self.each_many_file(|name| Ok(std::fs::File::open(work.join(name))?.sync_data()?))?;
        Ok(Sample {
            wall: curl.wall + started.elapsed().as_secs_f64(),
            cpu: curl.cpu + cpu_seconds("self")? - cpu_before,
            peak_rss_mib: curl.peak_rss_mib,
        })
    }

    /// Runs `work` on the name of every file of the many case, spread over 16 threads (as many
    /// as the downloaders get connections).
    fn each_many_file(&self, work: impl Fn(&str) -> Result<()> + Sync) -> Result<()> {
        let names: Vec<&str> = self.fixtures.many.iter().map(|(n, _)| n.as_str()).collect();
        let threads = MANY_PARALLEL as usize;
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (names, work) = (&names, &work);
                    scope.spawn(move || -> Result<()> {
                        names.iter().skip(t).step_by(threads).try_for_each(|name| work(name))
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join().map_err(|_| anyhow::anyhow!("a file thread panicked"))?
            })
        })
    }

    /// The small files' URLs, one a line (aria2c -i, wget2 -i).
    fn url_list(&self) -> Result<PathBuf> {
        let path = self.scratch.path().join("many.list");
        if !path.exists() {
            let mut text = String::new();
            for (name, _) in &self.fixtures.many {
                writeln!(text, "{}", self.many_url(name))?;
            }
            std::fs::write(&path, text)?;
        }
        Ok(path)
    }

    /// Sizes always; content too when `verify`. Nothing but the expected files may be left.
    fn check_output(&self, case: Case, tool: Tool, verify: bool) -> Result<()> {
        let f = &self.fixtures;
        let mut expected: Vec<(String, u64, Option<&str>)> = match case {
            Case::Single | Case::Multi4 | Case::Multi16 => {
                vec![(BIG_NAME.to_string(), f.big_size, f.big_sha.as_deref())]
            }
            Case::Many => f
                .many
                .iter()
                .map(|(n, sha)| (n.clone(), MANY_FILE_SIZE as u64, Some(sha.as_str())))
                .collect(),
            Case::Ranges => vec![("ranges.bin".to_string(), RANGE_COUNT * RANGE_SIZE, None)],
        };
        expected.sort();
        let mut found: Vec<String> = std::fs::read_dir(&self.work)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        found.sort();
        let names: Vec<&String> = expected.iter().map(|(n, _, _)| n).collect();
        if found.iter().collect::<Vec<_>>() != names {
            let extra: Vec<&String> = found.iter().filter(|n| !names.contains(n)).take(5).collect();
            let missing: Vec<&&String> =
                names.iter().filter(|n| !found.contains(n)).take(5).collect();
            bail!(
                "{}: {} files instead of {} (extra, first 5: {extra:?}; missing, first 5: {missing:?})",
                tool.label(case),
                found.len(),
                names.len()
            );
        }
        for (name, size, sha) in &expected {
            let path = self.work.join(name);
            let len = std::fs::metadata(&path)?.len();
            ensure!(len == *size, "{} has {len} bytes, not {size}", path.display());
            if verify && let Some(sha) = sha {
                ensure!(sha256_file(&path)? == *sha, "{} has the wrong content", path.display());
            }
        }
        if case == Case::Ranges && verify {
            let got = std::fs::read(self.work.join("ranges.bin"))?;
            ensure!(
                got == f.ranges_bytes,
                "ranges.bin does not hold the requested ranges in order"
            );
        }
        Ok(())
    }
}

/// Waits until process `pid` is idle (at most one clock tick of CPU in 200 ms) and, unless
/// `pid_only`, the whole machine is too (under 10% of its CPUs busy in those 200 ms: kernel
/// writeback of the previous run, or someone else's work). Gives up after 30 s and says so;
/// returns whether the machine was quiet.
async fn settle(pid: &str, pid_only: bool) -> Result<bool> {
    let started = Instant::now();
    loop {
        let before = cpu_seconds(pid)?;
        let (busy_before, total_before) = machine_cpu_ticks()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (busy, total) = machine_cpu_ticks()?;
        let machine = (busy - busy_before) as f64 / (total - total_before).max(1) as f64;
        let process_idle = cpu_seconds(pid)? - before <= 0.011;
        if process_idle && (pid_only || machine < 0.10) {
            return Ok(true);
        }
        if started.elapsed() > Duration::from_secs(30) {
            println!(
                "note: still busy after 30 s (machine {:.0}% busy, process {pid} idle: {process_idle}); \
                 going on, this run may be disturbed",
                machine * 100.0
            );
            return Ok(false);
        }
    }
}

fn ensure_ok(code: Code) -> Result<()> {
    ensure!(code == Code::S_OK, "the daemon answered {} instead of S_OK", code.name());
    Ok(())
}

/// `target/release`, where `cargo build --release --workspace --bins` puts bitsd and bitsctl.
fn release_dir() -> Result<PathBuf> {
    let dir = own_target_dir();
    for name in ["bitsd", "bitsctl"] {
        ensure!(
            dir.join(name).is_file(),
            "{} is missing: run `cargo build --release --workspace --bins` first",
            dir.join(name).display()
        );
    }
    if !dir.ends_with("release") {
        println!(
            "note: using the binaries in {} (not a release build: the numbers mean little)",
            dir.display()
        );
    }
    Ok(dir)
}

fn age(path: &Path) -> String {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map(|d| format!("built {} min ago", d.as_secs() / 60))
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = parse_options()?;
    let bin_dir = release_dir()?;
    println!("bitsd: {} ({})", bin_dir.join("bitsd").display(), age(&bin_dir.join("bitsd")));

    let root = rustix::process::geteuid().is_root();
    let mut installer = Installer { updated: false, root };
    ensure!(installer.ensure("curl", "curl")?, "curl is required");
    ensure!(installer.ensure("aria2c", "aria2")?, "aria2c is required");
    ensure!(
        installer.ensure(GNU_TIME, "time")?,
        "{GNU_TIME} (package time) is required to measure the peers"
    );
    let has_wget2 = if options.cases.contains(&Case::Many) {
        let ok = installer.ensure("wget2", "wget2")?;
        if !ok {
            println!("note: wget2 is not available; the many-files case runs without it");
        }
        ok
    } else {
        false
    };
    println!("nginx: {}", version_line(&nginx_binary().display().to_string(), "-v"));
    println!("curl: {}", version_line("curl", "--version"));
    println!("aria2c: {}", version_line("aria2c", "--version"));
    if has_wget2 {
        println!("wget2: {}", version_line("wget2", "--version"));
    }
    println!("cpus: {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));

    let fixtures = Fixtures::generate(&options)?;
    let nginx = Nginx::start(fixtures.root());
    let euid = rustix::process::geteuid().as_raw().to_string();
    // Admin: AddFileSet of 1,000 files is beyond the per-job file limit of other users.
    let daemon = TestDaemon::start_from(&bin_dir, &options.dir, &["--admin-uid", &euid]).await;
    let client = daemon.client().await;
    let work = daemon.out_dir().join("run");
    let scratch = tempfile::Builder::new().prefix("bits-bench-scratch-").tempdir()?;
    println!("sources: {} (nginx on {})", fixtures.root().display(), nginx.addr());
    println!("destinations: {} (bitsd data dir {})", work.display(), daemon.data_dir().display());
    // Warm-up: every source file in the page cache before the first timed run.
    for entry in walk(fixtures.root())? {
        let mut file = std::fs::File::open(&entry)?;
        std::io::copy(&mut file, &mut std::io::sink())?;
    }
    let bench = Bench {
        options,
        fixtures,
        nginx,
        daemon,
        client,
        work,
        scratch,
        has_wget2,
        disturbed: Default::default(),
        kept: Default::default(),
    };

    let started = Instant::now();
    let mut results: BTreeMap<Case, Vec<(Tool, Vec<Sample>)>> = BTreeMap::new();
    for &case in &bench.options.cases {
        let tools = bench.tools(case);
        let mut samples: Vec<(Tool, Vec<Sample>)> =
            tools.iter().map(|t| (*t, Vec::new())).collect();
        println!("\n## {} ({})", case.name(), case.describe(bench.options.size_mib));
        for run in 0..bench.options.runs {
            let mut order = tools.clone();
            if run % 2 == 1 {
                order.reverse();
            }
            for tool in order {
                let sample = bench.run(case, tool, run == 0).await?;
                println!(
                    "run {:>2}  {:<28} {:>7.3} s  {:>8.1} MiB/s  cpu {:>6.2} s  peak rss {:>7.1} MiB",
                    run + 1,
                    tool.label(case),
                    sample.wall,
                    bench.fixtures.bytes(case) as f64 / (1 << 20) as f64 / sample.wall,
                    sample.cpu,
                    sample.peak_rss_mib
                );
                if let Some((_, list)) = samples.iter_mut().find(|(t, _)| *t == tool) {
                    list.push(sample);
                }
            }
        }
        results.insert(case, samples);
    }
    println!("\nall runs took {:.0} s", started.elapsed().as_secs_f64());
    print_table(&bench, &results);
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

/// `bitsctl download` against `curl -o` of the same file in the same runs: the ratio of their
/// medians, and the median of the per-run ratios (each run's pair ran back to back, so this one
/// cancels most of a noisy machine's drift). The goal is ≤ 1.0.
fn print_bitsctl_vs_curl(samples: &[(Tool, Vec<Sample>)]) {
    let walls = |tool: Tool| -> Vec<f64> {
        samples
            .iter()
            .find(|(t, _)| *t == tool)
            .map(|(_, list)| list.iter().map(|s| s.wall).collect())
            .unwrap_or_default()
    };
    let (ctl, curl) = (walls(Tool::Bitsctl), walls(Tool::Curl));
    let (Some(ctl_median), Some(curl_median)) = (summarize(&ctl), summarize(&curl)) else {
        return;
    };
    let per_run: Vec<f64> = ctl.iter().zip(&curl).map(|(a, b)| a / b).collect();
    let Some(paired) = summarize(&per_run) else { return };
    println!(
        "\nbitsctl download / curl -o (single): ratio of medians {:.3} ({:.3} s / {:.3} s); \
         median of per-run ratios {:.3} (min {:.3}, max {:.3}); goal ≤ 1.0",
        ctl_median.median / curl_median.median,
        ctl_median.median,
        curl_median.median,
        paired.median,
        paired.min,
        paired.max
    );
}

fn print_table(bench: &Bench, results: &BTreeMap<Case, Vec<(Tool, Vec<Sample>)>>) {
    let mut table = Table::new(
        &["case", "tool", "median s", "min–max s", "MiB/s", "bitsd/peer", "CPU s", "peak RSS MiB"],
        2,
    );
    for (case, samples) in results {
        let mib = bench.fixtures.bytes(*case) as f64 / (1 << 20) as f64;
        let median_of = |tool: Tool| {
            samples
                .iter()
                .find(|(t, _)| *t == tool)
                .and_then(|(_, s)| summarize(&s.iter().map(|s| s.wall).collect::<Vec<_>>()))
                .map(|s| s.median)
        };
        let bitsd = median_of(Tool::Bitsd);
        for (tool, list) in samples {
            let walls: Vec<f64> = list.iter().map(|s| s.wall).collect();
            let cpus: Vec<f64> = list.iter().map(|s| s.cpu).collect();
            let (Some(wall), Some(cpu)) = (summarize(&walls), summarize(&cpus)) else {
                continue;
            };
            let rss = list.iter().map(|s| s.peak_rss_mib).fold(0.0, f64::max);
            let ratio = match (tool, bitsd) {
                (Tool::Bitsd | Tool::Bitsctl, _) | (_, None) => "—".to_string(),
                (_, Some(b)) => format!("{:.2}", b / wall.median),
            };
            table.row(vec![
                case.name().to_string(),
                tool.label(*case).to_string(),
                format!("{:.3}", wall.median),
                format!("{:.3}–{:.3}", wall.min, wall.max),
                format!("{:.0}", mib / wall.median),
                ratio,
                format!("{:.2}", cpu.median),
                format!("{:.1}", rss),
            ]);
        }
    }
    println!();
    for case in results.keys() {
        println!("{:<8} {}", case.name(), case.describe(bench.options.size_mib));
    }
    println!(
        "median of {} runs; bitsd/peer = bitsd median time ÷ peer median time (< 1: bitsd faster); \
         CPU s = median user+sys per run (bitsd: daemon + client or bitsctl); peak RSS = max over runs \
         (bitsd: daemon VmHWM)\n",
        bench.options.runs
    );
    print!("{}", table.render());
    if let Some(samples) = results.get(&Case::Single) {
        print_bitsctl_vs_curl(samples);
    }
    let disturbed = bench.disturbed.get();
    if disturbed > 0 {
        println!(
            "\nwarning: {disturbed} runs started while the machine was busy with other work \
             (see the notes above); the numbers may be disturbed"
        );
    }
}
