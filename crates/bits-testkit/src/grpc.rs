//! One fake gRPC daemon for the client and CLI tests. A test implements [`FakeBits`] with only
//! the RPCs it needs; every other RPC answers `UNIMPLEMENTED` naming itself. [`FakeDaemon`] turns
//! that into the tonic service, which has to have every method.
//!
//! The two lists below (the trait's defaults and the service's delegation) are generated from one
//! table of RPCs by a plain `macro_rules!`, so an RPC added to the proto is one line here.

use std::path::Path;
use std::pin::Pin;

use bits_proto::v1::{
    self,
    bits_server::{Bits, BitsServer},
};
use tokio_stream::Stream;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// The stream WatchJob answers with.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<v1::JobEvent, Status>> + Send>>;

macro_rules! fake_rpcs {
    ($($rpc:ident($request:ident) -> $reply:ty;)*) => {
        /// The RPCs a fake daemon answers; each one a test does not override is `UNIMPLEMENTED`.
        #[tonic::async_trait]
        pub trait FakeBits: Send + Sync + 'static {
            $(
                async fn $rpc(&self, _request: Request<v1::$request>) -> Result<Response<$reply>, Status> {
                    Err(Status::unimplemented(stringify!($rpc)))
                }
            )*
        }

        #[tonic::async_trait]
        impl<T: FakeBits> Bits for FakeDaemon<T> {
            type WatchJobStream = EventStream;
            $(
                async fn $rpc(&self, request: Request<v1::$request>) -> Result<Response<$reply>, Status> {
                    self.0.$rpc(request).await
                }
            )*
        }
    };
}

fake_rpcs! {
    create_job(CreateJobRequest) -> v1::CreateJobReply;
    get_job(JobRef) -> v1::Job;
    list_jobs(ListJobsRequest) -> v1::ListJobsReply;
    add_file(AddFileRequest) -> v1::AddFileReply;
    add_file_with_ranges(AddFileWithRangesRequest) -> v1::AddFileReply;
    list_files(JobRef) -> v1::ListFilesReply;
    resume(JobRef) -> v1::StatusReply;
    suspend(JobRef) -> v1::StatusReply;
    cancel(JobRef) -> v1::StatusReply;
    complete(JobRef) -> v1::StatusReply;
    get_progress(JobRef) -> v1::Progress;
    get_error(JobRef) -> v1::JobError;
    request_file_ranges(RequestFileRangesRequest) -> v1::StatusReply;
    get_filled_file_ranges(FileRef) -> v1::FileRangesReply;
    set_priority(SetPriorityRequest) -> v1::StatusReply;
    set_custom_headers(SetCustomHeadersRequest) -> v1::StatusReply;
    set_display_name(SetStringRequest) -> v1::StatusReply;
    set_description(SetStringRequest) -> v1::StatusReply;
    set_minimum_retry_delay(SetSecondsRequest) -> v1::StatusReply;
    set_no_progress_timeout(SetSecondsRequest) -> v1::StatusReply;
    set_maximum_download_time(SetSecondsRequest) -> v1::StatusReply;
    set_notify_flags(SetFlagsRequest) -> v1::StatusReply;
    set_security_flags(SetFlagsRequest) -> v1::StatusReply;
    set_property(SetPropertyRequest) -> v1::StatusReply;
    add_file_set(AddFileSetRequest) -> v1::AddFileSetReply;
    set_remote_name(SetRemoteNameRequest) -> v1::StatusReply;
    replace_remote_prefix(ReplaceRemotePrefixRequest) -> v1::StatusReply;
    update_download_position(UpdateDownloadPositionRequest) -> v1::StatusReply;
    set_extensions(SetExtensionsRequest) -> v1::StatusReply;
    take_ownership(JobRef) -> v1::StatusReply;
    set_notify_cmd_line(SetNotifyCmdLineRequest) -> v1::StatusReply;
    get_stats(GetStatsRequest) -> v1::GetStatsReply;
    watch_job(WatchJobRequest) -> EventStream;
}

/// A [`FakeBits`] as the tonic service (`BitsServer::new(FakeDaemon(fake))`, e.g. behind an
/// interceptor).
pub struct FakeDaemon<T>(pub T);

/// Serves `fake` on a new Unix socket at `sock` on the current runtime, as bitsd would.
pub fn serve_unix<T: FakeBits>(fake: T, sock: &Path) {
    let listener = tokio::net::UnixListener::bind(sock).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(BitsServer::new(FakeDaemon(fake)))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OnlySuspend;

    #[tonic::async_trait]
    impl FakeBits for OnlySuspend {
        async fn suspend(
            &self,
            _: Request<v1::JobRef>,
        ) -> Result<Response<v1::StatusReply>, Status> {
            Ok(Response::new(v1::StatusReply::default()))
        }
    }

    #[tokio::test]
    async fn an_overridden_rpc_answers_and_the_others_are_unimplemented_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("bitsd.sock");
        serve_unix(OnlySuspend, &sock);
        let channel = tonic::transport::Endpoint::try_from("http://fake")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let sock = sock.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(sock).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        let mut client = v1::bits_client::BitsClient::new(channel);
        let job = v1::JobRef { job_id: "x".into() };
        client.suspend(job.clone()).await.unwrap();
        let err = client.resume(job.clone()).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (tonic::Code::Unimplemented, "resume"));
        let err = client.watch_job(v1::WatchJobRequest::default()).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (tonic::Code::Unimplemented, "watch_job"));
    }
}
