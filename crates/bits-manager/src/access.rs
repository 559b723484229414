//! Who may do what (spec §9): which callers are administrators, and running a job's file work as
//! the job's owner.
//!
//! Both need the user database (passwd and group through NSS), which may be slow (LDAP, sssd), so
//! identities are cached briefly: a group change takes effect within [`IDENTITY_TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bits_core::{BitsError, Code};
use bits_disk::Identity;

/// How long a looked-up identity is trusted before the user database is asked again.
const IDENTITY_TTL: Duration = Duration::from_secs(5);

/// Administrators: listed uids (root by default) and members of the admin groups.
pub(crate) struct AccessPolicy {
    admin_uids: Vec<u32>,
    admin_gids: Vec<u32>,
    identities: Mutex<HashMap<u32, (Instant, Identity)>>,
}

impl AccessPolicy {
    pub(crate) fn new(admin_uids: Vec<u32>, admin_gids: Vec<u32>) -> AccessPolicy {
        AccessPolicy { admin_uids, admin_gids, identities: Mutex::new(HashMap::new()) }
    }

    /// Whether `uid` is an administrator. Without admin groups this never consults the user
    /// database, so the common case costs nothing.
    pub(crate) fn is_admin(&self, uid: u32) -> bool {
        if self.admin_uids.contains(&uid) {
            return true;
        }
        if self.admin_gids.is_empty() {
            return false;
        }
        let identity = self.identity(uid);
        self.admin_gids.iter().any(|&gid| identity.in_group(gid))
    }

    /// The file-system identity of `uid`, from the cache or the user database.
    pub(crate) fn identity(&self, uid: u32) -> Identity {
        let now = Instant::now();
        let mut cache = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, identity)) = cache.get(&uid)
            && now.duration_since(*at) < IDENTITY_TTL
        {
            return identity.clone();
        }
        let identity = Identity::of_uid(uid);
        cache.insert(uid, (now, identity.clone()));
        identity
    }
}

/// Runs blocking file or store work on tokio's blocking pool.
pub(crate) async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BitsError> + Send + 'static,
) -> Result<T, BitsError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(BitsError::new(Code::E_FAIL, format!("blocking task failed: {e}"))))
}

/// Runs blocking file work for a job on tokio's blocking pool, with the file-system credentials of
/// `owner` (see `bits_disk::Identity::run`: a no-op unless the daemon runs as root).
pub(crate) async fn run_as<T: Send + 'static>(
    owner: Identity,
    work: impl FnOnce() -> Result<T, BitsError> + Send + 'static,
) -> Result<T, BitsError> {
    run_blocking(move || as_owner(&owner, work)).await
}

/// Runs `work` on this (blocking) thread with the file-system credentials of `owner`.
pub(crate) fn as_owner<T>(
    owner: &Identity,
    work: impl FnOnce() -> Result<T, BitsError>,
) -> Result<T, BitsError> {
    owner.run(work).map_err(|e| {
        tracing::error!(error = %e, "cannot act as a job's owner");
        BitsError::new(Code::E_ACCESSDENIED, e.to_string())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admins_by_uid_and_group() {
        let policy = AccessPolicy::new(vec![0, 7], vec![]);
        assert!(policy.is_admin(0));
        assert!(policy.is_admin(7));
        assert!(!policy.is_admin(1000));
        // Root's primary group is 0 in every user database; a uid without an entry is in none.
        let by_group = AccessPolicy::new(vec![], vec![0]);
        assert!(by_group.is_admin(0));
        assert!(!by_group.is_admin(3_999_999_999));
    }
}
