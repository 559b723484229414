//! SetNotifyCmdLine (spec §7.3): the program runs as the job's owner when the job reaches
//! TRANSFERRED or ERROR (per its notify flags), never for a system account's job; it is shown by
//! GetJob, persisted, dropped by TakeOwnership, and refused per the spec.
//!
//! The user's calls come from a thread of this test that switched its own credentials to the
//! user's (the daemon sees them in the socket's peer credentials), through the Rust client,
//! since bitsctl has no command for SetNotifyCmdLine yet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bits_client::Client;
use bits_core::job::notify;
use bits_core::{Code, JobId, JobState, Priority};
use bits_tests::daemon::TestDaemon;
use bits_tests::fixture::{fresh_job, serving};
use bits_tests::require_root;
use bits_tests::users::{User, dir_owned_by, ensure_user, open_daemon_dir};
use bits_tests::wait::{TIMEOUT, wait_for};

use bits_tests::helpers::{expect_code, wait_state};

/// Runs `calls` on a thread of its own whose uid, gid and groups are `user`'s, with a client
/// connected from that thread: the daemon sees `user` as the caller.
fn as_user<T: Send + 'static, F>(socket: PathBuf, user: &User, calls: F) -> T
where
    F: FnOnce(Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
{
    let (uid, gid) = (user.uid, user.gid);
    std::thread::spawn(move || {
        use rustix::process::{Gid, Uid};
        let g = Gid::from_raw(gid);
        let u = Uid::from_raw(uid);
        rustix::thread::set_thread_groups(&[g]).unwrap();
        rustix::thread::set_thread_res_gid(g, g, g).unwrap();
        rustix::thread::set_thread_res_uid(u, u, u).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let client = Client::connect(&socket).await.unwrap();
            calls(client).await
        })
    })
    .join()
    .unwrap()
}

/// The home directory the user database gives `user`.
fn home_of(user: &User) -> String {
    let out = std::process::Command::new("getent").args(["passwd", &user.name]).output().unwrap();
    let entry = String::from_utf8(out.stdout).unwrap();
    entry.trim().split(':').nth(5).unwrap().to_string()
}

/// A shell script that appends `uid gid job state home` to `dir/out-<job id>`, then exits with
/// `exit`.
fn reporter(dir: &Path, exit: u8) -> Vec<String> {
    let script = format!(
        "echo \"$(id -u) $(id -g) $BITS_JOB_ID $BITS_JOB_STATE $HOME\" >> {}/out-$BITS_JOB_ID; exit {exit}",
        dir.display()
    );
    vec!["-c".into(), script]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_program_runs_as_the_owner_on_transferred_and_on_error_as_its_flags_say() {
    require_root("switching users");
    let alice = ensure_user("bitsd-e2e-notify");
    let mut daemon = TestDaemon::start_with(&["--retry-delay-secs", "1"]).await;
    open_daemon_dir(&daemon);
    let base = tempfile::Builder::new().prefix("bitsd-notify-").tempdir().unwrap();
    let root = User::system("root", 0, 0);
    dir_owned_by(base.path(), &root, 0o755);
    let dir = base.path().join("alice");
    dir_owned_by(&dir, &alice, 0o700);
    let server = serving("f.bin", vec![5u8; 100_000]).await;
    let (ok, missing) = (server.url("f.bin"), server.url("missing.bin"));

    let args = reporter(&dir, 0);
    // The failed job's program fails too: it runs again after the retry delay (case 92).
    let failing = reporter(&dir, 1);
    let (d, a, f) = (dir.clone(), args.clone(), failing);
    let (done, failed, quiet) = as_user(daemon.socket(), &alice, move |client| {
        Box::pin(async move {
            let job = |name: &'static str, url: String, file: &'static str| {
                let (client, d) = (&client, d.clone());
                let a = if name == "failed" { f.clone() } else { a.clone() };
                async move {
                    let id = client.create_job(name, Priority::Foreground).await.unwrap();
                    client.add_file(id, &url, &d.join(file)).await.unwrap();
                    client.set_notify_cmd_line(id, Some("/bin/sh"), &a).await.unwrap();
                    id
                }
            };
            let done = job("done", ok.clone(), "a").await;
            let failed = job("failed", missing, "b").await;
            // Flags without JOB_TRANSFERRED: no program when the job is transferred.
            let quiet = job("quiet", ok, "c").await;
            client.set_notify_flags(quiet, notify::JOB_ERROR).await.unwrap();
            for id in [done, failed, quiet] {
                client.resume(id).await.unwrap();
            }
            (done, failed, quiet)
        })
    });
    let client = daemon.client().await;
    let home = home_of(&alice);
    let report = |job: JobId| {
        let path = dir.join(format!("out-{job}"));
        async move {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{path:?}: {e}"))?;
            if text.ends_with('\n') { Ok(text) } else { Err(format!("partial: {text:?}")) }
        }
    };
    wait_state(&client, done, JobState::Transferred).await;
    let text = wait_for("the program of the transferred job", TIMEOUT, || report(done)).await;
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        [&alice.uid.to_string(), &alice.gid.to_string(), &done.to_string(), "TRANSFERRED", &home],
        "{text}"
    );
    let text = wait_for("the program of the failed job", TIMEOUT, || report(failed)).await;
    let line = text.lines().next().unwrap_or_default();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        [&alice.uid.to_string(), &alice.gid.to_string(), &failed.to_string(), "ERROR", &home],
        "{text}"
    );
    // Exit 1: run again after the job's retry delay (1 s here); exit 0: never again.
    wait_for("the failed program to run again", TIMEOUT, || async {
        let text = report(failed).await?;
        if text.lines().count() >= 2 { Ok(()) } else { Err(text) }
    })
    .await;
    assert_eq!(report(done).await.unwrap().lines().count(), 1, "a program that exited 0 ran again");
    assert_eq!(client.get_job(failed).await.unwrap().state, JobState::Error);
    wait_state(&client, quiet, JobState::Transferred).await;
    // The other jobs' programs ran within moments of their state; give this one as long.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!dir.join(format!("out-{quiet}")).exists(), "the program ran against its flags");

    // Set on a job that is already TRANSFERRED, it runs now (spec §7.3).
    as_user(daemon.socket(), &alice, move |client| {
        Box::pin(async move {
            client.set_notify_flags(quiet, notify::DEFAULT).await.unwrap();
            client.set_notify_cmd_line(quiet, Some("/bin/sh"), &args).await.unwrap();
        })
    });
    let text = wait_for("the program set after the fact", TIMEOUT, || report(quiet)).await;
    assert!(text.contains("TRANSFERRED"), "{text}");

    // Root's job (a system account): the program never runs.
    let tmp = tempfile::tempdir().unwrap();
    let job = client.create_job("root's", Priority::Foreground).await.unwrap();
    client.add_file(job, &server.url("f.bin"), &tmp.path().join("r")).await.unwrap();
    client.set_notify_cmd_line(job, Some("/bin/sh"), &reporter(tmp.path(), 0)).await.unwrap();
    client.resume(job).await.unwrap();
    wait_state(&client, job, JobState::Transferred).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!tmp.path().join(format!("out-{job}")).exists(), "a program ran for root's job");
    assert!(daemon.log().contains("system account"), "the skip is not logged");

    // At least once: a restart runs the program of a job still TRANSFERRED again.
    daemon.restart().await;
    wait_for("the transferred job's program after a restart", TIMEOUT, || async {
        let text = report(done).await?;
        if text.lines().count() >= 2 { Ok(()) } else { Err(text) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_is_shown_persisted_dropped_by_take_ownership_and_checked() {
    let (mut daemon, client, job) = fresh_job(&[], "cmd").await;
    let args = vec!["two words".to_string(), "x".to_string()];
    client.set_notify_cmd_line(job, Some("/usr/bin/logger"), &args).await.unwrap();
    let shown = ["/usr/bin/logger", "two words", "x"];
    assert_eq!(client.get_job(job).await.unwrap().notify_cmd_line, shown);
    daemon.restart().await;
    let client = daemon.client().await;
    assert_eq!(client.get_job(job).await.unwrap().notify_cmd_line, shown, "lost in a restart");

    // Refusals (spec §3 compat table, §8 limits, case 74); each leaves the command line as it was.
    let long_program = format!("/{}", "p".repeat(260));
    let cases: [(Option<&str>, Vec<String>, Code); 5] = [
        (Some(&long_program), vec![], Code::BG_E_STRING_TOO_LONG),
        (Some("/bin/true"), vec!["a".repeat(4001)], Code::BG_E_STRING_TOO_LONG),
        (Some("/bin/true"), vec!["a".repeat(2000), "b".repeat(2000)], Code::BG_E_STRING_TOO_LONG),
        (None, vec!["orphan".into()], Code::E_INVALIDARG),
        (Some("true"), vec![], Code::E_INVALIDARG),
    ];
    for (program, arguments, code) in cases {
        let e = expect_code(client.set_notify_cmd_line(job, program, &arguments).await, code);
        assert!(!e.message.is_empty());
        assert_eq!(client.get_job(job).await.unwrap().notify_cmd_line, shown, "{e}");
    }
    // At the limits exactly: accepted.
    let at_limit = format!("/{}", "p".repeat(259));
    client.set_notify_cmd_line(job, Some(&at_limit), &["a".repeat(4000)]).await.unwrap();
    // No program and no arguments removes it.
    client.set_notify_cmd_line(job, None, &[]).await.unwrap();
    assert!(client.get_job(job).await.unwrap().notify_cmd_line.is_empty());

    // TakeOwnership drops it (spec case 93).
    client.set_notify_cmd_line(job, Some("/bin/true"), &[]).await.unwrap();
    assert_eq!(client.take_ownership(job).await.unwrap(), Code::S_OK);
    assert!(client.get_job(job).await.unwrap().notify_cmd_line.is_empty());

    // A final job: BG_E_INVALID_STATE.
    client.cancel(job).await.unwrap();
    expect_code(
        client.set_notify_cmd_line(job, Some("/bin/true"), &[]).await,
        Code::BG_E_INVALID_STATE,
    );
}
