//! bitsd: the background transfer service. `main` only wires: arguments, logging, the store, the
//! job manager, the gRPC server on a Unix socket, and a clean shutdown on SIGTERM/SIGINT.

mod grpc;
mod notify;
mod server;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Background transfer service: a persistent queue of BITS-style download jobs, served over gRPC
/// on a Unix socket.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Socket to serve on [default: $XDG_RUNTIME_DIR/bitsd/bitsd.sock, or /run/bitsd/bitsd.sock as root]
    #[arg(long, env = "BITSD_SOCKET")]
    socket: Option<PathBuf>,
    /// Where the job store lives [default: $XDG_DATA_HOME/bitsd, or /var/lib/bitsd as root]
    #[arg(long, env = "BITSD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Sync downloaded data and record it as filled after this many bytes
    #[arg(long, default_value_t = 16 << 20)]
    sync_bytes: u64,
    /// …or after this many milliseconds, whichever comes first
    #[arg(long, default_value_t = 1000)]
    sync_interval_ms: u64,
    /// Minimum retry delay given to new jobs, in seconds (BITS default 600). The operator may go
    /// below the 5 s floor that applies to jobs' own settings; at least 1
    #[arg(long, default_value_t = bits_core::job::DEFAULT_MINIMUM_RETRY_DELAY_SECS)]
    retry_delay_secs: u32,
    /// No-progress timeout given to new jobs, in seconds (BITS default 14 days; 0 = every error is fatal)
    #[arg(long, default_value_t = bits_core::job::DEFAULT_NO_PROGRESS_TIMEOUT_SECS)]
    no_progress_timeout_secs: u32,
    /// Give up on a connection that sends nothing for this long (headers or body), in milliseconds
    #[arg(long, default_value_t = 60_000)]
    idle_timeout_ms: u64,
    /// Give up on connecting after this long, in milliseconds
    #[arg(long, default_value_t = 30_000)]
    connect_timeout_ms: u64,
    /// A uid that is an administrator (repeatable; default: 0). Admins are exempt from limits
    #[arg(long = "admin-uid")]
    admin_uids: Vec<u32>,
    /// Jobs one non-admin user may own (BITS policy default 60)
    #[arg(long, default_value_t = bits_core::job::MAX_JOBS_PER_USER)]
    max_jobs_per_user: usize,
    /// Jobs in the queue beyond which non-admins may not create more (BITS default 300)
    #[arg(long, default_value_t = bits_core::job::MAX_JOBS_PER_MACHINE)]
    max_jobs_per_machine: usize,
}

fn main() -> std::process::ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let args = Args::parse();
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
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let euid = rustix::process::geteuid().as_raw();
    let socket = match args.socket {
        Some(path) => path,
        None => {
            bits_core::defaults::socket_path(euid, std::env::var("XDG_RUNTIME_DIR").ok().as_deref())
        }
    };
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => bits_core::defaults::data_dir(
            euid,
            std::env::var("XDG_DATA_HOME").ok().as_deref(),
            std::env::var("HOME").ok().as_deref(),
        )
        .context("cannot choose a data directory: set --data-dir, XDG_DATA_HOME or HOME")?,
    };

    let store = bits_store::SledStore::open(&data_dir)
        .with_context(|| format!("cannot open the job store in {}", data_dir.display()))?;
    let config = bits_manager::ManagerConfig {
        sync_bytes: args.sync_bytes.max(1),
        sync_interval: Duration::from_millis(args.sync_interval_ms.max(1)),
        default_retry_delay_secs: args.retry_delay_secs.max(1),
        default_no_progress_timeout_secs: args.no_progress_timeout_secs,
        http: bits_http::HttpConfig {
            idle_timeout: Duration::from_millis(args.idle_timeout_ms.max(1)),
            connect_timeout: Duration::from_millis(args.connect_timeout_ms.max(1)),
            ..Default::default()
        },
        admin_uids: if args.admin_uids.is_empty() { vec![0] } else { args.admin_uids.clone() },
        admin_gids: Vec::new(),
        max_jobs_per_user: args.max_jobs_per_user,
        max_jobs_per_machine: args.max_jobs_per_machine,
    };
    let manager = bits_manager::Manager::start(Arc::new(store), config)
        .context("cannot start the job manager")?;
    tracing::info!(socket = %socket.display(), data_dir = %data_dir.display(), uid = euid, "bitsd starting");

    let listener = server::bind(&socket, grpc::Access::for_daemon(euid))?
        .into_std()
        .context("cannot hand the socket to the gRPC thread")?;
    let service = grpc::BitsService::new(manager.clone(), grpc::Access::for_daemon(euid));
    let (stop_serving, stopped) = tokio::sync::oneshot::channel::<()>();
    let grpc = std::thread::Builder::new()
        .name("bitsd-grpc".into())
        .spawn(move || serve_on_own_runtime(listener, service, stopped))
        .context("cannot start the gRPC thread")?;
    let status = notify::ready(&manager);
    shutdown_signal().await;
    status.stopping().await;
    // Open WatchJob streams end at the signal: a graceful server shutdown waits for them.
    manager.close_subscriptions();
    let _ = stop_serving.send(());
    let served = tokio::task::spawn_blocking(move || grpc.join())
        .await
        .map_err(|e| anyhow::anyhow!("gRPC thread: {e}"))?
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the gRPC thread panicked")));
    tracing::info!("shutting down: stopping transfers and persisting progress");
    if tokio::time::timeout(Duration::from_secs(4), manager.shutdown()).await.is_err() {
        tracing::warn!("transfers did not stop within 4 s; progress recorded so far is kept");
    }
    let _ = std::fs::remove_file(&socket);
    served
}

/// Serves gRPC on a single-threaded runtime of its own until `stop` fires.
fn serve_on_own_runtime(
    listener: std::os::unix::net::UnixListener,
    service: grpc::BitsService,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the gRPC runtime")?;
    runtime.block_on(async move {
        let listener =
            tokio::net::UnixListener::from_std(listener).context("cannot use the socket")?;
        server::serve(listener, service, async {
            let _ = stop.await;
        })
        .await
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
