//! `bitsctl stats`: the daemon's numbers since it started (GetStats), as a block of text, or the
//! raw numbers with `--json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use bits_client::Client;
use bits_core::{JobState, Stats};
use serde::Serialize;

use super::out;
use crate::render::{self, CodeJson};

pub async fn run(client: &Client, json: bool) -> Result<()> {
    let stats = client.get_stats().await?;
    out(&if json { render::to_json(&stats_json(&stats)) } else { text(&stats) });
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct StatsJson {
    pub start_time: String,
    pub uptime_secs: u64,
    /// Every user's jobs by state name (states with no job left out).
    pub jobs: BTreeMap<&'static str, u64>,
    /// The caller's own jobs by state name.
    pub own_jobs: BTreeMap<&'static str, u64>,
    pub bytes_transferred: u64,
    pub control_connections: u64,
    pub watch_streams: u64,
    pub http_connections: u64,
    pub transient_errors: Vec<ErrorCountJson>,
    pub store_flushes: FlushesJson,
}

#[derive(Debug, Serialize)]
pub struct ErrorCountJson {
    #[serde(flatten)]
    pub code: CodeJson,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct FlushesJson {
    pub count: u64,
    pub failed: u64,
    pub total_micros: u128,
    pub max_micros: u128,
    /// Cumulative: how many flushes took at most `le_micros`.
    pub buckets: Vec<BucketJson>,
}

#[derive(Debug, Serialize)]
pub struct BucketJson {
    pub le_micros: u128,
    pub count: u64,
}

fn by_state(counts: &[(JobState, u64)]) -> BTreeMap<&'static str, u64> {
    counts.iter().map(|&(state, n)| (state.name(), n)).collect()
}

pub fn stats_json(stats: &Stats) -> StatsJson {
    let flushes = &stats.flushes;
    StatsJson {
        start_time: render::rfc3339(stats.start_time),
        uptime_secs: stats.uptime.as_secs(),
        jobs: by_state(&stats.jobs),
        own_jobs: by_state(&stats.own_jobs),
        bytes_transferred: stats.bytes_transferred,
        control_connections: stats.control_connections,
        watch_streams: stats.watch_streams,
        http_connections: stats.http_connections,
        transient_errors: stats
            .transient_errors
            .iter()
            .map(|&(code, count)| ErrorCountJson { code: render::code_json(code), count })
            .collect(),
        store_flushes: FlushesJson {
            count: flushes.count,
            failed: flushes.failed,
            total_micros: flushes.total.as_micros(),
            max_micros: flushes.max.as_micros(),
            buckets: flushes
                .buckets
                .iter()
                .map(|&(le, count)| BucketJson { le_micros: le.as_micros(), count })
                .collect(),
        },
    }
}

/// `3: QUEUED 1, TRANSFERRED 2`, or `none`.
fn jobs_line(counts: &[(JobState, u64)]) -> String {
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return "none".to_string();
    }
    let each: Vec<String> = counts.iter().map(|(s, n)| format!("{} {n}", s.name())).collect();
    format!("{total}: {}", each.join(", "))
}

/// `0.42 ms`, `12 ms`, `1.5 s`: a flush time.
fn short_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub fn text(stats: &Stats) -> String {
    let mut t = String::new();
    let up = render::human_duration(stats.uptime);
    let _ = writeln!(t, "uptime:            {up} (since {})", render::rfc3339(stats.start_time));
    let _ = writeln!(t, "jobs, all users:   {}", jobs_line(&stats.jobs));
    let _ = writeln!(t, "jobs, yours:       {}", jobs_line(&stats.own_jobs));
    let average = stats.bytes_transferred as f64 / stats.uptime.as_secs_f64().max(1.0);
    let _ = writeln!(
        t,
        "transferred:       {} since start ({} on average)",
        render::human_bytes(stats.bytes_transferred),
        render::human_rate(average),
    );
    let _ = writeln!(
        t,
        "connections:       {} control (gRPC: socket and TCP), {}, {} to HTTP servers (transfers)",
        stats.control_connections,
        plural(stats.watch_streams, "watch stream", "watch streams"),
        stats.http_connections,
    );
    let f = &stats.flushes;
    if f.count == 0 {
        let _ = writeln!(t, "store flushes:     none yet");
    } else {
        let p99 = match f.quantile_bound(0.99) {
            Some(bound) => format!("99% within {}", short_duration(bound)),
            None => "99% within the longest".to_string(),
        };
        let _ = writeln!(
            t,
            "store flushes:     {}, {} failed; mean {}, max {}, {p99}",
            f.count,
            f.failed,
            short_duration(f.mean()),
            short_duration(f.max),
        );
    }
    if stats.transient_errors.is_empty() {
        let _ = writeln!(t, "transient errors:  none");
    } else {
        let _ = writeln!(t, "transient errors:");
        for &(code, count) in &stats.transient_errors {
            let _ = writeln!(t, "  {code} × {count}");
        }
    }
    t
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::SystemTime;

    use bits_core::{Code, FlushStats};

    use super::*;

    fn stats() -> Stats {
        let us = Duration::from_micros;
        Stats {
            start_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            uptime: Duration::from_secs(185),
            jobs: vec![(JobState::Queued, 1), (JobState::Transferred, 2)],
            own_jobs: vec![(JobState::Transferred, 1)],
            bytes_transferred: 3 << 20,
            control_connections: 1,
            watch_streams: 0,
            http_connections: 2,
            transient_errors: vec![(Code::Http(503), 4)],
            flushes: FlushStats {
                count: 4,
                failed: 0,
                total: us(2_000),
                max: us(1_200),
                buckets: vec![(us(250), 2), (us(1_000), 3), (us(2_500), 4)],
            },
        }
    }

    #[test]
    fn the_text_block_reads_at_a_glance() {
        assert_eq!(
            text(&stats()),
            "uptime:            3m05s (since 2023-11-14T22:13:20Z)\n\
             jobs, all users:   3: QUEUED 1, TRANSFERRED 2\n\
             jobs, yours:       1: TRANSFERRED 1\n\
             transferred:       3.0 MiB since start (16.6 KiB/s on average)\n\
             connections:       1 control (gRPC: socket and TCP), 0 watch streams, 2 to HTTP servers (transfers)\n\
             store flushes:     4, 0 failed; mean 0.50 ms, max 1.20 ms, 99% within 2.50 ms\n\
             transient errors:\n  BG_E_HTTP_ERROR_503 (0x801901F7) × 4\n"
        );
        let idle = Stats {
            jobs: vec![],
            own_jobs: vec![],
            transient_errors: vec![],
            flushes: FlushStats::default(),
            ..stats()
        };
        let text = text(&idle);
        assert!(text.contains("jobs, yours:       none\n"), "{text}");
        assert!(text.contains("store flushes:     none yet\n"), "{text}");
        assert!(text.contains("transient errors:  none\n"), "{text}");
    }

    #[test]
    fn json_keeps_the_raw_numbers() {
        let json = serde_json::to_value(stats_json(&stats())).unwrap();
        assert_eq!(json["bytes_transferred"], 3 << 20);
        assert_eq!(json["jobs"]["TRANSFERRED"], 2);
        assert_eq!(json["own_jobs"]["TRANSFERRED"], 1);
        assert_eq!(json["uptime_secs"], 185);
        assert_eq!(json["transient_errors"][0]["code"], "BG_E_HTTP_ERROR_503");
        assert_eq!(json["transient_errors"][0]["hresult"], "0x801901F7");
        assert_eq!(json["transient_errors"][0]["count"], 4);
        assert_eq!(json["store_flushes"]["max_micros"], 1200);
        assert_eq!(json["store_flushes"]["buckets"][1]["le_micros"], 1000);
        assert_eq!(json["store_flushes"]["buckets"][1]["count"], 3);
    }
}
