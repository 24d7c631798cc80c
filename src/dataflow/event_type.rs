//! Event-type names as operations and records carry them: each distinct name is interned once
//! for the life of the process and then copied as a plain `&'static str`.
//!
//! Every operation and every stored add and fix holds its type. A shared reference-counted name
//! (`Arc<str>`) would make each event increment and later decrement one counter that every
//! worker writes: a cache line bouncing between cores on the hot path. An interned name costs
//! nothing to copy or drop, and is the same 16 bytes. Names are few (those of routing rows and
//! of restored checkpoints), so keeping each for the life of the process is bounded.

use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::{Mutex, OnceLock, PoisonError};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An interned event-type name. Compares, orders and hashes as its text.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventType(&'static str);

impl EventType {
    /// The interned name for `name`: one allocation per distinct name, ever.
    pub fn intern(name: &str) -> EventType {
        static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
        let mut names = NAMES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = names.get(name) {
            return EventType(known);
        }
        let name: &'static str = Box::leak(name.into());
        names.insert(name);
        EventType(name)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl Deref for EventType {
    type Target = str;

    fn deref(&self) -> &str {
        self.0
    }
}

impl From<&str> for EventType {
    fn from(name: &str) -> EventType {
        EventType::intern(name)
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Written as its text, as the `Arc<str>` it replaced was: checkpoints keep their layout.
impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<EventType, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(EventType::intern(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_is_interned_once_and_round_trips_as_text() {
        let a = EventType::intern("wrongbook_add");
        let b = EventType::intern(&String::from("wrongbook_add"));
        assert!(std::ptr::eq(a.as_str(), b.as_str()), "the same allocation");
        assert_ne!(a, EventType::intern("wrongbook_fix"));
        assert!(a < EventType::intern("wrongbook_fix"), "ordered as text");

        let bytes = postcard::to_stdvec(&a).unwrap();
        let arc: std::sync::Arc<str> = "wrongbook_add".into();
        assert_eq!(
            bytes,
            postcard::to_stdvec(&arc).unwrap(),
            "laid out as before"
        );
        let back: EventType = postcard::from_bytes(&bytes).unwrap();
        assert!(std::ptr::eq(back.as_str(), a.as_str()));
    }
}
