//! Threshold alerts (SPEC §8, the seed's rules): end-to-end latency above 30 s is critical, a
//! dead-letter rate above 1 % of an interval's events and record state above 1 GiB are
//! warnings. Evaluated every metrics interval; an alert is logged and sent to the alerts topic
//! once when its episode starts and once when it ends, not at every interval. The same rules
//! for Prometheus are in `config/alerts.rules.yml`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::config::MetricsConfig;
use crate::sink::dead_letters::{DeadLetterSink, Notice, NoticeKind};
use crate::source::routing::now_ms;

/// The rules, by name.
pub const RULES: [&str; 3] = ["latency", "error_rate", "state_size"];

/// The severity of rule `rule`.
pub fn severity(rule: &str) -> &'static str {
    match rule {
        "latency" => "critical",
        _ => "warning",
    }
}

/// An alert whose episode is under way.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveAlert {
    pub rule: &'static str,
    pub severity: &'static str,
    pub since_ms: i64,
    pub detail: String,
}

/// The alerts active now, for metrics and the status page.
#[derive(Debug, Default)]
pub struct AlertState {
    active: Mutex<Vec<ActiveAlert>>,
}

impl AlertState {
    pub fn active(&self) -> Vec<ActiveAlert> {
        self.active.lock().expect("alert lock").clone()
    }
}

/// What one metrics interval saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observation {
    /// The worst end-to-end latency: the slowest batch committed in the interval, or the age
    /// of the oldest batch still waiting, whichever is larger.
    pub latency: Duration,
    /// Events ingested in the interval, and how many of them were dead letters.
    pub events: u64,
    pub dead_letters: u64,
    pub state_bytes: u64,
}

/// Evaluates the rules and keeps track of episodes.
pub struct ThresholdWatch {
    pub config: MetricsConfig,
    pub state: Arc<AlertState>,
    pub notices: Arc<dyn DeadLetterSink>,
}

impl ThresholdWatch {
    /// Which rules fire on `seen`, with what they saw.
    fn firing(&self, seen: &Observation) -> Vec<(&'static str, String)> {
        let mut firing = Vec::new();
        let limit = self.config.latency_critical.0;
        if seen.latency > limit {
            firing.push((
                "latency",
                format!(
                    "end-to-end latency {:.1} s is above {:.1} s",
                    seen.latency.as_secs_f64(),
                    limit.as_secs_f64()
                ),
            ));
        }
        if seen.events > 0 {
            let rate = seen.dead_letters as f64 / seen.events as f64;
            if rate > self.config.error_rate_warning {
                firing.push((
                    "error_rate",
                    format!(
                        "{:.2} % of the interval's events were dead letters ({} of {}), above {:.2} %",
                        rate * 100.0,
                        seen.dead_letters,
                        seen.events,
                        self.config.error_rate_warning * 100.0
                    ),
                ));
            }
        }
        if seen.state_bytes > self.config.state_bytes_warning {
            firing.push((
                "state_size",
                format!(
                    "record state holds {} bytes, above {}",
                    seen.state_bytes, self.config.state_bytes_warning
                ),
            ));
        }
        firing
    }

    /// Evaluates one interval: starts and ends episodes, logging and sending each once.
    pub fn evaluate(&self, seen: &Observation) {
        let firing = self.firing(seen);
        let mut active = self.state.active.lock().expect("alert lock");
        let mut notices = Vec::new();
        for (rule, detail) in &firing {
            if active.iter().any(|a| a.rule == *rule) {
                continue;
            }
            let severity = severity(rule);
            match severity {
                "critical" => {
                    tracing::error!(alert = rule, severity, detail = %detail, "threshold alert")
                }
                _ => tracing::warn!(alert = rule, severity, detail = %detail, "threshold alert"),
            }
            active.push(ActiveAlert {
                rule,
                severity,
                since_ms: now_ms(),
                detail: detail.clone(),
            });
            notices.push(Notice {
                kind: NoticeKind::Alert,
                severity,
                reason: rule,
                detail: detail.clone(),
                data: json!({ "state": "firing" }),
            });
        }
        active.retain(|alert| {
            let still = firing.iter().any(|(rule, _)| *rule == alert.rule);
            if !still {
                tracing::info!(alert = alert.rule, "threshold alert resolved");
                notices.push(Notice {
                    kind: NoticeKind::Alert,
                    severity: "info",
                    reason: alert.rule,
                    detail: format!("resolved: {}", alert.detail),
                    data: json!({ "state": "resolved", "since_ms": alert.since_ms }),
                });
            }
            still
        });
        drop(active);
        for notice in notices {
            if let Err(e) = self.notices.notice(&notice) {
                tracing::warn!(error = %e, "cannot send a threshold alert to the alerts topic");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::dead_letters::DeadLetterMemory;

    #[test]
    fn an_alert_is_sent_once_per_episode() {
        let memory = Arc::new(DeadLetterMemory::default());
        let watch = ThresholdWatch {
            config: MetricsConfig::default(),
            state: Arc::default(),
            notices: memory.clone(),
        };
        let slow = Observation {
            latency: Duration::from_secs(31),
            events: 1000,
            dead_letters: 5,
            ..Default::default()
        };
        watch.evaluate(&slow);
        watch.evaluate(&slow);
        watch.evaluate(&slow);
        let sent = memory.notices();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!((sent[0].reason, sent[0].severity), ("latency", "critical"));
        assert_eq!(watch.state.active().len(), 1);

        let errors = Observation {
            events: 1000,
            dead_letters: 11,
            ..Default::default()
        };
        watch.evaluate(&errors);
        let sent = memory.notices();
        let reasons: Vec<_> = sent.iter().map(|n| (n.reason, n.severity)).collect();
        assert_eq!(
            reasons,
            vec![
                ("latency", "critical"),
                ("error_rate", "warning"),
                ("latency", "info")
            ]
        );
        watch.evaluate(&Observation::default());
        assert!(watch.state.active().is_empty());
        assert_eq!(memory.notices().len(), 4);
    }
}
