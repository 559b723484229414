//! Signed redirect targets that expire, as S3 presigned URLs and CDN tokens do: a signed route
//! answers every request with a `302` to a fresh token URL (`/ROUTE~N`), and each token serves
//! the route's file for a set number of requests (a HEAD counts), then answers `403`. Counting
//! requests instead of seconds keeps a test's outcome the same in virtual and wall time.

use std::collections::HashMap;

/// One signed route.
struct Route {
    /// The path of the file its tokens serve.
    file: String,
    /// Requests each token serves before it expires.
    uses: u32,
    /// Requests left per token issued so far (token N is index N - 1).
    left: Vec<u32>,
}

/// What a request to a signed route or one of its tokens gets.
pub(super) enum Signed {
    /// `302` to this token URL.
    Redirect(String),
    /// The file at this path, served as usual.
    Serve(String),
    /// A token used up: `403`.
    Expired,
}

/// Every signed route of a server.
#[derive(Default)]
pub(super) struct Routes(HashMap<String, Route>);

impl Routes {
    pub(super) fn add(&mut self, route: String, file: String, uses: u32) {
        self.0.insert(route, Route { file, uses, left: Vec::new() });
    }

    /// The answer to a request for `path`, if it is a signed route or one of its tokens.
    pub(super) fn answer(&mut self, path: &str) -> Option<Signed> {
        if let Some(route) = self.0.get_mut(path) {
            route.left.push(route.uses);
            return Some(Signed::Redirect(format!("{path}~{}", route.left.len())));
        }
        let (base, token) = path.rsplit_once('~')?;
        let route = self.0.get_mut(base)?;
        let n: usize = token.parse().ok()?;
        let left = route.left.get_mut(n.checked_sub(1)?)?;
        if *left == 0 {
            return Some(Signed::Expired);
        }
        *left -= 1;
        Some(Signed::Serve(route.file.clone()))
    }
}
