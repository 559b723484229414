//! Conformance cases 87–91 (spec §10 "Notifications", §7): WatchJob, the gRPC server stream that
//! stands for BITS's callback registration, and `bitsctl watch`.
//!
//! Not applicable to a stream: the second half of case 90 (a subscriber that fails the first
//! FileTransferred delays the second) and case 91 (a failed callback is re-delivered). A stream
//! subscriber cannot answer "failure" to one event; what remains of §7.2 is the at-least-once
//! replay for late subscribers (case 87), which a re-subscribing client also relies on.

use std::time::{Duration, SystemTime};

use bits_client::{Client, EventInfo, EventStream, JobEventInfo, PropertyValue};
use bits_core::job::{notify, property};
use bits_core::{ByteRange, Code, JobId, JobState, Priority, RangeSet};
use bits_testkit::data::random_bytes;
use bits_testkit::faults::{Fault, FaultServer};
use bits_testkit::notify::assert_file_ranges_events;
use bits_testkit::server::TestServer;
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::{Download, foreground, fresh_job};
use bits_tests::wait::{TIMEOUT, wait_for};

/// Short timers: a retry after 1 s, small sync windows so progress is recorded often.
const DAEMON_ARGS: &[&str] =
    &["--retry-delay-secs", "1", "--sync-bytes", "16384", "--sync-interval-ms", "50"];

/// The next event within [`TIMEOUT`]; `None` when the stream ended.
async fn next(events: &mut EventStream) -> Option<JobEventInfo> {
    tokio::time::timeout(TIMEOUT, events.next())
        .await
        .expect("no event within the time limit")
        .map(|e| e.expect("the event stream failed"))
}

/// Every event that arrives within `quiet` of the previous one.
async fn drain(events: &mut EventStream, quiet: Duration) -> Vec<JobEventInfo> {
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(quiet, events.next()).await {
        seen.push(event.expect("the event stream failed"));
    }
    seen
}

/// Events until (and including) the first one `last` accepts.
async fn until(events: &mut EventStream, last: impl Fn(&EventInfo) -> bool) -> Vec<JobEventInfo> {
    let mut seen = Vec::new();
    loop {
        let event = next(events).await.unwrap_or_else(|| panic!("stream ended after {seen:?}"));
        let done = last(&event.event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

fn names(events: &[JobEventInfo]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.event {
            EventInfo::JobModification { state, .. } => format!("MODIFIED {}", state.name()),
            EventInfo::FileTransferred { index } => format!("FILE {index}"),
            other => other.name().to_string(),
        })
        .collect()
}

async fn wait_state(client: &Client, job: JobId, want: JobState) {
    wait_for(&format!("job {job} to reach {}", want.name()), TIMEOUT, || async {
        let info = client.get_job(job).await.map_err(|e| e.to_string())?;
        if info.state == want { Ok(()) } else { Err(format!("{:?}", info.state)) }
    })
    .await
}

/// A daemon and a job with one file of `len` bytes served by a [`TestServer`] (not resumed).
async fn job_with_file(name: &str, len: usize) -> Download {
    let data = random_bytes(len as u64, len);
    let of = foreground("notifications", name);
    Download::added(TestServer::start().await, data, DAEMON_ARGS, of).await
}

/// Case 87.
#[tokio::test]
async fn subscribing_after_transferred_delivers_one_job_transferred() {
    let d = job_with_file("late.bin", 10_000).await;
    let (client, job) = (&d.client, d.job);
    client.resume(job).await.unwrap();
    wait_state(client, job, JobState::Transferred).await;

    let mut events = client.watch_job(job, Some(notify::JOB_TRANSFERRED)).await.unwrap();
    let first = next(&mut events).await.unwrap();
    assert_eq!(first.job, job);
    assert_eq!(first.event, EventInfo::JobTransferred);
    assert!(drain(&mut events, Duration::from_millis(500)).await.is_empty());
    // The job's own flags (default 0x3 includes JOB_TRANSFERRED) deliver it too.
    let mut events = client.watch_job(job, None).await.unwrap();
    assert_eq!(next(&mut events).await.unwrap().event, EventInfo::JobTransferred);
}

/// Case 88.
#[tokio::test]
async fn job_error_is_sent_on_error_but_not_on_transient_error() {
    let daemon = TestDaemon::start_with(DAEMON_ARGS).await;
    let server = FaultServer::start().await;
    server.add_file("e.bin", random_bytes(88, 4096));
    server.always("e.bin", None, Fault::StatusRetryAfter(503, 1));
    let client = daemon.client().await;
    let job = client.create_job("notifications", Priority::Foreground).await.unwrap();
    client.add_file(job, &server.url("e.bin"), &daemon.out_dir().join("e.bin")).await.unwrap();
    let mut events = client.watch_job(job, Some(notify::JOB_ERROR)).await.unwrap();
    client.resume(job).await.unwrap();

    wait_state(&client, job, JobState::TransientError).await;
    let early = drain(&mut events, Duration::from_millis(500)).await;
    assert!(early.is_empty(), "JobError on TRANSIENT_ERROR: {early:?}");

    server.clear_faults("e.bin");
    server.always("e.bin", None, Fault::Status(404));
    let event = next(&mut events).await.unwrap();
    match event.event {
        EventInfo::JobError(error) => {
            assert_eq!(error.code, Code::Http(404));
            assert_eq!(error.file_index, Some(0));
        }
        other => panic!("expected JobError, got {other:?}"),
    }
    assert_eq!(client.get_job(job).await.unwrap().state, JobState::Error);
}

/// Case 89.
#[tokio::test]
async fn job_modification_is_sent_for_set_priority_and_add_file_but_not_into_transferred_or_error()
{
    let daemon = TestDaemon::start_with(DAEMON_ARGS).await;
    let server = TestServer::start().await;
    let client = daemon.client().await;
    let job = client.create_job("notifications", Priority::Foreground).await.unwrap();
    let mut events = client.watch_job(job, Some(notify::JOB_MODIFICATION)).await.unwrap();

    client.set_priority(job, Priority::High).await.unwrap();
    let after_priority = drain(&mut events, Duration::from_millis(500)).await;
    assert_eq!(names(&after_priority), ["MODIFIED SUSPENDED"]);

    server.add_file("m.bin", random_bytes(89, 100_000));
    client.add_file(job, &server.url("m.bin"), &daemon.out_dir().join("m.bin")).await.unwrap();
    let after_add = drain(&mut events, Duration::from_millis(500)).await;
    assert_eq!(names(&after_add), ["MODIFIED SUSPENDED"]);
    match &after_add[0].event {
        EventInfo::JobModification { progress, .. } => assert_eq!(progress.files_total, 1),
        other => panic!("{other:?}"),
    }

    // Into TRANSFERRED: state changes and progress on the way, none for TRANSFERRED itself.
    client.resume(job).await.unwrap();
    wait_state(&client, job, JobState::Transferred).await;
    let run = drain(&mut events, Duration::from_millis(500)).await;
    let states = names(&run);
    assert!(states.contains(&"MODIFIED QUEUED".to_string()), "{states:?}");
    assert!(states.contains(&"MODIFIED TRANSFERRING".to_string()), "{states:?}");
    assert!(!states.contains(&"MODIFIED TRANSFERRED".to_string()), "{states:?}");
    assert!(run.iter().all(|e| matches!(e.event, EventInfo::JobModification { .. })));

    // Into ERROR: none for ERROR either.
    let faults = FaultServer::start().await;
    faults.add_file("x.bin", random_bytes(90, 100));
    faults.always("x.bin", None, Fault::Status(404));
    let job = client.create_job("notifications", Priority::Foreground).await.unwrap();
    client.add_file(job, &faults.url("x.bin"), &daemon.out_dir().join("x.bin")).await.unwrap();
    let flags = notify::JOB_MODIFICATION | notify::JOB_ERROR;
    let mut events = client.watch_job(job, Some(flags)).await.unwrap();
    client.resume(job).await.unwrap();
    let run = until(&mut events, |e| matches!(e, EventInfo::JobError(_))).await;
    let run = [run, drain(&mut events, Duration::from_millis(500)).await].concat();
    let states = names(&run);
    assert!(!states.contains(&"MODIFIED ERROR".to_string()), "{states:?}");
    assert_eq!(states.iter().filter(|s| *s == "JOB_ERROR").count(), 1, "{states:?}");
}

/// Case 90 (first half; the "subscriber fails" half does not apply to a stream).
#[tokio::test]
async fn three_files_are_announced_in_order_before_job_transferred() {
    let daemon = TestDaemon::start_with(DAEMON_ARGS).await;
    let server = TestServer::start().await;
    let client = daemon.client().await;
    let job = client.create_job("notifications", Priority::Foreground).await.unwrap();
    for i in 0..3u64 {
        let name = format!("f{i}.bin");
        server.add_file(&name, random_bytes(i, 50_000 + i as usize * 1000));
        client.add_file(job, &server.url(&name), &daemon.out_dir().join(&name)).await.unwrap();
    }
    let flags = notify::FILE_TRANSFERRED | notify::JOB_TRANSFERRED;
    let mut events = client.watch_job(job, Some(flags)).await.unwrap();
    client.resume(job).await.unwrap();
    let seen = until(&mut events, |e| *e == EventInfo::JobTransferred).await;
    assert_eq!(names(&seen), ["FILE 0", "FILE 1", "FILE 2", "JOB_TRANSFERRED"]);
    assert!(drain(&mut events, Duration::from_millis(300)).await.is_empty());
    // Completing the job ends the stream.
    assert_eq!(client.complete(job).await.unwrap(), Code::S_OK);
    assert!(tokio::time::timeout(TIMEOUT, events.next()).await.unwrap().is_none());
}

/// Spec §7.1 FILE_RANGES_TRANSFERRED (issue item 7): on an on-demand job, the events cover exactly
/// the requested bytes and are at least MINIMUM_NOTIFICATION_INTERVAL_MS apart.
#[tokio::test]
async fn file_ranges_transferred_covers_the_requested_bytes_and_respects_the_interval() {
    let d = job_with_file("od.bin", 400_000).await;
    let (server, client, job) = (&d.server, &d.client, d.job);
    let interval = Duration::from_millis(300);
    client.set_property(job, property::ON_DEMAND_MODE, PropertyValue::Enable(true)).await.unwrap();
    let ms = PropertyValue::Dword(interval.as_millis() as u32);
    client.set_property(job, property::MINIMUM_NOTIFICATION_INTERVAL_MS, ms).await.unwrap();
    let requested = [ByteRange::new(1000, 60_000), ByteRange::new(200_000, 90_000)];
    client.request_file_ranges(job, 0, &requested).await.unwrap();
    // ~150 KB at 200 KB/s: most of a second of recording, in 16 KB syncs.
    server.set_throttle(Some(200_000));
    let flags = notify::FILE_RANGES_TRANSFERRED | notify::JOB_MODIFICATION;
    let mut events = client.watch_job(job, Some(flags)).await.unwrap();
    client.resume(job).await.unwrap();
    // ON_DEMAND_MODE: once the requested ranges are in, the job is SUSPENDED.
    let seen = until(&mut events, |e| {
        matches!(e, EventInfo::JobModification { state: JobState::Suspended, .. })
    })
    .await;
    let seen = [seen, drain(&mut events, interval * 2).await].concat();
    let ranges: Vec<(Duration, RangeSet)> = seen
        .iter()
        .filter_map(|e| match &e.event {
            EventInfo::FileRangesTransferred { index: 0, ranges } => {
                Some((e.time.duration_since(SystemTime::UNIX_EPOCH).unwrap(), ranges.clone()))
            }
            _ => None,
        })
        .collect();
    // The stamps are the daemon's clock; allow for its timer's rounding.
    assert_file_ranges_events(&ranges, &requested, 2, interval, Duration::from_millis(20));
}

/// Issue item 7: `bitsctl watch --json` prints one object per line and exits when the job is
/// completed.
#[tokio::test]
async fn bitsctl_watch_json_prints_one_object_a_line_and_exits_on_completion() {
    let d = job_with_file("w.bin", 30_000).await;
    let (daemon, client, job) = (&d.daemon, &d.client, d.job);
    let id = job.to_string();
    let args = ["watch", id.as_str(), "--json", "--flags", "0x3B"];
    let watch = daemon.bitsctl(&args);
    let drive = async {
        // Let the watcher register before anything happens (it would get the replay anyway).
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.resume(job).await.unwrap();
        wait_state(client, job, JobState::Transferred).await;
        client.complete(job).await.unwrap();
    };
    let (output, ()) = tokio::join!(watch, drive);
    let output = output.success();
    let lines: Vec<serde_json::Value> = output
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{output}")))
        .collect();
    assert!(lines.iter().all(|v| v["job_id"] == id.as_str() && v["time"].is_string()));
    let events: Vec<&str> = lines.iter().map(|v| v["event"].as_str().unwrap()).collect();
    assert!(events.contains(&"FILE_TRANSFERRED"), "{}", output.stdout);
    assert!(events.contains(&"JOB_TRANSFERRED"), "{}", output.stdout);
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "JOB_MODIFICATION", "{}", output.stdout);
    assert_eq!(last["state"], "ACKNOWLEDGED", "{}", output.stdout);

    // Watching a job that does not exist is an error line and a non-zero exit.
    let gone = daemon.bitsctl(&["watch", &id]).await;
    assert_eq!(gone.status.code(), Some(1), "{gone}");
    assert!(gone.stderr.contains("BG_E_NOT_FOUND"), "{gone}");
}

/// Spec §7.2 [PROPOSAL] stream registration: an open WatchJob ends when the daemon stops, and
/// does not hold up its shutdown.
#[tokio::test]
async fn an_open_watch_ends_at_shutdown_without_delaying_it() {
    let (mut daemon, client, job) = fresh_job(DAEMON_ARGS, "notifications").await;
    let mut events = client.watch_job(job, None).await.unwrap();
    let status = daemon.terminate_within(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}");
    let end = tokio::time::timeout(TIMEOUT, events.next()).await.unwrap();
    assert!(!matches!(end, Some(Ok(_))), "an event after shutdown: {end:?}");
}
