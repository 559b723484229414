//! The BITS conformance suite: one test per case of spec §10 (`docs/bits-semantics.md`)
//! that applies to download jobs, each named after what it checks and tagged with its case
//! number, against the real `bitsd` binary and test HTTP servers that misbehave on purpose.
//! Timers are made short through daemon flags and job setters, never skipped.
//! Cases left out (and why) are listed in `docs/compat.md`.

// Test code: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Cases 1–7: CreateJob, limits, GetJob, EnumJobs.
mod creation;
// Cases 8–17: AddFile and AddFileSet.
mod add_file;
// Cases 18–33: AddFileWithRanges.
mod ranges;
// Cases 34–43: Resume, Suspend, Cancel, Complete.
mod lifecycle;
// Cases 44–58: errors, retries and timers.
mod errors_timers;
// Cases 59–65: consistency and remote-name changes.
mod consistency;
// Cases 66–70: redirects and TLS.
mod redirects;
// Cases 71–80: job properties.
mod properties;
// Cases 81–86: on-demand ranges.
mod on_demand;
// Cases 87–93: notifications.
mod notifications;
// Cases 94–98: progress, times, persistence.
mod progress_times;
// Shared helpers for this suite.
