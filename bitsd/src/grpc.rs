//! The gRPC adapter: each handler identifies the caller, converts the request with
//! `bits_proto::convert`, calls the job manager and converts the answer back. Handlers never own
//! transfer work, so a dropped request cannot stop a download.

use bits_core::{BitsError, Code, JobId, JobType, Stats};
use bits_manager::{Caller, Manager, NewFile, PropertyValue};
use bits_proto::convert;
use bits_proto::status::to_status;
use bits_proto::v1;
use tonic::{Request, Response, Status};

use crate::quota::Quota;

pub struct BitsService {
    manager: Manager,
    /// Which local users may call: everyone (a system daemon, authorised per job by uid) or
    /// only the daemon's own user (a per-user daemon).
    access: Access,
    /// Open WatchJob streams, per uid and in all (shared by the Unix socket and TCP).
    watches: Quota,
    /// Open control connections (socket and TCP), for GetStats.
    connections: Quota,
}

/// Who may use the Unix socket. Authorisation is by the peer's uid (SO_PEERCRED), never by the
/// socket file's mode alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A system daemon (running as root): every local user may call; each job is visible and
    /// changeable only by its owner and administrators.
    AllUsers,
    /// A per-user daemon: only this uid is served; anyone else gets E_ACCESSDENIED.
    OnlyUid(u32),
}

impl Access {
    /// The access mode for a daemon running with effective uid `euid`.
    pub fn for_daemon(euid: u32) -> Access {
        if euid == 0 { Access::AllUsers } else { Access::OnlyUid(euid) }
    }
}

/// Set in a request's extensions by the TCP listener once the request's token checked out: the
/// uid the TCP caller acts as (there are no peer credentials on TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpCaller {
    pub uid: u32,
}

impl BitsService {
    pub fn new(
        manager: Manager,
        access: Access,
        watches: Quota,
        connections: Quota,
    ) -> BitsService {
        BitsService { manager, access, watches, connections }
    }

    /// The daemon's numbers: the manager's, plus what only the server counts. Shared by GetStats
    /// and `/metrics`.
    pub fn stats(manager: &Manager, uid: u32, watches: &Quota, connections: &Quota) -> Stats {
        let mut stats = manager.stats(uid);
        stats.control_connections = connections.total() as u64;
        stats.watch_streams = watches.total() as u64;
        stats
    }

    /// The caller's uid from SO_PEERCRED (or from an authenticated TCP request); anything else
    /// (no credentials, a uid this daemon does not serve) is refused.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let extensions = request.extensions();
        let (uid, pid) = match extensions.get::<TcpCaller>() {
            Some(tcp) => (Some(tcp.uid), None),
            None => {
                let cred = extensions.get::<crate::server::Peer>().and_then(|peer| peer.cred);
                (cred.map(|c| c.uid()), cred.and_then(|c| c.pid()))
            }
        };
        let caller = |uid| self.manager.caller(uid).in_process(pid);
        match (uid, self.access) {
            (Some(uid), Access::AllUsers) => Ok(caller(uid)),
            (Some(uid), Access::OnlyUid(served)) if uid == served => Ok(caller(uid)),
            (Some(uid), Access::OnlyUid(served)) => Err(to_status(&BitsError::new(
                Code::E_ACCESSDENIED,
                format!("uid {uid} may not use this daemon, which serves uid {served}"),
            ))),
            (None, _) => Err(to_status(&BitsError::new(
                Code::E_ACCESSDENIED,
                "the caller's credentials are unknown",
            ))),
        }
    }
}

impl BitsService {
    /// The caller, the job id a request names, and the request itself.
    fn request_with_job<T>(
        &self,
        request: Request<T>,
        job_id: impl Fn(&T) -> &String,
    ) -> Result<(Caller, JobId, T), Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let id = convert::parse_job_id(job_id(&req)).map_err(|e| to_status(&e))?;
        Ok((caller, id, req))
    }
}

fn reply<T>(result: Result<T, BitsError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|e| to_status(&e))
}

/// The reply of a call that answers with a BITS success code.
fn status(result: Result<Code, BitsError>) -> Result<Response<v1::StatusReply>, Status> {
    reply(result.map(convert::status_reply))
}

/// AddFile and AddFileWithRanges: one file, with its expected digest if given.
async fn add_one(
    manager: &Manager,
    caller: Caller,
    id: JobId,
    file: NewFile,
) -> Result<Response<v1::AddFileReply>, Status> {
    reply(manager.add_files(caller, id, vec![file]).await.and_then(|indexes| {
        let file_index = indexes.first().copied().ok_or_else(|| {
            BitsError::new(Code::E_FAIL, "AddFile added no file and reported no error")
        })?;
        Ok(v1::AddFileReply { file_index })
    }))
}

/// SetProperty's value; a request without one is refused like BITS refuses a NULL.
fn property_value(value: Option<v1::set_property_request::Value>) -> Result<PropertyValue, Status> {
    match value {
        Some(v1::set_property_request::Value::Dword(v)) => Ok(PropertyValue::Dword(v)),
        Some(v1::set_property_request::Value::Enable(v)) => Ok(PropertyValue::Enable(v)),
        Some(v1::set_property_request::Value::Uint64(v)) => Ok(PropertyValue::Uint64(v)),
        None => Err(to_status(&BitsError::new(Code::E_INVALIDARG, "SetProperty needs a value"))),
    }
}

/// Writes the `Bits` impl. Most RPCs name a job, and for each of them the handler is the same
/// path (authorise the caller, parse the job id, call the manager, map its error to a status):
/// the `job` rows give only what differs, the call (with `manager`, `caller`, `id` and the request
/// bound to the names the row picks). The RPCs that name no job follow as plain methods.
macro_rules! bits_impl {
    (
        job {
            $(
                fn $name:ident($req:ty) -> $reply:ty =
                    |$manager:ident, $caller:ident, $id:ident, $request:pat_param| $call:expr;
            )*
        }
        $($other:tt)*
    ) => {
        #[tonic::async_trait]
        impl v1::bits_server::Bits for BitsService {
            $(
                async fn $name(&self, request: Request<$req>) -> Result<Response<$reply>, Status> {
                    let ($caller, $id, $request) =
                        self.request_with_job(request, |r| &r.job_id)?;
                    let $manager = &self.manager;
                    $call
                }
            )*
            $($other)*
        }
    };
}

bits_impl! {
    job {
        fn get_job(v1::JobRef) -> v1::Job = |manager, caller, id, _|
            reply(manager.get_job(caller, id).map(|job| convert::job_to_wire(&job)));
        fn add_file(v1::AddFileRequest) -> v1::AddFileReply = |manager, caller, id, req| {
            let file = NewFile {
                remote_url: req.remote_url,
                local_path: req.local_path.into(),
                ranges: None,
                sha256: req.sha256,
            };
            add_one(manager, caller, id, file).await
        };
        fn add_file_with_ranges(v1::AddFileWithRangesRequest) -> v1::AddFileReply =
            |manager, caller, id, req| {
                let file = NewFile {
                    ranges: Some(convert::ranges_from_wire(&req.ranges)),
                    remote_url: req.remote_url,
                    local_path: req.local_path.into(),
                    sha256: req.sha256,
                };
                add_one(manager, caller, id, file).await
            };
        fn list_files(v1::JobRef) -> v1::ListFilesReply = |manager, caller, id, _| {
            reply(manager.get_job(caller, id).map(|job| v1::ListFilesReply {
                files: job
                    .files
                    .iter()
                    .enumerate()
                    .map(|(i, f)| convert::file_to_wire(i as u32, f))
                    .collect(),
            }))
        };
        fn resume(v1::JobRef) -> v1::StatusReply = |manager, caller, id, _|
            status(manager.resume(caller, id).await);
        fn suspend(v1::JobRef) -> v1::StatusReply = |manager, caller, id, _|
            status(manager.suspend(caller, id).await);
        fn cancel(v1::JobRef) -> v1::StatusReply = |manager, caller, id, _|
            status(manager.cancel(caller, id).await);
        fn complete(v1::JobRef) -> v1::StatusReply = |manager, caller, id, _|
            status(manager.complete(caller, id).await);
        fn take_ownership(v1::JobRef) -> v1::StatusReply = |manager, caller, id, _|
            status(manager.take_ownership(caller, id).await);
        fn get_progress(v1::JobRef) -> v1::Progress = |manager, caller, id, _|
            reply(manager.get_progress(caller, id).map(|p| convert::progress_to_wire(&p)));
        fn get_error(v1::JobRef) -> v1::JobError = |manager, caller, id, _|
            reply(manager.get_error(caller, id).map(|e| convert::job_error_to_wire(&e)));
        fn request_file_ranges(v1::RequestFileRangesRequest) -> v1::StatusReply =
            |manager, caller, id, req| {
                let ranges = convert::ranges_from_wire(&req.ranges);
                status(manager.request_file_ranges(caller, id, req.file_index, &ranges).await)
            };
        fn get_filled_file_ranges(v1::FileRef) -> v1::FileRangesReply =
            |manager, caller, id, req| {
                let filled = manager.get_filled_file_ranges(caller, id, req.file_index);
                reply(filled.map(|set| v1::FileRangesReply {
                    ranges: convert::range_set_to_wire(&set),
                }))
            };
        fn set_priority(v1::SetPriorityRequest) -> v1::StatusReply = |manager, caller, id, req| {
            let priority = convert::priority_from_wire(req.priority).map_err(|e| to_status(&e))?;
            status(manager.set_priority(caller, id, priority).await)
        };
        fn set_custom_headers(v1::SetCustomHeadersRequest) -> v1::StatusReply =
            |manager, caller, id, req|
                status(manager.set_custom_headers(caller, id, req.headers).await);
        fn set_display_name(v1::SetStringRequest) -> v1::StatusReply = |manager, caller, id, req|
            status(manager.set_display_name(caller, id, req.value).await);
        fn set_description(v1::SetStringRequest) -> v1::StatusReply = |manager, caller, id, req|
            status(manager.set_description(caller, id, req.value).await);
        fn set_minimum_retry_delay(v1::SetSecondsRequest) -> v1::StatusReply =
            |manager, caller, id, req|
                status(manager.set_minimum_retry_delay(caller, id, req.seconds).await);
        fn set_no_progress_timeout(v1::SetSecondsRequest) -> v1::StatusReply =
            |manager, caller, id, req|
                status(manager.set_no_progress_timeout(caller, id, req.seconds).await);
        fn set_maximum_download_time(v1::SetSecondsRequest) -> v1::StatusReply =
            |manager, caller, id, req|
                status(manager.set_maximum_download_time(caller, id, req.seconds).await);
        fn set_notify_flags(v1::SetFlagsRequest) -> v1::StatusReply = |manager, caller, id, req|
            status(manager.set_notify_flags(caller, id, req.flags).await);
        fn set_security_flags(v1::SetFlagsRequest) -> v1::StatusReply = |manager, caller, id, req|
            status(manager.set_security_flags(caller, id, req.flags).await);
        fn set_property(v1::SetPropertyRequest) -> v1::StatusReply = |manager, caller, id, req| {
            let value = property_value(req.value)?;
            status(manager.set_property(caller, id, req.property_id, value).await)
        };
        fn add_file_set(v1::AddFileSetRequest) -> v1::AddFileSetReply = |manager, caller, id, req| {
            let files = req
                .files
                .into_iter()
                .map(|f| NewFile {
                    remote_url: f.remote_url,
                    local_path: f.local_path.into(),
                    ranges: None,
                    sha256: f.sha256,
                })
                .collect();
            reply(
                manager
                    .add_files(caller, id, files)
                    .await
                    .map(|file_indexes| v1::AddFileSetReply { file_indexes }),
            )
        };
        fn set_remote_name(v1::SetRemoteNameRequest) -> v1::StatusReply =
            |manager, caller, id, req|
                status(manager.set_remote_name(caller, id, req.file_index, &req.remote_url).await);
        fn replace_remote_prefix(v1::ReplaceRemotePrefixRequest) -> v1::StatusReply =
            |manager, caller, id, req| {
                let (old, new) = (&req.old_prefix, &req.new_prefix);
                status(manager.replace_remote_prefix(caller, id, old, new).await)
            };
        fn update_download_position(v1::UpdateDownloadPositionRequest) -> v1::StatusReply =
            |manager, caller, id, req| {
                let offset = req.offset;
                status(manager.update_download_position(caller, id, req.file_index, offset).await)
            };
        fn set_extensions(v1::SetExtensionsRequest) -> v1::StatusReply =
            |manager, caller, id, req| {
                let (connections, files) = (req.connections_per_file, req.files_at_once);
                status(manager.set_extensions(caller, id, connections, files).await)
            };
        fn set_notify_cmd_line(v1::SetNotifyCmdLineRequest) -> v1::StatusReply =
            |manager, caller, id, req|
                status(manager.set_notify_cmd_line(caller, id, req.program, req.arguments).await);
    }

    async fn create_job(
        &self,
        request: Request<v1::CreateJobRequest>,
    ) -> Result<Response<v1::CreateJobReply>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        reply(
            async {
                let job_type: JobType = convert::job_type_from_wire(req.r#type)?;
                let priority = convert::priority_from_wire(req.priority)?;
                let id = self
                    .manager
                    .create_job(caller, &req.display_name, &req.description, job_type, priority)
                    .await?;
                Ok(v1::CreateJobReply { job_id: id.to_string() })
            }
            .await,
        )
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsReply>, Status> {
        let caller = self.caller(&request)?;
        let jobs = if request.get_ref().all_users {
            self.manager.list_all_jobs(caller).map_err(|e| to_status(&e))?
        } else {
            self.manager.list_jobs(caller)
        };
        let jobs = jobs.iter().map(convert::job_to_wire).collect();
        Ok(Response::new(v1::ListJobsReply { jobs }))
    }

    type WatchJobStream = crate::watch::WatchJobStream;

    async fn watch_job(
        &self,
        request: Request<v1::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = self.caller(&request)?;
        crate::watch::watch_job(&self.manager, &self.watches, caller, request.into_inner()).await
    }

    async fn get_stats(
        &self,
        request: Request<v1::GetStatsRequest>,
    ) -> Result<Response<v1::GetStatsReply>, Status> {
        let caller = self.caller(&request)?;
        let stats = BitsService::stats(&self.manager, caller.uid, &self.watches, &self.connections);
        Ok(Response::new(convert::stats_to_wire(&stats)))
    }
}
