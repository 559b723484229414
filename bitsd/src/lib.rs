//! bitsd: the background transfer service. [`main`] only wires: arguments and the configuration
//! file, logging, the store, the job manager, the gRPC server on a Unix socket (and on loopback TCP
//! when configured), and a clean shutdown on SIGTERM/SIGINT. A library so that tests can start
//! the daemon in their own process ([`run`], with a shutdown of their choosing); the binary is
//! `main.rs`, one call.

/// `AsyncWrite` for a connection wrapper that changes only how its stream is read or counted:
/// every write, flush and shutdown goes straight to the stream in `$field`.
macro_rules! write_through {
    ($wrapper:ident, $field:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                tokio::io::AsyncWrite::poll_write(
                    std::pin::Pin::new(&mut self.get_mut().$field),
                    cx,
                    buf,
                )
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                let inner = std::pin::Pin::new(&mut self.get_mut().$field);
                tokio::io::AsyncWrite::poll_write_vectored(inner, cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                tokio::io::AsyncWrite::is_write_vectored(&self.$field)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                tokio::io::AsyncWrite::poll_flush(
                    std::pin::Pin::new(&mut self.get_mut().$field),
                    cx,
                )
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                tokio::io::AsyncWrite::poll_shutdown(
                    std::pin::Pin::new(&mut self.get_mut().$field),
                    cx,
                )
            }
        }
    };
}

mod authority;
mod awake;
pub mod config;
mod grpc;
mod health;
mod lock;
mod metrics;
mod notify;
mod quota;
mod server;
mod tcp;
mod throttle;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Background transfer service: a persistent queue of BITS-style download jobs, served over gRPC
/// on a Unix socket.
///
/// Settings come from the flags below, then the configuration file, then built-in defaults; each
/// flag's help names the key of the file it overrides.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The configuration file [default: /etc/bitsd/bitsd.toml as root, else
    /// $XDG_CONFIG_HOME/bitsd/bitsd.toml or ~/.config/bitsd/bitsd.toml; a missing default file
    /// means built-in defaults, a missing --config file is an error]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Check the configuration file (including the admin group and the TCP token file), print one
    /// line and exit: 0 when it is valid, 1 when not. Opens and binds nothing
    #[arg(long)]
    check_config: bool,
    /// Socket to serve on [file: socket; default: $XDG_RUNTIME_DIR/bitsd/bitsd.sock, or /run/bitsd/bitsd.sock as root]
    #[arg(long, env = "BITSD_SOCKET")]
    socket: Option<PathBuf>,
    /// Where the job store lives [file: data_dir; default: $XDG_DATA_HOME/bitsd, or /var/lib/bitsd as root]
    #[arg(long, env = "BITSD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Sync downloaded data and record it as filled after this many bytes [file: transfer.sync_bytes; default: 16777216]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    sync_bytes: Option<u64>,
    /// …or after this many milliseconds, whichever comes first [file: transfer.sync_interval_ms; default: 1000]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    sync_interval_ms: Option<u64>,
    /// Minimum retry delay given to new jobs, in seconds. The operator may go below the 5 s floor
    /// that applies to jobs' own settings; at least 1 [file: transfer.retry_delay_secs; default: 600]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    retry_delay_secs: Option<u32>,
    /// No-progress timeout given to new jobs, in seconds; 0 = every error is fatal [file: transfer.no_progress_timeout_secs; default: 1209600 (14 days)]
    #[arg(long)]
    no_progress_timeout_secs: Option<u32>,
    /// Give up on a connection that sends nothing for this long (headers or body), in milliseconds [file: transfer.idle_timeout_ms; default: 60000]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_ms: Option<u64>,
    /// Give up on connecting after this long, in milliseconds [file: transfer.connect_timeout_ms; default: 30000]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    connect_timeout_ms: Option<u64>,
    /// A uid that is an administrator (repeatable; replaces the file's list). Admins are exempt
    /// from limits [file: access.admin_uids; default: 0]
    #[arg(long = "admin-uid")]
    admin_uids: Vec<u32>,
    /// After a call, the gRPC thread stays awake this long (µs) for the next one instead of
    /// sleeping at once; 0 = never; not while transfers run [file: keep_awake_us; default: 150; at most 10000]
    #[arg(long, value_parser = clap::value_parser!(u64).range(..=config::MAX_KEEP_AWAKE_US))]
    keep_awake_us: Option<u64>,
    /// Jobs one non-admin user may own [file: limits.max_jobs_per_user; default: 60]
    #[arg(long)]
    max_jobs_per_user: Option<usize>,
    /// Jobs in the queue beyond which non-admins may not create more [file: limits.max_jobs_per_machine; default: 300]
    #[arg(long)]
    max_jobs_per_machine: Option<usize>,
    /// Connections to the socket one non-admin uid may hold open [file: control.max_connections_per_user; default: 64]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_user: Option<u64>,
    /// Connections to the socket all users together may hold open; also at most half the fd
    /// limit [file: control.max_connections; default: 1024]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// WatchJob streams one non-admin uid may hold open [file: control.max_watches_per_user; default: 256]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_watches_per_user: Option<u64>,
    /// WatchJob streams all users together may hold open [file: control.max_watches; default: 2048]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_watches: Option<u64>,
    /// Close a connection to the socket that has not sent the HTTP/2 preface after this long, in milliseconds [file: control.handshake_timeout_ms; default: 10000]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    handshake_timeout_ms: Option<u64>,
    /// Close a connection to the socket with no call in flight that sent nothing for this long, in milliseconds [file: control.idle_timeout_ms; default: 600000]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    control_idle_timeout_ms: Option<u64>,
    /// Serve Prometheus metrics (counts only; no token) at http://ADDR/metrics, a loopback
    /// IP:PORT [file: metrics.listen; default: off]
    #[arg(long, value_name = "ADDR", value_parser = metrics_listen)]
    metrics_listen: Option<std::net::SocketAddr>,
}

/// `--metrics-listen`: checked as the file's `metrics.listen` is.
fn metrics_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    config::loopback_addr(text, "127.0.0.1:9781")
}

/// What bitsd can do besides serving.
#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Print bitsd's manual page (roff) on stdout: `bitsd man | man -l -`
    Man,
}

/// bitsd(8) in roff, generated from the flags above so that it cannot drift from them.
fn man_page() -> std::io::Result<Vec<u8>> {
    let mut page = Vec::new();
    let cmd = <Args as clap::CommandFactory>::command().name("bitsd");
    clap_mangen::Man::new(cmd).section("8").render(&mut page)?;
    Ok(page)
}

fn print_man() -> ExitCode {
    use std::io::Write as _;
    match man_page().and_then(|page| std::io::stdout().lock().write_all(&page)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bitsd man: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[test]
fn the_man_page_documents_every_flag() {
    let page = String::from_utf8(man_page().unwrap_or_default()).unwrap_or_default();
    assert!(page.contains(".TH bitsd 8"), "{page}");
    for arg in <Args as clap::CommandFactory>::command().get_arguments() {
        if let Some(long) = arg.get_long() {
            assert!(page.contains(&format!("\\-\\-{}", long.replace('-', "\\-"))), "--{long}");
        }
    }
}

/// The binary: arguments, configuration, logging, the data-path runtime, and [`run`] until
/// SIGTERM or SIGINT.
pub fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Sub::Man) = args.command {
        return print_man();
    }
    let config = config::load(args.config.as_deref());
    if args.check_config {
        return check_config(config);
    }
    let config = match config {
        Ok(config) => {
            init_logging(&config.log);
            config
        }
        Err(e) => {
            init_logging(&config::Log::default());
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // The data path (workers, writes, syncs) runs here, a little below normal priority, so the
    // control plane — served from its own thread, see `run` — answers promptly even when the
    // transfers keep every core busy.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bitsd-data")
        .on_thread_start(lower_priority)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-config`: one line on stdout when the configuration is valid, the error on stderr
/// when not. A command-line mode, not the daemon, so it prints rather than logs.
#[allow(clippy::print_stdout)]
fn check_config(config: Result<config::Config, config::ConfigError>) -> ExitCode {
    match config {
        Ok(config) => {
            match &config.origin {
                config::Origin::File(path) => println!("config OK: {}", path.display()),
                other => println!("{other}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (the journal under systemd), as text or one JSON object a line; colours
/// only on a terminal, so files and the journal get plain text. A valid `RUST_LOG` wins over
/// `log.level`, so a developer can turn up one module without editing the file.
fn init_logging(log: &config::Log) {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match log.format {
        config::LogFormat::Text => logger.init(),
        config::LogFormat::Json => logger.json().init(),
    }
}

/// The manager's settings: each from its flag, else from the configuration file (which holds the
/// built-in default for anything it does not set).
fn manager_config(args: &Args, config: &config::Config) -> bits_manager::ManagerConfig {
    let transfer = &config.transfer;
    bits_manager::ManagerConfig {
        sync_bytes: args.sync_bytes.unwrap_or(transfer.sync_bytes),
        sync_interval: Duration::from_millis(
            args.sync_interval_ms.unwrap_or(transfer.sync_interval_ms),
        ),
        default_retry_delay_secs: args.retry_delay_secs.unwrap_or(transfer.retry_delay_secs),
        default_no_progress_timeout_secs: args
            .no_progress_timeout_secs
            .unwrap_or(transfer.no_progress_timeout_secs),
        http: bits_http::HttpConfig {
            idle_timeout: Duration::from_millis(
                args.idle_timeout_ms.unwrap_or(transfer.idle_timeout_ms),
            ),
            connect_timeout: Duration::from_millis(
                args.connect_timeout_ms.unwrap_or(transfer.connect_timeout_ms),
            ),
            ..Default::default()
        },
        admin_uids: if args.admin_uids.is_empty() {
            config.admins.uids.clone()
        } else {
            args.admin_uids.clone()
        },
        admin_gids: config.admins.gids.clone(),
        max_jobs_per_user: args.max_jobs_per_user.unwrap_or(config.limits.max_jobs_per_user),
        max_jobs_per_machine: args
            .max_jobs_per_machine
            .unwrap_or(config.limits.max_jobs_per_machine),
        // Not a setting: see its doc comment for why 20 ms.
        new_job_flush_delay: bits_manager::ManagerConfig::default().new_job_flush_delay,
        // Not a setting (yet): 5 minutes, as documented in the README.
        notify_cmd_timeout: bits_manager::ManagerConfig::default().notify_cmd_timeout,
    }
}

/// The control socket's settings: each from its flag, else from the configuration file. The
/// connection cap is also held to half the fd limit, so that callers cannot take the fds the
/// transfers and the store need.
fn control(args: &Args, config: &config::Config, fd_limit: u64) -> server::Control {
    let file = &config.control;
    let wanted = count(args.max_connections, file.max_connections);
    let max_connections = server::connection_cap(wanted, fd_limit);
    if max_connections < wanted {
        tracing::info!(
            fd_limit,
            max_connections,
            "at most {max_connections} connections to the socket: half the fd limit stays for transfers"
        );
    }
    server::Control {
        connections: quota::Quota::new(
            "max_connections",
            "connections",
            count(args.max_connections_per_user, file.max_connections_per_user),
            max_connections,
        ),
        handshake_timeout: Duration::from_millis(
            args.handshake_timeout_ms.unwrap_or(file.handshake_timeout_ms),
        ),
        idle_timeout: Duration::from_millis(
            args.control_idle_timeout_ms.unwrap_or(file.idle_timeout_ms),
        ),
    }
}

/// WatchJob streams, per uid and in all, shared by the socket and the TCP listener.
fn watches(args: &Args, config: &config::Config) -> quota::Quota {
    let file = &config.control;
    quota::Quota::new(
        "max_watches",
        "watch streams",
        count(args.max_watches_per_user, file.max_watches_per_user),
        count(args.max_watches, file.max_watches),
    )
}

/// A count from its flag (checked by clap as a `u64`), else from the file.
fn count(flag: Option<u64>, file: usize) -> usize {
    flag.map_or(file, |v| usize::try_from(v).unwrap_or(usize::MAX))
}

/// Raises the soft fd limit to the hard one (systemd's `LimitNOFILE=` sets both; a shell often
/// leaves the soft one at 1024) and returns the limit now in force.
fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        let raised = rustix::process::Rlimit { current: Some(hard), maximum: Some(hard) };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return hard,
            Err(e) => tracing::warn!(error = %e, "cannot raise the fd limit to {hard}"),
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

/// Serves until `shutdown` resolves, then stops as on SIGTERM: health NOT_SERVING, watches
/// closed, the gRPC servers drained (within a deadline), transfers stopped with their progress
/// recorded, the socket removed. The caller owns the runtime (the data path) and the logging.
pub async fn run(
    args: Args,
    config: config::Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let euid = rustix::process::geteuid().as_raw();
    let socket = match args.socket.clone().or_else(|| config.socket.clone()) {
        Some(path) => path,
        None => default_socket(euid)?,
    };
    let data_dir = match args.data_dir.clone().or_else(|| config.data_dir.clone()) {
        Some(dir) => dir,
        None => bits_core::defaults::data_dir(
            euid,
            std::env::var("XDG_DATA_HOME").ok().as_deref(),
            std::env::var("HOME").ok().as_deref(),
        )
        .context("cannot choose a data directory: set --data-dir, XDG_DATA_HOME or HOME")?,
    };

    // Before the store: a second daemon is told at once who has the directory (the store would
    // wait for its lock in silence).
    let _lock = lock::lock(&data_dir)?;
    let store = bits_store::SledStore::open(&data_dir)
        .with_context(|| format!("cannot open the job store in {}", data_dir.display()))?;
    let manager = bits_manager::Manager::start(Arc::new(store), manager_config(&args, &config))
        .context("cannot start the job manager")?;
    tracing::info!(
        socket = %socket.display(),
        data_dir = %data_dir.display(),
        uid = euid,
        config = %config.origin,
        "bitsd starting"
    );

    let access = grpc::Access::for_daemon(euid);
    let control = control(&args, &config, raise_fd_limit());
    let watches = watches(&args, &config);
    // Both servers run on the gRPC thread and keep it awake alike.
    let awake = awake::KeepAwake::new(
        Duration::from_micros(args.keep_awake_us.unwrap_or(config.keep_awake_us)),
        manager.clone(),
    );
    let (health, health_service) = health::health();
    // TCP first: if its port is taken, nothing is left behind (no socket file).
    let tcp = match &config.tcp {
        Some(tcp) => {
            let listener = tcp::bind(tcp.listen)?;
            tracing::info!(address = %tcp.listen, uid = tcp.uid, "serving on TCP too (bearer token required)");
            Some(tcp::TcpServing {
                listener,
                service: grpc::BitsService::new(
                    manager.clone(),
                    access,
                    watches.clone(),
                    control.connections.clone(),
                ),
                health: health_service.clone(),
                awake: awake.clone(),
                check: tcp::BearerCheck::new(&tcp.token, tcp.uid),
                control: control.clone(),
                manager: manager.clone(),
                uid: tcp.uid,
            })
        }
        None => None,
    };
    // Before the socket too, for the same reason.
    let metrics = match args.metrics_listen.or(config.metrics) {
        Some(addr) => {
            let listener = metrics::bind(addr)?;
            tracing::info!(address = %addr, "serving metrics at http://{addr}/metrics");
            let source = metrics::Source {
                manager: manager.clone(),
                watches: watches.clone(),
                connections: control.connections.clone(),
            };
            Some((listener, source))
        }
        None => None,
    };
    let listener = server::bind(&socket, access)?
        .into_std()
        .context("cannot hand the socket to the gRPC thread")?;
    let service = grpc::BitsService::new(
        manager.clone(),
        access,
        watches.clone(),
        control.connections.clone(),
    );
    let unix = UnixServing {
        listener,
        service,
        health: health_service,
        awake,
        control,
        manager: manager.clone(),
    };
    // One stop for both servers. A dropped sender (the daemon failing) stops them too.
    let (stop_serving, stopped) = tokio::sync::watch::channel(false);
    if let Some((listener, source)) = metrics {
        let mut stop = stopped.clone();
        let until_stop = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(listener, source, until_stop).await {
                tracing::error!("{e:#}");
            }
        });
    }
    // The thread reports its end on a channel rather than being joined: a join would block a
    // thread of ours for as long as the gRPC thread lingers (see the deadline below).
    let (served_tx, served_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    std::thread::Builder::new()
        .name("bitsd-grpc".into())
        .spawn(move || {
            let _ = served_tx.send(serve_on_own_runtime(unix, tcp, stopped));
        })
        .context("cannot start the gRPC thread")?;
    let status = notify::ready(&manager);
    shutdown.await;
    // Probes see it first; Health's Watch streams end with it.
    health.not_serving();
    status.stopping().await;
    // Open WatchJob streams end at the signal: a graceful server shutdown waits for them.
    manager.close_subscriptions();
    let _ = stop_serving.send(true);
    // A graceful gRPC shutdown waits for open connections; a client that connected and never
    // speaks (any local user can) must not hold the daemon up, so it gets a deadline.
    let served = match tokio::time::timeout(GRPC_STOP_DEADLINE, served_rx).await {
        Ok(Ok(served)) => served,
        Ok(Err(_)) => Err(anyhow::anyhow!("the gRPC thread panicked")),
        Err(_) => {
            tracing::warn!(
                "open client connections did not close within {GRPC_STOP_DEADLINE:?}; stopping anyway"
            );
            Ok(())
        }
    };
    tracing::info!("shutting down: stopping transfers and persisting progress");
    if tokio::time::timeout(Duration::from_secs(4), manager.shutdown()).await.is_err() {
        tracing::warn!("transfers did not stop within 4 s; progress recorded so far is kept");
    }
    let _ = std::fs::remove_file(&socket);
    served
}

/// The socket when neither flag nor file names one: the same path clients look at. Without
/// `XDG_RUNTIME_DIR` that is in `/run/user/UID`, which only a login session creates; a daemon
/// started outside one is told so, rather than failing to create it (or picking a place no
/// client would look).
fn default_socket(euid: u32) -> anyhow::Result<PathBuf> {
    let runtime = std::env::var("XDG_RUNTIME_DIR").ok();
    if let Some(dir) = bits_core::defaults::unset_runtime_dir(euid, runtime.as_deref())
        && !dir.is_dir()
    {
        bail!(
            "XDG_RUNTIME_DIR is unset and {} does not exist (no login session): start bitsd with \
             --socket PATH, and give bitsctl the same with --socket PATH or BITSD_SOCKET=PATH",
            dir.display()
        );
    }
    Ok(bits_core::defaults::socket_path(euid, runtime.as_deref()))
}

/// How long a shutdown waits for open gRPC connections to finish before going on without them.
const GRPC_STOP_DEADLINE: Duration = Duration::from_secs(2);

/// Everything the gRPC thread needs to serve the Unix socket.
struct UnixServing {
    listener: std::os::unix::net::UnixListener,
    service: grpc::BitsService,
    health: health::HealthService,
    awake: awake::KeepAwake,
    control: server::Control,
    manager: bits_manager::Manager,
}

/// Serves gRPC on a single-threaded runtime of its own, on the Unix socket and (when configured)
/// on TCP, until `stop` fires.
fn serve_on_own_runtime(
    unix: UnixServing,
    tcp: Option<tcp::TcpServing>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let UnixServing { listener, service, health, awake, control, manager } = unix;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the gRPC runtime")?;
    runtime.block_on(async move {
        tokio::spawn(awake.clone().run());
        let listener =
            tokio::net::UnixListener::from_std(listener).context("cannot use the socket")?;
        let until_stop = |mut seen: tokio::sync::watch::Receiver<bool>| async move {
            let _ = seen.wait_for(|stopped| *stopped).await;
        };
        let unix = server::serve(
            listener,
            service,
            health,
            awake,
            control,
            manager,
            until_stop(stop.clone()),
        );
        let Some(tcp) = tcp else { return unix.await };
        // Joined, not raced: a failing TCP server must not take the Unix socket down with it.
        let (unix, tcp) = tokio::join!(unix, tcp::serve(tcp, until_stop(stop)));
        unix.and(tcp)
    })
}

/// Nice +5 for a data-path thread (Linux applies it per thread). Best effort: without it
/// everything still works, the control plane only competes harder for the CPU.
fn lower_priority() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), 5) {
        tracing::debug!(error = %e, "cannot lower the priority of a data-path thread");
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop bitsd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
