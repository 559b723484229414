//! How many parts each origin returns to one multi-range request. RFC 9110 §15.3.7.2 lets a
//! server answer fewer parts than asked, and some always do (lighttpd sends the first 10); the
//! spans left out are asked for again, and remembering the origin's limit makes later batches fit
//! it instead of being cut short every time.

use std::collections::HashMap;
use std::sync::Mutex;

use url::Url;

/// Origins remembered at most; when a new one would exceed it, all are forgotten (each then costs
/// one short answer to learn again), so a daemon fetching from many servers stays small.
const MAX_ORIGINS: usize = 4096;

/// The parts per request each origin was seen to return, shared by every request of a client.
#[derive(Debug, Default)]
pub(crate) struct PartLimits {
    by_origin: Mutex<HashMap<String, usize>>,
}

impl PartLimits {
    /// The most parts `url`'s origin was seen to return to one request, if it ever returned
    /// fewer than asked.
    pub(crate) fn per_request(&self, url: &Url) -> Option<usize> {
        self.lock().get(&key(url)).copied()
    }

    /// `url`'s origin answered a request with only `parts` parts (at least one): later requests
    /// ask for no more. A limit only goes down.
    pub(crate) fn returned(&self, url: &Url, parts: usize) {
        let parts = parts.max(1);
        let mut map = self.lock();
        let key = key(url);
        if map.len() >= MAX_ORIGINS && !map.contains_key(&key) {
            map.clear();
        }
        let limit = map.entry(key).or_insert(parts);
        *limit = (*limit).min(parts);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // The map holds plain numbers: a panic elsewhere cannot leave it half-changed.
        self.by_origin.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn key(url: &Url) -> String {
    url.origin().ascii_serialization()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn an_origin_that_returned_fewer_parts_gets_fewer_spans() {
        let limits = PartLimits::default();
        let a = url("http://a.example/x.bin");
        assert_eq!(limits.per_request(&a), None);
        limits.returned(&a, 10);
        // Per origin: another path of it fits the limit, another port or scheme does not.
        assert_eq!(limits.per_request(&url("http://a.example/other")), Some(10));
        assert_eq!(limits.per_request(&url("http://a.example:8080/x.bin")), None);
        assert_eq!(limits.per_request(&url("https://a.example/x.bin")), None);
        // Only down, never below one.
        limits.returned(&a, 20);
        assert_eq!(limits.per_request(&a), Some(10));
        limits.returned(&a, 0);
        assert_eq!(limits.per_request(&a), Some(1));
    }

    #[test]
    fn the_map_stays_bounded() {
        let limits = PartLimits::default();
        for i in 0..MAX_ORIGINS {
            limits.returned(&url(&format!("http://h{i}.example/")), 3);
        }
        assert_eq!(limits.per_request(&url("http://h0.example/")), Some(3));
        limits.returned(&url("http://new.example/"), 5);
        assert_eq!(limits.per_request(&url("http://new.example/")), Some(5));
        assert_eq!(limits.per_request(&url("http://h0.example/")), None);
        assert_eq!(limits.by_origin.lock().unwrap().len(), 1);
    }
}
