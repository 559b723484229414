//! The layout inside the storage engine: one keyspace with prefixes, so a single atomic batch can
//! touch a job and all of its files.
//!
//! ```text
//! meta/schema_version            -> u32 big-endian
//! meta/last_seq                  -> u64 big-endian: the sequence number of the last batch
//! job/<uuid>                     -> stamp + JSON of JobRecord (the job without its files)
//! file/<uuid>/<index u32 BE>     -> stamp + JSON of bits_core::JobFile
//! ```
//!
//! Big-endian indices keep a job's files in file order under a prefix scan.
//!
//! A stamp is [`STAMP_TAG`] and the u64 big-endian sequence number of the write that stored the
//! record (see `mark.rs`). `meta/last_seq` carries the number of writes that may remove keys, so a
//! delete leaves its number behind too. Records written before stamps existed are bare JSON
//! (which never starts with the tag) and count as number 0.

use std::time::SystemTime;

use bits_core::{ErrorContext, Job, JobError, JobFile, JobId, JobState, JobType, Priority};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

pub(crate) const SCHEMA_KEY: &[u8] = b"meta/schema_version";
pub(crate) const LAST_SEQ_KEY: &[u8] = b"meta/last_seq";
pub(crate) const JOB_PREFIX: &[u8] = b"job/";
const FILE_PREFIX: &[u8] = b"file/";
/// Length of a hyphenated UUID.
const UUID_LEN: usize = 36;

pub(crate) fn job_key(job: JobId) -> Vec<u8> {
    let mut key = JOB_PREFIX.to_vec();
    key.extend_from_slice(job.to_string().as_bytes());
    key
}

/// The prefix under which all of a job's files live.
pub(crate) fn file_prefix(job: JobId) -> Vec<u8> {
    let mut key = FILE_PREFIX.to_vec();
    key.extend_from_slice(job.to_string().as_bytes());
    key.push(b'/');
    key
}

pub(crate) fn file_key(job: JobId, index: u32) -> Vec<u8> {
    let mut key = file_prefix(job);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// What a stored key names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Schema,
    LastSeq,
    Job(JobId),
    File(JobId, u32),
    /// Under a known prefix but malformed.
    Malformed,
    /// Not a prefix this version knows.
    Unknown,
}

pub(crate) fn parse_key(key: &[u8]) -> Key {
    if key == SCHEMA_KEY {
        return Key::Schema;
    }
    if key == LAST_SEQ_KEY {
        return Key::LastSeq;
    }
    let parse_id = |bytes: &[u8]| std::str::from_utf8(bytes).ok().and_then(JobId::parse);
    if let Some(rest) = key.strip_prefix(JOB_PREFIX) {
        return parse_id(rest).map_or(Key::Malformed, Key::Job);
    }
    if let Some(rest) = key.strip_prefix(FILE_PREFIX) {
        if rest.len() != UUID_LEN + 1 + 4 || rest[UUID_LEN] != b'/' {
            return Key::Malformed;
        }
        let mut index = [0u8; 4];
        index.copy_from_slice(&rest[UUID_LEN + 1..]);
        return parse_id(&rest[..UUID_LEN])
            .map_or(Key::Malformed, |id| Key::File(id, u32::from_be_bytes(index)));
    }
    Key::Unknown
}

/// A key as an operator would write it: `file/<uuid>/<index>` with a decimal index, anything
/// unparsable escaped.
pub(crate) fn display_key(key: &[u8]) -> String {
    match parse_key(key) {
        Key::File(id, index) => format!("file/{id}/{index}"),
        _ => key.escape_ascii().to_string(),
    }
}

pub(crate) fn encode_schema(version: u32) -> [u8; 4] {
    version.to_be_bytes()
}

pub(crate) fn decode_schema(value: &[u8]) -> Result<u32, StoreError> {
    let bytes: [u8; 4] = value.try_into().map_err(|_| StoreError::Corrupt {
        key: display_key(SCHEMA_KEY),
        reason: format!("expected a 4-byte version, found {} bytes", value.len()),
    })?;
    Ok(u32::from_be_bytes(bytes))
}

/// A job as stored: every field of [`Job`] except its files, plus the file count so a missing
/// file record is detected instead of silently shortening the job.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JobRecord {
    id: JobId,
    display_name: String,
    description: String,
    job_type: JobType,
    priority: Priority,
    state: JobState,
    owner_uid: u32,
    minimum_retry_delay_secs: u32,
    no_progress_timeout_secs: u32,
    creation_time: SystemTime,
    modification_time: SystemTime,
    transfer_completion_time: Option<SystemTime>,
    error: Option<JobErrorRecord>,
    error_count: u32,
    /// Added after schema 1 was first written; absent in older records means none.
    #[serde(default)]
    custom_headers: Option<String>,
    #[serde(default = "default_maximum_download_time")]
    maximum_download_time_secs: u32,
    #[serde(default = "default_notify_flags")]
    notify_flags: u32,
    #[serde(default)]
    security_flags: u32,
    #[serde(default)]
    on_demand: bool,
    #[serde(default = "default_notification_interval")]
    minimum_notification_interval_ms: u32,
    #[serde(default = "one")]
    connections_per_file: u32,
    #[serde(default = "one")]
    files_at_once: u32,
    #[serde(default)]
    notify_cmd_line: Option<bits_core::NotifyCmdLine>,
    pub(crate) file_count: u32,
}

fn default_maximum_download_time() -> u32 {
    bits_core::job::DEFAULT_MAXIMUM_DOWNLOAD_TIME_SECS
}

fn one() -> u32 {
    1
}

fn default_notify_flags() -> u32 {
    bits_core::job::notify::DEFAULT
}

fn default_notification_interval() -> u32 {
    bits_core::job::DEFAULT_MINIMUM_NOTIFICATION_INTERVAL_MS
}

/// [`JobError`] is stored field by field too, so a field added to it is a compile error here.
#[derive(Debug, Serialize, Deserialize)]
struct JobErrorRecord {
    context: ErrorContext,
    code: bits_core::Code,
    description: String,
    file_index: Option<u32>,
}

impl JobRecord {
    /// Exhaustive destructuring: adding a field to `Job` fails to compile until it is stored.
    pub(crate) fn from_job(job: &Job) -> JobRecord {
        let Job {
            id,
            display_name,
            description,
            job_type,
            priority,
            state,
            owner_uid,
            minimum_retry_delay_secs,
            no_progress_timeout_secs,
            creation_time,
            modification_time,
            transfer_completion_time,
            error,
            error_count,
            custom_headers,
            maximum_download_time_secs,
            notify_flags,
            security_flags,
            on_demand,
            minimum_notification_interval_ms,
            connections_per_file,
            files_at_once,
            notify_cmd_line,
            files,
        } = job;
        JobRecord {
            id: *id,
            display_name: display_name.clone(),
            description: description.clone(),
            job_type: *job_type,
            priority: *priority,
            state: *state,
            owner_uid: *owner_uid,
            minimum_retry_delay_secs: *minimum_retry_delay_secs,
            no_progress_timeout_secs: *no_progress_timeout_secs,
            creation_time: *creation_time,
            modification_time: *modification_time,
            transfer_completion_time: *transfer_completion_time,
            error: error.as_ref().map(|e| {
                let JobError { context, code, description, file_index } = e;
                JobErrorRecord {
                    context: *context,
                    code: *code,
                    description: description.clone(),
                    file_index: *file_index,
                }
            }),
            error_count: *error_count,
            custom_headers: custom_headers.clone(),
            maximum_download_time_secs: *maximum_download_time_secs,
            notify_flags: *notify_flags,
            security_flags: *security_flags,
            on_demand: *on_demand,
            minimum_notification_interval_ms: *minimum_notification_interval_ms,
            connections_per_file: *connections_per_file,
            files_at_once: *files_at_once,
            notify_cmd_line: notify_cmd_line.clone(),
            file_count: files.len() as u32,
        }
    }

    pub(crate) fn id(&self) -> JobId {
        self.id
    }

    /// The `Job` literal names every field, so a field added to `Job` fails to compile here too.
    pub(crate) fn into_job(self, files: Vec<JobFile>) -> Job {
        Job {
            id: self.id,
            display_name: self.display_name,
            description: self.description,
            job_type: self.job_type,
            priority: self.priority,
            state: self.state,
            owner_uid: self.owner_uid,
            minimum_retry_delay_secs: self.minimum_retry_delay_secs,
            no_progress_timeout_secs: self.no_progress_timeout_secs,
            creation_time: self.creation_time,
            modification_time: self.modification_time,
            transfer_completion_time: self.transfer_completion_time,
            error: self.error.map(|e| JobError {
                context: e.context,
                code: e.code,
                description: e.description,
                file_index: e.file_index,
            }),
            error_count: self.error_count,
            custom_headers: self.custom_headers,
            maximum_download_time_secs: self.maximum_download_time_secs,
            notify_flags: self.notify_flags,
            security_flags: self.security_flags,
            on_demand: self.on_demand,
            minimum_notification_interval_ms: self.minimum_notification_interval_ms,
            connections_per_file: self.connections_per_file,
            files_at_once: self.files_at_once,
            notify_cmd_line: self.notify_cmd_line,
            files,
        }
    }
}

/// The first byte of a stamped record: not a byte JSON can start with.
const STAMP_TAG: u8 = 0x01;
/// The tag and the sequence number.
const STAMP_LEN: usize = 9;

/// The stamped record of `value`, with sequence number 0 until [`stamp`] sets it.
pub(crate) fn encode<T: Serialize>(key: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::with_capacity(256);
    bytes.push(STAMP_TAG);
    bytes.extend_from_slice(&[0; STAMP_LEN - 1]);
    serde_json::to_writer(&mut bytes, value)
        .map_err(|e| StoreError::Encode { key: display_key(key), reason: e.to_string() })?;
    Ok(bytes)
}

/// Sets the sequence number of a record made by [`encode`].
pub(crate) fn stamp(record: &mut [u8], seq: u64) {
    if let Some(number) = record.get_mut(1..STAMP_LEN) {
        number.copy_from_slice(&seq.to_be_bytes());
    }
}

/// The sequence number a stored value carries: a record's stamp, `meta/last_seq`'s value, 0 for
/// anything else (a record from before stamps, the schema version).
pub(crate) fn seq_of(key: &[u8], value: &[u8]) -> u64 {
    if key == LAST_SEQ_KEY {
        return value.try_into().map_or(0, u64::from_be_bytes);
    }
    match value {
        [STAMP_TAG, number @ ..] if number.len() >= STAMP_LEN - 1 => {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&number[..STAMP_LEN - 1]);
            u64::from_be_bytes(bytes)
        }
        _ => 0,
    }
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(
    key: &[u8],
    value: &[u8],
) -> Result<T, StoreError> {
    let json = match value {
        [STAMP_TAG, ..] => value.get(STAMP_LEN..).unwrap_or_default(),
        _ => value,
    };
    serde_json::from_slice(json)
        .map_err(|e| StoreError::Corrupt { key: display_key(key), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_files_in_order() {
        let id = JobId::new_random();
        assert_eq!(parse_key(&job_key(id)), Key::Job(id));
        assert_eq!(parse_key(&file_key(id, 7)), Key::File(id, 7));
        assert_eq!(parse_key(SCHEMA_KEY), Key::Schema);
        assert_eq!(parse_key(LAST_SEQ_KEY), Key::LastSeq);
        assert_eq!(parse_key(b"job/not-a-uuid"), Key::Malformed);
        assert_eq!(parse_key(b"file/short"), Key::Malformed);
        assert_eq!(parse_key(b"other/x"), Key::Unknown);
        assert!(file_key(id, 2) < file_key(id, 10));
        assert!(file_key(id, 255) < file_key(id, 256));
        assert!(file_key(id, 0).starts_with(&file_prefix(id)));
        assert_eq!(display_key(&file_key(id, 300)), format!("file/{id}/300"));
        assert_eq!(display_key(&job_key(id)), format!("job/{id}"));
    }

    #[test]
    fn records_carry_their_sequence_number_and_old_records_still_decode() {
        let key = job_key(JobId::new_random());
        let mut record = encode(&key, &vec![1u32, 2]).unwrap();
        assert_eq!(seq_of(&key, &record), 0);
        stamp(&mut record, 0x0102_0304_0506_0708);
        assert_eq!(seq_of(&key, &record), 0x0102_0304_0506_0708);
        assert_eq!(decode::<Vec<u32>>(&key, &record).unwrap(), [1, 2]);
        // Bare JSON, as stored before stamps.
        assert_eq!(seq_of(&key, b"[3]"), 0);
        assert_eq!(decode::<Vec<u32>>(&key, b"[3]").unwrap(), [3]);
        assert_eq!(seq_of(LAST_SEQ_KEY, &7u64.to_be_bytes()), 7);
        assert!(matches!(
            decode::<Vec<u32>>(&key, &[STAMP_TAG, 0]),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn schema_value_must_be_four_bytes() {
        assert_eq!(decode_schema(&encode_schema(1)).unwrap(), 1);
        assert!(matches!(decode_schema(b"1"), Err(StoreError::Corrupt { .. })));
    }
}
