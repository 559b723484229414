//! Warnings a local user or a network peer can trigger at will (a refused TCP request, a refused
//! connection, an accept error) are throttled: one loop of bad requests wrote 9,007 WARN lines,
//! which floods the journal and buries everything else. The first one is logged as it happens;
//! after that at most one line per period, saying how many were left out since the last.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How often a throttled warning may be logged once it repeats.
pub const PERIOD: Duration = Duration::from_secs(10);

/// One kind of warning. Shared by every connection and call that can raise it.
#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the last line was logged; `None`: never.
    logged: Option<Instant>,
    /// Occurrences left out since then.
    left_out: u64,
}

impl Throttle {
    pub fn new(period: Duration) -> Throttle {
        Throttle { period, state: Mutex::new(State::default()) }
    }

    /// Whether to log this occurrence now: `Some(n)` with the number of occurrences left out
    /// since the previous line, `None` when this one is left out (and counted).
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match state.logged {
            Some(at) if now.duration_since(at) < self.period => {
                state.left_out += 1;
                None
            }
            _ => {
                state.logged = Some(now);
                Some(std::mem::take(&mut state.left_out))
            }
        }
    }
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::new(PERIOD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood gives one line at once and then one per period, each counting what it left out.
    #[tokio::test(start_paused = true)]
    async fn a_flood_is_one_line_then_one_per_period_with_a_count() {
        let throttle = Throttle::new(Duration::from_secs(10));
        assert_eq!(throttle.allow(), Some(0), "the first one is logged");
        let logged = (0..9_006).filter_map(|_| throttle.allow()).count();
        assert_eq!(logged, 0, "the rest of the flood within the period is left out");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(throttle.allow(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(throttle.allow(), Some(9_007), "the next line says how many were left out");
        assert_eq!(throttle.allow(), None);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(throttle.allow(), Some(1));
        assert_eq!(throttle.allow(), None);
    }
}
