//! Replaying recorded sessions: [`client`] drives a recorded client side against a live
//! monitor and compares what comes back; [`server`] plays a recorded QEMU side as a mock.
//!
//! Both sides compare messages through the one normaliser ([`crate::normalize`]) and pair
//! replies through [`crate::session`]; neither re-implements either.

pub mod client;
pub mod server;

use std::str::FromStr;
use std::time::Duration;

/// How fast to replay.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pace {
    /// As fast as causality allows: each message is sent once what preceded it has arrived
    /// (for the mock server: replies and events at once).
    #[default]
    Asap,
    /// With the recorded gaps, scheduled against one start time so that drift does not
    /// accumulate, divided by the factor (`x2` is twice as fast; `recorded` is `x1`).
    Scaled(f64),
}

/// A `--pace` value that is not `asap`, `recorded` or `xN`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pace '{0}': expected asap, recorded or xN (N > 0, e.g. x2 or x0.5)")]
pub struct PaceError(String);

impl FromStr for Pace {
    type Err = PaceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "asap" => Ok(Pace::Asap),
            "recorded" => Ok(Pace::Scaled(1.0)),
            _ => s
                .strip_prefix('x')
                .and_then(|n| n.parse::<f64>().ok())
                .filter(|n| n.is_finite() && *n > 0.0)
                .map(Pace::Scaled)
                .ok_or_else(|| PaceError(s.to_owned())),
        }
    }
}

impl Pace {
    /// When, after the start, a message recorded `offset` after the first one is due.
    pub fn due(self, offset: Duration) -> Option<Duration> {
        match self {
            Pace::Asap => None,
            Pace::Scaled(factor) => Some(offset.div_f64(factor)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_values() {
        assert_eq!("asap".parse(), Ok(Pace::Asap));
        assert_eq!("recorded".parse(), Ok(Pace::Scaled(1.0)));
        assert_eq!("x2".parse(), Ok(Pace::Scaled(2.0)));
        assert_eq!("x0.5".parse(), Ok(Pace::Scaled(0.5)));
        for bad in ["", "x", "x0", "x-1", "2", "xinf", "fast"] {
            let e = bad.parse::<Pace>().unwrap_err().to_string();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
        assert_eq!(
            Pace::Scaled(2.0).due(Duration::from_secs(4)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(Pace::Asap.due(Duration::from_secs(4)), None);
    }
}
