//! Each node's status cadence, and the status threshold it gives.
//!
//! Kubelets are configured per node pool. A kubelet PATCHes its NodeStatus when something
//! changed or when `nodeStatusReportFrequency` (R, default 5m) has passed, checking every
//! `nodeStatusUpdateFrequency` (U, default 10s); after a change or a restart it adds a one-off
//! random delay of −½R … +½R (`kubelet_node_status.go`, `calculateDelay`). So a healthy quiet
//! node's status can legitimately be `1.5·R + U` old, and one fixed `--status-stale-after`
//! (10m) is wrong both ways: every quiet node with `R = 20m` looks wedged ten minutes after
//! each report, and a node with `R = 4s` waits ten minutes for its wedge to be seen.
//!
//! So every node is judged against its own cadence, learned — most trusted first — from:
//! 1. **its kubelet's own configuration** (`/configz`, read by the prober with the same verified
//!    TLS and token as `/healthz`; RBAC `nodes/configz`): the threshold is
//!    `max(2·(R + U), lease grace + 1.5·R + U)`. Twice the cadence leaves room for the jitter;
//!    the floor keeps a powered-off node (whose last status can be `1.5·R + U` older than its
//!    last Lease renewal) from turning Zombie before its Lease goes stale, so it is judged
//!    Dead, as kube-controller-manager judges it. This is the only source that can make a
//!    threshold *shorter* than the flag.
//! 2. **the intervals pulsecheck saw** between two reports, measured on the kubelet's own clock
//!    (the difference of two `lastHeartbeatTime`s, so clock skew cancels out): the longest,
//!    doubled, when that is longer than the flag — lengthening only, because a short interval
//!    seen once proves nothing about the longest one to come. An interval that ends a status
//!    pulsecheck had already judged stale is not learned: the gap of a wedge it caught is not
//!    a cadence.
//! 3. **the flag** `--status-stale-after`, doubled until pulsecheck has seen two of the node's
//!    report intervals (its own start, a new node): such a node may be a 20-minute reporter
//!    whose first interval is still to come, or the one interval seen may have been cut short by
//!    the jitter after a change; a node wedged before pulsecheck started is still caught within
//!    twice the default time.
//!
//! Everything here is pure: no clock, no I/O.

use std::time::Duration;

use k8s_openapi::jiff::SignedDuration;
use serde::Serialize;

/// The longest threshold any source may give: kubelets reporting less often than every half
/// hour are outside what pulsecheck is built for, and a clock jump on a node must not make its
/// wedges invisible for a day.
pub const LONGEST_THRESHOLD: Duration = Duration::from_secs(3600);

/// What a kubelet's `/configz` says about its status loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KubeletCadence {
    /// `nodeStatusReportFrequency`: how often an unchanged status is reported.
    pub report: Duration,
    /// `nodeStatusUpdateFrequency`: how often the status is computed (and a change reported).
    pub update: Duration,
}

impl KubeletCadence {
    /// Parses the body of a kubelet's `/configz` (`{"kubeletconfig": {...}}`, durations in Go's
    /// notation such as `"5m0s"`). Each frequency is clamped to 1s … 1h; a missing or unreadable
    /// one is an error naming the field.
    pub fn from_configz(body: &[u8]) -> Result<KubeletCadence, String> {
        let doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("/configz is not JSON: {e}"))?;
        let config = doc.get("kubeletconfig").ok_or("/configz has no \"kubeletconfig\" object")?;
        let field = |name: &str| -> Result<Duration, String> {
            let raw = config.get(name).and_then(|v| v.as_str()).ok_or_else(|| format!("/configz has no kubeletconfig.{name}"))?;
            let d: SignedDuration = raw.parse().map_err(|e| format!("/configz kubeletconfig.{name} {raw:?} is not a duration: {e}"))?;
            let d = Duration::try_from(d).map_err(|_| format!("/configz kubeletconfig.{name} {raw:?} is negative"))?;
            Ok(d.clamp(Duration::from_secs(1), LONGEST_THRESHOLD))
        };
        Ok(KubeletCadence { report: field("nodeStatusReportFrequency")?, update: field("nodeStatusUpdateFrequency")? })
    }

    /// The longest a healthy status can go unreported: `1.5·R + U`.
    pub fn longest_quiet(&self) -> Duration {
        self.report + self.report / 2 + self.update
    }
}

/// What pulsecheck knows of one node's status cadence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCadence {
    /// From the kubelet's `/configz`, when the prober could read it.
    pub kubelet: Option<KubeletCadence>,
    /// The longest interval between two reports pulsecheck saw while it still counted the
    /// status fresh (kubelet clock).
    pub longest_interval: Option<Duration>,
    /// How many report intervals were learned (saturating).
    pub intervals: u8,
}

/// Where a node's status threshold came from (the `source` label and `check`'s column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CadenceSource {
    /// The kubelet's `/configz`.
    Kubelet,
    /// The intervals pulsecheck saw, longer than the flag allows.
    Observed,
    /// `--status-stale-after`.
    Flag,
    /// `--status-stale-after`, doubled: fewer than two report intervals seen yet.
    FlagDoubled,
}

impl CadenceSource {
    /// Every source, in the order of the metric's series.
    pub const ALL: [CadenceSource; 4] = [CadenceSource::Kubelet, CadenceSource::Observed, CadenceSource::Flag, CadenceSource::FlagDoubled];

    /// The source as metrics and `check` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            CadenceSource::Kubelet => "kubelet",
            CadenceSource::Observed => "observed",
            CadenceSource::Flag => "flag",
            CadenceSource::FlagDoubled => "flag-doubled",
        }
    }
}

/// A node's status threshold and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatusThreshold {
    /// Status not seen refreshed for this long is stale.
    pub after: Duration,
    /// Which source gave it.
    pub source: CadenceSource,
}

impl StatusCadence {
    /// Two intervals seen: enough that the doubled flag is no longer needed.
    const SETTLED: u8 = 2;

    /// The threshold for this node: `flag` is `--status-stale-after`, `lease_grace` the node's
    /// Lease grace (the floor of a kubelet-given threshold). See the module docs for the rules.
    pub fn threshold(&self, flag: Duration, lease_grace: Duration) -> StatusThreshold {
        if let Some(k) = self.kubelet {
            let after = (2 * (k.report + k.update)).max(lease_grace + k.longest_quiet()).min(LONGEST_THRESHOLD);
            return StatusThreshold { after, source: CadenceSource::Kubelet };
        }
        let observed = self.longest_interval.map(|longest| (2 * longest).min(LONGEST_THRESHOLD)).filter(|after| *after > flag);
        let doubled = (self.intervals < Self::SETTLED).then(|| (2 * flag).min(LONGEST_THRESHOLD.max(flag)));
        match (observed, doubled) {
            (Some(o), Some(d)) if d > o => StatusThreshold { after: d, source: CadenceSource::FlagDoubled },
            (Some(o), _) => StatusThreshold { after: o, source: CadenceSource::Observed },
            (None, Some(d)) => StatusThreshold { after: d, source: CadenceSource::FlagDoubled },
            (None, None) => StatusThreshold { after: flag, source: CadenceSource::Flag },
        }
    }

    /// For a view without history (`check` judging one snapshot by the nodes' own timestamps):
    /// judged by the flag, as if the intervals had been watched.
    pub fn assume_settled(&mut self) {
        self.intervals = self.intervals.max(Self::SETTLED);
    }

    /// This cadence after a report that came `interval` after the previous one by the kubelet's
    /// clock (the `lastHeartbeatTime` difference; the caller leaves out reports that end a gap it
    /// judged stale). Only a plausible interval — positive, at most [`LONGEST_THRESHOLD`] — is
    /// learned, and only ever lengthens what was learned before.
    pub fn after_report(self, interval: SignedDuration) -> StatusCadence {
        let Ok(interval) = Duration::try_from(interval) else { return self };
        if interval.is_zero() || interval > LONGEST_THRESHOLD {
            return self;
        }
        StatusCadence {
            longest_interval: Some(self.longest_interval.map_or(interval, |l| l.max(interval))),
            intervals: self.intervals.saturating_add(1),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const GRACE: Duration = Duration::from_secs(50);

    fn kubelet(report: u64, update: u64) -> StatusCadence {
        StatusCadence { kubelet: Some(KubeletCadence { report: Duration::from_secs(report), update: Duration::from_secs(update) }), ..Default::default() }
    }

    #[test]
    fn configz_durations_are_read_in_go_notation() {
        let body = br#"{"kubeletconfig":{"kind":"KubeletConfiguration","nodeStatusUpdateFrequency":"10s","nodeStatusReportFrequency":"5m0s","nodeLeaseDurationSeconds":40}}"#;
        assert_eq!(KubeletCadence::from_configz(body), Ok(KubeletCadence { report: 5 * MIN, update: Duration::from_secs(10) }));
        let fast = br#"{"kubeletconfig":{"nodeStatusUpdateFrequency":"1.5s","nodeStatusReportFrequency":"1h30m0s"}}"#;
        assert_eq!(KubeletCadence::from_configz(fast), Ok(KubeletCadence { report: LONGEST_THRESHOLD, update: Duration::from_millis(1500) }));
    }

    #[test]
    fn unreadable_configz_names_what_is_wrong() {
        assert!(KubeletCadence::from_configz(b"<html>").unwrap_err().contains("not JSON"));
        assert!(KubeletCadence::from_configz(b"{}").unwrap_err().contains("kubeletconfig"));
        let missing = br#"{"kubeletconfig":{"nodeStatusUpdateFrequency":"10s"}}"#;
        assert!(KubeletCadence::from_configz(missing).unwrap_err().contains("nodeStatusReportFrequency"));
        let bad = br#"{"kubeletconfig":{"nodeStatusUpdateFrequency":"10s","nodeStatusReportFrequency":"soon"}}"#;
        assert!(KubeletCadence::from_configz(bad).unwrap_err().contains("\"soon\""));
    }

    #[test]
    fn a_kubelet_given_cadence_covers_the_jitter_and_stays_above_the_lease_grace() {
        // Default kubelet: 2·(5m + 10s) = 10m20s, more than 1.5·5m + 10s + 50s.
        assert_eq!(kubelet(300, 10).threshold(10 * MIN, GRACE), StatusThreshold { after: Duration::from_secs(620), source: CadenceSource::Kubelet });
        // 20-minute reporter: 40m20s, above the 30m10s a jittered report can take.
        let slow = kubelet(1200, 10).threshold(10 * MIN, GRACE);
        assert_eq!(slow.after, Duration::from_secs(2420));
        assert!(slow.after > kubelet(1200, 10).kubelet.unwrap().longest_quiet());
        // 4-second reporter: the Lease grace floor (50s + 6s + 4s) beats 2·(4s + 4s).
        assert_eq!(kubelet(4, 4).threshold(10 * MIN, GRACE).after, Duration::from_secs(60));
    }

    #[test]
    fn observed_intervals_only_lengthen_the_flag() {
        let seen = |secs: u64| StatusCadence { kubelet: None, longest_interval: Some(Duration::from_secs(secs)), intervals: 2 };
        assert_eq!(seen(70).threshold(10 * MIN, GRACE), StatusThreshold { after: 10 * MIN, source: CadenceSource::Flag });
        assert_eq!(seen(1210).threshold(10 * MIN, GRACE), StatusThreshold { after: 40 * MIN + Duration::from_secs(20), source: CadenceSource::Observed });
        assert_eq!(seen(3600).threshold(10 * MIN, GRACE).after, LONGEST_THRESHOLD);
    }

    #[test]
    fn the_flag_is_doubled_until_two_intervals_are_seen() {
        let none = StatusCadence::default();
        assert_eq!(none.threshold(10 * MIN, GRACE), StatusThreshold { after: 20 * MIN, source: CadenceSource::FlagDoubled });
        // One interval, perhaps cut short by the jitter after a change: still doubled...
        let one = none.after_report(SignedDuration::from_secs(190));
        assert_eq!(one.threshold(10 * MIN, GRACE), StatusThreshold { after: 20 * MIN, source: CadenceSource::FlagDoubled });
        // ...unless what it says is longer.
        let long = none.after_report(SignedDuration::from_secs(1210));
        assert_eq!(long.threshold(10 * MIN, GRACE).source, CadenceSource::Observed);
        let two = one.after_report(SignedDuration::from_secs(290));
        assert_eq!(two.threshold(10 * MIN, GRACE), StatusThreshold { after: 10 * MIN, source: CadenceSource::Flag });
        let mut snapshot = StatusCadence::default();
        snapshot.assume_settled();
        assert_eq!(snapshot.threshold(10 * MIN, GRACE).source, CadenceSource::Flag);
    }

    #[test]
    fn only_plausible_intervals_are_learned_and_only_ever_lengthen() {
        let s = SignedDuration::from_secs;
        let none = StatusCadence::default();
        assert_eq!(none.after_report(s(1210)).longest_interval, Some(Duration::from_secs(1210)));
        // Nonsense from a kubelet's clock (a step backwards, a jump of days) is not learned.
        assert_eq!(none.after_report(s(-5)), none);
        assert_eq!(none.after_report(s(86_400)), none);
        let learned = none.after_report(s(500));
        assert_eq!(learned.after_report(s(60)).longest_interval, Some(Duration::from_secs(500)));
    }
}
