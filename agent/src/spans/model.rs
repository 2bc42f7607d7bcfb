//! The span as loupe builds it, independent of any exporter.

use std::{borrow::Cow, fmt, ops::Deref, sync::Arc};

/// A span's text (its name, a string attribute): borrowed when it is known at compile time,
/// shared when many spans carry the same one (a connection's peer, a route, a name), owned
/// otherwise. Cloning a shared text counts a reference; it never copies.
#[derive(Clone)]
pub enum Text {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
}

impl Text {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Static(text) => text,
            Self::Shared(text) => text,
            Self::Owned(text) => text,
        }
    }

    /// The text as an owned `String` (a copy unless it was owned).
    pub fn into_string(self) -> String {
        match self {
            Self::Owned(text) => text,
            other => other.as_str().to_owned(),
        }
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}
impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}
impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}
impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

impl std::hash::Hash for Text {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Text {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for Text {
    fn default() -> Self {
        Self::Static("")
    }
}

impl From<&'static str> for Text {
    fn from(text: &'static str) -> Self {
        Self::Static(text)
    }
}
impl From<String> for Text {
    fn from(text: String) -> Self {
        Self::Owned(text)
    }
}
impl From<Arc<str>> for Text {
    fn from(text: Arc<str>) -> Self {
        Self::Shared(text)
    }
}
impl From<Cow<'static, str>> for Text {
    fn from(text: Cow<'static, str>) -> Self {
        match text {
            Cow::Borrowed(text) => Self::Static(text),
            Cow::Owned(text) => Self::Owned(text),
        }
    }
}

/// Which side of a call the span describes (OTel SpanKind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpanKind {
    Server,
    Client,
}

/// What kind of operation a span is, which picks its slowness threshold. Later kinds (database,
/// cache) slot in here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpType {
    /// An inbound HTTP request (threshold --slow-http).
    HttpServer,
    /// An outbound HTTP call (threshold --slow-external).
    HttpClient,
    /// A database query (threshold --slow-db).
    DbClient,
    /// A cache call (threshold --slow-cache): Redis and friends, once a protocol produces them.
    CacheClient,
}

/// An attribute value. Strings known at compile time are borrowed, not allocated per span.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(Text),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A string array (`performance.patterns`).
    StrArray(Vec<Cow<'static, str>>),
}

impl From<&'static str> for AttrValue {
    fn from(value: &'static str) -> Self {
        Self::Str(Text::Static(value))
    }
}
impl From<String> for AttrValue {
    fn from(value: String) -> Self {
        Self::Str(Text::Owned(value))
    }
}
impl From<Text> for AttrValue {
    fn from(value: Text) -> Self {
        Self::Str(value)
    }
}
impl From<i64> for AttrValue {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}
impl From<f64> for AttrValue {
    fn from(value: f64) -> Self {
        Self::Float(value)
    }
}
impl From<bool> for AttrValue {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

/// Something that happened during a span (an OTel span event), e.g. a pattern found in it.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanEvent {
    pub name: &'static str,
    /// ns since boot (CLOCK_MONOTONIC).
    pub time_ns: u64,
    pub attributes: Vec<(&'static str, AttrValue)>,
}

/// Hashes the parts of a call into a [`SpanRecord::call_key`]. Parts are separated, so
/// ("ab", "c") and ("a", "bc") differ.
pub fn call_key(parts: &[&str]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = rustc_hash::FxHasher::default();
    for part in parts {
        part.hash(&mut hasher);
    }
    hasher.finish()
}

/// A finished span.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    pub trace_id: u128,
    pub span_id: u64,
    /// The parent span in the same trace (local or, from a traceparent header, remote).
    pub parent_span_id: Option<u64>,
    pub kind: SpanKind,
    pub op: OpType,
    pub name: Text,
    /// ns since boot (CLOCK_MONOTONIC), as the kernel stamps events.
    pub start_ns: u64,
    /// ns since boot (CLOCK_MONOTONIC).
    pub end_ns: u64,
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// Error status with its description, or None for unset.
    pub error: Option<String>,
    /// The process that did it.
    pub pid: u32,
    /// The thread that did it.
    pub tid: u32,
    /// Span events (patterns found, with their evidence).
    pub events: Vec<SpanEvent>,
    /// The exact call, hashed, for spotting repeats: an HTTP call's method, host, port, path and
    /// query as sent; a statement's text with its literals or its bound values. None where bound
    /// values went unseen. Never exported.
    pub call_key: Option<u64>,
    /// The key a cache command read or wrote, hashed: pairs a miss with the write that fills it.
    /// Never exported.
    pub cache_key: Option<u64>,
    /// The consistent-sampling threshold its tree was kept at ([`crate::sampling`]), exported
    /// as the tracestate `ot=th:...` ([`crate::sampling::tracestate`]); None until decided.
    pub sampling_threshold: Option<crate::sampling::Threshold>,
    /// Its tree was sampled out: it counts in every statistic but is never exported (the
    /// terminal view counts it in its route table without printing it).
    pub sampled_out: bool,
}

impl SpanRecord {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// The attribute as a string, if it is one.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        match self.attr(key) {
            Some(AttrValue::Str(text)) => Some(text),
            _ => None,
        }
    }

    /// The attribute as an integer, if it is one.
    pub fn attr_int(&self, key: &str) -> Option<i64> {
        match self.attr(key) {
            Some(AttrValue::Int(n)) => Some(*n),
            _ => None,
        }
    }

    /// Whether the span carries `performance.slow`.
    pub fn is_slow(&self) -> bool {
        matches!(self.attr("performance.slow"), Some(AttrValue::Bool(true)))
    }

    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value)
    }

    /// Adds an attribute the span does not carry yet, without looking for it first (a span
    /// being built, whose keys are each set once). [`SpanRecord::set`] replaces one.
    pub fn add(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        debug_assert!(self.attr(key).is_none(), "{key} is set twice");
        self.attributes.push((key, value.into()));
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        let value = value.into();
        match self.attributes.iter_mut().find(|(name, _)| *name == key) {
            Some(slot) => slot.1 = value,
            None => self.attributes.push((key, value)),
        }
    }
}
