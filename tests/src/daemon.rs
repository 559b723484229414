//! The real `bitsd` binary in a temp dir: started on its own socket and data dir, killed with
//! SIGKILL or stopped with SIGTERM, restarted on the same state, and driven with `bitsctl`.
//!
//! The binaries are the ones `cargo build --workspace --bins` put next to the test executable
//! (target/debug); the tests never build them themselves.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bits_client::Client;

/// How long a daemon may take to answer ListJobs after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// One daemon with its own temp dir (`bitsd.sock`, `data/`, `bitsd.log`, and `out/` for test
/// downloads). Dropping it kills the process; if the test is panicking, the tail of the daemon's
/// log is printed first.
pub struct TestDaemon {
    dir: tempfile::TempDir,
    /// Where `bitsd` and `bitsctl` are.
    bin_dir: PathBuf,
    args: Vec<String>,
    /// Added to the daemon's environment on every start.
    env: Vec<(String, OsString)>,
    child: Option<Child>,
    /// How many times the process was started; each start appends to the same log.
    starts: u32,
}

/// What a `bitsctl` run printed.
#[derive(Debug)]
pub struct CtlOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    /// Panics with the whole output unless the command exited 0.
    pub fn success(self) -> CtlOutput {
        assert!(self.status.success(), "bitsctl failed: {self}");
        self
    }
}

impl std::fmt::Display for CtlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n--- stdout ---\n{}--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

/// The target directory this executable was built into (target/debug/deps/e2e-… → target/debug;
/// target/release/download → target/release).
pub fn own_target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap().to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// `DIR/NAME`, or a panic telling how to build it.
pub fn binary_in(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (or `bash scripts/test.sh`)",
        path.display()
    );
    path
}

/// Runs `command` (stdin closed, killed if abandoned) for at most `timeout` and captures what it
/// printed; panics with `late()` if it takes longer.
pub(crate) async fn capture(
    mut command: tokio::process::Command,
    timeout: Duration,
    late: impl FnOnce() -> String,
) -> CtlOutput {
    command.stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .unwrap_or_else(|_| panic!("{}", late()))
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    CtlOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl TestDaemon {
    /// Starts `bitsd` with default settings and waits until it answers.
    pub async fn start() -> TestDaemon {
        TestDaemon::start_with(&[]).await
    }

    /// Starts `bitsd --socket DIR/bitsd.sock --data-dir DIR/data ARGS...` and waits until it answers.
    pub async fn start_with(args: &[&str]) -> TestDaemon {
        TestDaemon::start_from(&own_target_dir(), &std::env::temp_dir(), args).await
    }

    /// [`TestDaemon::start_with`] using the `bitsd` and `bitsctl` in `bin_dir` (e.g. target/release),
    /// with the daemon's temp dir created inside `parent`.
    pub async fn start_from(bin_dir: &Path, parent: &Path, args: &[&str]) -> TestDaemon {
        let mut daemon = TestDaemon::new(bin_dir, parent, args, &[]);
        daemon.spawn().await;
        daemon
    }

    /// Starts `bitsd` as [`TestDaemon::start_with`] does, with `env` added to its environment,
    /// and returns at once, without waiting for it to answer (for tests of how it comes up).
    pub fn launch(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> TestDaemon {
        let mut daemon = TestDaemon::new(&own_target_dir(), &std::env::temp_dir(), args, env);
        daemon.spawn_process();
        daemon
    }

    fn new(
        bin_dir: &Path,
        parent: &Path,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> TestDaemon {
        binary_in(bin_dir, "bitsd");
        binary_in(bin_dir, "bitsctl");
        let dir = tempfile::Builder::new().prefix("bitsd-e2e-").tempdir_in(parent).unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        TestDaemon {
            dir,
            bin_dir: bin_dir.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_os_string())).collect(),
            child: None,
            starts: 0,
        }
    }

    /// The temp dir holding everything of this daemon.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A directory for test downloads (`DIR/out`), on the same filesystem as the data dir.
    pub fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("bitsd.sock")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("bitsd.log")
    }

    /// Everything the daemon has logged, across restarts.
    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Process id of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon is not running").id()
    }

    /// The `bitsctl` this daemon is driven with.
    pub fn bitsctl_path(&self) -> PathBuf {
        binary_in(&self.bin_dir, "bitsctl")
    }

    /// A new client connection.
    pub async fn client(&self) -> Client {
        Client::connect(&self.socket()).await.unwrap_or_else(|e| {
            panic!("cannot connect to bitsd: {e}\n--- bitsd log ---\n{}", self.log_tail(40))
        })
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill_9(&mut self) {
        let mut child = self.child.take().expect("the daemon is not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM and wait (up to 20 s) for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.terminate_within(Duration::from_secs(20)).await
    }

    /// SIGTERM and wait up to `timeout` for the exit status; panics (after SIGKILL) if it takes longer.
    pub async fn terminate_within(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the daemon is not running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let sent = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if sent.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "bitsd did not exit within {timeout:?} of SIGTERM\n--- bitsd log ---\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the daemon again on the same socket and data dir (SIGKILLing it first if it is
    /// still running) and waits until it answers.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.kill_9().await;
        }
        self.spawn().await;
    }

    /// Runs `bitsctl --socket SOCKET ARGS...` (60 s at most) and captures what it printed.
    pub async fn bitsctl(&self, args: &[&str]) -> CtlOutput {
        self.bitsctl_timeout(args, Duration::from_secs(60)).await
    }

    /// [`TestDaemon::bitsctl`] with an explicit time limit.
    pub async fn bitsctl_timeout(&self, args: &[&str], timeout: Duration) -> CtlOutput {
        let mut command = tokio::process::Command::new(self.bitsctl_path());
        command.arg("--socket").arg(self.socket()).args(args).env_remove("BITSD_SOCKET");
        capture(command, timeout, || {
            format!(
                "bitsctl {args:?} did not finish within {timeout:?}\n--- bitsd log ---\n{}",
                self.log_tail(40)
            )
        })
        .await
    }

    async fn spawn(&mut self) {
        self.spawn_process();
        self.wait_ready().await;
    }

    /// Starts the process; systemd's notification variables are removed (a test runner under
    /// systemd must not pass its own on) unless the test sets them in `env`.
    fn spawn_process(&mut self) {
        self.starts += 1;
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let log_for_stdout = log.try_clone().unwrap();
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
        let child = Command::new(binary_in(&self.bin_dir, "bitsd"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(self.config_args())
            .args(&self.args)
            .env("RUST_LOG", rust_log)
            .env_remove("BITSD_SOCKET")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_for_stdout))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// `--config DIR/bitsd.toml` (an empty file: built-in defaults) unless the test passes its own
    /// `--config`, so that a configuration file on the machine (`/etc/bitsd/bitsd.toml` when the
    /// tests run as root) never changes how a test daemon behaves.
    fn config_args(&self) -> Vec<std::ffi::OsString> {
        if self.args.iter().any(|a| a == "--config" || a.starts_with("--config=")) {
            return Vec::new();
        }
        let path = self.dir.path().join("bitsd.toml");
        if !path.exists() {
            std::fs::write(&path, "").unwrap();
        }
        vec!["--config".into(), path.into()]
    }

    /// Polls until ListJobs succeeds on the socket; panics with the log if the process dies or
    /// [`READY_TIMEOUT`] passes.
    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "bitsd (start #{}) exited with {status} before answering\n--- bitsd log ---\n{}",
                    self.starts,
                    self.log_tail(60)
                );
            }
            let last_error = match Client::connect(&self.socket()).await {
                Ok(client) => match client.list_jobs().await {
                    Ok(_) => return,
                    Err(e) => format!("ListJobs: {e}"),
                },
                Err(e) => e.to_string(),
            };
            if started.elapsed() > READY_TIMEOUT {
                panic!(
                    "bitsd (start #{}) did not answer ListJobs within {READY_TIMEOUT:?}: {last_error}\n--- bitsd log ---\n{}",
                    self.starts,
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- bitsd log ({}), last 60 lines ---\n{}\n--- end of bitsd log ---",
                self.log_path().display(),
                self.log_tail(60)
            );
        }
    }
}
