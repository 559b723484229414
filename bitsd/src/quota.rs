//! Caps on what callers hold open on the control socket (connections, WatchJob streams): each
//! uid gets a share, and all of them together a total, so that one local user cannot take what
//! every other user (and the transfers: file descriptors) need. Administrators are exempt from
//! the per-user share, as from BITS' job limits, but not from the total.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// A per-user and a total cap on one kind of thing, and how many of it each uid holds.
#[derive(Clone)]
pub struct Quota {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the caps are called in the configuration, e.g. `max_watches`.
    key: &'static str,
    /// What is counted, e.g. `watch streams`.
    what: &'static str,
    per_user: usize,
    total: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    by_uid: HashMap<u32, usize>,
    total: usize,
}

/// One thing held; dropping it gives it back.
pub struct Slot {
    inner: Arc<Inner>,
    uid: u32,
}

/// Which cap a refused caller hit; its `Display` names the cap and its setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Over {
    /// `uid` already holds `cap`.
    User { uid: u32, cap: usize, key: &'static str, what: &'static str },
    /// All callers together already hold `cap`.
    Total { cap: usize, key: &'static str, what: &'static str },
}

impl fmt::Display for Over {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Over::User { uid, cap, key, what } => {
                write!(f, "uid {uid} already has {cap} {what} open ({key}_per_user = {cap})")
            }
            Over::Total { cap, key, what } => {
                write!(f, "the daemon already has {cap} {what} open ({key} = {cap})")
            }
        }
    }
}

impl Quota {
    /// `key` names the setting, e.g. `max_watches` (and `max_watches_per_user`), `what` the
    /// things counted, e.g. `watch streams`.
    pub fn new(key: &'static str, what: &'static str, per_user: usize, total: usize) -> Quota {
        Quota { inner: Arc::new(Inner { key, what, per_user, total, held: Mutex::default() }) }
    }

    /// One more for `uid`, unless that is over a cap (`exempt`: an administrator, only the
    /// total applies).
    pub fn take(&self, uid: u32, exempt: bool) -> Result<Slot, Over> {
        let inner = &self.inner;
        let mut held = inner.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.total >= inner.total {
            return Err(Over::Total { cap: inner.total, key: inner.key, what: inner.what });
        }
        let mine = held.by_uid.entry(uid).or_default();
        if !exempt && *mine >= inner.per_user {
            return Err(Over::User { uid, cap: inner.per_user, key: inner.key, what: inner.what });
        }
        *mine += 1;
        held.total += 1;
        Ok(Slot { inner: Arc::clone(inner), uid })
    }

    /// How many all callers hold now.
    pub fn total(&self) -> usize {
        self.inner.held.lock().unwrap_or_else(PoisonError::into_inner).total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.inner.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.total = held.total.saturating_sub(1);
        if let Some(mine) = held.by_uid.get_mut(&self.uid) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                // A uid that holds nothing takes no memory: uids are cheap to come by.
                held.by_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn each_uid_gets_its_share_and_all_together_the_total() {
        let quota = Quota::new("max_watches", "watch streams", 2, 5);
        let a: Vec<Slot> = (0..2).map(|_| quota.take(1000, false).unwrap()).collect();
        let over = quota.take(1000, false).err().unwrap();
        assert!(matches!(over, Over::User { uid: 1000, cap: 2, .. }), "{over:?}");
        assert_eq!(
            over.to_string(),
            "uid 1000 already has 2 watch streams open (max_watches_per_user = 2)"
        );
        // Another user is not affected by the first one's share.
        let b = quota.take(1001, false).unwrap();
        // An administrator is exempt from the share, not from the total.
        let admin: Vec<Slot> = (0..2).map(|_| quota.take(0, true).unwrap()).collect();
        assert_eq!(quota.total(), 5);
        let over = quota.take(0, true).err().unwrap();
        assert_eq!(
            over.to_string(),
            "the daemon already has 5 watch streams open (max_watches = 5)"
        );
        assert!(quota.take(1002, false).is_err());
        // Giving one back makes room again.
        drop(b);
        assert!(quota.take(1002, false).is_ok());
        drop(a);
        drop(admin);
        assert_eq!(quota.total(), 0);
        assert!(quota.inner.held.lock().unwrap().by_uid.is_empty(), "no uid lingers");
    }
}
