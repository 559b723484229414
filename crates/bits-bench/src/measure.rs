//! Measuring processes: CPU time and peak RSS from /proc for a long-running process (the daemon,
//! this process), `/usr/bin/time` for short-lived children (their numbers come from `wait4`, so
//! nothing is lost when they exit), and median/min/max of repeated runs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

/// USER_HZ: the unit of utime/stime in /proc/PID/stat, 100 on every Linux ABI.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// The program that measures children: GNU time (Debian package `time`).
pub const GNU_TIME: &str = "/usr/bin/time";

/// utime + stime of a whole process (all its threads, live and exited), in seconds. `pid` may be
/// `"self"`.
pub fn cpu_seconds(pid: &str) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .with_context(|| format!("unexpected {path}: {stat}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("unexpected {path}: {stat}"))
    };
    Ok((field(11)? + field(12)?) as f64 / CLOCK_TICKS_PER_SEC)
}

/// Clock ticks of the whole machine since boot from the `cpu` line of /proc/stat: (busy, total),
/// where busy is everything but idle and iowait. Two readings give the share of the machine that
/// was in use in between, by anyone.
pub fn machine_cpu_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
    // user nice system idle iowait irq softirq steal (guest time is included in user).
    let ticks: Vec<u64> =
        line.split_whitespace().skip(1).take(8).filter_map(|f| f.parse().ok()).collect();
    let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks[..] else {
        bail!("unexpected /proc/stat cpu line: {line}");
    };
    let busy = user + nice + system + irq + softirq + steal;
    Ok((busy, busy + idle + iowait))
}

/// VmHWM (peak resident set since start or the last [`reset_peak_rss`]) of a process, in MiB.
pub fn peak_rss_mib(pid: &str) -> Result<f64> {
    status_kib(pid, "VmHWM:").map(|kib| kib / 1024.0)
}

/// VmRSS (resident set now) of a process, in MiB.
pub fn rss_mib(pid: &str) -> Result<f64> {
    status_kib(pid, "VmRSS:").map(|kib| kib / 1024.0)
}

fn status_kib(pid: &str, key: &str) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in {path}"))
}

/// Resets VmHWM to the current RSS (`echo 5 > /proc/PID/clear_refs`, Linux ≥ 4.0), so the next
/// [`peak_rss_mib`] is the peak of what happened since.
pub fn reset_peak_rss(pid: &str) -> Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").with_context(|| format!("writing {path}"))
}

/// One measured run of something.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Wall time, seconds.
    pub wall: f64,
    /// User + system CPU time, seconds.
    pub cpu: f64,
    /// Peak resident set, MiB.
    pub peak_rss_mib: f64,
}

/// Runs `program args...` under `/usr/bin/time -f "%e %U %S %M"`, with stdout going to `stdout`
/// (e.g. a file or `Stdio::null()`), and fails with its stderr unless it exits 0. Wall time is
/// measured here around the whole command (GNU time adds about a millisecond); CPU and peak RSS
/// are the child's own (and its children's), from `wait4`.
pub fn run_under_time(
    program: &str,
    args: &[String],
    stdout: Stdio,
    scratch: &Path,
) -> Result<Sample> {
    let report = scratch.join("time.out");
    let started = Instant::now();
    let output = Command::new(GNU_TIME)
        .arg("-f")
        .arg("%e %U %S %M")
        .arg("-o")
        .arg(&report)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {GNU_TIME} {program}"))?;
    let wall = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "{program} {} failed with {}:\n{}",
            shorten(&args.join(" ")),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = std::fs::read_to_string(&report)
        .with_context(|| format!("reading {}", report.display()))?;
    let _ = std::fs::remove_file(&report);
    // The report is the last line; GNU time may put "Command exited with …" before it.
    let line = text.lines().last().unwrap_or("");
    let numbers: Vec<f64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let [_, user, sys, max_rss_kib] = numbers[..] else {
        bail!("unexpected {GNU_TIME} report for {program}: {text:?}");
    };
    Ok(Sample { wall, cpu: user + sys, peak_rss_mib: max_rss_kib / 1024.0 })
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= 200 {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(200).collect::<String>())
    }
}

/// Median, minimum and maximum of a set of values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// [`Summary`] of `values`; `None` when there are none. An even count takes the mean of the two
/// middle values.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let (&min, &max) = (sorted.first()?, sorted.last()?);
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    Some(Summary { median, min, max })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_and_even_counts() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(s, Summary { median: 2.0, min: 1.0, max: 3.0 });
        let s = summarize(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s, Summary { median: 2.5, min: 1.0, max: 4.0 });
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn own_process_is_measurable() {
        assert!(cpu_seconds("self").unwrap() >= 0.0);
        assert!(peak_rss_mib("self").unwrap() > 0.0);
        assert!(rss_mib("self").unwrap() > 0.0);
        let (busy, total) = machine_cpu_ticks().unwrap();
        assert!(busy <= total && total > 0);
    }
}
