//! control: the gRPC control plane of bitsd at scale and under load (issue 5, item 4).
//!
//!     cargo build --release --workspace --bins
//!     cargo run --release -p bits-bench --bin control -- [--jobs 10000]
//!
//! Options: `--jobs N` (queued jobs, default 10,000; `--jobs 1000` is a quick run), `--calls N`
//! (timed GetProgress calls on queued jobs, default 10,000), `--size-mib N` (the file downloaded
//! under load, default 1024), `--rounds N` (loaded transfers, default 3), `--dir PATH` (where the
//! served files, the daemon's data dir and the destinations go; default: the system temp dir),
//! `--bitsd PATH` (the daemon binary; default: the `bitsd` in this executable's target dir),
//! `--bitsd-arg ARG` (repeatable: an extra daemon flag, e.g. `--bitsd-arg --keep-awake-us=0`).
//!
//! 1. Scale: a release `bitsd` on a fresh data dir; N jobs, each CreateJob + AddFile (a URL on a
//!    private nginx, a destination in a temp dir; the jobs stay SUSPENDED) through one keep-alive
//!    client, timing each pair; the daemon's VmRSS/VmHWM; ListJobs with N jobs (median of 10);
//!    GetProgress on random jobs; then SIGTERM, start again on the same store, and time spawn →
//!    first successful ListJobs, and the RSS after start.
//! 2. Under load: with the N jobs still queued, a FOREGROUND job downloads a generated file from
//!    nginx on loopback while one client alternates GetProgress on that job and on a random
//!    queued job; only calls made while the transfer runs count. A first, unpolled transfer gives
//!    the throughput the polling is compared with.
//!
//! Every phase uses a fresh client and warms up before it measures. Medians and p99 are nearest-
//! rank values of the sorted samples. The client runs on a current-thread runtime, so it uses at
//! most one core beside the daemon.

// A benchmark's output is its table on stdout.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bits_bench::measure;
use bits_client::Client;
use bits_core::{JobId, JobState, Priority};
use bits_testkit::data::write_random_file;
use bits_tests::daemon::own_target_dir;
use bits_tests::nginx::Nginx;

// ---- options --------------------------------------------------------------------------------

struct Options {
    jobs: usize,
    calls: usize,
    size_mib: u64,
    rounds: usize,
    dir: PathBuf,
    bitsd: Option<PathBuf>,
    /// Extra flags for the daemon (e.g. `--keep-awake-us 0`, to compare settings).
    bitsd_args: Vec<String>,
}

fn parse_options() -> Result<Options> {
    let mut options = Options {
        jobs: 10_000,
        calls: 10_000,
        size_mib: 1024,
        rounds: 3,
        dir: std::env::temp_dir(),
        bitsd: None,
        bitsd_args: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--jobs" => options.jobs = value()?.parse().context("--jobs")?,
            "--calls" => options.calls = value()?.parse().context("--calls")?,
            "--size-mib" => options.size_mib = value()?.parse().context("--size-mib")?,
            "--rounds" => options.rounds = value()?.parse().context("--rounds")?,
            "--dir" => options.dir = PathBuf::from(value()?),
            "--bitsd" => options.bitsd = Some(PathBuf::from(value()?)),
            "--bitsd-arg" => options.bitsd_args.push(value()?),
            "-h" | "--help" => {
                eprintln!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    ensure!(
        options.jobs > 0 && options.calls > 0 && options.size_mib > 0 && options.rounds > 0,
        "--jobs, --calls, --size-mib and --rounds must be positive"
    );
    Ok(options)
}

const USAGE: &str = "usage: control [--jobs N] [--calls N] [--size-mib N] [--rounds N] [--dir PATH] \
                     [--bitsd PATH] [--bitsd-arg ARG]...";

// ---- statistics -----------------------------------------------------------------------------

/// Sorted latency samples.
struct Samples(Vec<Duration>);

impl Samples {
    fn new(mut samples: Vec<Duration>) -> Samples {
        samples.sort_unstable();
        Samples(samples)
    }

    /// Nearest-rank percentile (`p` in 0..=100) of the sorted samples.
    fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    fn median(&self) -> Duration {
        self.percentile(50.0)
    }

    fn p99(&self) -> Duration {
        self.percentile(99.0)
    }

    fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// A small xorshift generator: random job picks without a dependency, the same every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    call: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<(T, Duration)> {
    let start = Instant::now();
    let value = call.await.map_err(|e| anyhow!("{what}: {e}"))?;
    Ok((value, start.elapsed()))
}

// ---- the daemon -----------------------------------------------------------------------------

/// A release `bitsd` on its own socket and data dir; spawned and stopped by this benchmark so that
/// start-up can be timed to the millisecond.
struct Daemon {
    bitsd: PathBuf,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Daemon {
    fn socket(&self) -> PathBuf {
        self.dir.join("bitsd.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("bitsd.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn pid(&self) -> Result<u32> {
        self.child.as_ref().map(Child::id).ok_or_else(|| anyhow!("bitsd is not running"))
    }

    /// Spawns the process and returns the moment it was spawned.
    fn spawn(&mut self) -> Result<Instant> {
        ensure!(self.child.is_none(), "bitsd is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let spawned = Instant::now();
        let child = Command::new(&self.bitsd)
            .arg("--socket")
            .arg(self.socket())
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(&self.args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .env_remove("BITSD_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot run {}", self.bitsd.display()))?;
        self.child = Some(child);
        Ok(spawned)
    }

    /// Polls (every 1 ms) until ListJobs succeeds; returns the time since `spawned` and how many
    /// jobs the first ListJobs returned.
    async fn wait_ready(&mut self, spawned: Instant) -> Result<(Duration, usize)> {
        loop {
            if let Some(status) = self.child.as_mut().map(Child::try_wait).transpose()?.flatten() {
                self.child = None;
                bail!("bitsd exited with {status} before serving\n{}", self.log_tail());
            }
            if let Ok(client) = Client::connect(&self.socket()).await
                && let Ok(jobs) = client.list_jobs().await
            {
                return Ok((spawned.elapsed(), jobs.len()));
            }
            if spawned.elapsed() > Duration::from_secs(120) {
                bail!("bitsd did not serve within 120 s\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// SIGTERM and wait for the exit; returns the status and how long the exit took.
    async fn terminate(&mut self) -> Result<(ExitStatus, Duration)> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("bitsd is not running"))?;
        let pid = rustix::process::Pid::from_raw(child.id() as i32)
            .ok_or_else(|| anyhow!("bad pid {}", child.id()))?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        let sent = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status, sent.elapsed()));
            }
            if sent.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("bitsd did not exit within 60 s of SIGTERM\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// (VmRSS, VmHWM) in MiB.
    fn rss(&self) -> Result<(f64, f64)> {
        let pid = self.pid()?.to_string();
        Ok((measure::rss_mib(&pid)?, measure::peak_rss_mib(&pid)?))
    }

    /// utime + stime in seconds.
    fn cpu_seconds(&self) -> Result<f64> {
        measure::cpu_seconds(&self.pid()?.to_string())
    }

    async fn client(&self) -> Result<Client> {
        Client::connect(&self.socket())
            .await
            .map_err(|e| anyhow!("connect: {e}\n{}", self.log_tail()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---- the table ------------------------------------------------------------------------------

enum Goal {
    /// At most this much.
    AtMost(f64),
    /// Printed only.
    None,
}

struct Row {
    metric: String,
    value: f64,
    unit: &'static str,
    goal: Goal,
    reference: &'static str,
}

struct Table(Vec<Row>);

impl Table {
    fn add(&mut self, metric: impl Into<String>, value: f64, unit: &'static str, goal: Goal) {
        self.add_ref(metric, value, unit, goal, "");
    }

    fn add_ref(
        &mut self,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
        goal: Goal,
        reference: &'static str,
    ) {
        self.0.push(Row { metric: metric.into(), value, unit, goal, reference });
    }

    fn latency(
        &mut self,
        metric: &str,
        samples: &Samples,
        median: Goal,
        p99: Goal,
        refs: [&'static str; 2],
    ) {
        self.add_ref(format!("{metric} median"), us(samples.median()), "µs", median, refs[0]);
        self.add_ref(format!("{metric} p99"), us(samples.p99()), "µs", p99, refs[1]);
        self.add(format!("{metric} max"), us(samples.max()), "µs", Goal::None);
    }

    fn print(&self) {
        let number = |v: f64| {
            if v >= 100.0 || v == v.trunc() { format!("{v:.0}") } else { format!("{v:.2}") }
        };
        let metric_w = self.0.iter().map(|r| r.metric.chars().count()).max().unwrap_or(0).max(6);
        println!(
            "{:<metric_w$}  {:>12}  {:>12}  {:<6}  aria2 reference",
            "metric", "bitsd", "target", "verdict"
        );
        println!("{}", "-".repeat(metric_w + 60));
        for row in &self.0 {
            let value = format!("{} {}", number(row.value), row.unit);
            let (target, verdict) = match row.goal {
                Goal::AtMost(limit) => (
                    format!("≤ {} {}", number(limit), row.unit),
                    if row.value <= limit { "ok" } else { "MISS" },
                ),
                Goal::None => (String::new(), ""),
            };
            let pad = |s: &str, w: usize| {
                let n = s.chars().count();
                format!("{}{s}", " ".repeat(w.saturating_sub(n)))
            };
            let metric_pad = " ".repeat(metric_w - row.metric.chars().count());
            println!(
                "{}{metric_pad}  {}  {}  {verdict:<6}  {}",
                row.metric,
                pad(&value, 12),
                pad(&target, 12),
                row.reference
            );
        }
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// 200 overwrites of 1 KiB inside a preallocated file, each followed by fdatasync, on the data
/// dir's filesystem: what one durable store flush costs at least on this disk.
fn disk_sync_latency(dir: &Path) -> Result<Vec<Duration>> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("sync-probe.bin");
    let file = std::fs::File::create(&path)?;
    file.write_all_at(&vec![1u8; 1 << 20], 0)?;
    file.sync_all()?;
    let block = vec![2u8; 1024];
    let mut samples = Vec::with_capacity(200);
    for i in 0..200u64 {
        let start = Instant::now();
        file.write_all_at(&block, (i % 1024) * 1024)?;
        file.sync_data()?;
        samples.push(start.elapsed());
    }
    std::fs::remove_file(&path)?;
    Ok(samples)
}

// ---- the benchmark --------------------------------------------------------------------------

/// `--bitsd PATH`, else the release `bitsd` next to this executable (target/release), or a
/// message how to build it.
fn bitsd_binary(options: &Options) -> Result<PathBuf> {
    let path = options.bitsd.clone().unwrap_or_else(|| own_target_dir().join("bitsd"));
    ensure!(
        path.is_file(),
        "{} is missing: run `cargo build --release --workspace --bins` first",
        path.display()
    );
    Ok(path)
}

const SMALL: &str = "small.bin";
const BIG: &str = "big.bin";

fn main() -> Result<()> {
    let options = parse_options()?;
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run(options))
}

async fn run(options: Options) -> Result<()> {
    let bitsd = bitsd_binary(&options)?;
    let work = tempfile::Builder::new().prefix("bits-bench-control-").tempdir_in(&options.dir)?;
    let served = work.path().join("served");
    let out = work.path().join("out");
    let daemon_dir = work.path().join("daemon");
    for dir in [&served, &out, &daemon_dir] {
        std::fs::create_dir(dir)?;
    }
    std::fs::write(served.join(SMALL), vec![7u8; 4096])?;
    let big_len = options.size_mib << 20;
    eprintln!("generating {} MiB in {}", options.size_mib, served.display());
    write_random_file(&served.join(BIG), 5, big_len)?;
    let nginx = Nginx::start(&served);

    let limit = (options.jobs + 100).to_string();
    let mut args: Vec<String> =
        vec!["--max-jobs-per-user".into(), limit.clone(), "--max-jobs-per-machine".into(), limit];
    args.extend(options.bitsd_args.iter().cloned());
    let mut daemon = Daemon { bitsd, dir: daemon_dir, args, child: None };
    let spawned = daemon.spawn()?;
    let (first_start, _) = daemon.wait_ready(spawned).await?;
    let mut table = Table(Vec::new());
    let n = options.jobs;
    println!(
        "bitsd control plane: {n} queued jobs, {} GetProgress calls, {} MiB under load, {} rounds",
        options.calls, options.size_mib, options.rounds
    );
    table.add("start-up, empty store", ms(first_start), "ms", Goal::None);

    // ---- 1. scale: create ----
    let client = daemon.client().await?;
    let small_url = nginx.url(SMALL);
    for i in 0..50 {
        let job = client.create_job(&format!("warm-up {i}"), Priority::Normal).await?;
        client.add_file(job, &small_url, &out.join(format!("warm-{i}.bin"))).await?;
        client.cancel(job).await?;
    }
    eprintln!("creating {n} jobs");
    let mut jobs = Vec::with_capacity(n);
    let mut create = Vec::with_capacity(n);
    let mut create_only = Vec::with_capacity(n);
    let mut add_only = Vec::with_capacity(n);
    let all = Instant::now();
    for i in 0..n {
        let start = Instant::now();
        let job = client
            .create_job(&format!("bench job {i}"), Priority::Normal)
            .await
            .map_err(|e| anyhow!("CreateJob #{i}: {e}"))?;
        let created = start.elapsed();
        client
            .add_file(job, &small_url, &out.join(format!("f{i}.bin")))
            .await
            .map_err(|e| anyhow!("AddFile #{i}: {e}"))?;
        let both = start.elapsed();
        create.push(both);
        create_only.push(created);
        add_only.push(both - created);
        jobs.push(job);
    }
    let create_total = all.elapsed();
    let create = Samples::new(create);
    table.latency(
        &format!("CreateJob+AddFile ({n} jobs)"),
        &create,
        Goal::AtMost(1000.0),
        Goal::None,
        ["aria2 addUri at 10k: 2300 µs", ""],
    );
    table.add("CreateJob+AddFile total", create_total.as_secs_f64(), "s", Goal::None);
    table.add(
        "  of which CreateJob median",
        us(Samples::new(create_only).median()),
        "µs",
        Goal::None,
    );
    table.add("  of which AddFile median", us(Samples::new(add_only).median()), "µs", Goal::None);
    let floor = Samples::new(disk_sync_latency(&daemon.dir)?);
    table.add("  disk floor: 1 KiB write+fdatasync median", us(floor.median()), "µs", Goal::None);
    drop(client);
    let (rss, hwm) = daemon.rss()?;
    table.add_ref(
        format!("RSS with {n} jobs (VmRSS)"),
        rss,
        "MiB",
        Goal::AtMost(100.0),
        "aria2: 134 MiB",
    );
    table.add("peak RSS (VmHWM)", hwm, "MiB", Goal::None);

    // ---- 1. scale: ListJobs ----
    let client = daemon.client().await?;
    for _ in 0..2 {
        client.list_jobs().await?;
    }
    let mut list = Vec::new();
    for _ in 0..10 {
        let (listed, took) = timed("ListJobs", client.list_jobs()).await?;
        ensure!(listed.len() == n, "ListJobs returned {} jobs, expected {n}", listed.len());
        list.push(took);
    }
    let list = Samples::new(list);
    table.add(format!("ListJobs, {n} jobs (median of 10)"), ms(list.median()), "ms", Goal::None);
    table.add("ListJobs max of 10", ms(list.max()), "ms", Goal::None);
    drop(client);

    // ---- 1. scale: GetProgress ----
    let client = daemon.client().await?;
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for _ in 0..1000 {
        client.get_progress(jobs[rng.below(n)]).await?;
    }
    let mut progress = Vec::with_capacity(options.calls);
    for _ in 0..options.calls {
        let (_, took) = timed("GetProgress", client.get_progress(jobs[rng.below(n)])).await?;
        progress.push(took);
    }
    let progress = Samples::new(progress);
    table.latency(
        &format!("GetProgress, random of {n}"),
        &progress,
        Goal::AtMost(150.0),
        Goal::AtMost(350.0),
        ["aria2 tellStatus: 181 µs", "aria2 tellStatus: 329 µs"],
    );
    drop(client);
    let (rss, _) = daemon.rss()?;
    table.add("RSS after the calls (VmRSS)", rss, "MiB", Goal::None);

    // ---- 1. scale: restart ----
    eprintln!("restarting");
    let (status, stop) = daemon.terminate().await?;
    ensure!(status.success(), "bitsd exited with {status} after SIGTERM\n{}", daemon.log_tail());
    table.add("SIGTERM → exit", ms(stop), "ms", Goal::None);
    let spawned = daemon.spawn()?;
    let (startup, listed) = daemon.wait_ready(spawned).await?;
    ensure!(listed == n, "after the restart ListJobs returned {listed} jobs, expected {n}");
    let (rss, hwm) = daemon.rss()?;
    table.add(
        format!("start-up with {n} jobs (spawn → ListJobs)"),
        ms(startup),
        "ms",
        Goal::AtMost(1000.0),
    );
    table.add("RSS after start (VmRSS)", rss, "MiB", Goal::AtMost(100.0));
    table.add("peak RSS during start (VmHWM)", hwm, "MiB", Goal::None);
    table.add("CPU during start", daemon.cpu_seconds()?, "s", Goal::None);

    // ---- 2. under load ----
    under_load(&options, &daemon, &nginx, &out, &jobs, &mut table).await?;
    let (rss, hwm) = daemon.rss()?;
    table.add("RSS after the transfers (VmRSS)", rss, "MiB", Goal::None);
    table.add("peak RSS since restart (VmHWM)", hwm, "MiB", Goal::None);

    let (status, _) = daemon.terminate().await?;
    ensure!(status.success(), "bitsd exited with {status} after SIGTERM\n{}", daemon.log_tail());
    println!();
    table.print();
    Ok(())
}

/// One FOREGROUND download of the big file per round, polled (or, in round 0, left alone) until
/// every byte is in; then Complete and delete the result.
async fn under_load(
    options: &Options,
    daemon: &Daemon,
    nginx: &Nginx,
    out: &Path,
    queued: &[JobId],
    table: &mut Table,
) -> Result<()> {
    let client = daemon.client().await?;
    let url = nginx.url(BIG);
    let size = options.size_mib << 20;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Warm-up on this client.
    for _ in 0..500 {
        client.get_progress(queued[rng.below(queued.len())]).await?;
    }
    let mut running = Vec::new();
    let mut other = Vec::new();
    let mut loaded_secs = Vec::new();
    let mut quiet_secs = 0.0;
    let cpu_before = daemon.cpu_seconds()?;
    for round in 0..=options.rounds {
        let dest = out.join(format!("big-{round}.bin"));
        let job = client.create_job(&format!("big {round}"), Priority::Foreground).await?;
        client.add_file(job, &url, &dest).await?;
        eprintln!("transfer round {round} ({})", if round == 0 { "unpolled" } else { "polled" });
        let started = Instant::now();
        client.resume(job).await?;
        loop {
            let (p, took) = timed("GetProgress (running)", client.get_progress(job)).await?;
            let done = p.bytes_transferred >= size;
            if round == 0 {
                if done {
                    break;
                }
                let state = client.get_job(job).await?.state;
                ensure!(
                    !matches!(state, JobState::Error | JobState::TransientError),
                    "the download failed: {state:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if done {
                break;
            }
            // Bytes still flowing: the call counts.
            running.push(took);
            let (_, took) =
                timed("GetProgress (queued)", client.get_progress(queued[rng.below(queued.len())]))
                    .await?;
            other.push(took);
            if started.elapsed() > Duration::from_secs(600) {
                bail!("the {} MiB download did not finish in 600 s", options.size_mib);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        if round == 0 {
            quiet_secs = secs;
        } else {
            loaded_secs.push(secs);
        }
        // Wait for TRANSFERRED (the last range is recorded before the state changes).
        let deadline = Instant::now() + Duration::from_secs(60);
        while client.get_job(job).await?.state != JobState::Transferred {
            ensure!(Instant::now() < deadline, "the job did not reach TRANSFERRED");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client.complete(job).await?;
        std::fs::remove_file(&dest).with_context(|| format!("removing {}", dest.display()))?;
    }
    let cpu = daemon.cpu_seconds()? - cpu_before;
    let running = Samples::new(running);
    let other = Samples::new(other);
    let gib = size as f64 / f64::from(1u32 << 30);
    loaded_secs.sort_by(f64::total_cmp);
    let loaded_median = loaded_secs[loaded_secs.len() / 2];
    let label = format!("{} MiB", options.size_mib);
    table.add(format!("transfer {label}, unpolled"), gib / quiet_secs, "GiB/s", Goal::None);
    table.add(
        format!("transfer {label}, polled (median)"),
        gib / loaded_median,
        "GiB/s",
        Goal::None,
    );
    table.add(
        "daemon CPU per GiB (all rounds)",
        cpu / (gib * (options.rounds + 1) as f64),
        "s",
        Goal::None,
    );
    for (which, samples) in [("running", &running), ("queued", &other)] {
        table.latency(
            &format!("GetProgress {which} job, under load ({} calls)", samples.len()),
            samples,
            Goal::None,
            Goal::AtMost(2000.0),
            ["", ""],
        );
    }
    Ok(())
}
