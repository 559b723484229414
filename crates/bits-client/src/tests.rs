//! The client against an in-process fake daemon on a real Unix socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use bits_core::{ErrorContext, Job, JobFile, JobState, LENGTH_TO_EOF, RangeSet};
use bits_proto::convert::{files_to_wire, job_error_to_wire, job_to_wire, status_reply};
use bits_proto::status::to_status;
use bits_proto::v1::bits_server::BitsServer;
use bits_testkit::grpc::{FakeBits, FakeDaemon, serve_unix};
use tonic::{Request, Response, Status};

use super::*;

fn sample_job(id: JobId) -> Job {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    Job {
        priority: Priority::Low,
        state: JobState::Error,
        error: Some(sample_error()),
        error_count: 1,
        files: vec![JobFile {
            ranges: vec![ByteRange::new(10, LENGTH_TO_EOF)],
            filled: RangeSet::from_span(10, 20),
            ..JobFile::new("http://h/f".into(), "/tmp/f".into(), "/tmp/.f.part".into())
        }],
        ..Job::new(id, "fake".into(), 1000, now)
    }
}

fn sample_stats() -> bits_core::Stats {
    bits_core::Stats {
        start_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        uptime: Duration::from_secs(7),
        jobs: vec![(JobState::Queued, 3)],
        own_jobs: vec![(JobState::Queued, 1)],
        bytes_transferred: 12_345,
        control_connections: 1,
        watch_streams: 0,
        http_connections: 2,
        transient_errors: vec![(Code::Http(503), 2)],
        flushes: bits_core::FlushStats {
            count: 5,
            failed: 0,
            total: Duration::from_micros(900),
            max: Duration::from_micros(400),
            buckets: vec![(Duration::from_micros(500), 5)],
        },
    }
}

fn sample_error() -> JobError {
    JobError {
        context: ErrorContext::RemoteFile,
        code: Code::Http(404),
        description: "Not Found".into(),
        file_index: Some(0),
    }
}

fn known(job_id: &str) -> Result<JobId, Status> {
    let id = convert::parse_job_id(job_id).map_err(|e| to_status(&e))?;
    if id.0.as_u128() == 1 {
        Ok(id)
    } else {
        Err(to_status(&BitsError::new(Code::BG_E_NOT_FOUND, format!("no job {id}"))))
    }
}

struct Fake;

#[tonic::async_trait]
impl FakeBits for Fake {
    async fn create_job(
        &self,
        req: Request<v1::CreateJobRequest>,
    ) -> Result<Response<v1::CreateJobReply>, Status> {
        let req = req.into_inner();
        if req.display_name == "bad" {
            return Err(to_status(&BitsError::new(Code::BG_E_STRING_TOO_LONG, "name 'bad'")));
        }
        let p = convert::priority_from_wire(req.priority).map_err(|e| to_status(&e))?;
        assert_eq!(p, Priority::High);
        Ok(Response::new(v1::CreateJobReply { job_id: job_one().to_string() }))
    }
    async fn get_job(&self, req: Request<v1::JobRef>) -> Result<Response<v1::Job>, Status> {
        let id = known(&req.into_inner().job_id)?;
        Ok(Response::new(job_to_wire(&sample_job(id))))
    }
    async fn list_jobs(
        &self,
        _: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsReply>, Status> {
        let jobs = vec![job_to_wire(&sample_job(job_one()))];
        Ok(Response::new(v1::ListJobsReply { jobs }))
    }
    async fn add_file(
        &self,
        req: Request<v1::AddFileRequest>,
    ) -> Result<Response<v1::AddFileReply>, Status> {
        let req = req.into_inner();
        known(&req.job_id)?;
        assert_eq!(req.local_path, "/tmp/x");
        Ok(Response::new(v1::AddFileReply { file_index: 4 }))
    }
    async fn add_file_with_ranges(
        &self,
        req: Request<v1::AddFileWithRangesRequest>,
    ) -> Result<Response<v1::AddFileReply>, Status> {
        let req = req.into_inner();
        let ranges = convert::ranges_from_wire(&req.ranges);
        bits_core::validate_static_ranges(&ranges, 500).map_err(|e| to_status(&e))?;
        Ok(Response::new(v1::AddFileReply { file_index: ranges.len() as u32 }))
    }
    async fn list_files(
        &self,
        req: Request<v1::JobRef>,
    ) -> Result<Response<v1::ListFilesReply>, Status> {
        let id = known(&req.into_inner().job_id)?;
        Ok(Response::new(v1::ListFilesReply { files: files_to_wire(&sample_job(id)) }))
    }
    async fn resume(&self, req: Request<v1::JobRef>) -> Result<Response<v1::StatusReply>, Status> {
        known(&req.into_inner().job_id)?;
        Err(to_status(&BitsError::new(Code::BG_E_EMPTY, "the job has no files to transfer")))
    }
    async fn suspend(&self, req: Request<v1::JobRef>) -> Result<Response<v1::StatusReply>, Status> {
        known(&req.into_inner().job_id)?;
        Ok(Response::new(status_reply(Code::S_OK)))
    }
    async fn cancel(&self, req: Request<v1::JobRef>) -> Result<Response<v1::StatusReply>, Status> {
        known(&req.into_inner().job_id)?;
        // A broken daemon: an error code in a success reply.
        Ok(Response::new(status_reply(Code::E_FAIL)))
    }
    async fn complete(
        &self,
        req: Request<v1::JobRef>,
    ) -> Result<Response<v1::StatusReply>, Status> {
        known(&req.into_inner().job_id)?;
        Ok(Response::new(status_reply(Code::BG_S_PARTIAL_COMPLETE)))
    }
    async fn get_progress(
        &self,
        req: Request<v1::JobRef>,
    ) -> Result<Response<v1::Progress>, Status> {
        let id = known(&req.into_inner().job_id)?;
        Ok(Response::new(convert::progress_to_wire(&sample_job(id).progress())))
    }
    async fn get_error(&self, req: Request<v1::JobRef>) -> Result<Response<v1::JobError>, Status> {
        known(&req.into_inner().job_id)?;
        Ok(Response::new(job_error_to_wire(&sample_error())))
    }
    async fn request_file_ranges(
        &self,
        req: Request<v1::RequestFileRangesRequest>,
    ) -> Result<Response<v1::StatusReply>, Status> {
        let req = req.into_inner();
        assert_eq!(req.file_index, 0);
        assert_eq!(convert::ranges_from_wire(&req.ranges), vec![ByteRange::new(1, 2)]);
        Ok(Response::new(status_reply(Code::S_OK)))
    }
    async fn get_filled_file_ranges(
        &self,
        req: Request<v1::FileRef>,
    ) -> Result<Response<v1::FileRangesReply>, Status> {
        let req = req.into_inner();
        known(&req.job_id)?;
        Ok(Response::new(v1::FileRangesReply {
            ranges: vec![v1::ByteRange { offset: 10, length: 10 }],
        }))
    }
    async fn set_priority(
        &self,
        req: Request<v1::SetPriorityRequest>,
    ) -> Result<Response<v1::StatusReply>, Status> {
        let req = req.into_inner();
        convert::priority_from_wire(req.priority).map_err(|e| to_status(&e))?;
        Ok(Response::new(status_reply(Code::S_OK)))
    }

    async fn set_custom_headers(
        &self,
        _: Request<v1::SetCustomHeadersRequest>,
    ) -> Result<Response<v1::StatusReply>, Status> {
        Ok(Response::new(status_reply(Code::S_OK)))
    }

    async fn get_stats(
        &self,
        _: Request<v1::GetStatsRequest>,
    ) -> Result<Response<v1::GetStatsReply>, Status> {
        Ok(Response::new(convert::stats_to_wire(&sample_stats())))
    }
}

fn job_one() -> JobId {
    JobId::parse("00000000-0000-0000-0000-000000000001").unwrap()
}

async fn serve(dir: &tempfile::TempDir) -> PathBuf {
    let sock = dir.path().join("bitsd.sock");
    serve_unix(Fake, &sock);
    sock
}

#[tokio::test]
async fn every_rpc_maps_to_core_types() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::connect(&serve(&dir).await).await.unwrap();
    let id = client.create_job("j", Priority::High).await.unwrap();
    assert_eq!(id.0.as_u128(), 1);

    let err = client.create_job("bad", Priority::High).await.unwrap_err();
    match err {
        ClientError::Bits(e) => {
            assert_eq!(e, BitsError::new(Code::BG_E_STRING_TOO_LONG, "name 'bad'"));
        }
        other => panic!("{other:?}"),
    }

    let job = client.get_job(id).await.unwrap();
    assert_eq!(job.state, JobState::Error);
    assert_eq!(job.priority, Priority::Low);
    assert_eq!(job.error, Some(sample_error()));
    assert_eq!(job.progress.bytes_total, None);
    assert_eq!(client.list_jobs().await.unwrap(), vec![job]);

    let missing = JobId::new_random();
    let err = client.get_job(missing).await.unwrap_err();
    assert!(matches!(&err, ClientError::Bits(e) if e.code == Code::BG_E_NOT_FOUND), "{err}");
    assert_eq!(
        err.to_string(),
        format!("BG_E_NOT_FOUND (0x80200001): no job {missing}"),
        "Display is the CLI's error line"
    );

    assert_eq!(client.add_file(id, "http://h/f", Path::new("/tmp/x")).await.unwrap(), 4);
    let ranges = [ByteRange::new(0, 10), ByteRange::new(20, LENGTH_TO_EOF)];
    assert_eq!(
        client.add_file_with_ranges(id, "u", Path::new("/tmp/y"), &ranges).await.unwrap(),
        2
    );
    let overlapping = [ByteRange::new(0, 10), ByteRange::new(5, 1)];
    let err = client.add_file_with_ranges(id, "u", Path::new("/y"), &overlapping).await;
    assert!(matches!(err, Err(ClientError::Bits(e)) if e.code == Code::BG_E_OVERLAPPING_RANGES));

    let files = client.list_files(id).await.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].ranges, vec![ByteRange::new(10, LENGTH_TO_EOF)]);
    assert_eq!(files[0].progress.bytes_transferred, 10);
    assert_eq!(files[0].temp_path, PathBuf::from("/tmp/.f.part"));

    let err = client.resume(id).await.unwrap_err();
    assert!(matches!(err, ClientError::Bits(e) if e.code == Code::BG_E_EMPTY));
    assert_eq!(client.suspend(id).await.unwrap(), Code::S_OK);
    assert!(matches!(client.cancel(id).await, Err(ClientError::Protocol(_))));
    assert_eq!(client.complete(id).await.unwrap(), Code::BG_S_PARTIAL_COMPLETE);
    assert_eq!(client.get_progress(id).await.unwrap().files_total, 1);
    assert_eq!(client.get_error(id).await.unwrap(), sample_error());
    assert_eq!(
        client.request_file_ranges(id, 0, &[ByteRange::new(1, 2)]).await.unwrap(),
        Code::S_OK
    );
    assert_eq!(client.get_filled_file_ranges(id, 0).await.unwrap(), vec![ByteRange::new(10, 10)]);
    assert_eq!(client.set_priority(id, Priority::Foreground).await.unwrap(), Code::S_OK);
    assert_eq!(client.get_stats().await.unwrap(), sample_stats());
}

/// The fake daemon on loopback TCP, letting through only calls that carry `Bearer t0ken`.
async fn serve_tcp() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let check = |request: Request<()>| match request.metadata().get("authorization") {
        Some(value) if value == "Bearer t0ken" => Ok(request),
        _ => Err(to_status(&BitsError::new(Code::E_ACCESSDENIED, "wrong token"))),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(BitsServer::with_interceptor(FakeDaemon(Fake), check))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn a_tcp_client_sends_its_bearer_token_with_every_call() {
    let addr = serve_tcp().await;
    let client = Client::connect_tcp(addr, &Token::parse("t0ken").unwrap()).await.unwrap();
    assert_eq!(client.list_jobs().await.unwrap().len(), 1);
    assert_eq!(client.create_job("j", Priority::High).await.unwrap(), job_one());

    let wrong = Client::connect_tcp(addr, &Token::parse("t0ken2").unwrap()).await.unwrap();
    let err = wrong.list_jobs().await.unwrap_err();
    assert!(matches!(&err, ClientError::Bits(e) if e.code == Code::E_ACCESSDENIED), "{err}");
}

#[tokio::test]
async fn a_tcp_client_sends_the_token_of_its_token_file() {
    let addr = serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tcp.token");
    // Surrounding whitespace (the file's newline) is not part of the token.
    std::fs::write(&path, "  t0ken\n").unwrap();
    let client = Client::connect_tcp(addr, &Token::read_file(&path).unwrap()).await.unwrap();
    assert_eq!(client.list_jobs().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_unreachable_tcp_address_is_a_connect_error_naming_it() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let err = Client::connect_tcp(addr, &Token::parse("t0ken").unwrap()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ClientError::ConnectTcp { .. }), "{text}");
    assert!(text.starts_with(&format!("cannot connect to bitsd at {addr}: ")), "{text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
}

#[tokio::test]
async fn a_missing_socket_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nope.sock");
    let err = Client::connect(&sock).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ClientError::Connect { .. }));
    assert!(text.contains(&sock.display().to_string()), "{text}");
    assert!(text.contains("is bitsd running?"), "{text}");
}

#[tokio::test]
async fn a_stale_socket_says_the_daemon_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let err = Client::connect(&sock).await.unwrap_err();
    assert!(err.to_string().contains("not running"), "{err}");
}

#[test]
fn default_socket_is_under_the_runtime_dir_or_run() {
    let path = default_socket();
    assert!(path.ends_with("bitsd.sock"), "{}", path.display());
}
