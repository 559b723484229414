//! bitsctl as a process against an in-process fake daemon: output formats and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bits_core::{
    BitsError, ByteRange, Code, ErrorContext, Job, JobError, JobFile, JobId, JobState,
    LENGTH_TO_EOF, Priority, Progress,
};
use bits_proto::convert::{
    EventInfo, JobEventInfo, files_to_wire, job_event_to_wire, job_to_wire, parse_job_id,
    priority_from_wire, ranges_from_wire, status_reply,
};
use bits_proto::status::to_status;
use bits_proto::v1;
use bits_testkit::grpc::{EventStream, FakeBits, serve_unix};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    job: Option<Job>,
    /// GetJob calls until the job reaches its end state.
    polls_left: u32,
    end_state: Option<JobState>,
    cancelled: bool,
    completed: bool,
    /// Complete answers BG_S_PARTIAL_COMPLETE.
    partial: bool,
}

/// The error a job whose end state is ERROR has.
fn not_found_error() -> JobError {
    JobError {
        context: ErrorContext::RemoteFile,
        code: Code::Http(404),
        description: "Not Found".into(),
        file_index: Some(0),
    }
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

fn not_found(id: &str) -> Status {
    to_status(&BitsError::new(Code::BG_E_NOT_FOUND, format!("no job {id}")))
}

impl Fake {
    fn with_job<T>(&self, id: &str, f: impl FnOnce(&mut State) -> T) -> Result<T, Status> {
        let id = parse_job_id(id).map_err(|e| to_status(&e))?;
        let mut state = self.0.lock().unwrap();
        match &state.job {
            Some(job) if job.id == id => Ok(f(&mut state)),
            _ => Err(not_found(&id.to_string())),
        }
    }

    /// A setter's answer: `change` made to the job, S_OK.
    fn change_job(
        &self,
        id: &str,
        change: impl FnOnce(&mut Job),
    ) -> Result<Response<v1::StatusReply>, Status> {
        self.with_job(id, |s| {
            change(s.job.as_mut().unwrap());
            Response::new(status_reply(Code::S_OK))
        })
    }
}

#[tonic::async_trait]
impl FakeBits for Fake {
    async fn create_job(
        &self,
        req: Request<v1::CreateJobRequest>,
    ) -> Result<Response<v1::CreateJobReply>, Status> {
        let req = req.into_inner();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let job = Job {
            priority: priority_from_wire(req.priority).map_err(|e| to_status(&e))?,
            ..Job::new(JobId::new_random(), req.display_name, 1000, now)
        };
        let id = job.id.to_string();
        self.0.lock().unwrap().job = Some(job);
        Ok(Response::new(v1::CreateJobReply { job_id: id }))
    }
    async fn get_job(&self, req: Request<v1::JobRef>) -> Result<Response<v1::Job>, Status> {
        self.with_job(&req.into_inner().job_id, |s| {
            let end = s.end_state;
            let left = s.polls_left;
            s.polls_left = left.saturating_sub(1);
            let job = s.job.as_mut().unwrap();
            if left == 0 {
                if let Some(end) = end {
                    job.state = end;
                    for f in &mut job.files {
                        f.remote_size = Some(1000);
                        if end == JobState::Transferred {
                            f.filled.insert(0, 1000);
                        }
                    }
                    if end == JobState::Error {
                        job.error = Some(not_found_error());
                    }
                }
            } else if job.state == JobState::Queued {
                job.state = JobState::Transferring;
            }
            Response::new(job_to_wire(job))
        })
    }
    async fn list_jobs(
        &self,
        _: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsReply>, Status> {
        let state = self.0.lock().unwrap();
        Ok(Response::new(v1::ListJobsReply { jobs: state.job.iter().map(job_to_wire).collect() }))
    }
    async fn add_file(
        &self,
        req: Request<v1::AddFileRequest>,
    ) -> Result<Response<v1::AddFileReply>, Status> {
        let req = req.into_inner();
        self.with_job(&req.job_id.clone(), |s| add(s, req.remote_url, req.local_path, vec![]))
    }
    async fn add_file_with_ranges(
        &self,
        req: Request<v1::AddFileWithRangesRequest>,
    ) -> Result<Response<v1::AddFileReply>, Status> {
        let req = req.into_inner();
        let ranges = ranges_from_wire(&req.ranges);
        self.with_job(&req.job_id.clone(), |s| add(s, req.remote_url, req.local_path, ranges))
    }
    async fn list_files(
        &self,
        req: Request<v1::JobRef>,
    ) -> Result<Response<v1::ListFilesReply>, Status> {
        self.with_job(&req.into_inner().job_id, |s| {
            Response::new(v1::ListFilesReply { files: files_to_wire(s.job.as_ref().unwrap()) })
        })
    }
    async fn resume(&self, req: Request<v1::JobRef>) -> Result<Response<v1::StatusReply>, Status> {
        self.change_job(&req.into_inner().job_id, |job| job.state = JobState::Queued)
    }
    async fn cancel(&self, req: Request<v1::JobRef>) -> Result<Response<v1::StatusReply>, Status> {
        self.with_job(&req.into_inner().job_id, |s| {
            s.cancelled = true;
            s.job.as_mut().unwrap().state = JobState::Cancelled;
            Response::new(status_reply(Code::S_OK))
        })
    }
    async fn complete(
        &self,
        req: Request<v1::JobRef>,
    ) -> Result<Response<v1::StatusReply>, Status> {
        self.with_job(&req.into_inner().job_id, |s| {
            s.completed = true;
            s.job.as_mut().unwrap().state = JobState::Acknowledged;
            let code = if s.partial { Code::BG_S_PARTIAL_COMPLETE } else { Code::S_OK };
            Response::new(status_reply(code))
        })
    }
    async fn get_filled_file_ranges(
        &self,
        req: Request<v1::FileRef>,
    ) -> Result<Response<v1::FileRangesReply>, Status> {
        let req = req.into_inner();
        self.with_job(&req.job_id, |_| {
            Response::new(v1::FileRangesReply {
                ranges: vec![
                    v1::ByteRange { offset: 0, length: 10 },
                    v1::ByteRange { offset: 20, length: 5 },
                ],
            })
        })
    }
    /// `bitsctl download` sets both (see download_waits_for_transferred_then_completes).
    async fn set_minimum_retry_delay(
        &self,
        req: Request<v1::SetSecondsRequest>,
    ) -> Result<Response<v1::StatusReply>, Status> {
        let req = req.into_inner();
        self.change_job(&req.job_id, |job| job.minimum_retry_delay_secs = req.seconds.max(5))
    }
    async fn set_no_progress_timeout(
        &self,
        req: Request<v1::SetSecondsRequest>,
    ) -> Result<Response<v1::StatusReply>, Status> {
        let req = req.into_inner();
        self.change_job(&req.job_id, |job| job.no_progress_timeout_secs = req.seconds)
    }

    /// Plays the whole download at once: one JobModification with half the bytes, then the
    /// end state's event (JobTransferred or JobError).
    async fn watch_job(
        &self,
        req: Request<v1::WatchJobRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let end =
            self.with_job(&req.into_inner().job_id, |s| (s.job.as_ref().unwrap().id, s.end_state))?;
        let (job, end) = end;
        let time = SystemTime::now();
        let half = Progress {
            bytes_total: Some(1000),
            bytes_transferred: 500,
            files_total: 1,
            files_transferred: 0,
            files: vec![],
        };
        let mut events =
            vec![EventInfo::JobModification { state: JobState::Transferring, progress: half }];
        match end {
            Some(JobState::Transferred) => events.push(EventInfo::JobTransferred),
            Some(JobState::Error) => events.push(EventInfo::JobError(not_found_error())),
            _ => {}
        }
        let wire: Vec<Result<v1::JobEvent, Status>> = events
            .into_iter()
            .map(|event| Ok(job_event_to_wire(&JobEventInfo { job, time, event })))
            .collect();
        // Open-ended like the real stream: it ends only when the job does.
        let stream =
            tokio_stream::StreamExt::chain(tokio_stream::iter(wire), tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

fn add(
    s: &mut State,
    url: String,
    path: String,
    ranges: Vec<ByteRange>,
) -> Response<v1::AddFileReply> {
    let job = s.job.as_mut().unwrap();
    job.files.push(JobFile {
        ranges,
        ..JobFile::new(url, PathBuf::from(&path), PathBuf::from(format!("{path}.part")))
    });
    Response::new(v1::AddFileReply { file_index: job.files.len() as u32 - 1 })
}

struct Daemon {
    fake: Fake,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

async fn daemon() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("bitsd.sock");
    let fake = Fake::default();
    serve_unix(fake.clone(), &sock);
    Daemon { fake, sock, _dir: dir }
}

async fn bitsctl(sock: &Path, args: &[&str]) -> Output {
    bitsctl_env(sock, args, &[]).await
}

/// bitsctl with only the `BITSD_*` variables in `env` (the caller's own are removed).
async fn bitsctl_env(sock: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bitsctl"));
    cmd.arg("--socket").arg(sock).args(args);
    for var in ["BITSD_SOCKET", "BITSD_TCP", "BITSD_TOKEN_FILE"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_waits_for_transferred_then_completes() {
    let d = daemon().await;
    {
        let mut s = d.fake.0.lock().unwrap();
        s.end_state = Some(JobState::Transferred);
    }
    let o = bitsctl(&d.sock, &["download", "http://h/f", "rel/out", "--json"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["state"], "ACKNOWLEDGED");
    assert_eq!(v["bytes"], 1000);
    let s = d.fake.0.lock().unwrap();
    assert!(s.completed && !s.cancelled);
    let job = s.job.as_ref().unwrap();
    assert_eq!(v["job_id"], job.id.to_string());
    assert_eq!(job.display_name, "bitsctl download out");
    // Interactive default, as Start-BitsTransfer: FOREGROUND; short retries, --timeout's give-up.
    assert_eq!(job.priority, Priority::Foreground);
    assert_eq!((job.minimum_retry_delay_secs, job.no_progress_timeout_secs), (5, 60));
    let dest = &job.files[0].local_path;
    assert!(dest.is_absolute() && dest.ends_with("rel/out"), "{}", dest.display());
    // --json: progress as JSON lines on stderr.
    let first: serde_json::Value =
        serde_json::from_str(stderr(&o).lines().next().unwrap_or_default()).unwrap();
    assert_eq!(
        (first["state"].as_str(), first["bytes_transferred"].as_u64()),
        (Some("TRANSFERRING"), Some(500))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_error_cancels_and_exits_1() {
    let d = daemon().await;
    {
        let mut s = d.fake.0.lock().unwrap();
        s.polls_left = 1;
        s.end_state = Some(JobState::Error);
    }
    let o = bitsctl(&d.sock, &["download", "http://h/f", "/tmp/out", "--range", "5:eof"]).await;
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.lines().any(|l| l == "bitsctl: BG_E_HTTP_ERROR_404 (0x80190194): Not Found"),
        "{err}"
    );
    let s = d.fake.0.lock().unwrap();
    assert!(s.cancelled && !s.completed);
    assert_eq!(s.job.as_ref().unwrap().files[0].ranges, vec![ByteRange::new(5, LENGTH_TO_EOF)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_by_step_commands() {
    let d = daemon().await;
    let o = bitsctl(&d.sock, &["create", "--name", "n", "--priority", "high"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    assert!(JobId::parse(&id).is_some(), "{id}");

    let o = bitsctl(&d.sock, &["add", &id, "http://h/f", "/tmp/x", "--range", "0:10"]).await;
    assert_eq!(stdout(&o), "0\n");
    let o = bitsctl(&d.sock, &["resume", &id]).await;
    assert!(o.status.success() && stdout(&o).is_empty(), "{}", stderr(&o));

    let o = bitsctl(&d.sock, &["list", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["id"], id);
    assert_eq!(v[0]["priority"], "HIGH");
    assert_eq!(v[0]["progress"]["bytes_total"], serde_json::Value::Null);

    let o = bitsctl(&d.sock, &["list"]).await;
    assert!(stdout(&o).contains(&id) && stdout(&o).contains("QUEUED"), "{}", stdout(&o));

    let o = bitsctl(&d.sock, &["info", &id, "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["files"][0]["ranges"][0]["length"], 10);
    let o = bitsctl(&d.sock, &["info", &id]).await;
    assert!(stdout(&o).contains("/tmp/x.part"), "{}", stdout(&o));

    let o = bitsctl(&d.sock, &["ranges", &id, "0"]).await;
    assert_eq!(stdout(&o), "0:10\n20:5\n");

    let other = JobId::new_random().to_string();
    let o = bitsctl(&d.sock, &["info", &other]).await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), format!("bitsctl: BG_E_NOT_FOUND (0x80200001): no job {other}\n"));

    let o = bitsctl(&d.sock, &["suspend", &id]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("bitsctl: E_FAIL (0x80004005): "), "{}", stderr(&o));

    d.fake.0.lock().unwrap().partial = true;
    let o = bitsctl(&d.sock, &["complete", &id]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "BG_S_PARTIAL_COMPLETE\n");

    let o = bitsctl(&d.sock.with_extension("gone"), &["list"]).await;
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).starts_with("bitsctl: cannot connect to bitsd at "), "{}", stderr(&o));
}

/// A `BITSD_TOKEN_FILE` left in the environment is read only with --tcp: without it, commands
/// over the Unix socket work whatever the file is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_in_the_environment_does_not_matter_without_tcp() {
    let d = daemon().await;
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    for file in [dir.path().join("missing.token"), empty, dir.path().to_path_buf()] {
        let o = bitsctl_env(&d.sock, &["list", "--json"], &[("BITSD_TOKEN_FILE", &file)]).await;
        assert!(o.status.success(), "{}: {}", file.display(), stderr(&o));
        assert_eq!(stdout(&o).trim(), "[]", "{}", file.display());
        let o = bitsctl(&d.sock, &["list", "--token-file", file.to_str().unwrap()]).await;
        assert!(o.status.success(), "{}: {}", file.display(), stderr(&o));
    }
}

/// With --tcp, a token file that gives no token is a usage error: exit 2 and one line naming the
/// file and what is wrong with it, before anything is connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_with_a_token_file_that_gives_no_token_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("no.sock");
    let missing = dir.path().join("missing.token");
    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, " \n").unwrap();
    let words = dir.path().join("words.token");
    std::fs::write(&words, "two words\n").unwrap();
    let tcp = ["--tcp", "127.0.0.1:1", "list"];
    let cases = [
        (&missing, format!("cannot read {}: No such file or directory", missing.display())),
        (&empty, format!("{} is empty", empty.display())),
        (
            &words,
            format!("{}: the token may hold only printable ASCII without spaces", words.display()),
        ),
    ];
    let one_usage_line = |o: &std::process::Output, want: &str| {
        assert_eq!(o.status.code(), Some(2), "{}", stderr(o));
        let err = stderr(o);
        assert!(err.starts_with(&format!("bitsctl: {want}")), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(stdout(o), "");
    };
    for (file, why) in &cases {
        let file = file.to_str().unwrap();
        let flag = ["--tcp", "127.0.0.1:1", "--token-file", file, "list"];
        // Global flags: the token file after the subcommand is the same.
        let after = ["--tcp", "127.0.0.1:1", "list", "--token-file", file];
        for o in [
            bitsctl(&sock, &flag).await,
            bitsctl(&sock, &after).await,
            bitsctl_env(&sock, &tcp, &[("BITSD_TOKEN_FILE", Path::new(file))]).await,
        ] {
            one_usage_line(&o, &format!("--token-file: {why}"));
        }
    }
    let none = bitsctl(&sock, &tcp).await;
    one_usage_line(&none, "--tcp needs --token-file (or BITSD_TOKEN_FILE)");
}
