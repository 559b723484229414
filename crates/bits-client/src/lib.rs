//! Typed async client of the bitsd gRPC API over its Unix socket (or, with a bearer token, over
//! the daemon's optional loopback TCP listener).
//!
//! Every method maps one RPC, speaks bits-core types (and the [`JobInfo`] / [`FileInfo`] views of
//! bits-proto), and turns a failed call into the [`BitsError`] the daemon reported.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bits_core::{BitsError, ByteRange, Code, JobError, JobId, Priority, Progress};
use bits_proto::convert;
pub use bits_proto::convert::{EventInfo, JobEventInfo};
pub use bits_proto::token::{Token, TokenError, TokenFileError};
use bits_proto::v1::{self, bits_client::BitsClient};
pub use bits_proto::{FileInfo, JobInfo};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// What can go wrong talking to bitsd.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon's socket could not be reached.
    #[error("cannot connect to bitsd at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The daemon's TCP listener could not be reached.
    #[error("cannot connect to bitsd at {addr}: {source}")]
    ConnectTcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The daemon (or the transport, as `E_FAIL`) refused the call.
    #[error(transparent)]
    Bits(#[from] BitsError),
    /// The daemon answered with something this client cannot read.
    #[error("bad reply from bitsd: {0}")]
    Protocol(String),
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> ClientError {
        ClientError::Bits(bits_proto::status::from_status(&status))
    }
}

/// A reply that did not convert: the daemon, not the caller, is at fault.
fn protocol(err: BitsError) -> ClientError {
    ClientError::Protocol(err.to_string())
}

/// The socket this user talks to by default: their own daemon's
/// (`$XDG_RUNTIME_DIR/bitsd/bitsd.sock`) if it is there, else the system daemon's
/// (`/run/bitsd/bitsd.sock`) if that is (see `bits_core::defaults::client_socket_path`).
pub fn default_socket() -> PathBuf {
    let euid = rustix::process::geteuid().as_raw();
    let runtime = std::env::var("XDG_RUNTIME_DIR").ok();
    bits_core::defaults::client_socket_path(euid, runtime.as_deref(), |p| p.exists())
}

/// A connection to bitsd. Cheap to clone (clones share the connection).
#[derive(Clone, Debug)]
pub struct Client {
    inner: BitsClient<InterceptedService<Channel, Auth>>,
}

/// Adds the bearer token to every call of a TCP client; does nothing on the Unix socket, where the
/// daemon knows the caller from the socket's peer credentials.
#[derive(Clone)]
struct Auth(Option<AsciiMetadataValue>);

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(bits_proto::token::AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

/// A transport error as the `io::Error` underneath it when there is one (so "connection refused"
/// reads as such), else its whole chain of causes.
fn transport_error(err: tonic::transport::Error) -> io::Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    let mut chain = Vec::new();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io::Error::new(io.kind(), io.to_string());
        }
        chain.push(e.to_string());
        source = e.source();
    }
    io::Error::other(chain.join(": "))
}

/// Explains a failed `connect(2)` on the socket in terms of the daemon.
fn explain_connect_error(err: io::Error) -> io::Error {
    let why = match err.kind() {
        io::ErrorKind::NotFound => "no such socket; is bitsd running?".to_string(),
        io::ErrorKind::ConnectionRefused => {
            "connection refused; bitsd is not running (stale socket)".to_string()
        }
        io::ErrorKind::PermissionDenied => format!("permission denied ({err})"),
        _ => err.to_string(),
    };
    io::Error::new(err.kind(), why)
}

fn path_str<'a>(path: &'a Path, what: &str) -> Result<&'a str, ClientError> {
    path.to_str().ok_or_else(|| {
        ClientError::Bits(BitsError::new(
            Code::E_INVALIDARG,
            format!("{what} {} is not valid UTF-8", path.display()),
        ))
    })
}

/// Writes the methods that set one value of a job and answer the BITS success code. A row
/// names the method (the RPC's own name), its argument, the request message, and the request's
/// fields besides the job id.
macro_rules! job_setters {
    ($(
        $(#[$attr:meta])*
        fn $name:ident($arg:ident: $ty:ty) => $request:ident { $($fields:tt)* };
    )*) => {
        $(
            $(#[$attr])*
            pub async fn $name(&self, job: JobId, $arg: $ty) -> Result<Code, ClientError> {
                let req = v1::$request { job_id: job.to_string(), $($fields)* };
                status_code(self.inner.clone().$name(req).await?.into_inner())
            }
        )*
    };
}

impl Client {
    /// Connects to the daemon listening on `socket`. The socket is connected eagerly, so a missing
    /// or dead daemon is reported here as [`ClientError::Connect`] naming the path.
    pub async fn connect(socket: &Path) -> Result<Client, ClientError> {
        let connect_error =
            |source: io::Error| ClientError::Connect { socket: socket.to_path_buf(), source };
        let first = UnixStream::connect(socket).await.map_err(explain_connect_error);
        let first = first.map_err(connect_error)?;
        // The first stream is handed to the channel; reconnects dial the socket again.
        let slot = Arc::new(Mutex::new(Some(first)));
        let path = socket.to_path_buf();
        let connector = tower::service_fn(move |_: http::Uri| {
            let slot = Arc::clone(&slot);
            let path = path.clone();
            async move {
                let ready = slot.lock().ok().and_then(|mut s| s.take());
                let stream = match ready {
                    Some(stream) => stream,
                    None => UnixStream::connect(&path).await?,
                };
                Ok::<_, io::Error>(TokioIo::new(stream))
            }
        });
        // The URI is required syntactically and ignored by the connector.
        let channel = Endpoint::from_static("http://bitsd.localhost")
            .connect_with_connector(connector)
            .await
            .map_err(|e| connect_error(io::Error::other(e)))?;
        Ok(Client { inner: BitsClient::with_interceptor(channel, Auth(None)) })
    }

    /// Connects to the daemon's TCP listener at `addr` (bitsd's `[tcp] listen`), sending `token`
    /// with every call (see [`Token::read_file`] for the usual way to get one). The connection is
    /// made eagerly, so an unreachable daemon is reported here as [`ClientError::ConnectTcp`]; a
    /// wrong token is refused by the first call with `E_ACCESSDENIED`.
    pub async fn connect_tcp(addr: SocketAddr, token: &Token) -> Result<Client, ClientError> {
        let value = token.to_authorization();
        let connect_error = |source: io::Error| ClientError::ConnectTcp { addr, source };
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| connect_error(transport_error(e)))?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| connect_error(transport_error(e)))?;
        Ok(Client { inner: BitsClient::with_interceptor(channel, Auth(Some(value))) })
    }

    /// CreateJob for a download job; returns its id.
    pub async fn create_job(&self, name: &str, priority: Priority) -> Result<JobId, ClientError> {
        let reply = self
            .inner
            .clone()
            .create_job(v1::CreateJobRequest {
                display_name: name.to_string(),
                r#type: v1::JobType::Download as i32,
                priority: convert::priority_to_wire(priority) as i32,
                description: String::new(),
            })
            .await?
            .into_inner();
        convert::parse_job_id(&reply.job_id).map_err(protocol)
    }

    pub async fn get_job(&self, job: JobId) -> Result<JobInfo, ClientError> {
        let reply = self.inner.clone().get_job(job_ref(job)).await?.into_inner();
        convert::job_from_wire(&reply).map_err(protocol)
    }

    /// The caller's own jobs.
    pub async fn list_jobs(&self) -> Result<Vec<JobInfo>, ClientError> {
        self.list(false).await
    }

    /// Every user's jobs (administrators only; E_ACCESSDENIED otherwise).
    pub async fn list_all_jobs(&self) -> Result<Vec<JobInfo>, ClientError> {
        self.list(true).await
    }

    async fn list(&self, all_users: bool) -> Result<Vec<JobInfo>, ClientError> {
        let request = v1::ListJobsRequest { all_users };
        let reply = self.inner.clone().list_jobs(request).await?.into_inner();
        reply.jobs.iter().map(|j| convert::job_from_wire(j).map_err(protocol)).collect()
    }

    /// TakeOwnership: the caller (an administrator) becomes the job's owner.
    pub async fn take_ownership(&self, job: JobId) -> Result<Code, ClientError> {
        status_code(self.inner.clone().take_ownership(job_ref(job)).await?.into_inner())
    }

    /// AddFile; returns the new file's index. `local_path` is sent as given (the daemon requires it
    /// to be absolute).
    pub async fn add_file(
        &self,
        job: JobId,
        url: &str,
        local_path: &Path,
    ) -> Result<u32, ClientError> {
        self.add_one(job, url, local_path, None, None).await
    }

    /// AddFileWithRanges; returns the new file's index.
    pub async fn add_file_with_ranges(
        &self,
        job: JobId,
        url: &str,
        local_path: &Path,
        ranges: &[ByteRange],
    ) -> Result<u32, ClientError> {
        self.add_one(job, url, local_path, Some(ranges), None).await
    }

    pub async fn list_files(&self, job: JobId) -> Result<Vec<FileInfo>, ClientError> {
        let reply = self.inner.clone().list_files(job_ref(job)).await?.into_inner();
        reply.files.iter().map(|f| convert::file_from_wire(f).map_err(protocol)).collect()
    }

    /// Resume; returns the success code (S_OK or another `*_S_*` code).
    pub async fn resume(&self, job: JobId) -> Result<Code, ClientError> {
        status_code(self.inner.clone().resume(job_ref(job)).await?.into_inner())
    }

    pub async fn suspend(&self, job: JobId) -> Result<Code, ClientError> {
        status_code(self.inner.clone().suspend(job_ref(job)).await?.into_inner())
    }

    pub async fn cancel(&self, job: JobId) -> Result<Code, ClientError> {
        status_code(self.inner.clone().cancel(job_ref(job)).await?.into_inner())
    }

    /// Complete; S_OK means every file is in place, `BG_S_PARTIAL_COMPLETE` that some are not.
    pub async fn complete(&self, job: JobId) -> Result<Code, ClientError> {
        status_code(self.inner.clone().complete(job_ref(job)).await?.into_inner())
    }

    pub async fn get_progress(&self, job: JobId) -> Result<Progress, ClientError> {
        let reply = self.inner.clone().get_progress(job_ref(job)).await?.into_inner();
        Ok(convert::progress_from_wire(&reply))
    }

    /// GetError; `BG_E_ERROR_INFORMATION_UNAVAILABLE` (as [`ClientError::Bits`]) when the job has
    /// no error.
    pub async fn get_error(&self, job: JobId) -> Result<JobError, ClientError> {
        let reply = self.inner.clone().get_error(job_ref(job)).await?.into_inner();
        convert::job_error_from_wire(&reply).map_err(protocol)
    }

    pub async fn request_file_ranges(
        &self,
        job: JobId,
        file_index: u32,
        ranges: &[ByteRange],
    ) -> Result<Code, ClientError> {
        let reply = self
            .inner
            .clone()
            .request_file_ranges(v1::RequestFileRangesRequest {
                job_id: job.to_string(),
                file_index,
                ranges: convert::ranges_to_wire(ranges),
            })
            .await?
            .into_inner();
        status_code(reply)
    }

    /// The remote byte ranges of a file that are durably downloaded, sorted and merged.
    pub async fn get_filled_file_ranges(
        &self,
        job: JobId,
        file_index: u32,
    ) -> Result<Vec<ByteRange>, ClientError> {
        let reply = self
            .inner
            .clone()
            .get_filled_file_ranges(v1::FileRef { job_id: job.to_string(), file_index })
            .await?
            .into_inner();
        Ok(convert::ranges_from_wire(&reply.ranges))
    }

    job_setters! {
        fn set_priority(priority: Priority) => SetPriorityRequest {
            priority: convert::priority_to_wire(priority) as i32,
        };
        /// SetCustomHeaders: `Name: value` lines (CRLF-separated) sent with every request of the
        /// job; `None` clears them.
        fn set_custom_headers(headers: Option<&str>) => SetCustomHeadersRequest {
            headers: headers.map(str::to_string),
        };
    }

    // ---- Setters (spec §3.E) ----------------------------------------------------------------

    job_setters! {
        /// SetDisplayName; `None` sends NULL (refused with E_INVALIDARG).
        fn set_display_name(name: Option<&str>) => SetStringRequest {
            value: name.map(str::to_string),
        };
        /// SetDescription; `None` sends NULL (refused with E_INVALIDARG).
        fn set_description(text: Option<&str>) => SetStringRequest {
            value: text.map(str::to_string),
        };
        fn set_minimum_retry_delay(seconds: u32) => SetSecondsRequest { seconds };
        fn set_no_progress_timeout(seconds: u32) => SetSecondsRequest { seconds };
        fn set_maximum_download_time(seconds: u32) => SetSecondsRequest { seconds };
        fn set_notify_flags(flags: u32) => SetFlagsRequest { flags };
        fn set_security_flags(flags: u32) => SetFlagsRequest { flags };
    }

    /// Job5 SetProperty with a BITS_JOB_PROPERTY_ID and its value.
    pub async fn set_property(
        &self,
        job: JobId,
        property_id: u32,
        value: PropertyValue,
    ) -> Result<Code, ClientError> {
        use v1::set_property_request::Value;
        let value = Some(match value {
            PropertyValue::Dword(v) => Value::Dword(v),
            PropertyValue::Enable(v) => Value::Enable(v),
            PropertyValue::Uint64(v) => Value::Uint64(v),
        });
        let req = v1::SetPropertyRequest { job_id: job.to_string(), property_id, value };
        status_code(self.inner.clone().set_property(req).await?.into_inner())
    }

    // ---- Files (spec §3.C, §3.D, §3.F) --------------------------------------------------------

    /// AddFileSet: all or nothing. Returns the new files' indexes.
    pub async fn add_file_set(
        &self,
        job: JobId,
        files: &[(&str, &Path)],
    ) -> Result<Vec<u32>, ClientError> {
        let files: Vec<NewFile<'_>> = files
            .iter()
            .map(|&(url, local_path)| NewFile { url, local_path, sha256: None })
            .collect();
        self.add_files(job, &files).await
    }

    /// AddFileSet with the bitsd extras per file (an expected SHA-256). All or nothing; returns
    /// the new files' indexes.
    pub async fn add_files(
        &self,
        job: JobId,
        files: &[NewFile<'_>],
    ) -> Result<Vec<u32>, ClientError> {
        let mut specs = Vec::with_capacity(files.len());
        for file in files {
            specs.push(v1::FileSpec {
                remote_url: file.url.to_string(),
                local_path: path_str(file.local_path, "local path")?.to_string(),
                sha256: file.sha256.map(str::to_string),
            });
        }
        let req = v1::AddFileSetRequest { job_id: job.to_string(), files: specs };
        Ok(self.inner.clone().add_file_set(req).await?.into_inner().file_indexes)
    }

    /// AddFile (or AddFileWithRanges when `ranges` is not empty) with an expected SHA-256 of the
    /// local file; returns the new file's index.
    pub async fn add_file_checked(
        &self,
        job: JobId,
        url: &str,
        local_path: &Path,
        ranges: &[ByteRange],
        sha256: Option<&str>,
    ) -> Result<u32, ClientError> {
        let ranges = (!ranges.is_empty()).then_some(ranges);
        self.add_one(job, url, local_path, ranges, sha256).await
    }

    /// AddFileWithRanges when `ranges` is given (even empty, which the daemon refuses), else
    /// AddFile.
    async fn add_one(
        &self,
        job: JobId,
        url: &str,
        local_path: &Path,
        ranges: Option<&[ByteRange]>,
        sha256: Option<&str>,
    ) -> Result<u32, ClientError> {
        let job_id = job.to_string();
        let remote_url = url.to_string();
        let local_path = path_str(local_path, "local path")?.to_string();
        let sha256 = sha256.map(str::to_string);
        let mut inner = self.inner.clone();
        let reply = match ranges {
            None => {
                let req = v1::AddFileRequest { job_id, remote_url, local_path, sha256 };
                inner.add_file(req).await?
            }
            Some(ranges) => {
                let ranges = convert::ranges_to_wire(ranges);
                let req =
                    v1::AddFileWithRangesRequest { job_id, remote_url, local_path, ranges, sha256 };
                inner.add_file_with_ranges(req).await?
            }
        };
        Ok(reply.into_inner().file_index)
    }

    /// SetNotifyCmdLine: `program` (an absolute path) and its arguments run when the job reaches
    /// TRANSFERRED or ERROR; `None` with no arguments removes it.
    pub async fn set_notify_cmd_line(
        &self,
        job: JobId,
        program: Option<&str>,
        arguments: &[String],
    ) -> Result<Code, ClientError> {
        let req = v1::SetNotifyCmdLineRequest {
            job_id: job.to_string(),
            program: program.map(str::to_string),
            arguments: arguments.to_vec(),
        };
        status_code(self.inner.clone().set_notify_cmd_line(req).await?.into_inner())
    }

    pub async fn set_remote_name(
        &self,
        job: JobId,
        file_index: u32,
        url: &str,
    ) -> Result<Code, ClientError> {
        let req = v1::SetRemoteNameRequest {
            job_id: job.to_string(),
            file_index,
            remote_url: url.to_string(),
        };
        status_code(self.inner.clone().set_remote_name(req).await?.into_inner())
    }

    /// ReplaceRemotePrefix; `Code::S_FALSE` when nothing matched.
    pub async fn replace_remote_prefix(
        &self,
        job: JobId,
        old: &str,
        new: &str,
    ) -> Result<Code, ClientError> {
        let req = v1::ReplaceRemotePrefixRequest {
            job_id: job.to_string(),
            old_prefix: old.to_string(),
            new_prefix: new.to_string(),
        };
        status_code(self.inner.clone().replace_remote_prefix(req).await?.into_inner())
    }

    /// bitsd extensions: connections per file (segmented download) and files at once.
    pub async fn set_extensions(
        &self,
        job: JobId,
        connections_per_file: Option<u32>,
        files_at_once: Option<u32>,
    ) -> Result<Code, ClientError> {
        let req = v1::SetExtensionsRequest {
            job_id: job.to_string(),
            connections_per_file,
            files_at_once,
        };
        status_code(self.inner.clone().set_extensions(req).await?.into_inner())
    }

    /// GetStats: the daemon's numbers since it started (bitsd extension). `own_jobs` counts the
    /// caller's jobs, `jobs` everyone's.
    pub async fn get_stats(&self) -> Result<bits_core::Stats, ClientError> {
        let reply = self.inner.clone().get_stats(v1::GetStatsRequest {}).await?.into_inner();
        convert::stats_from_wire(&reply).map_err(protocol)
    }

    pub async fn update_download_position(
        &self,
        job: JobId,
        file_index: u32,
        offset: u64,
    ) -> Result<Code, ClientError> {
        let req = v1::UpdateDownloadPositionRequest { job_id: job.to_string(), file_index, offset };
        status_code(self.inner.clone().update_download_position(req).await?.into_inner())
    }
}

impl Client {
    /// WatchJob: the job's notifications (spec §7) from now on, preceded by JobTransferred or
    /// JobError if the job is in that state already. `flags` overrides the job's notify flags
    /// for this watcher (`None`: the job's own, which it follows when they change). The call
    /// returns once the daemon has registered the watcher, so nothing that happens afterwards
    /// is missed; the stream ends when the job is completed or cancelled, or the daemon stops.
    pub async fn watch_job(
        &self,
        job: JobId,
        flags: Option<u32>,
    ) -> Result<EventStream, ClientError> {
        let req = v1::WatchJobRequest { job_id: job.to_string(), notify_flags: flags };
        let inner = self.inner.clone().watch_job(req).await?.into_inner();
        Ok(EventStream { inner })
    }
}

/// The events of a [`Client::watch_job`]: a [`Stream`](tokio_stream::Stream), and
/// [`EventStream::next`] for callers without a stream combinator crate.
pub struct EventStream {
    inner: tonic::Streaming<v1::JobEvent>,
}

impl EventStream {
    /// The next event; `None` once the stream ended.
    pub async fn next(&mut self) -> Option<Result<JobEventInfo, ClientError>> {
        tokio_stream::StreamExt::next(self).await
    }
}

fn event_from_wire(item: Result<v1::JobEvent, tonic::Status>) -> Result<JobEventInfo, ClientError> {
    convert::job_event_from_wire(&item?).map_err(protocol)
}

impl tokio_stream::Stream for EventStream {
    type Item = Result<JobEventInfo, ClientError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx).map(|item| item.map(event_from_wire))
    }
}

/// One file of [`Client::add_files`].
#[derive(Clone, Copy, Debug)]
pub struct NewFile<'a> {
    pub url: &'a str,
    pub local_path: &'a Path,
    /// The expected SHA-256 of the local file, 64 hex digits.
    pub sha256: Option<&'a str>,
}

/// A value for [`Client::set_property`] (BITS_JOB_PROPERTY_VALUE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropertyValue {
    Dword(u32),
    Enable(bool),
    Uint64(u64),
}

fn job_ref(job: JobId) -> v1::JobRef {
    v1::JobRef { job_id: job.to_string() }
}

fn status_code(reply: v1::StatusReply) -> Result<Code, ClientError> {
    convert::code_from_status_reply(&reply).map_err(protocol)
}

#[cfg(test)]
mod tests;
