//! The job store is never silently reset: an unknown schema version, a damaged database (one that
//! lost any acknowledged change, or is gone) or a record that does not decode stops the daemon
//! with a message saying what is wrong, and every file under the data dir is left exactly as it
//! was. A full store disk fails the call with ERROR_DISK_FULL and changes nothing; the store works
//! again once there is space. SIGTERM with a transfer in flight exits
//! within 5 s and keeps the progress made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bits_core::{ByteRange, Code, JobId, JobState, Priority};
use bits_testkit::data::{random_bytes, sha256_hex};
use bits_testkit::server::TestServer;
use bits_tests::daemon::{TestDaemon, binary_in, own_target_dir};
use bits_tests::fixture::serving;
use bits_tests::mounts::TmpfsMount;
use bits_tests::wait::{TIMEOUT, wait_for};

use crate::progress::FAST_SYNC;
use bits_tests::helpers::{assert_normalised, covers, range, span, total, wait_state};

/// How long a refused start may take: sled's lock wait (up to 5 s) plus start-up.
const REFUSE_WITHIN: Duration = Duration::from_secs(15);

/// Size and SHA-256 of every file under `dir`, by path relative to `dir`, except sled's page-table
/// snapshots (`db/snap.<lsn>`): sled 0.34 writes a fresh one on every open, even one bitsd then
/// refuses, and they are derived data (sled rebuilds them from the log when they are missing or
/// garbage). The log (`db/db`), `db/conf` and everything else must stay byte-identical.
fn hash_tree(dir: &Path) -> BTreeMap<PathBuf, (u64, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u64, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                walk(root, &path, out);
            } else if !entry.file_name().to_string_lossy().starts_with("snap.") {
                let bytes = std::fs::read(&path).unwrap();
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, (bytes.len() as u64, sha256_hex(&bytes)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Waits until no process (including sled's flusher thread of a `Db` this test dropped) holds
/// the store's lock, so that nothing writes to it any more.
fn wait_unlocked(db_dir: &Path) {
    let lock_file = db_dir.join("db");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let file = std::fs::File::open(&lock_file).unwrap();
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return, // closing the file releases the lock
            Err(e) => {
                assert!(Instant::now() < deadline, "{} stays locked: {e}", lock_file.display());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Opens the stopped daemon's sled database directly, lets `edit` change it, flushes, and waits
/// until sled has let go of it.
fn edit_store<T>(data_dir: &Path, edit: impl FnOnce(&sled::Db) -> T) -> T {
    let db_dir = data_dir.join("db");
    wait_unlocked(&db_dir);
    let result = {
        let db = sled::Config::new().path(&db_dir).open().unwrap();
        let result = edit(&db);
        db.flush().unwrap();
        result
    };
    wait_unlocked(&db_dir);
    result
}

/// Two suspended jobs, "first" and "second", each given `files` files from an unreachable host
/// by one AddFile each (every one acknowledged).
async fn two_jobs(daemon: &TestDaemon, files: usize) -> Vec<JobId> {
    let client = daemon.client().await;
    let mut jobs = Vec::new();
    for (i, name) in ["first", "second"].iter().enumerate() {
        let job = client.create_job(name, Priority::Normal).await.unwrap();
        for f in 0..files {
            let dest = daemon.out_dir().join(format!("{name}-{f}.bin"));
            client.add_file(job, &format!("http://127.0.0.1:9/{i}/{f}"), &dest).await.unwrap();
        }
        jobs.push(job);
    }
    jobs
}

/// A daemon with two suspended jobs in its store, stopped cleanly (SIGTERM, exit 0).
async fn stopped_daemon_with_jobs() -> (TestDaemon, Vec<JobId>) {
    let mut daemon = TestDaemon::start().await;
    let jobs = two_jobs(&daemon, 3).await;
    let status = daemon.terminate_within(Duration::from_secs(5)).await;
    assert!(status.success(), "bitsd exited with {status} on SIGTERM");
    (daemon, jobs)
}

/// How a start attempt on a store that must be refused ended.
struct Attempt {
    /// The exit status, or `None` if bitsd started serving anyway (it was then SIGKILLed).
    status: Option<ExitStatus>,
    /// Everything it printed (log lines on stderr, without colours).
    printed: String,
}

/// Runs `bitsd` on the daemon's socket and data dir, expecting it to refuse to start. Stops it
/// (SIGKILL) as soon as it logs that it is serving, and panics if it neither exits nor starts
/// within [`REFUSE_WITHIN`].
fn start_attempt(daemon: &TestDaemon) -> Attempt {
    let output_path = daemon.dir().join("refused-start.log");
    let output = std::fs::File::create(&output_path).unwrap();
    let mut child = Command::new(binary_in(&own_target_dir(), "bitsd"))
        .arg("--socket")
        .arg(daemon.socket())
        .arg("--data-dir")
        .arg(daemon.data_dir())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("BITSD_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::from(output.try_clone().unwrap()))
        .stderr(Stdio::from(output))
        .spawn()
        .unwrap();
    let started = Instant::now();
    let printed = || std::fs::read_to_string(&output_path).unwrap_or_default();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if printed().contains("bitsd starting") {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        if started.elapsed() > REFUSE_WITHIN {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bitsd neither started nor exited within {REFUSE_WITHIN:?}:\n{}", printed());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let printed = printed();
    eprintln!("bitsd start attempt after {:?}: {status:?}\n{printed}", started.elapsed());
    Attempt { status, printed }
}

/// The refusal every damaged-store case must show: a non-zero exit, no panic, the socket not
/// left behind, and not one byte of the data dir changed.
fn assert_refused(
    daemon: &TestDaemon,
    attempt: &Attempt,
    before: &BTreeMap<PathBuf, (u64, String)>,
) {
    let printed = &attempt.printed;
    let Some(status) = attempt.status else {
        panic!("bitsd started serving on a store it must refuse:\n{printed}");
    };
    assert!(!status.success(), "bitsd exited 0 on a store it must refuse:\n{printed}");
    assert!(
        status.code().is_some(),
        "bitsd died from a signal ({status}), not a clean exit:\n{printed}"
    );
    assert!(
        !printed.contains("panicked") && !printed.contains("RUST_BACKTRACE"),
        "bitsd panicked instead of refusing with a message:\n{printed}"
    );
    assert!(!daemon.socket().exists(), "a refused daemon left its socket behind");
    assert_eq!(&hash_tree(&daemon.data_dir()), before, "the refused start changed the data dir");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_schema_version_stops_the_daemon_and_leaves_the_store_untouched() {
    let (mut daemon, jobs) = stopped_daemon_with_jobs().await;
    let data = daemon.data_dir();
    let original = edit_store(&data, |db| {
        db.insert(b"meta/schema_version", &999u32.to_be_bytes()[..]).unwrap()
    });
    let original = original.expect("the store had no schema version");
    assert_eq!(&original[..], &bits_store::SCHEMA_VERSION.to_be_bytes()[..]);
    let before = hash_tree(&data);

    let attempt = start_attempt(&daemon);
    assert_refused(&daemon, &attempt, &before);
    let printed = &attempt.printed;
    assert!(
        printed.contains("schema version 999"),
        "the message must name the version found (999):\n{printed}"
    );
    assert!(
        printed.contains(&format!("uses version {}", bits_store::SCHEMA_VERSION)),
        "the message must name the version this bitsd expects ({}):\n{printed}",
        bits_store::SCHEMA_VERSION
    );

    // Nothing was reset: with the right version back, every job is there.
    edit_store(&data, |db| {
        db.insert(b"meta/schema_version", &original[..]).unwrap();
    });
    daemon.restart().await;
    let listed: Vec<JobId> =
        daemon.client().await.list_jobs().await.unwrap().iter().map(|j| j.id).collect();
    for job in jobs {
        assert!(listed.contains(&job), "job {job} lost: {listed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_job_record_stops_the_daemon_naming_the_key() {
    let (mut daemon, jobs) = stopped_daemon_with_jobs().await;
    let data = daemon.data_dir();
    let key = format!("job/{}", jobs[1]);
    let original =
        edit_store(&data, |db| db.insert(key.as_bytes(), &b"{\"id\": not json"[..]).unwrap());
    let original = original.expect("the job record was not where the layout says");
    let before = hash_tree(&data);

    let attempt = start_attempt(&daemon);
    assert_refused(&daemon, &attempt, &before);
    let printed = &attempt.printed;
    assert!(printed.contains(&key), "the message must name the key {key}:\n{printed}");
    assert!(printed.contains("corrupt"), "the message must say the store is corrupt:\n{printed}");

    edit_store(&data, |db| {
        db.insert(key.as_bytes(), original).unwrap();
    });
    daemon.restart().await;
    let listed: Vec<JobId> =
        daemon.client().await.list_jobs().await.unwrap().iter().map(|j| j.id).collect();
    assert_eq!(listed.len(), jobs.len(), "jobs lost: {listed:?}");
}

/// Damages the stopped daemon's store with `damage`, then checks that bitsd refuses it with a
/// message containing every word of `expect` and changes nothing.
async fn damaged_store_is_refused(what: &str, damage: impl FnOnce(&Path), expect: &[&str]) {
    let (daemon, _jobs) = stopped_daemon_with_jobs().await;
    let data = daemon.data_dir();
    wait_unlocked(&data.join("db"));
    damage(&data.join("db"));
    let before = hash_tree(&data);
    let attempt = start_attempt(&daemon);
    assert_refused(&daemon, &attempt, &before);
    for word in expect {
        assert!(
            attempt.printed.contains(word),
            "{what}: the message must contain {word:?}:\n{}",
            attempt.printed
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_store_config_stops_the_daemon() {
    damaged_store_is_refused(
        "garbage in db/conf",
        |db| {
            std::fs::write(db.join("conf"), b"this is not a sled config file, garbage 0123456789\n")
                .unwrap()
        },
        &["cannot open the job store", "corrupt"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_store_log_stops_the_daemon() {
    damaged_store_is_refused(
        "scribbled log (db/db)",
        |db| {
            use std::os::unix::fs::FileExt;
            let log = std::fs::OpenOptions::new().write(true).open(db.join("db")).unwrap();
            // The segment header and the first records (the schema version, the first job).
            log.write_all_at(&[0xA5; 100], 100).unwrap();
        },
        &["job store", "damaged", "holds 0 jobs but 2 were recorded"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_store_log_stops_the_daemon() {
    damaged_store_is_refused(
        "log (db/db) cut to 1000 bytes",
        |db| {
            // Keeps the schema version and the first records; the second job is cut off.
            let log = std::fs::OpenOptions::new().write(true).open(db.join("db")).unwrap();
            assert!(log.metadata().unwrap().len() > 4000, "the log is too short to cut");
            log.set_len(1000).unwrap();
        },
        &["job store", "damaged or truncated", "but 2 were recorded"],
    )
    .await;
}

/// A daemon with two jobs, each created and then given two files by two AddFiles (every one
/// acknowledged), killed right after (SIGKILL: no clean close), as issue 13 found its store.
/// Returns the jobs with their acknowledged file count.
async fn killed_daemon_with_acknowledged_files() -> (TestDaemon, Vec<(JobId, usize)>) {
    let mut daemon = TestDaemon::start().await;
    let jobs = two_jobs(&daemon, 2).await.into_iter().map(|job| (job, 2)).collect();
    daemon.kill_9().await;
    // A killed daemon leaves its socket; a refused start must not leave one of its own.
    std::fs::remove_file(daemon.socket()).unwrap();
    (daemon, jobs)
}

/// Each way issue 13 damaged the log (ten flipped bytes from offset 10 on, zeroed 4 KiB blocks,
/// truncations), each on a fresh store: bitsd refuses it (saying it is damaged and changing
/// nothing) or starts with every acknowledged file of every job. It never starts without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_is_refused_or_loses_no_acknowledged_change() {
    use std::os::unix::fs::FileExt;
    type Damage = Box<dyn Fn(&std::fs::File, u64)>;
    let mut damages: Vec<(String, Damage)> = Vec::new();
    for n in 0..10u64 {
        let flip = move |log: &std::fs::File, used: u64| {
            let at = if n == 0 { 10 } else { used * n / 10 };
            let mut byte = [0u8];
            log.read_exact_at(&mut byte, at).unwrap();
            log.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
        };
        damages.push((format!("byte {n}/10 of the log flipped (10 for 0)"), Box::new(flip)));
    }
    for n in 0..3u64 {
        let zero = move |log: &std::fs::File, used: u64| {
            log.write_all_at(&[0; 4096], used * n / 3 / 4096 * 4096).unwrap()
        };
        damages.push((format!("4 KiB block {n}/3 of the log zeroed"), Box::new(zero)));
    }
    for n in 1..4u64 {
        let cut = move |log: &std::fs::File, used: u64| log.set_len(used * n / 4).unwrap();
        damages.push((format!("log cut to {n}/4"), Box::new(cut)));
    }

    let (mut refused, mut intact) = (0, 0);
    for (what, damage) in damages {
        let (mut daemon, jobs) = killed_daemon_with_acknowledged_files().await;
        let data = daemon.data_dir();
        wait_unlocked(&data.join("db"));
        let log_path = data.join("db").join("db");
        let bytes = std::fs::read(&log_path).unwrap();
        // The log is preallocated: what was written ends at its last non-zero byte.
        let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |last| last as u64 + 1);
        let log = std::fs::OpenOptions::new().read(true).write(true).open(&log_path).unwrap();
        damage(&log, used);
        drop(log);
        let before = hash_tree(&data);
        let attempt = start_attempt(&daemon);
        if attempt.status.is_some() {
            assert_refused(&daemon, &attempt, &before);
            let printed = &attempt.printed;
            assert!(
                printed.contains("damaged") || printed.contains("corrupt"),
                "{what}: the message must say the store is damaged:\n{printed}"
            );
            refused += 1;
            continue;
        }
        daemon.restart().await;
        let client = daemon.client().await;
        for (job, files) in jobs {
            let listed = client.list_files(job).await.map_err(|e| e.to_string());
            assert!(
                matches!(&listed, Ok(listed) if listed.len() == files),
                "{what}: bitsd started without acknowledged changes: job {job} should have \
                 {files} files, has {listed:?}"
            );
        }
        intact += 1;
    }
    eprintln!("{refused} damaged logs refused, {intact} started with every acknowledged change");
}

/// With its database directory deleted, a store that held jobs is refused, and no empty
/// database is created in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_database_is_refused_and_not_recreated() {
    let (daemon, _jobs) = stopped_daemon_with_jobs().await;
    let data = daemon.data_dir();
    wait_unlocked(&data.join("db"));
    std::fs::remove_dir_all(data.join("db")).unwrap();
    let before = hash_tree(&data);
    let attempt = start_attempt(&daemon);
    assert_refused(&daemon, &attempt, &before);
    assert!(!data.join("db").exists(), "the refused start created a database");
    let printed = &attempt.printed;
    assert!(
        printed.contains("is missing"),
        "the message must say the database is missing:\n{printed}"
    );
    assert!(printed.contains("2 jobs"), "the message must say what it held:\n{printed}");
}

/// The data dir's file system fills up: a SetDisplayName that cannot be stored fails with
/// ERROR_DISK_FULL and changes nothing (GetJob, and the job after a restart, keep the old name);
/// once space is freed the next call succeeds, without a restart, and survives one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_disk_is_error_disk_full_changes_nothing_and_recovers_when_space_returns() {
    let small = TmpfsMount::new_in(&std::env::temp_dir(), "16m");
    let mut daemon = TestDaemon::start_from(&own_target_dir(), small.path(), &[]).await;
    let client = daemon.client().await;
    let job = client.create_job("before", Priority::Normal).await.unwrap();
    let dest = daemon.out_dir().join("f.bin");
    client.add_file(job, "http://127.0.0.1:9/f", &dest).await.unwrap();

    // Fill the file system, then change the name until the store needs space it cannot get.
    let filler = small.join("filler");
    fill(&filler);
    let mut stored = client.get_job(job).await.unwrap().display_name;
    let mut failed = None;
    for i in 0..20_000 {
        let name = format!("{i:0>200}");
        match client.set_display_name(job, Some(&name)).await {
            Ok(_) => stored = name,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let Some(bits_client::ClientError::Bits(error)) = failed else {
        panic!("no SetDisplayName failed on a full disk: {failed:?}");
    };
    eprintln!("refused on a full disk: {error:?}");
    assert_eq!(error.code, Code::ERROR_DISK_FULL, "{error:?}");
    assert!(error.message.contains("disk is full"), "{error:?}");
    assert_eq!(
        client.get_job(job).await.unwrap().display_name,
        stored,
        "the name that could not be stored is visible"
    );

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(client.set_display_name(job, Some("after")).await.unwrap(), Code::S_OK);
    assert_eq!(client.get_job(job).await.unwrap().display_name, "after");
    drop(client);
    let status = daemon.terminate_within(Duration::from_secs(5)).await;
    assert!(status.success(), "bitsd exited with {status} on SIGTERM");
    daemon.restart().await;
    let client = daemon.client().await;
    assert_eq!(client.get_job(job).await.unwrap().display_name, "after");
    assert_eq!(client.list_files(job).await.unwrap().len(), 1);
    drop(client);
    daemon.terminate_within(Duration::from_secs(5)).await;
}

/// Writes `path` until its file system has no space left.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5Au8; 64 << 10];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Whatever a partial page still holds.
    while let Ok(n) = file.write(&chunk[..512]) {
        if n == 0 {
            break;
        }
    }
}

/// A throttled 8 MiB download with at least 1 MiB recorded as filled, with the given daemon flags.
async fn transfer_in_flight(
    seed: u64,
    args: &[&str],
    ready: impl Fn(u64, &[ByteRange]) -> bool,
) -> (TestServer, TestDaemon, JobId, Vec<u8>) {
    const SIZE: usize = 8 << 20;
    let remote = random_bytes(seed, SIZE);
    let server = serving("t.bin", remote.clone()).await;
    server.set_throttle(Some(1 << 20));
    let daemon = TestDaemon::start_with(args).await;
    let client = daemon.client().await;
    let job = client.create_job("sigterm", Priority::Foreground).await.unwrap();
    client.add_file(job, &server.url("t.bin"), &daemon.out_dir().join("t.bin")).await.unwrap();
    client.resume(job).await.unwrap();
    wait_for("the transfer to get going", TIMEOUT, || async {
        let filled = client.get_filled_file_ranges(job, 0).await.map_err(|e| e.to_string())?;
        let state = client.get_job(job).await.map_err(|e| e.to_string())?.state;
        assert!(!matches!(state, JobState::Error | JobState::Transferred), "job is {state:?}");
        if ready(server.bytes_served(), &filled) {
            Ok(())
        } else {
            Err(format!("served {}, filled {filled:?}", server.bytes_served()))
        }
    })
    .await;
    (server, daemon, job, remote)
}

/// SIGTERM: exit 0 within 5 s; then a restart behind a closed gate shows what was kept. Checks
/// the kept bytes are right and returns them.
async fn sigterm_and_restart(
    server: &TestServer,
    daemon: &mut TestDaemon,
    job: JobId,
    remote: &[u8],
) -> Vec<ByteRange> {
    let status = daemon.terminate_within(Duration::from_secs(5)).await;
    assert!(status.success(), "bitsd exited with {status} on SIGTERM");
    server.hold();
    daemon.restart().await;
    let client = daemon.client().await;
    let kept = client.get_filled_file_ranges(job, 0).await.unwrap();
    assert_normalised(&kept, remote.len() as u64);
    let temp = client.list_files(job).await.unwrap()[0].temp_path.clone();
    let file = std::fs::File::open(&temp).unwrap();
    for r in &kept {
        use std::os::unix::fs::FileExt;
        let (start, end) = span(r);
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut buf, start).unwrap();
        assert!(buf == remote[start as usize..end as usize], "kept range {r:?} has wrong bytes");
    }
    kept
}

/// Lets the job finish and checks the file.
async fn finish(server: &TestServer, daemon: &TestDaemon, job: JobId, remote: &[u8]) {
    let client = daemon.client().await;
    server.set_throttle(None);
    server.release();
    wait_state(&client, job, JobState::Transferred).await;
    assert_eq!(
        client.get_filled_file_ranges(job, 0).await.unwrap(),
        [range(0, remote.len() as u64)]
    );
    client.complete(job).await.unwrap();
    let got = std::fs::read(daemon.out_dir().join("t.bin")).unwrap();
    assert!(sha256_hex(&got) == sha256_hex(remote), "the completed file differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_transfer_exits_within_5s_and_keeps_recorded_progress() {
    let (server, mut daemon, job, remote) =
        transfer_in_flight(60, &FAST_SYNC, |_, filled| total(filled) >= 1 << 20).await;
    let recorded = daemon.client().await.get_filled_file_ranges(job, 0).await.unwrap();
    let kept = sigterm_and_restart(&server, &mut daemon, job, &remote).await;
    eprintln!("recorded before SIGTERM: {recorded:?}; kept after restart: {kept:?}");
    assert!(
        covers(&kept, &recorded),
        "progress recorded before SIGTERM was lost: {recorded:?} -> {kept:?}"
    );
    finish(&server, &daemon, job, &remote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_persists_progress_not_yet_synced() {
    // A sync window far longer than the test: until SIGTERM, nothing received is recorded.
    let args = ["--sync-bytes", "1073741824", "--sync-interval-ms", "600000"];
    let (server, mut daemon, job, remote) =
        transfer_in_flight(61, &args, |served, _| served >= 2 << 20).await;
    let recorded = daemon.client().await.get_filled_file_ranges(job, 0).await.unwrap();
    let served = server.bytes_served();
    let kept = sigterm_and_restart(&server, &mut daemon, job, &remote).await;
    eprintln!("served {served}, recorded before SIGTERM {recorded:?}, kept after restart {kept:?}");
    assert!(covers(&kept, &recorded), "progress recorded before SIGTERM was lost");
    // The bytes bitsd had received when it was told to stop are synced and recorded on the way
    // out (allowing for what was still in socket buffers).
    assert!(
        total(&kept) >= 1 << 20,
        "SIGTERM dropped in-flight progress: {served} bytes served before SIGTERM, only {kept:?} kept"
    );
    finish(&server, &daemon, job, &remote).await;
}
