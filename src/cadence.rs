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
//!    TLS and token as `/healthz`, never over `--kubelet-insecure-tls`; RBAC `nodes/configz`):
//!    the threshold is `max(2·(R + U), lease grace + 1.5·R + U)` — unless an interval longer
//!    than that configuration allows was seen (it was read before a restart changed it): then
//!    what the intervals give, until `/configz` is read again. A threshold *shorter* than the
//!    other sources give condemns only on a configuration read after the node's latest report:
//!    a kubelet's configuration changes only with a restart, and a restart reports at once, so a
//!    read from before the latest report may describe a kubelet that is gone (a rollout from
//!    `R = 1m` to `20m` would otherwise condemn every node of the pool 150 s after its restart).
//!    "Before" is by when the read was *asked for*: a kubelet that restarts just after answering
//!    reports at once, and that report may reach pulsecheck before the answer is folded in.
//!    And the other way round, a gap that began after the read and runs longer than that
//!    configuration allows is a stall of the status loop (a restart would have reported and
//!    ended it), never learned as the node's cadence: learned, it would lengthen the threshold
//!    past the kubelet's own and hide the next, longer stall.
//!    Until it is read again, such a node's status counts as stale only after what the other
//!    sources give ([`StatusThreshold::until_reread`]), and its status going quiet for the
//!    shorter threshold asks for the read, which comes with the next probe. Twice the cadence leaves room for the jitter;
//!    the floor keeps a powered-off node (whose last status can be `1.5·R + U` older than its
//!    last Lease renewal) from turning Zombie before its Lease goes stale, so it is judged
//!    Dead, as kube-controller-manager judges it. This is the only source that can make a
//!    threshold *shorter* than the flag.
//! 2. **the intervals pulsecheck saw** between two reports, measured on the kubelet's own clock
//!    (the difference of two `lastHeartbeatTime`s, so clock skew cancels out, and at most what
//!    pulsecheck's own clock saw pass, so a step of the node's clock does not count): the longest
//!    of the last [`RECENT`], doubled, when that is longer than the flag — lengthening only,
//!    because a short interval seen once proves nothing about the longest one to come. A gap
//!    that is not a cadence is never learned: one that ends a status pulsecheck had judged stale
//!    (a wedge it caught), one during which the Lease was stale or the node did not claim Ready
//!    (a reboot, a stopped kubelet), and one pulsecheck could not see all of (a blind spell).
//!    Only the recent intervals of the same order count, so one long gap that slipped through
//!    ages out, while quick reports after status changes never push the cadence out.
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

/// How much longer than pulsecheck's own clock saw pass a learned interval may be: watch
/// delivery and the kubelet's own timing.
pub const CLOCK_SLACK: Duration = Duration::from_secs(30);

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

    /// Whether this configuration allows a healthy interval of `interval` between two reports
    /// (with [`CLOCK_SLACK`] for delivery): a longer one is a stall, or another configuration.
    pub fn allows(&self, interval: Duration) -> bool {
        interval <= self.longest_quiet() + CLOCK_SLACK
    }
}

/// How many of the latest learned intervals count.
pub const RECENT: usize = 8;

/// What pulsecheck knows of one node's status cadence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCadence {
    /// From the kubelet's `/configz`, when the prober could read it.
    pub kubelet: Option<KubeletCadence>,
    /// The latest learned intervals between two reports (a ring; zero is empty).
    recent: [Duration; RECENT],
    /// Where the next learned interval goes in `recent`.
    next: u8,
    /// How many report intervals were learned (saturating).
    pub intervals: u8,
    /// A report came earlier than the kubelet's known report frequency allows without a change
    /// or a restart — or the status went quiet for a shorter threshold than a configuration read
    /// before the latest report may give: `/configz` is worth reading again.
    pub recheck: bool,
    /// Reports seen since `/configz` was last read (saturating): after one, the kubelet may have
    /// restarted with another configuration.
    reports_since_read: u8,
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
    /// Status not seen refreshed for this long is stale (once confirmed: see `until_reread`).
    pub after: Duration,
    /// Which source gave it.
    pub source: CadenceSource,
    /// A kubelet-given `after` shorter than the other sources give, from a `/configz` read
    /// before the node's latest report (the kubelet may have restarted with another
    /// configuration since): until it is read again, the status is stale only after this, and
    /// a status quiet for `after` asks for the read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_reread: Option<Duration>,
}

impl StatusThreshold {
    /// A threshold that needs no re-read.
    pub fn new(after: Duration, source: CadenceSource) -> StatusThreshold {
        StatusThreshold { after, source, until_reread: None }
    }

    /// How long the status may go unrefreshed before it is stale, now.
    pub fn stale_after(&self) -> Duration {
        self.until_reread.unwrap_or(self.after)
    }
}

impl StatusCadence {
    /// Two intervals seen: enough that the doubled flag is no longer needed.
    const SETTLED: u8 = 2;

    /// The threshold for this node: `flag` is `--status-stale-after`, `lease_grace` the node's
    /// Lease grace (the floor of a kubelet-given threshold). See the module docs for the rules.
    pub fn threshold(&self, flag: Duration, lease_grace: Duration) -> StatusThreshold {
        let Some(kubelet) = self.kubelet_threshold(lease_grace) else { return self.threshold_without_kubelet(flag) };
        if self.reports_since_read == 0 {
            return kubelet;
        }
        // Read before the latest report: it may lengthen what the other sources give at once,
        // shorten it only once read again.
        let other = self.threshold_without_kubelet(flag);
        StatusThreshold { until_reread: (kubelet.after < other.after).then_some(other.after), ..kubelet }
    }

    /// What the kubelet's configuration gives, or what was seen when an interval longer than it
    /// allows says it is out of date.
    fn kubelet_threshold(&self, lease_grace: Duration) -> Option<StatusThreshold> {
        let k = self.kubelet?;
        let longest = self.longest_interval();
        let observed_after = longest.map(|longest| (2 * longest).min(LONGEST_THRESHOLD));
        let after = (2 * (k.report + k.update)).max(lease_grace + k.longest_quiet()).min(LONGEST_THRESHOLD);
        // An interval longer than the configuration allows says it is out of date (a restart
        // that changed it since the last read): what was seen wins until it is read again.
        Some(match (longest, observed_after) {
            (Some(longest), Some(observed)) if !k.allows(longest) && observed > after => StatusThreshold::new(observed, CadenceSource::Observed),
            _ => StatusThreshold::new(after, CadenceSource::Kubelet),
        })
    }

    /// The threshold from the intervals seen and the flag alone.
    fn threshold_without_kubelet(&self, flag: Duration) -> StatusThreshold {
        let observed_after = self.longest_interval().map(|longest| (2 * longest).min(LONGEST_THRESHOLD));
        let observed = observed_after.filter(|after| *after > flag);
        let doubled = (self.intervals < Self::SETTLED).then(|| (2 * flag).min(LONGEST_THRESHOLD.max(flag)));
        match (observed, doubled) {
            (Some(o), Some(d)) if d > o => StatusThreshold::new(d, CadenceSource::FlagDoubled),
            (Some(o), _) => StatusThreshold::new(o, CadenceSource::Observed),
            (None, Some(d)) => StatusThreshold::new(d, CadenceSource::FlagDoubled),
            (None, None) => StatusThreshold::new(flag, CadenceSource::Flag),
        }
    }

    /// The longest of the recent learned intervals.
    pub fn longest_interval(&self) -> Option<Duration> {
        self.recent.iter().copied().filter(|d| !d.is_zero()).max()
    }

    /// For a view without history (`check` judging one snapshot by the nodes' own timestamps):
    /// judged by the flag, as if the intervals had been watched.
    pub fn assume_settled(&mut self) {
        self.intervals = self.intervals.max(Self::SETTLED);
    }

    /// This cadence after a report that came `interval` after the previous one by the kubelet's
    /// clock (the `lastHeartbeatTime` difference) and `watched` after it by pulsecheck's, when
    /// pulsecheck watched the whole interval (`None` for the first one, which began before
    /// pulsecheck looked). The caller leaves out gaps that are not a cadence (see the module
    /// docs). Only a plausible interval — positive, at most [`LONGEST_THRESHOLD`] — is learned,
    /// and never more than pulsecheck saw pass (plus [`CLOCK_SLACK`]): a node's clock stepping
    /// forward is not a long interval. A report well before the kubelet's known report frequency
    /// asks for `/configz` to be read again.
    pub fn after_report(self, interval: SignedDuration, watched: Option<SignedDuration>) -> StatusCadence {
        let Ok(mut interval) = Duration::try_from(interval) else { return self };
        if let Some(watched) = watched.and_then(|w| Duration::try_from(w).ok()) {
            interval = interval.min(watched + CLOCK_SLACK);
        }
        if interval.is_zero() || interval > LONGEST_THRESHOLD {
            return self;
        }
        let early = self.kubelet.is_some_and(|k| interval + k.update < k.report);
        // An interval that began after `/configz` was read (no report since) runs under the
        // configuration read: a restart that changed it would have reported and ended the
        // interval. Longer than that configuration allows, it is a stall of the status loop, not
        // a cadence — learned, it would lengthen the node's threshold past its kubelet's own and
        // hide the next, longer wedge.
        if self.reports_since_read == 0 && self.kubelet.is_some_and(|k| !k.allows(interval)) {
            return StatusCadence { intervals: self.intervals.saturating_add(1), ..self };
        }
        let mut recent = self.recent;
        let mut next = self.next;
        // Only an interval of the same order as the longest one counts against it: quick reports
        // after status changes must not push a 20-minute cadence out of the window.
        if self.longest_interval().is_none_or(|longest| interval >= longest / 2) {
            recent[usize::from(next) % RECENT] = interval;
            next = ((usize::from(next) + 1) % RECENT) as u8;
        }
        StatusCadence { recent, next, intervals: self.intervals.saturating_add(1), recheck: self.recheck || early, ..self }
    }

    /// This cadence after any new report, a cadence or not: the kubelet may have restarted with
    /// another configuration since `/configz` was read.
    pub fn reported(self) -> StatusCadence {
        StatusCadence { reports_since_read: self.reports_since_read.saturating_add(1), ..self }
    }

    /// The kubelet's configuration as just read from `/configz`.
    /// Read after the node's latest report, it is the configuration in force: learned intervals
    /// longer than it allows (a stall, or a configuration since replaced) are forgotten, so they
    /// cannot outlive the read.
    pub fn with_kubelet(self, kubelet: KubeletCadence) -> StatusCadence {
        let mut recent = self.recent;
        for interval in recent.iter_mut().filter(|i| !kubelet.allows(**i)) {
            *interval = Duration::ZERO;
        }
        StatusCadence { kubelet: Some(kubelet), recent, recheck: false, reports_since_read: 0, ..self }
    }

    /// The kubelet's configuration read from `/configz`, but with a report seen after it was
    /// asked for: it may describe the kubelet before a restart. It may lengthen the threshold,
    /// shortens it only once read again, and asks for that read.
    pub fn with_kubelet_read_before_report(self, kubelet: KubeletCadence) -> StatusCadence {
        StatusCadence { kubelet: Some(kubelet), recheck: true, reports_since_read: self.reports_since_read.max(1), ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const GRACE: Duration = Duration::from_secs(50);

    fn kubelet(report: u64, update: u64) -> StatusCadence {
        StatusCadence::default().with_kubelet(KubeletCadence { report: Duration::from_secs(report), update: Duration::from_secs(update) })
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
        assert_eq!(kubelet(300, 10).threshold(10 * MIN, GRACE), StatusThreshold::new(Duration::from_secs(620), CadenceSource::Kubelet));
        // 20-minute reporter: 40m20s, above the 30m10s a jittered report can take.
        let slow = kubelet(1200, 10).threshold(10 * MIN, GRACE);
        assert_eq!(slow.after, Duration::from_secs(2420));
        assert!(slow.after > kubelet(1200, 10).kubelet.unwrap().longest_quiet());
        // 4-second reporter: the Lease grace floor (50s + 6s + 4s) beats 2·(4s + 4s).
        assert_eq!(kubelet(4, 4).threshold(10 * MIN, GRACE).after, Duration::from_secs(60));
    }

    #[test]
    fn observed_intervals_only_lengthen_the_flag() {
        let seen = |secs: i64| StatusCadence::default().after_report(SignedDuration::from_secs(secs), None).after_report(SignedDuration::from_secs(secs), None);
        assert_eq!(seen(70).threshold(10 * MIN, GRACE), StatusThreshold::new(10 * MIN, CadenceSource::Flag));
        assert_eq!(seen(1210).threshold(10 * MIN, GRACE), StatusThreshold::new(40 * MIN + Duration::from_secs(20), CadenceSource::Observed));
        assert_eq!(seen(3600).threshold(10 * MIN, GRACE).after, LONGEST_THRESHOLD);
    }

    #[test]
    fn the_flag_is_doubled_until_two_intervals_are_seen() {
        let none = StatusCadence::default();
        assert_eq!(none.threshold(10 * MIN, GRACE), StatusThreshold::new(20 * MIN, CadenceSource::FlagDoubled));
        // One interval, perhaps cut short by the jitter after a change: still doubled...
        let one = none.after_report(SignedDuration::from_secs(190), None);
        assert_eq!(one.threshold(10 * MIN, GRACE), StatusThreshold::new(20 * MIN, CadenceSource::FlagDoubled));
        // ...unless what it says is longer.
        let long = none.after_report(SignedDuration::from_secs(1210), None);
        assert_eq!(long.threshold(10 * MIN, GRACE).source, CadenceSource::Observed);
        let two = one.after_report(SignedDuration::from_secs(290), None);
        assert_eq!(two.threshold(10 * MIN, GRACE), StatusThreshold::new(10 * MIN, CadenceSource::Flag));
        let mut snapshot = StatusCadence::default();
        snapshot.assume_settled();
        assert_eq!(snapshot.threshold(10 * MIN, GRACE).source, CadenceSource::Flag);
    }

    #[test]
    fn only_plausible_intervals_are_learned_and_only_the_recent_ones_count() {
        let s = SignedDuration::from_secs;
        let none = StatusCadence::default();
        assert_eq!(none.after_report(s(1210), None).longest_interval(), Some(Duration::from_secs(1210)));
        // Nonsense from a kubelet's clock (a step backwards, a jump of days) is not learned.
        assert_eq!(none.after_report(s(-5), None), none);
        assert_eq!(none.after_report(s(86_400), None), none);
        // A step forward of the node's clock: no more than pulsecheck saw pass, plus the slack.
        assert_eq!(none.after_report(s(3000), Some(s(300))).longest_interval(), Some(Duration::from_secs(300) + CLOCK_SLACK));
        // The longest of the recent intervals: a long one ages out after RECENT shorter ones.
        let mut c = none.after_report(s(500), None);
        assert_eq!(c.after_report(s(60), None).longest_interval(), Some(Duration::from_secs(500)));
        // Quick reports after status changes never push the cadence out...
        for _ in 0..3 * RECENT {
            c = c.after_report(s(60), Some(s(60)));
        }
        assert_eq!(c.longest_interval(), Some(Duration::from_secs(500)));
        // ...intervals of the same order do.
        for _ in 0..RECENT {
            c = c.after_report(s(300), Some(s(300)));
        }
        assert_eq!(c.longest_interval(), Some(Duration::from_secs(300)));
    }

    #[test]
    fn a_kubelet_given_threshold_never_undercuts_what_was_seen_and_an_early_report_asks_again() {
        let s = SignedDuration::from_secs;
        // /configz said 1m; the kubelet was reconfigured to 5m and restarted: intervals of 5m10s.
        // (The restart reported first; a gap this long right after the read would be a stall.)
        let stale = kubelet(60, 10).reported().after_report(s(310), Some(s(310)));
        let threshold = stale.threshold(10 * MIN, GRACE);
        assert_eq!((threshold.after, threshold.source), (Duration::from_secs(620), CadenceSource::Observed));
        // Read before that report, it does not shorten the doubled flag until read again.
        assert_eq!(threshold.until_reread, Some(20 * MIN));
        // A jittered interval the configuration allows (1.5·R + U) changes nothing.
        let jittered = kubelet(300, 10).after_report(s(460), Some(s(460)));
        assert_eq!(jittered.threshold(10 * MIN, GRACE), StatusThreshold::new(Duration::from_secs(620), CadenceSource::Kubelet));
        // A report long before the known report frequency (a change, or a restart): read again.
        let early = kubelet(300, 10).after_report(s(20), Some(s(20)));
        assert!(early.recheck);
        assert!(!kubelet(300, 10).after_report(s(305), Some(s(305))).recheck);
        assert!(!early.with_kubelet(KubeletCadence { report: 5 * MIN, update: Duration::from_secs(10) }).recheck);
    }

    #[test]
    fn a_gap_longer_than_the_configuration_read_before_it_is_a_stall_not_a_cadence() {
        let s = SignedDuration::from_secs;
        // Read at R = 5m, then a 9.5-minute stall (just under 10m20s): not learned, so the
        // threshold stays the kubelet's and the next, longer stall is caught at 10m20s.
        let stalled = kubelet(300, 10).after_report(s(570), Some(s(570)));
        assert_eq!(stalled.threshold(10 * MIN, GRACE), StatusThreshold::new(Duration::from_secs(620), CadenceSource::Kubelet));
        assert_eq!(stalled.longest_interval(), None);
        // The same interval after a report since the read (a restart may have changed the
        // configuration) is learned.
        let restarted = kubelet(300, 10).reported().after_report(s(570), Some(s(570)));
        assert_eq!(restarted.longest_interval(), Some(Duration::from_secs(570)));
    }

    #[test]
    fn a_read_after_the_latest_report_forgets_intervals_its_configuration_does_not_allow() {
        let s = SignedDuration::from_secs;
        // R = 1m read, one ordinary report, then a 145 s stall (just under the 150 s threshold):
        // learned, it would make the threshold 290 s.
        let stalled = kubelet(60, 10).after_report(s(65), Some(s(65))).reported().after_report(s(145), Some(s(145))).reported();
        assert_eq!(stalled.longest_interval(), Some(Duration::from_secs(145)));
        // Read again (still R = 1m): the stall is forgotten, the kubelet's 150 s is back.
        let reread = stalled.with_kubelet(KubeletCadence { report: MIN, update: Duration::from_secs(10) });
        assert_eq!(reread.threshold(10 * MIN, GRACE), StatusThreshold::new(Duration::from_secs(150), CadenceSource::Kubelet));
        assert_eq!(reread.longest_interval(), Some(Duration::from_secs(65)));
    }

    #[test]
    fn a_configuration_read_before_the_latest_report_may_lengthen_but_not_shorten_until_read_again() {
        let s = SignedDuration::from_secs;
        // /configz said R = 1m: 150 s (the Lease grace floor) — shorter than the 10m flag.
        let read = kubelet(60, 10).after_report(s(70), Some(s(70))).after_report(s(70), Some(s(70)));
        assert_eq!(read.threshold(10 * MIN, GRACE).source, CadenceSource::Kubelet, "intervals learned without a report counted");
        // A report since: the kubelet may have restarted with R = 20m (a rollout). Until
        // /configz is read again the node is judged by the flag, and the short threshold says
        // when to read it.
        let reported = read.reported();
        let unconfirmed = reported.threshold(10 * MIN, GRACE);
        assert_eq!(unconfirmed, StatusThreshold { after: Duration::from_secs(150), source: CadenceSource::Kubelet, until_reread: Some(10 * MIN) });
        assert_eq!(unconfirmed.stale_after(), 10 * MIN);
        // Read again: the short threshold holds (still R = 1m), or the new configuration does.
        let confirmed = reported.with_kubelet(KubeletCadence { report: MIN, update: Duration::from_secs(10) });
        assert_eq!(confirmed.threshold(10 * MIN, GRACE), StatusThreshold::new(Duration::from_secs(150), CadenceSource::Kubelet));
        let rolled = reported.with_kubelet(KubeletCadence { report: 20 * MIN, update: Duration::from_secs(10) });
        assert_eq!(rolled.threshold(10 * MIN, GRACE), StatusThreshold::new(Duration::from_secs(2420), CadenceSource::Kubelet));
        // Lengthening needs no fresh read: a 20-minute configuration read before a report still
        // counts (the flag is shorter).
        let slow = kubelet(1200, 10).reported();
        assert_eq!(slow.threshold(10 * MIN, GRACE), StatusThreshold::new(Duration::from_secs(2420), CadenceSource::Kubelet));
    }
}
