//! The job property setters (spec §3.E). They share one path, [`Manager::modify`]: find the job
//! (BG_E_NOT_FOUND, E_ACCESSDENIED), refuse final states (BG_E_INVALID_STATE), check the value,
//! change it, stamp the modification time, persist and flush before answering.

use std::time::SystemTime;

use bits_core::job::{
    DEFAULT_MAXIMUM_DOWNLOAD_TIME_SECS, MAX_CONNECTIONS_PER_FILE, MAX_CUSTOM_HEADERS_CHARS,
    MAX_DESCRIPTION_CHARS, MAX_DISPLAY_NAME_CHARS, MAX_FILES_AT_ONCE, MAX_NOTIFY_ARGUMENTS_CHARS,
    MAX_NOTIFY_PROGRAM_CHARS, MINIMUM_RETRY_DELAY_FLOOR_SECS, notify, property, security,
};
use bits_core::{BitsError, Code, Event, Job, JobId, NotifyCmdLine, Priority, transition};

use crate::handle::Manager;
use crate::table::lookup_mut;
use crate::types::Caller;
use crate::validate;

/// A value for SetProperty, as the BITS_JOB_PROPERTY_VALUE union carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropertyValue {
    Dword(u32),
    Enable(bool),
    Uint64(u64),
}

/// Declares setters that each set one job field to a checked value: `field: name(arg: Type) =
/// value;` becomes `pub async fn name(&self, caller, id, arg) -> Result<Code, BitsError>`, which
/// sets `field` to `value` (a `Result`) through [`Manager::modify`]. The value is computed
/// inside the change, after the lookup and the state check (spec §3's order of errors).
macro_rules! simple_setters {
    ($($(#[$doc:meta])* $field:ident: $name:ident($arg:ident: $ty:ty) = $value:expr;)*) => {
        $(
            $(#[$doc])*
            pub async fn $name(
                &self,
                caller: Caller,
                id: JobId,
                $arg: $ty,
            ) -> Result<Code, BitsError> {
                self.modify(caller, id, Scope::Job, |job| {
                    let value: Result<_, BitsError> = $value;
                    job.$field = value?;
                    Ok(())
                })
                .await
            }
        )*
    };
}

impl Manager {
    /// Checks the caller and the state, applies `change` (which may refuse with an error), then
    /// persists and flushes. Every setter goes through here; see [`Scope`] for what is stored.
    ///
    /// A change that is refused, or that the store does not make durable, is taken back: a
    /// failed call changes nothing a client can see (the job as GetJob shows it, and after a
    /// restart, agree).
    pub(crate) async fn modify(
        &self,
        caller: Caller,
        id: JobId,
        scope: Scope,
        change: impl FnOnce(&mut Job) -> Result<(), BitsError>,
    ) -> Result<Code, BitsError> {
        let (before, after) = {
            let mut table = self.table();
            let entry = lookup_mut(&mut table, caller, id)?;
            transition(entry.job().state, Event::Modify)?;
            let before = Snapshot::of(entry.job(), scope);
            let changed = change(entry.job_mut()).and_then(|()| {
                entry.touch();
                before.persist_changed_files(self, entry.job())?;
                // The fields (and the files that changed): a whole-job write would rewrite every
                // file record (and drop those an AddFile wrote ahead of its count).
                self.persist_job_fields(entry.job())
            });
            if let Err(e) = changed {
                // Files the change stored before it failed are stored back as they were.
                let attempted = Snapshot::of(entry.job(), scope);
                before.restore(entry.job_mut());
                if let Err(e) = attempted.persist_changed_files(self, entry.job()) {
                    tracing::warn!(job = %id, error = %e, "storing files a refused change took back failed");
                }
                return Err(e);
            }
            entry.events().modified(entry);
            if let Some(run) = entry.run() {
                run.repick();
            }
            let after = Snapshot::of(entry.job(), scope);
            (before, after)
        };
        if let Err(e) = self.flush().await {
            self.take_back(id, &before, &after);
            return Err(e);
        }
        self.wake().notify_one();
        Ok(Code::S_OK)
    }

    /// Undoes a change whose flush failed: each setting that still has the value the change
    /// gave it gets its old value back (a setting changed again since is left to that change),
    /// in the table and in the store. The store write is best effort: the store failed a
    /// moment ago, and if it stays failed its next open recovers the old values anyway.
    fn take_back(&self, id: JobId, before: &Snapshot, after: &Snapshot) {
        let mut table = self.table();
        let Some(entry) = table.get_mut(&id) else { return };
        before.restore_unchanged(after, entry.job_mut());
        let stored = after
            .persist_changed_files(self, entry.job())
            .and_then(|()| self.persist_job_fields(entry.job()));
        if let Err(e) = stored {
            tracing::warn!(job = %id, error = %e, "storing the settings a failed change took back failed");
        }
        entry.events().modified(entry);
        if let Some(run) = entry.run() {
            run.repick();
        }
    }

    simple_setters! {
        priority: set_priority(priority: Priority) = Ok(priority);
        /// SetDisplayName: `None` is NULL (E_INVALIDARG); more than 256 characters is
        /// BG_E_STRING_TOO_LONG ([PROPOSAL] in the spec).
        display_name: set_display_name(name: Option<String>) =
            required_text("display name", name, MAX_DISPLAY_NAME_CHARS);
        description: set_description(text: Option<String>) =
            required_text("description", text, MAX_DESCRIPTION_CHARS);
        /// Values below 5 s are stored as 5 s (spec §3.E).
        minimum_retry_delay_secs: set_minimum_retry_delay(secs: u32) =
            Ok(secs.max(MINIMUM_RETRY_DELAY_FLOOR_SECS));
        /// 0 makes every error fatal.
        no_progress_timeout_secs: set_no_progress_timeout(secs: u32) = Ok(secs);
        /// 0 restores the default of 90 days.
        maximum_download_time_secs: set_maximum_download_time(secs: u32) =
            Ok(if secs == 0 { DEFAULT_MAXIMUM_DOWNLOAD_TIME_SECS } else { secs });
        /// Unknown bits are E_NOTIMPL.
        notify_flags: set_notify_flags(flags: u32) = notify_flags(flags);
        /// Redirect policy and ALLOW_HTTPS_TO_HTTP are supported; the TLS flags are not (yet),
        /// and asking for them is E_NOTIMPL rather than silently ignored.
        security_flags: set_security_flags(flags: u32) = security_flags(flags);
        /// SetCustomHeaders: `Name: value` lines sent with every request of the job; `None`
        /// clears. At most 16,383 characters (16,384 with the BITS terminator).
        custom_headers: set_custom_headers(headers: Option<String>) = custom_headers(headers);
    }

    /// Job5 SetProperty for the properties bitsd implements: MINIMUM_NOTIFICATION_INTERVAL_MS
    /// (Dword) and ON_DEMAND_MODE (Enable). The other documented ids are E_NOTIMPL (not
    /// implemented by bitsd), undocumented ids BG_E_UNKNOWN_PROPERTY_ID.
    pub async fn set_property(
        &self,
        caller: Caller,
        id: JobId,
        property_id: u32,
        value: PropertyValue,
    ) -> Result<Code, BitsError> {
        self.modify(caller, id, Scope::Job, |job| {
            let wrong_type = || {
                BitsError::new(
                    Code::E_INVALIDARG,
                    format!("property {property_id} does not take a {value:?} value"),
                )
            };
            match property_id {
                property::MINIMUM_NOTIFICATION_INTERVAL_MS => match value {
                    PropertyValue::Dword(ms) => job.minimum_notification_interval_ms = ms,
                    _ => return Err(wrong_type()),
                },
                property::ON_DEMAND_MODE => match value {
                    PropertyValue::Enable(on) => job.on_demand = on,
                    _ => return Err(wrong_type()),
                },
                property::COST_FLAGS
                | property::NOTIFICATION_CLSID
                | property::DYNAMIC_CONTENT
                | property::HIGH_PERFORMANCE
                | property::MAX_DOWNLOAD_SIZE
                | property::USE_STORED_CREDENTIALS => {
                    return Err(BitsError::new(
                        Code::E_NOTIMPL,
                        format!("job property {property_id} is not implemented by bitsd"),
                    ));
                }
                _ => {
                    return Err(BitsError::new(
                        Code::BG_E_UNKNOWN_PROPERTY_ID,
                        format!("{property_id} is not a job property id"),
                    ));
                }
            }
            Ok(())
        })
        .await
    }

    /// SetNotifyCmdLine (spec §7.3): `program` (an absolute path, no PATH search) and its
    /// arguments run as the job's owner when the job reaches TRANSFERRED or ERROR. No program
    /// and no arguments removes it. Set on a job already TRANSFERRED or in ERROR, it runs now
    /// (spec: "runs even when set after the event already occurred").
    pub async fn set_notify_cmd_line(
        &self,
        caller: Caller,
        id: JobId,
        program: Option<String>,
        arguments: Vec<String>,
    ) -> Result<Code, BitsError> {
        let code = self
            .modify(caller, id, Scope::Job, |job| {
                job.notify_cmd_line = notify_cmd_line(program, arguments)?;
                Ok(())
            })
            .await?;
        if let Some(entry) = self.table().get(&id) {
            entry.events().command_due(entry.job());
        }
        Ok(code)
    }

    /// The bitsd extensions (spec: opt-in per job, named as extensions): connections per file
    /// (1..=32) and files at once (1..=64). `None` leaves a value as it is.
    pub async fn set_extensions(
        &self,
        caller: Caller,
        id: JobId,
        connections_per_file: Option<u32>,
        files_at_once: Option<u32>,
    ) -> Result<Code, BitsError> {
        self.modify(caller, id, Scope::Job, |job| {
            let check = |what: &str, value: u32, max: u32| {
                if (1..=max).contains(&value) {
                    Ok(value)
                } else {
                    Err(BitsError::new(
                        Code::E_INVALIDARG,
                        format!("{what} must be 1 to {max}, not {value}"),
                    ))
                }
            };
            if let Some(n) = connections_per_file {
                job.connections_per_file =
                    check("connections per file", n, MAX_CONNECTIONS_PER_FILE)?;
            }
            if let Some(n) = files_at_once {
                job.files_at_once = check("files at once", n, MAX_FILES_AT_ONCE)?;
            }
            Ok(())
        })
        .await
    }
}

/// Declares [`Settings`]: the job fields a setter may change.
macro_rules! settings {
    ($($field:ident: $ty:ty),* $(,)?) => {
        /// A job's settings (the fields the setters change), as they were at one moment.
        #[derive(Debug)]
        struct Settings {
            $($field: $ty,)*
        }

        impl Settings {
            fn of(job: &Job) -> Settings {
                Settings { $($field: job.$field.clone(),)* }
            }

            /// Puts every setting back as it was.
            fn restore(&self, job: &mut Job) {
                $(job.$field = self.$field.clone();)*
            }

            /// Puts back each setting that still has its value in `after`.
            fn restore_unchanged(&self, after: &Settings, job: &mut Job) {
                $(if job.$field == after.$field {
                    job.$field = self.$field.clone();
                })*
            }
        }
    };
}

settings! {
    owner_uid: u32,
    display_name: String,
    description: String,
    priority: Priority,
    minimum_retry_delay_secs: u32,
    no_progress_timeout_secs: u32,
    maximum_download_time_secs: u32,
    notify_flags: u32,
    security_flags: u32,
    custom_headers: Option<String>,
    on_demand: bool,
    minimum_notification_interval_ms: u32,
    connections_per_file: u32,
    files_at_once: u32,
    notify_cmd_line: Option<NotifyCmdLine>,
    modification_time: SystemTime,
}

/// What a change may touch, so what [`Manager::modify`] stores and takes back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The job's own settings.
    Job,
    /// Its files' sources too (remote names, download positions): the files it changed are
    /// stored, and taken back with the rest.
    Files,
    /// One file's source too, as [`Scope::Files`]: a change of one file (SetRemoteName,
    /// UpdateDownloadPosition, which a player may call often) copies only that file's source
    /// under the table lock, not every file's.
    File(u32),
}

/// A job's settings and, for a change of files, the remote name and download position of each
/// file it may touch: what [`Manager::modify`] restores when a change fails.
struct Snapshot {
    settings: Settings,
    /// (index, remote name, download position) of each file the change may touch.
    sources: Vec<(u32, String, Option<u64>)>,
}

impl Snapshot {
    fn of(job: &Job, scope: Scope) -> Snapshot {
        let source = |(i, f): (usize, &bits_core::JobFile)| {
            (i as u32, f.remote_url.clone(), f.download_position)
        };
        let sources = match scope {
            Scope::Job => Vec::new(),
            Scope::Files => job.files.iter().enumerate().map(source).collect(),
            Scope::File(index) => job
                .files
                .get(index as usize)
                .map(|f| source((index as usize, f)))
                .into_iter()
                .collect(),
        };
        Snapshot { settings: Settings::of(job), sources }
    }

    fn restore(&self, job: &mut Job) {
        self.settings.restore(job);
        for (index, url, position) in &self.sources {
            let Some(file) = job.files.get_mut(*index as usize) else { continue };
            file.remote_url.clone_from(url);
            file.download_position = *position;
        }
    }

    fn restore_unchanged(&self, after: &Snapshot, job: &mut Job) {
        self.settings.restore_unchanged(&after.settings, job);
        for ((index, url, position), (_, now_url, now_position)) in
            self.sources.iter().zip(&after.sources)
        {
            let Some(file) = job.files.get_mut(*index as usize) else { continue };
            if (&file.remote_url, file.download_position) == (now_url, *now_position) {
                file.remote_url.clone_from(url);
                file.download_position = *position;
            }
        }
    }

    /// Stores each file whose source differs from this snapshot.
    fn persist_changed_files(&self, manager: &Manager, job: &Job) -> Result<(), BitsError> {
        for (index, url, position) in &self.sources {
            let Some(file) = job.files.get(*index as usize) else { continue };
            if file.remote_url != *url || file.download_position != *position {
                manager.persist_file(job.id, *index, file)?;
            }
        }
        Ok(())
    }
}

/// SetNotifyCmdLine's checks, in the spec's order: arguments without a program
/// (E_INVALIDARG, the spec's proposal), then the lengths (BG_E_STRING_TOO_LONG), then what
/// bitsd adds: the program is an absolute path and nothing holds a NUL (E_INVALIDARG).
fn notify_cmd_line(
    program: Option<String>,
    arguments: Vec<String>,
) -> Result<Option<NotifyCmdLine>, BitsError> {
    let Some(program) = program else {
        if arguments.is_empty() {
            return Ok(None);
        }
        return Err(BitsError::new(
            Code::E_INVALIDARG,
            format!("{} notify arguments were given without a program", arguments.len()),
        ));
    };
    validate::at_most_chars(
        "the notify program",
        &program,
        MAX_NOTIFY_PROGRAM_CHARS,
        Code::BG_E_STRING_TOO_LONG,
    )?;
    let n = NotifyCmdLine::arguments_chars(&arguments);
    if n > MAX_NOTIFY_ARGUMENTS_CHARS {
        return Err(BitsError::new(
            Code::BG_E_STRING_TOO_LONG,
            format!(
                "the notify arguments are {n} characters, at most {MAX_NOTIFY_ARGUMENTS_CHARS} \
                 are allowed"
            ),
        ));
    }
    let shown: String = program.chars().take(64).collect();
    if !program.starts_with('/') {
        return Err(BitsError::new(
            Code::E_INVALIDARG,
            format!(
                "the notify program {shown:?} is not an absolute path (there is no PATH search)"
            ),
        ));
    }
    if program.contains('\0') || arguments.iter().any(|a| a.contains('\0')) {
        return Err(BitsError::new(
            Code::E_INVALIDARG,
            format!("the notify command line of {shown:?} holds a NUL character"),
        ));
    }
    Ok(Some(NotifyCmdLine { program, arguments }))
}

/// A text a setter requires: `None` is NULL (E_INVALIDARG), more than `max` characters
/// BG_E_STRING_TOO_LONG.
fn required_text(what: &str, text: Option<String>, max: usize) -> Result<String, BitsError> {
    let text = text
        .ok_or_else(|| BitsError::new(Code::E_INVALIDARG, format!("the {what} may not be NULL")))?;
    validate::at_most_chars(what, &text, max, Code::BG_E_STRING_TOO_LONG)?;
    Ok(text)
}

fn notify_flags(flags: u32) -> Result<u32, BitsError> {
    if flags & !notify::ALL != 0 {
        return Err(BitsError::new(
            Code::E_NOTIMPL,
            format!("notify flags 0x{flags:X} include unknown bits"),
        ));
    }
    Ok(flags)
}

fn security_flags(flags: u32) -> Result<u32, BitsError> {
    let supported = security::REDIRECT_POLICY_MASK | security::ALLOW_HTTPS_TO_HTTP;
    let policy = flags & security::REDIRECT_POLICY_MASK;
    let known_policy = matches!(
        policy,
        security::REDIRECT_POLICY_ALLOW_SILENT
            | security::REDIRECT_POLICY_ALLOW_REPORT
            | security::REDIRECT_POLICY_DISALLOW
    );
    if flags & !supported != 0 || !known_policy {
        return Err(BitsError::new(
            Code::E_NOTIMPL,
            format!(
                "security flags 0x{flags:X} are not supported (only the redirect policy and 0x800)"
            ),
        ));
    }
    Ok(flags)
}

/// Custom headers as stored: checked (length, syntax), blank text clearing them.
fn custom_headers(headers: Option<String>) -> Result<Option<String>, BitsError> {
    if let Some(text) = &headers {
        let n = text.chars().count();
        if n >= MAX_CUSTOM_HEADERS_CHARS {
            return Err(BitsError::new(
                Code::BG_E_STRING_TOO_LONG,
                format!(
                    "custom headers are {n} characters, at most {} are allowed",
                    MAX_CUSTOM_HEADERS_CHARS - 1
                ),
            ));
        }
        bits_http::parse_custom_headers(text).map_err(|e| BitsError::new(Code::E_INVALIDARG, e))?;
    }
    Ok(headers.filter(|h| !h.trim().is_empty()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed call is a failed test

    use super::*;
    use bits_store::Store;

    use crate::testing::{caller, job_with_files, watched_job};

    /// A setter whose flush fails answers with the error and leaves the job as it was, in the
    /// table and in the store; once the store works again the same call succeeds.
    #[tokio::test]
    async fn a_setter_whose_flush_fails_changes_nothing() {
        let (store, m, _dir, id) = watched_job(0).await;
        let before = m.get_job(caller(), id).unwrap();

        store.fail_flushes(true);
        let error = m.set_display_name(caller(), id, Some("new".into())).await.unwrap_err();
        assert_eq!(error.code, Code::BG_E_DATABASE_CORRUPT, "{error:?}");
        assert_eq!(m.get_job(caller(), id).unwrap(), before, "the failed change is visible");
        let error = m.set_priority(caller(), id, Priority::High).await.unwrap_err();
        assert!(error.message.contains("disk on fire"), "{error:?}");
        assert_eq!(m.get_job(caller(), id).unwrap(), before, "the failed change is visible");
        let cmd = m.set_notify_cmd_line(caller(), id, Some("/bin/true".into()), vec![]).await;
        assert_eq!(cmd.unwrap_err().code, Code::BG_E_DATABASE_CORRUPT);
        assert_eq!(m.get_job(caller(), id).unwrap(), before, "the failed change is visible");
        assert_eq!(store.load_all().unwrap()[0].notify_cmd_line, None, "the store kept it");
        let stored = store.load_all().unwrap();
        assert_eq!(stored[0].display_name, before.display_name, "the store kept the change");
        assert_eq!(stored[0].priority, before.priority, "the store kept the change");

        store.fail_flushes(false);
        m.set_display_name(caller(), id, Some("new".into())).await.unwrap();
        assert_eq!(m.get_job(caller(), id).unwrap().display_name, "new");
        assert_eq!(store.load_all().unwrap()[0].display_name, "new");
    }

    /// A change of files' sources reaches the store (file records, not only the job's fields),
    /// and is taken back from both when its flush fails; so is TakeOwnership's new owner.
    #[tokio::test]
    async fn file_sources_and_owner_are_stored_and_taken_back() {
        let (store, m, _dir, id) = watched_job(2).await;
        m.set_remote_name(caller(), id, 1, "http://h/new").await.unwrap();
        m.update_download_position(caller(), id, 0, 7).await.unwrap();
        assert_eq!(store.load_all().unwrap()[0].files[1].remote_url, "http://h/new");
        assert_eq!(store.load_all().unwrap()[0].files[0].download_position, Some(7));
        assert_eq!(
            m.replace_remote_prefix(caller(), id, "http://h/", "http://g/").await.unwrap(),
            Code::S_OK
        );
        let stored = store.load_all().unwrap();
        assert_eq!(stored[0].files[0].remote_url, "http://g/f0");
        assert_eq!(stored[0].files[1].remote_url, "http://g/new");

        let before = m.get_job(caller(), id).unwrap();
        store.fail_flushes(true);
        m.replace_remote_prefix(caller(), id, "http://g/", "http://k/").await.unwrap_err();
        m.set_remote_name(caller(), id, 0, "http://k/x").await.unwrap_err();
        let admin = Caller { uid: 4242, admin: true, pid: None };
        m.take_ownership(admin, id).await.unwrap_err();
        assert_eq!(m.get_job(caller(), id).unwrap(), before, "a failed change shows");
        store.fail_flushes(false);
        assert_eq!(store.load_all().unwrap()[0].files, before.files, "the store kept a change");
        assert_eq!(store.load_all().unwrap()[0].owner_uid, before.owner_uid);
    }

    /// A change refused half-way (the second of two values is out of range) leaves the first
    /// value as it was too.
    #[tokio::test]
    async fn a_refused_change_changes_nothing() {
        let m = crate::testing::manager().await;
        let id = job_with_files(&m, std::path::Path::new("/unused"), 0).await;
        let before = m.get_job(caller(), id).unwrap();
        let error = m.set_extensions(caller(), id, Some(4), Some(0)).await.unwrap_err();
        assert_eq!(error.code, Code::E_INVALIDARG, "{error:?}");
        assert_eq!(m.get_job(caller(), id).unwrap(), before);
    }
}
