//! A system daemon (running as root) shared by several users (spec §9, issue "a system service
//! for every user"): each user sees and changes only their own jobs, an administrator sees all and
//! can take one over, and every file the daemon touches for a job it touches as the job's owner —
//! files belong to the owner, directories the owner cannot write are refused, and symlinks other
//! users plant are never written through.
//!
//! Users are real local accounts (created with useradd) and every client call is `bitsctl` run as
//! that user with setpriv, so the daemon sees them only through the socket's peer credentials.
//! Without root these tests cannot switch users and fail saying so.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bits_testkit::server::TestServer;
use bits_tests::daemon::{CtlOutput, TestDaemon};
use bits_tests::fixture::serving;
use bits_tests::require_root;
use bits_tests::users::{User, bitsctl_as, dir_owned_by, ensure_user, open_daemon_dir, sh_as};

struct Scene {
    daemon: TestDaemon,
    alice: User,
    bob: User,
    admin: User,
    /// A world-traversable directory (0755) holding the users' directories.
    base: tempfile::TempDir,
}

impl Scene {
    /// A root daemon with `admin` as an administrator (by uid) and `extra` arguments.
    async fn start(extra: &[&str]) -> Scene {
        require_root("switching users");
        let alice = ensure_user("bitsd-e2e-alice");
        let bob = ensure_user("bitsd-e2e-bob");
        let admin = ensure_user("bitsd-e2e-admin");
        let admin_uid = admin.uid.to_string();
        let mut args = vec!["--admin-uid", "0", "--admin-uid", &admin_uid];
        args.extend_from_slice(extra);
        let daemon = TestDaemon::start_with(&args).await;
        open_daemon_dir(&daemon);
        let base = tempfile::Builder::new().prefix("bitsd-users-").tempdir().unwrap();
        let root = root();
        dir_owned_by(base.path(), &root, 0o755);
        dir_owned_by(&base.path().join("alice"), &alice, 0o700);
        dir_owned_by(&base.path().join("bob"), &bob, 0o700);
        Scene { daemon, alice, bob, admin, base }
    }

    fn dir_of(&self, user: &User) -> PathBuf {
        self.base.path().join(user.name.trim_start_matches("bitsd-e2e-"))
    }

    async fn ctl(&self, user: &User, args: &[&str]) -> CtlOutput {
        bitsctl_as(&self.daemon, user, args).await
    }

    /// A new job of `user`, with one file `url` → `dest`.
    async fn job_with_file(&self, user: &User, url: &str, dest: &Path) -> String {
        let id = self.ctl(user, &["create", "--name", "mine"]).await.success().stdout;
        let id = id.trim().to_string();
        self.ctl(user, &["add", &id, url, dest.to_str().unwrap()]).await.success();
        id
    }
}

/// Asserts a bitsctl run failed with `name` (one line naming the BITS error, exit 1).
fn refused(out: &CtlOutput, name: &str) {
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr.contains(name), "expected {name}: {out}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "one readable line: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_jobs_are_invisible_and_untouchable() {
    let s = Scene::start(&[]).await;
    let server = serving("f.bin", vec![7u8; 4096]).await;
    let job = s.job_with_file(&s.alice, &server.url("f.bin"), &s.dir_of(&s.alice).join("f")).await;

    // Bob: every per-job call is E_ACCESSDENIED, and the job is not in his list.
    for args in [
        vec!["info", &job],
        vec!["resume", &job],
        vec!["suspend", &job],
        vec!["cancel", &job],
        vec!["complete", &job],
        vec!["ranges", &job, "0"],
        vec!["add", &job, "http://127.0.0.1:9/x", "/tmp/x"],
        vec!["take-ownership", &job],
    ] {
        let out = s.ctl(&s.bob, &args).await;
        refused(&out, "E_ACCESSDENIED (0x80070005)");
    }
    let bob_list = s.ctl(&s.bob, &["--json", "list"]).await.success();
    assert_eq!(bob_list.stdout.trim(), "[]", "bob sees none of alice's jobs");
    refused(&s.ctl(&s.bob, &["list", "--all-users"]).await, "E_ACCESSDENIED");

    // Alice still has it, untouched by bob's attempts.
    let alice_list = s.ctl(&s.alice, &["--json", "list"]).await.success();
    let jobs: serde_json::Value = serde_json::from_str(&alice_list.stdout).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{alice_list}");
    assert_eq!(jobs[0]["id"], job);
    assert_eq!(jobs[0]["state"], "SUSPENDED");
    assert_eq!(jobs[0]["owner_uid"], s.alice.uid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sees_every_job_and_takes_one_over() {
    let s = Scene::start(&[]).await;
    let server = TestServer::start().await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    server.add_file("f.bin", data.clone());
    let dest = s.dir_of(&s.alice).join("f.bin");
    let job = s.job_with_file(&s.alice, &server.url("f.bin"), &dest).await;
    let bob_job =
        s.job_with_file(&s.bob, &server.url("f.bin"), &s.dir_of(&s.bob).join("g.bin")).await;

    // Without the flag an admin lists only their own jobs; with it, everyone's.
    assert_eq!(s.ctl(&s.admin, &["--json", "list"]).await.success().stdout.trim(), "[]");
    let all = s.ctl(&s.admin, &["--json", "list", "--all-users"]).await.success();
    let all: serde_json::Value = serde_json::from_str(&all.stdout).unwrap();
    let owners: Vec<(String, u64)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["id"].as_str().unwrap().to_string(), j["owner_uid"].as_u64().unwrap()))
        .collect();
    assert_eq!(owners, vec![(job.clone(), s.alice.uid.into()), (bob_job, s.bob.uid.into())]);
    // An admin may look at a job without owning it.
    s.ctl(&s.admin, &["info", &job]).await.success();

    // Root takes alice's job over (the admin user could not write alice's 0700 directory:
    // TakeOwnership by them would leave a job its owner cannot finish — see the next test).
    let root = root();
    s.ctl(&root, &["take-ownership", &job]).await.success();
    refused(&s.ctl(&s.alice, &["info", &job]).await, "E_ACCESSDENIED");
    assert_eq!(s.ctl(&s.alice, &["--json", "list"]).await.success().stdout.trim(), "[]");
    let info = s.ctl(&root, &["--json", "info", &job]).await.success();
    let info: serde_json::Value = serde_json::from_str(&info.stdout).unwrap();
    assert_eq!(info["owner_uid"], 0);
    // The new owner finishes it: the file is root's now, in alice's directory.
    s.ctl(&root, &["resume", &job]).await.success();
    wait_transferred(&s, &root, &job).await;
    s.ctl(&root, &["complete", &job]).await.success();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(std::fs::metadata(&dest).unwrap().uid(), 0, "files belong to the job's owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_over_needs_access_to_the_temp_files() {
    let s = Scene::start(&[]).await;
    let server = serving("f.bin", vec![1u8; 100_000]).await;
    let job =
        s.job_with_file(&s.alice, &server.url("f.bin"), &s.dir_of(&s.alice).join("f.bin")).await;
    s.ctl(&s.alice, &["resume", &job]).await.success();
    wait_transferred(&s, &s.alice, &job).await;
    // The temp file sits in alice's 0700 directory: the (non-root) admin cannot write it.
    refused(&s.ctl(&s.admin, &["take-ownership", &job]).await, "BG_E_NEW_OWNER_NO_FILE_ACCESS");
    let info = s.ctl(&s.alice, &["--json", "info", &job]).await.success();
    assert!(info.stdout.contains(&format!("\"owner_uid\": {}", s.alice.uid)), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloaded_files_belong_to_the_owner() {
    let s = Scene::start(&[]).await;
    let server = TestServer::start().await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    server.add_file("f.bin", data.clone());
    let dest = s.dir_of(&s.alice).join("f.bin");
    let out = s.ctl(&s.alice, &["download", &server.url("f.bin"), dest.to_str().unwrap()]).await;
    assert!(out.status.success(), "{out}\n{}", s.daemon.log_tail(30));
    let meta = std::fs::metadata(&dest).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (s.alice.uid, s.alice.gid));
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let leftovers: Vec<_> = std::fs::read_dir(s.dir_of(&s.alice)).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temp file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_the_owner_cannot_write_is_refused_at_add_file() {
    let s = Scene::start(&[]).await;
    let create = s.ctl(&s.alice, &["create"]).await.success();
    let job = create.stdout.trim().to_string();
    // Bob's private directory, and a root-only one: the daemon (root) could write both.
    for dir in [s.dir_of(&s.bob), PathBuf::from("/etc")] {
        let dest = dir.join("stolen.bin");
        let out =
            s.ctl(&s.alice, &["add", &job, "http://127.0.0.1:9/f", dest.to_str().unwrap()]).await;
        refused(&out, "E_ACCESSDENIED");
        assert!(
            out.stderr.contains(dir.to_str().unwrap()),
            "the refusal names the directory: {out}"
        );
    }
    // Her own directory is fine.
    let ok = s.dir_of(&s.alice).join("fine.bin");
    s.ctl(&s.alice, &["add", &job, "http://127.0.0.1:9/f", ok.to_str().unwrap()]).await.success();
}

fn root() -> User {
    User::system("root", 0, 0)
}

/// `user` creates a symlink `at` → `target`, as that user could.
fn plant_link(user: &User, target: &Path, at: &Path) {
    let out = sh_as(user, &format!("ln -s {} {}", target.display(), at.display()));
    assert!(out.status.success(), "{out:?}");
}

/// A file nobody but root may write, standing in for /etc/shadow.
fn victim(s: &Scene) -> PathBuf {
    let path = s.base.path().join("victim");
    std::fs::write(&path, b"root's secret").unwrap();
    path
}

/// The symlink cases' start: a scene, a server with `/f.bin` (50,000 bytes of `byte`) and a victim.
async fn symlink_scene(byte: u8) -> (Scene, TestServer, PathBuf) {
    let s = Scene::start(&[]).await;
    let server = serving("f.bin", vec![byte; 50_000]).await;
    let victim = victim(&s);
    (s, server, victim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_at_the_destination_is_replaced_or_refused_never_followed() {
    let (s, server, victim) = symlink_scene(42).await;
    let root = root();

    // A sticky world-writable directory (/tmp-like): bob plants report.bin -> victim. Alice may
    // not replace bob's entry there, so Complete is refused; the victim is untouched.
    let sticky = s.base.path().join("sticky");
    dir_owned_by(&sticky, &root, 0o1777);
    let planted = sticky.join("report.bin");
    plant_link(&s.bob, &victim, &planted);
    let job = s.job_with_file(&s.alice, &server.url("f.bin"), &planted).await;
    s.ctl(&s.alice, &["resume", &job]).await.success();
    wait_transferred(&s, &s.alice, &job).await;
    refused(&s.ctl(&s.alice, &["complete", &job]).await, "E_ACCESSDENIED");
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's secret");
    assert!(planted.symlink_metadata().unwrap().file_type().is_symlink(), "bob's link stays");

    // A directory both may write (group-shared, not sticky): the rename replaces bob's link with
    // alice's file; the link's target is never opened.
    let shared = s.base.path().join("shared");
    dir_owned_by(&shared, &root, 0o777);
    let planted = shared.join("report.bin");
    plant_link(&s.bob, &victim, &planted);
    let out = s.ctl(&s.alice, &["download", &server.url("f.bin"), planted.to_str().unwrap()]).await;
    assert!(out.status.success(), "{out}");
    let meta = planted.symlink_metadata().unwrap();
    assert!(meta.file_type().is_file(), "a regular file replaced the link");
    assert_eq!(meta.uid(), s.alice.uid);
    assert_eq!(std::fs::read(&planted).unwrap(), vec![42u8; 50_000]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_at_the_temp_file_is_not_written_through() {
    let (s, server, victim) = symlink_scene(9).await;
    let shared = s.base.path().join("shared");
    dir_owned_by(&shared, &root(), 0o777);
    let dest = shared.join("data.bin");
    let job = s.job_with_file(&s.alice, &server.url("f.bin"), &dest).await;
    // Bob guesses the temp name (it needs the job id, which only alice sees; assume he got it).
    let temp = shared.join(format!(".data.bin.bitsd-{job}-0.part"));
    plant_link(&s.bob, &victim, &temp);
    s.ctl(&s.alice, &["resume", &job]).await.success();
    let error = wait_error(&s, &s.alice, &job).await;
    assert_eq!(error["code"], "E_ACCESSDENIED", "{error}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's secret");
    assert!(dest.symlink_metadata().is_err(), "nothing at the destination");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_limits_apply_per_user_and_not_to_admins() {
    let s = Scene::start(&["--max-jobs-per-user", "2"]).await;
    for _ in 0..2 {
        s.ctl(&s.alice, &["create"]).await.success();
    }
    refused(&s.ctl(&s.alice, &["create"]).await, "BG_E_TOO_MANY_JOBS_PER_USER");
    s.ctl(&s.bob, &["create"]).await.success();
    for _ in 0..3 {
        s.ctl(&s.admin, &["create"]).await.success();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_socket_is_open_to_all_and_the_data_dir_to_none() {
    let s = Scene::start(&[]).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&s.daemon.socket()), 0o666, "authorisation is by peer uid, not file mode");
    assert_eq!(mode(&s.daemon.data_dir()), 0o700);
    // Any local user can connect (nobody has no jobs, but is served).
    let nobody = User::system("nobody", 65534, 65534);
    assert_eq!(s.ctl(&nobody, &["--json", "list"]).await.success().stdout.trim(), "[]");
}

/// Polls `bitsctl info` as `user` until the job is TRANSFERRED.
async fn wait_transferred(s: &Scene, user: &User, job: &str) {
    wait_for_state(s, user, job, "TRANSFERRED").await;
}

/// Polls until the job is in ERROR and returns its error object.
async fn wait_error(s: &Scene, user: &User, job: &str) -> serde_json::Value {
    wait_for_state(s, user, job, "ERROR").await["error"].clone()
}

async fn wait_for_state(s: &Scene, user: &User, job: &str, want: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = s.ctl(user, &["--json", "info", job]).await.success();
        let info: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        if info["state"] == want {
            return info;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {job} never reached {want}: {info}\n{}",
            s.daemon.log_tail(30)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_the_admin_group_are_administrators() {
    require_root("switching users");
    let carol = ensure_user("bitsd-e2e-carol");
    let bob = ensure_user("bitsd-e2e-bob");
    let alice = ensure_user("bitsd-e2e-alice");
    let _admins = bits_tests::users::ensure_group_with("bitsd-e2e-admins", &[&carol]);
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("bitsd.toml");
    std::fs::write(&conf, "[access]\nadmin_uids = [0]\nadmin_group = \"bitsd-e2e-admins\"\n")
        .unwrap();
    let daemon = TestDaemon::start_with(&["--config", conf.to_str().unwrap()]).await;
    open_daemon_dir(&daemon);
    let job = bitsctl_as(&daemon, &alice, &["create"]).await.success().stdout.trim().to_string();
    refused(&bitsctl_as(&daemon, &bob, &["list", "--all-users"]).await, "E_ACCESSDENIED");
    let all = bitsctl_as(&daemon, &carol, &["--json", "list", "--all-users"]).await.success();
    assert!(all.stdout.contains(&job), "carol (in the admin group) sees alice's job: {all}");
    bitsctl_as(&daemon, &carol, &["suspend", &job]).await.success();
    bitsctl_as(&daemon, &carol, &["take-ownership", &job]).await.success();
    let info = bitsctl_as(&daemon, &carol, &["--json", "info", &job]).await.success();
    let info: serde_json::Value = serde_json::from_str(&info.stdout).unwrap();
    assert_eq!(info["owner_uid"], carol.uid);
}

/// Issue 13.1: after root takes a job over, the previous owner swaps a directory of the
/// destination path for a link to a root-only directory. Root's file work must not follow it:
/// neither the download (the swap before Resume) nor Complete's rename (the swap after the bytes
/// are in) may put anything in the root-only directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_job_never_follows_a_directory_swapped_for_a_link() {
    let s = Scene::start(&[]).await;
    let server = serving("keys", b"ssh-ed25519 AAAA alice@evil\n".to_vec()).await;
    let root = root();
    let root_only = s.base.path().join("root-only");
    dir_owned_by(&root_only, &root, 0o700);
    let home = s.dir_of(&s.alice);
    let mut jobs = Vec::new();
    for dl in ["dl1", "dl2"] {
        dir_owned_by(&home.join(dl), &s.alice, 0o755);
        let dest = home.join(dl).join("authorized_keys");
        let job = s.job_with_file(&s.alice, &server.url("keys"), &dest).await;
        s.ctl(&root, &["take-ownership", &job]).await.success();
        jobs.push(job);
    }
    let swap = |dl: &str| {
        let (dir, link) = (home.join(dl), home.join(dl));
        let script = format!(
            "mv {0} {0}.orig && ln -s {1} {2}",
            dir.display(),
            root_only.display(),
            link.display()
        );
        let out = sh_as(&s.alice, &script);
        assert!(out.status.success(), "{out:?}");
    };

    // Swapped before Resume: the download fails instead of writing into the root-only directory.
    swap("dl1");
    s.ctl(&root, &["resume", &jobs[0]]).await.success();
    let error = wait_error(&s, &root, &jobs[0]).await;
    assert_eq!(error["code"], "E_ACCESSDENIED", "{error}");
    assert!(error["description"].as_str().unwrap().contains("symbolic link"), "{error}");

    // Swapped after the bytes are in: Complete refuses instead of renaming into it.
    s.ctl(&root, &["resume", &jobs[1]]).await.success();
    wait_transferred(&s, &root, &jobs[1]).await;
    swap("dl2");
    refused(&s.ctl(&root, &["complete", &jobs[1]]).await, "E_ACCESSDENIED");

    let planted: Vec<_> =
        std::fs::read_dir(&root_only).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(planted.is_empty(), "root wrote into the root-only directory: {planted:?}");
    // TakeOwnership re-checks the path too: an admin cannot take over a job whose directory
    // path was redirected since AddFile.
    let dest = home.join("dl3").join("f");
    dir_owned_by(&home.join("dl3"), &s.alice, 0o755);
    let job = s.job_with_file(&s.alice, &server.url("keys"), &dest).await;
    swap("dl3");
    refused(&s.ctl(&root, &["take-ownership", &job]).await, "BG_E_NEW_OWNER_NO_FILE_ACCESS");
}

/// Issue 13.7: bob creates a file at alice's next temp name (guessable) in a shared sticky
/// directory. Alice's download, fetched with her credentials, must never go into bob's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temp_file_planted_by_another_user_is_refused() {
    let s = Scene::start(&[]).await;
    let server = serving("secret", b"alice's private data".to_vec()).await;
    let sticky = s.base.path().join("sticky");
    dir_owned_by(&sticky, &root(), 0o1777);
    let dest = sticky.join("report.bin");
    let job = s.job_with_file(&s.alice, &server.url("secret"), &dest).await;
    let temp = sticky.join(format!(".report.bin.bitsd-{job}-0.part"));
    let out = sh_as(&s.bob, &format!("umask 0; printf planted > {}", temp.display()));
    assert!(out.status.success(), "{out:?}");
    s.ctl(&s.alice, &["resume", &job]).await.success();
    let error = wait_error(&s, &s.alice, &job).await;
    assert_eq!(error["code"], "E_ACCESSDENIED", "{error}");
    let description = error["description"].as_str().unwrap();
    assert!(description.contains("not the temp file this job created"), "{error}");
    assert!(description.contains(&format!("uid {}", s.bob.uid)), "{error}");
    assert_eq!(std::fs::read(&temp).unwrap(), b"planted", "bob's file is left as it was");
    assert!(dest.symlink_metadata().is_err());
}

/// Issue 13.8: a download gets the permissions the owner's umask gives their own new files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_follow_the_owners_umask() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scene::start(&[]).await;
    let server = serving("f.bin", vec![5u8; 10_000]).await;
    let bitsctl = bits_tests::daemon::binary_in(&bits_tests::daemon::own_target_dir(), "bitsctl");
    for (umask, want) in [("077", 0o600), ("027", 0o640), ("002", 0o664)] {
        let dest = s.dir_of(&s.alice).join(format!("u{umask}.bin"));
        let script = format!(
            "umask {umask} && exec {} --socket {} download {} {}",
            bitsctl.display(),
            s.daemon.socket().display(),
            server.url("f.bin"),
            dest.display()
        );
        let alice = s.alice.clone();
        let out = tokio::task::spawn_blocking(move || sh_as(&alice, &script)).await.unwrap();
        assert!(out.status.success(), "{out:?}\n{}", s.daemon.log_tail(20));
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "umask {umask}: got {mode:o}");
    }
}

/// Issue 13.1, without a link: the previous owner renames another directory (one root made in
/// her home, 0700) into the destination path. The path now leads, link-free, to a directory
/// other than the one AddFile resolved; root's file work must refuse it, not write there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_job_never_follows_a_directory_renamed_into_its_path() {
    let s = Scene::start(&[]).await;
    let server = serving("keys", b"ssh-ed25519 AAAA alice@evil\n".to_vec()).await;
    let root = root();
    let home = s.dir_of(&s.alice);
    let roots = home.join("roots");
    dir_owned_by(&roots, &root, 0o700);
    dir_owned_by(&home.join("dl"), &s.alice, 0o755);
    let job = s.job_with_file(&s.alice, &server.url("keys"), &home.join("dl/keys")).await;
    s.ctl(&root, &["take-ownership", &job]).await.success();
    let script = format!("mv {0}/dl {0}/dl.orig && mv {0}/roots {0}/dl", home.display());
    let out = sh_as(&s.alice, &script);
    assert!(out.status.success(), "{out:?}");
    s.ctl(&root, &["resume", &job]).await.success();
    let error = wait_error(&s, &root, &job).await;
    assert_eq!(error["code"], "E_ACCESSDENIED", "{error}");
    let inside: Vec<_> =
        std::fs::read_dir(home.join("dl")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(inside.is_empty(), "root wrote into the directory renamed in: {inside:?}");
}
