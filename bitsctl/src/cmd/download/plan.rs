//! What `bitsctl download` was asked to do, checked before anything reaches the daemon: the
//! files (`URL DEST` pairs, `-i LIST`), their digests, the header file. Every mistake here is a
//! usage error (exit 2) and no job is created for it. LIST and header files are read by the
//! parsers `add-set` and `set-headers` use (`crate::list`, `crate::headers`).

use std::path::{Path, PathBuf};

use bits_core::ByteRange;

use super::DownloadArgs;
use crate::cmd::absolute;
use crate::headers::parse_headers;
use crate::list::{UsageError, parse_list, read_input};

/// One file of the job.
#[derive(Debug, PartialEq, Eq)]
pub struct Item {
    pub url: String,
    /// Absolute, as the daemon requires.
    pub dest: PathBuf,
    pub sha256: Option<String>,
}

#[derive(Debug)]
pub struct Plan {
    pub items: Vec<Item>,
    /// Static ranges of the one file (`--range`).
    pub ranges: Vec<ByteRange>,
    /// CRLF-joined `Name: value` lines for SetCustomHeaders.
    pub headers: Option<String>,
}

impl Plan {
    /// `--sha256` values go to the URL DEST pairs of the command line, in order; files of a
    /// LIST take their `sha256=HEX` column.
    pub fn from_args(args: &DownloadArgs) -> Result<Plan, UsageError> {
        let stdin_users = [&args.list, &args.header_file]
            .iter()
            .filter(|p| p.as_deref() == Some(Path::new("-")))
            .count();
        if stdin_users > 1 {
            return Err(UsageError("-i and --header-file cannot both read stdin ('-')".into()));
        }
        let pairs = pairs(&args.pairs)?;
        if !args.sha256.is_empty() && args.sha256.len() != pairs.len() {
            return Err(UsageError(format!(
                "--sha256 is given {} times for {} URL DEST pairs (once per pair, in order; \
                 a LIST gives digests in its sha256=HEX column)",
                args.sha256.len(),
                pairs.len()
            )));
        }
        let mut wanted: Vec<(String, PathBuf, Option<String>)> = pairs
            .into_iter()
            .enumerate()
            .map(|(i, (url, dest))| (url, PathBuf::from(dest), args.sha256.get(i).cloned()))
            .collect();
        if let Some(list) = &args.list {
            let (text, origin) = read_input(list)?;
            wanted
                .extend(parse_list(&text, &origin)?.into_iter().map(|e| (e.url, e.dest, e.sha256)));
        }
        if wanted.is_empty() {
            return Err(UsageError("nothing to download: give URL DEST or -i LIST".into()));
        }
        if !args.ranges.is_empty() && wanted.len() != 1 {
            return Err(UsageError(format!(
                "--range needs exactly one file ({} given)",
                wanted.len()
            )));
        }
        let mut items = Vec::with_capacity(wanted.len());
        for (url, dest, sha256) in wanted {
            let dest = absolute(&dest).map_err(|e| UsageError(e.message))?;
            items.push(Item { url, dest, sha256 });
        }
        let headers = match &args.header_file {
            Some(path) => {
                let (text, origin) = read_input(path)?;
                Some(parse_headers(&text, &origin)?)
            }
            None => None,
        };
        Ok(Plan { items, ranges: args.ranges.clone(), headers })
    }

    /// The job's display name: what a `bitsctl list` reader recognises.
    pub fn display_name(&self) -> String {
        let name = |item: &Item| {
            item.dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        };
        match self.items.as_slice() {
            [one] => format!("bitsctl download {}", name(one)),
            [first, ..] => {
                format!("bitsctl download {} (+{} files)", name(first), self.items.len() - 1)
            }
            [] => "bitsctl download".into(),
        }
    }
}

/// `URL DEST [URL DEST ...]` from the command line.
fn pairs(args: &[String]) -> Result<Vec<(String, String)>, UsageError> {
    if args.len() % 2 == 1 {
        let last = args.last().map(String::as_str).unwrap_or_default();
        return Err(UsageError(format!("'{last}' has no DEST (give URL DEST pairs)")));
    }
    Ok(args.chunks_exact(2).map(|p| (p[0].clone(), p[1].clone())).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn pairs_need_a_dest_each() {
        let args: Vec<String> = ["http://h/a", "a", "http://h/b"].map(String::from).to_vec();
        assert_eq!(pairs(&args).unwrap_err().0, "'http://h/b' has no DEST (give URL DEST pairs)");
        assert_eq!(pairs(&args[..2]).unwrap().len(), 1);
    }
}
