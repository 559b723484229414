//! bitsctl's commands for every RPC, run as a user would against the real daemon: `set` (in
//! order, stopping at the first refusal), `set-headers`, `add-set`, `set-remote-name`,
//! `replace-prefix`, `position`, `files`, `progress`, `error`, `reset`, `monitor --json`,
//! `watch`, jobs named by an id prefix, and JSON errors.

use std::process::Stdio;
use std::time::Duration;

use bits_core::{JobId, JobState, Priority};
use bits_testkit::data::random_bytes;
use bits_tests::daemon::{CtlOutput, TestDaemon};
use bits_tests::fixture::serving;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use bits_tests::helpers::{job_id_in, parse_json, wait_state};

/// A refused command: exit `code`, one line on stderr containing `want`.
fn refused(out: &CtlOutput, code: i32, want: &str) {
    assert_eq!(out.status.code(), Some(code), "{out}");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line: {out}");
    assert!(lines[0].contains(want), "the error line does not say {want:?}: {out}");
}

async fn create(daemon: &TestDaemon, name: &str) -> JobId {
    job_id_in(&daemon.bitsctl(&["create", "--name", name]).await.success().stdout)
}

/// The first 8 characters of the id: what a user copies from `list`.
fn prefix(job: JobId) -> String {
    job.to_string()[..8].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_applies_every_flag_in_order_and_stops_at_the_first_refusal() {
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let job = create(&daemon, "set").await;
    daemon
        .bitsctl(&[
            "set",
            &prefix(job),
            "--priority",
            "high",
            "--display-name",
            "renamed",
            "--description",
            "nightly mirror",
            "--retry-delay",
            "60",
            "--no-progress-timeout",
            "3600",
            "--max-download-time",
            "7200",
            "--notify-flags",
            "transferred,error,modification",
            "--security-flags",
            "redirect-disallow",
            "--property",
            "minimum-notification-interval-ms=250",
            "--connections",
            "4",
            "--files-at-once",
            "2",
        ])
        .await
        .success();
    let info = client.get_job(job).await.unwrap();
    assert_eq!(info.priority, Priority::High);
    assert_eq!(info.display_name, "renamed");
    assert_eq!(info.description, "nightly mirror");
    assert_eq!(info.minimum_retry_delay_secs, 60);
    assert_eq!(info.no_progress_timeout_secs, 3600);
    assert_eq!(info.maximum_download_time_secs, 7200);
    assert_eq!(info.notify_flags, 0x0B);
    assert_eq!(info.security_flags, 0x200);
    assert_eq!(info.minimum_notification_interval_ms, 250);
    assert_eq!(info.connections_per_file, 4);
    assert_eq!(info.files_at_once, 2);

    // The description is applied, the connections refused, the priority never sent.
    let out = daemon
        .bitsctl(&[
            "set",
            &job.to_string(),
            "--description",
            "changed",
            "--connections",
            "99",
            "--priority",
            "low",
        ])
        .await;
    refused(&out, 1, "--connections refused (--description already applied): E_INVALIDARG");
    let info = client.get_job(job).await.unwrap();
    assert_eq!(info.description, "changed");
    assert_eq!(info.connections_per_file, 4);
    assert_eq!(info.priority, Priority::High);

    // `info` shows the settings for people, `--json info` the raw numbers.
    let text = daemon.bitsctl(&["info", &prefix(job)]).await.success().stdout;
    for part in ["Retry delay     1m00s", "Max time        2h00m", "4 per file, 2 files at once"] {
        assert!(text.contains(part), "{part} not in:\n{text}");
    }
    let json =
        parse_json(&daemon.bitsctl(&["--json", "info", &prefix(job)]).await.success().stdout);
    assert_eq!(json["maximum_download_time_secs"], 7200);
    assert_eq!(json["security_flags"], 0x200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_headers_reads_a_file_or_stdin_and_refuses_bad_lines() {
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let job = create(&daemon, "headers").await;
    let id = prefix(job);
    let file = daemon.dir().join("headers.txt");
    std::fs::write(&file, "# auth\nAuthorization: Bearer s3cret\nX-Trace: 1\n").unwrap();
    daemon.bitsctl(&["set-headers", &id, "--from-file", file.to_str().unwrap()]).await.success();
    assert!(client.get_job(job).await.unwrap().has_custom_headers);

    daemon.bitsctl(&["set-headers", &id, "--clear"]).await.success();
    assert!(!client.get_job(job).await.unwrap().has_custom_headers);

    // `-`: the headers come on stdin, never on the command line.
    let mut child = tokio::process::Command::new(daemon.bitsctl_path())
        .args(["--socket", daemon.socket().to_str().unwrap(), "set-headers", &id])
        .args(["--from-file", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"Cookie: a=b\n").await.unwrap();
    drop(stdin);
    assert!(child.wait().await.unwrap().success());
    assert!(client.get_job(job).await.unwrap().has_custom_headers);

    let missing = daemon.dir().join("missing.txt");
    let out = daemon.bitsctl(&["set-headers", &id, "--from-file", missing.to_str().unwrap()]).await;
    refused(&out, 2, &format!("cannot read {}", missing.display()));
    std::fs::write(&file, "Authorization: Bearer s3cret\nX-Bad header\n").unwrap();
    let out = daemon.bitsctl(&["set-headers", &id, "--from-file", file.to_str().unwrap()]).await;
    refused(&out, 2, &format!("{}:2: not a 'Name: value' header", file.display()));
    assert!(!out.stderr.contains("s3cret"), "{out}");
    let out = daemon.bitsctl(&["set-headers", &id]).await;
    assert_eq!(out.status.code(), Some(2), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_set_remote_names_positions_and_errors() {
    let daemon = TestDaemon::start().await;
    let server = serving("a.bin", random_bytes(1, 10_000)).await;
    let client = daemon.client().await;
    let job = create(&daemon, "set of files").await;
    let id = prefix(job);
    let out_dir = daemon.out_dir();
    let list = daemon.dir().join("files.list");
    std::fs::write(
        &list,
        format!(
            "# two files\n{} {}\n\n{} {}\n",
            server.url("a.bin"),
            out_dir.join("a.bin").display(),
            "http://127.0.0.1:9/old/b.bin",
            out_dir.join("b.bin").display(),
        ),
    )
    .unwrap();
    let out = daemon.bitsctl(&["add-set", &id, list.to_str().unwrap()]).await.success();
    assert_eq!(out.stdout, "0\n1\n");
    let files = client.list_files(job).await.unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[1].local_path, out_dir.join("b.bin"));

    // A line without DEST: exit 2 naming the file and line, and nothing added.
    std::fs::write(&list, format!("{} {}\nhttp://h/c\n", server.url("a.bin"), "/tmp/c")).unwrap();
    let out = daemon.bitsctl(&["add-set", &id, list.to_str().unwrap()]).await;
    refused(&out, 2, &format!("{}:2: 'http://h/c' has no DEST", list.display()));
    assert_eq!(client.list_files(job).await.unwrap().len(), 2);

    let out = daemon.bitsctl(&["replace-prefix", &id, "http://nowhere/", "http://x/"]).await;
    assert_eq!(out.success().stdout, "S_FALSE\n");
    let new_prefix = format!("http://{}/", server.addr());
    daemon
        .bitsctl(&["replace-prefix", &id, "http://127.0.0.1:9/old/", &new_prefix])
        .await
        .success();
    assert_eq!(client.list_files(job).await.unwrap()[1].remote_url, server.url("b.bin"));
    daemon.bitsctl(&["set-remote-name", &id, "1", &server.url("missing.bin")]).await.success();
    let files = daemon.bitsctl(&["files", &id]).await.success().stdout;
    assert!(files.contains(&server.url("missing.bin")), "{files}");

    daemon.bitsctl(&["position", &id, "0", "5000"]).await.success();
    let out = daemon.bitsctl(&["position", &id, "7", "0"]).await;
    refused(&out, 1, "file index 7 is out of range");

    let out = daemon.bitsctl(&["error", &id]).await;
    refused(&out, 1, "BG_E_ERROR_INFORMATION_UNAVAILABLE");
    daemon.bitsctl(&["resume", &id]).await.success();
    wait_state(&client, job, JobState::Error).await;
    let error = daemon.bitsctl(&["error", &id]).await.success().stdout;
    for part in ["Context     REMOTE_FILE", "Code        BG_E_HTTP_ERROR_404", "File        1"] {
        assert!(error.contains(part), "{part} not in:\n{error}");
    }
    let progress = daemon.bitsctl(&["progress", &id]).await.success().stdout;
    assert!(progress.starts_with("9.8 KiB/"), "{progress}");
    assert!(progress.contains("[0] 9.8 KiB/9.8 KiB (100%)"), "{progress}");
    assert!(progress.contains("1/2 files"), "{progress}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_by_prefix_reset_and_json_errors() {
    let daemon = TestDaemon::start().await;
    let client = daemon.client().await;
    let jobs = [create(&daemon, "one").await, create(&daemon, "two").await];
    daemon.bitsctl(&["suspend", &prefix(jobs[0])]).await.success();

    // No job starts with a prefix made of the other hex digits.
    let unused = "0123456789abcdef"
        .chars()
        .find(|c| jobs.iter().all(|j| !j.to_string().starts_with(*c)))
        .unwrap();
    let nobody = format!("{unused}{unused}{unused}{unused}");
    refused(&daemon.bitsctl(&["info", &nobody]).await, 1, "BG_E_NOT_FOUND");
    let out = daemon.bitsctl(&["--json", "info", &nobody]).await;
    assert_eq!(out.status.code(), Some(1), "{out}");
    let error = parse_json(&out.stderr);
    assert_eq!(error["error"]["code"], "BG_E_NOT_FOUND");
    assert_eq!(error["error"]["hresult"], "0x80200001");
    assert_eq!(error["error"]["message"], format!("no job id starts with '{nobody}'"));
    // Usage errors too, with exit 2.
    let out = daemon.bitsctl(&["--json", "info", "xyz"]).await;
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert_eq!(parse_json(&out.stderr)["error"]["code"], "USAGE");

    let out = daemon.bitsctl(&["reset"]).await.success();
    assert_eq!(out.stdout, "2 of 2 jobs cancelled\n");
    assert!(client.list_jobs().await.unwrap().is_empty());
    let out = daemon.bitsctl(&["--json", "reset"]).await.success();
    assert_eq!(parse_json(&out.stdout)["cancelled"], serde_json::json!([]));

    // An administrator (root here) sees owners and may reset everyone's jobs.
    let job = create(&daemon, "root's").await;
    let list = daemon.bitsctl(&["list", "--all-users"]).await.success().stdout;
    assert!(list.lines().next().unwrap().contains("OWNER"), "{list}");
    let row = list.lines().find(|l| l.starts_with(&job.to_string())).unwrap();
    assert!(row.contains("0 (root)"), "{list}");
    let out = daemon.bitsctl(&["reset", "--all-users"]).await.success();
    assert_eq!(out.stdout, "1 of 1 jobs cancelled\n");
}

/// Reads the child's stdout lines until one contains `want` (60 s at most), returning them all.
/// The lines a running bitsctl prints.
type CtlLines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Starts `bitsctl --socket SOCKET ARGS` with its stdout piped (killed when dropped), and its
/// lines.
fn spawn_bitsctl(daemon: &TestDaemon, args: &[&str]) -> (tokio::process::Child, CtlLines) {
    let mut child = tokio::process::Command::new(daemon.bitsctl_path())
        .arg("--socket")
        .arg(daemon.socket())
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn lines_until(lines: &mut CtlLines, seen: &mut Vec<String>, want: &str) {
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let hit = line.contains(want);
            seen.push(line);
            if hit {
                return;
            }
        }
        panic!("the output ended before {want}:\n{}", seen.join("\n"));
    })
    .await;
    assert!(found.is_ok(), "no {want} within 60 s:\n{}", seen.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_json_and_watch_follow_a_short_download() {
    let daemon = TestDaemon::start().await;
    let server = serving("m.bin", random_bytes(2, 300_000)).await;
    let client = daemon.client().await;
    let socket = daemon.socket();
    let (mut monitor, mut lines) =
        spawn_bitsctl(&daemon, &["--json", "monitor", "--interval", "0.2"]);
    let mut seen = Vec::new();

    let job = create(&daemon, "monitored").await;
    let id = prefix(job);
    lines_until(&mut lines, &mut seen, "JOB_ADDED").await;
    let dest = daemon.out_dir().join("m.bin");
    daemon.bitsctl(&["add", &id, &server.url("m.bin"), dest.to_str().unwrap()]).await.success();
    let watch = tokio::process::Command::new(daemon.bitsctl_path())
        .args(["--socket", socket.to_str().unwrap(), "watch", &id])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    daemon.bitsctl(&["resume", &id]).await.success();
    lines_until(&mut lines, &mut seen, "JOB_TRANSFERRED").await;
    wait_state(&client, job, JobState::Transferred).await;
    daemon.bitsctl(&["complete", &id]).await.success();
    lines_until(&mut lines, &mut seen, "JOB_REMOVED").await;
    monitor.kill().await.unwrap();

    for line in &seen {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(event["job_id"], job.to_string(), "{line}");
    }
    assert!(seen.iter().any(|l| l.contains("JOB_MODIFICATION")), "{seen:#?}");

    // watch (default flags) printed progress and the outcome, and ended with the job.
    let watched = tokio::time::timeout(Duration::from_secs(60), watch.wait_with_output())
        .await
        .expect("watch did not end when the job was completed")
        .unwrap();
    assert!(watched.status.success());
    let text = String::from_utf8_lossy(&watched.stdout);
    assert!(text.lines().any(|l| l.starts_with("MODIFIED ")), "{text}");
    assert!(text.lines().any(|l| l == "TRANSFERRED"), "{text}");
    assert!(text.contains("293.0 KiB/293.0 KiB (100%)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_into_a_pipe_prints_one_table_per_interval() {
    let daemon = TestDaemon::start().await;
    let job = create(&daemon, "tabled").await;
    let (mut monitor, mut lines) = spawn_bitsctl(&daemon, &["monitor", "--interval", "0.1"]);
    let mut seen = Vec::new();
    lines_until(&mut lines, &mut seen, "tabled").await;
    lines_until(&mut lines, &mut seen, "tabled").await;
    monitor.kill().await.unwrap();
    let text = seen.join("\n");
    assert!(!text.contains('\x1b'), "no terminal escapes into a pipe: {text:?}");
    assert_eq!(seen.iter().filter(|l| l.starts_with("JOB ")).count(), 2, "{text}");
    let rows: Vec<&String> = seen.iter().filter(|l| l.contains("tabled")).collect();
    for row in &rows {
        assert!(row.starts_with(&prefix(job)) && row.contains("SUSPENDED"), "{text}");
    }
    // No rate before the second look; nothing moved since.
    assert!(rows[0].contains(" - "), "{text}");
    assert!(rows[1].contains("0 B/s"), "{text}");
}
