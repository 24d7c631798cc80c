//! Ingest: one raw message through parse → domain check → route → schema → processor, ending
//! in exactly one [`Outcome`], and the per-type tally of outcomes that summaries and metrics read.
//!
//! This runs on the worker thread that pulled the message, before the message enters the
//! dataflow, because routing is as-of the moment an event is ingested (SPEC §3).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::dataflow::owner::OpsByOwner;
use crate::dataflow::process::process;
use crate::dataflow::route::{Route, RouteTable};
use crate::event::{Envelope, ParseBuffers, RawMessage, Reason, Rejection};
use crate::spec::{same_name, Spec};

/// Why a message was skipped (counted, neither processed nor dead-lettered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The event's domain is not the job's.
    Domain,
    /// The event's type is routed, but no routing row for it is enabled.
    Disabled,
}

/// The one outcome of a message.
#[derive(Debug)]
pub enum Outcome {
    /// Its operation was added to the caller's collection (the operation is not carried here:
    /// each move of it on the way would copy some 270 bytes).
    Accepted,
    Skipped(SkipReason),
    DeadLetter(Rejection),
}

/// The label outcomes are counted under: the event type when the spec or routing knows it,
/// else one of two fixed labels, so hostile input cannot grow the tally without bound.
pub const UNPARSED: &str = "<unparsed>";
pub const UNKNOWN_TYPE: &str = "<unknown>";

/// Everything needed to ingest a message, but the routing table, which changes over time.
#[derive(Clone)]
pub struct Ingestor {
    pub spec: Arc<Spec>,
    pub max_message_bytes: usize,
}

impl Ingestor {
    /// Ingests `raw` with the routing table `routes`: returns the label to count it under and
    /// its outcome, and adds its operation to `accepted` when it has one. `buffers` are the
    /// vectors parsing reuses from one message to the next.
    pub fn ingest<'a>(
        &self,
        raw: impl Into<RawMessage<'a>>,
        routes: &RouteTable,
        buffers: &mut ParseBuffers,
        accepted: &mut OpsByOwner,
    ) -> (Cow<'a, str>, Outcome) {
        // When the domain and type come before the payload, the payload is checked as it is
        // read, against the schema of the route looked up then (and kept: the type cannot
        // change after, a second `type` key is a dead letter).
        let mut early_route = None;
        let schema_of = |domain: &str, event_type: &str| {
            if !self.in_domain(domain) {
                return None;
            }
            let route = routes.route(event_type);
            early_route = Some(route);
            match route? {
                Route::Process(route) => Some(&route.schema),
                _ => None,
            }
        };
        let mut envelope = match buffers.parse_envelope(raw, self.max_message_bytes, schema_of) {
            Ok(envelope) => envelope,
            Err(rejection) => return (Cow::Borrowed(UNPARSED), Outcome::DeadLetter(rejection)),
        };
        let route = early_route.unwrap_or_else(|| routes.route(&envelope.event_type));
        let label = if route.is_some()
            || self
                .spec
                .event_types
                .contains_key(envelope.event_type.as_ref())
        {
            envelope.event_type.clone()
        } else {
            Cow::Borrowed(UNKNOWN_TYPE)
        };
        let outcome = self.outcome(&mut envelope, route, &label, buffers, accepted);
        buffers.keep_payload(envelope.payload);
        (label, outcome)
    }

    /// Whether `domain` is the job's: compared inline, twice per message, instead of through
    /// a call to `memcmp`.
    #[inline]
    fn in_domain(&self, domain: &str) -> bool {
        same_name(domain.as_bytes(), self.spec.domain.as_bytes())
    }

    /// What becomes of a parsed message whose type routes to `route`.
    fn outcome(
        &self,
        envelope: &mut Envelope<'_>,
        route: Option<&Route>,
        label: &str,
        buffers: &mut ParseBuffers,
        accepted: &mut OpsByOwner,
    ) -> Outcome {
        if !self.in_domain(&envelope.domain) {
            return Outcome::Skipped(SkipReason::Domain);
        }
        let route = match route {
            None => {
                return Outcome::DeadLetter(Rejection::new(
                    Reason::UnknownType,
                    format!(
                        "no routing row for type `{}`",
                        envelope.event_type.chars().take(100).collect::<String>()
                    ),
                ))
            }
            Some(Route::Disabled) => return Outcome::Skipped(SkipReason::Disabled),
            Some(Route::UnknownProcessor(name)) => {
                return Outcome::DeadLetter(Rejection::new(
                    Reason::UnknownProcessor,
                    format!(
                    "the route names processor `{name}`, which the dataflow spec does not define"
                ),
                ))
            }
            Some(Route::NoSchema) => {
                return Outcome::DeadLetter(Rejection::new(
                    Reason::NoSchema,
                    format!("the dataflow spec has no payload schema for `{label}`"),
                ))
            }
            Some(Route::Process(route)) => route,
        };
        let fields = match envelope.payload.validate(&route.schema) {
            Ok(fields) => fields,
            Err(rejection) => return Outcome::DeadLetter(rejection),
        };
        let processed = process(route, envelope, &fields, &self.spec, accepted);
        buffers.keep_fields(fields);
        match processed {
            Ok(()) => Outcome::Accepted,
            Err(rejection) => Outcome::DeadLetter(rejection),
        }
    }
}

/// Outcome counts of one event type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeCounts {
    pub accepted: u64,
    pub skipped_domain: u64,
    pub skipped_disabled: u64,
    pub dead_letters: BTreeMap<&'static str, u64>,
}

impl TypeCounts {
    pub fn dead_letter_total(&self) -> u64 {
        self.dead_letters.values().sum()
    }

    pub fn total(&self) -> u64 {
        self.accepted + self.skipped_domain + self.skipped_disabled + self.dead_letter_total()
    }

    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Accepted => self.accepted += 1,
            Outcome::Skipped(SkipReason::Domain) => self.skipped_domain += 1,
            Outcome::Skipped(SkipReason::Disabled) => self.skipped_disabled += 1,
            Outcome::DeadLetter(r) => *self.dead_letters.entry(r.reason.as_str()).or_default() += 1,
        }
    }
}

/// A worker's running tally of outcomes, counted once per message. The labels are few (the
/// spec's and the routing table's event types, and two fixed labels), so they are kept in a
/// vector in the order first seen and found by comparing lengths and words inline: cheaper
/// than hashing each message's label and comparing it through `memcmp`, and far cheaper than
/// a sorted map's string comparisons. Read it as [`OutcomeCounts`].
#[derive(Debug, Clone, Default)]
pub struct OutcomeTally {
    by_type: Vec<(String, TypeCounts)>,
}

impl OutcomeTally {
    /// Counts one outcome under `label`.
    #[inline]
    pub fn record(&mut self, label: &str, outcome: &Outcome) {
        let found = self
            .by_type
            .iter_mut()
            .find(|(seen, _)| same_name(seen.as_bytes(), label.as_bytes()));
        match found {
            Some((_, counts)) => counts.count(outcome),
            None => {
                let mut counts = TypeCounts::default();
                counts.count(outcome);
                self.by_type.push((label.to_owned(), counts));
            }
        }
    }

    /// The tally so far, by label.
    pub fn counts(&self) -> OutcomeCounts {
        OutcomeCounts {
            by_type: self.by_type.iter().cloned().collect(),
        }
    }
}

/// Outcome counts by event type label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    pub by_type: BTreeMap<String, TypeCounts>,
}

impl OutcomeCounts {
    /// Adds another tally into this one.
    pub fn merge(&mut self, other: &OutcomeCounts) {
        for (label, theirs) in &other.by_type {
            let ours = self.by_type.entry(label.clone()).or_default();
            ours.accepted += theirs.accepted;
            ours.skipped_domain += theirs.skipped_domain;
            ours.skipped_disabled += theirs.skipped_disabled;
            for (reason, n) in &theirs.dead_letters {
                *ours.dead_letters.entry(reason).or_default() += n;
            }
        }
    }

    /// The sum over all types.
    pub fn totals(&self) -> TypeCounts {
        let mut all = OutcomeCounts::default();
        for counts in self.by_type.values() {
            let mut one = OutcomeCounts::default();
            one.by_type.insert(String::new(), counts.clone());
            all.merge(&one);
        }
        all.by_type.remove("").unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_counts_each_label_apart_even_labels_of_one_length() {
        let mut tally = OutcomeTally::default();
        let dead = || Outcome::DeadLetter(Rejection::new(Reason::InvalidJson, "x"));
        tally.record("wrongbook_add", &Outcome::Accepted);
        tally.record("wrongbook_fix", &Outcome::Accepted);
        tally.record("wrongbook_add", &Outcome::Skipped(SkipReason::Disabled));
        tally.record(UNPARSED, &dead());
        tally.record("wrongbook_fix", &Outcome::Accepted);
        tally.record("wrongbook_fi", &Outcome::Skipped(SkipReason::Domain));
        tally.record(UNPARSED, &dead());

        let counts = tally.counts().by_type;
        let labels: Vec<&str> = counts.keys().map(String::as_str).collect();
        assert_eq!(
            labels,
            [UNPARSED, "wrongbook_add", "wrongbook_fi", "wrongbook_fix"]
        );
        assert_eq!(
            (
                counts["wrongbook_add"].accepted,
                counts["wrongbook_add"].skipped_disabled
            ),
            (1, 1)
        );
        assert_eq!(counts["wrongbook_fix"].accepted, 2);
        assert_eq!(counts["wrongbook_fi"].skipped_domain, 1);
        assert_eq!(counts[UNPARSED].dead_letters.get("invalid_json"), Some(&2));
        assert_eq!(tally.counts().totals().total(), 7);
    }
}
