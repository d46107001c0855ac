//! Manifest diagnostics: `FILE:LINE:COL: path.to.field: message`.

use std::fmt;

use serde_path_to_error::{Path as SerdePath, Segment};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{DefaultMessageFormatter, Location, MessageFormatter};

use super::limits;

const MULTIPLE_DOCUMENTS: &str = "more than one YAML document; a manifest is a single document";

/// One problem found in a manifest, positioned at the offending YAML node.
///
/// `line` and `column` are 1-based. For a missing required field they point at the
/// enclosing mapping. `message` never contains key material.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestError {
    /// The manifest path as the user gave it (not canonicalised).
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Field path such as `peers[1].allowed_ips[0]`; empty for document-level errors.
    pub path: String,
    pub message: String,
}

impl ManifestError {
    pub(crate) fn new(
        file: &str,
        location: Location,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = line_col(location);
        Self {
            file: file.to_owned(),
            line,
            column,
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl ManifestError {
    /// `FILE:LINE:COL: path: warning: message`, for a finding that does
    /// not make the manifest invalid.
    pub fn warning(&self) -> String {
        let mut s = format!("{}:{}:{}: ", self.file, self.line, self.column);
        if !self.path.is_empty() {
            s.push_str(&self.path);
            s.push_str(": ");
        }
        s.push_str("warning: ");
        s.push_str(&self.message);
        s
    }
}

/// Every problem found in a manifest, in document order. Display: one per line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ManifestErrors {
    pub(crate) fn single(error: ManifestError) -> Self {
        Self(vec![error])
    }
}

/// 1-based line and column of a location; unknown locations map to `1:1`.
pub(crate) fn line_col(location: Location) -> (usize, usize) {
    if location == Location::UNKNOWN || location.line() == 0 {
        return (1, 1);
    }
    let line = usize::try_from(location.line()).unwrap_or(usize::MAX);
    let column = usize::try_from(location.column().max(1)).unwrap_or(usize::MAX);
    (line, column)
}

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// The field path of a `serde_path_to_error` path over the raw layer.
///
/// Every raw field and element is a `Spanned<T>`, which deserialises through an
/// internal `value` field; that extra segment directly follows each real segment and
/// is dropped here (see the conventions in `raw.rs`).
pub(crate) fn field_segments(path: &SerdePath) -> Vec<Seg> {
    let mut out = Vec::new();
    let mut after_real_segment = false;
    for segment in path {
        match segment {
            Segment::Map { key } if after_real_segment && key == "value" => {
                after_real_segment = false;
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push(Seg::Key(key.clone()));
                after_real_segment = true;
            }
            Segment::Seq { index } => {
                out.push(Seg::Index(*index));
                after_real_segment = true;
            }
            Segment::Unknown => after_real_segment = false,
        }
    }
    out
}

/// Render segments as `a.b[1].c`.
pub(crate) fn render_path(segments: &[Seg]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Seg::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

fn join_path(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// Whether `s` looks like a WireGuard key (44 chars of base64 ending in `=`); such text
/// is never echoed, even as a mapping key.
fn looks_like_key(s: &str) -> bool {
    s.len() == 44
        && s.ends_with('=')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

fn quoted_key(key: &str) -> String {
    if looks_like_key(key) {
        "(a key that looks like key material; not shown)".to_owned()
    } else {
        format!("`{}`", key.escape_debug())
    }
}

/// The kind of node serde reported as `unexpected`, without the value itself
/// (`string "abc"` -> `string`, ``integer `5` `` -> `integer`).
fn kind_only(unexpected: &str) -> &str {
    let cut = unexpected
        .find(['"', '`', '\''])
        .unwrap_or(unexpected.len());
    match unexpected[..cut].trim() {
        "unit" => "null",
        "map" => "mapping",
        "sequence" => "list",
        other => other,
    }
}

fn expected_phrase(expected: &str) -> String {
    match expected {
        "mapping start" => "a mapping".to_owned(),
        "sequence start" => "a list".to_owned(),
        "string scalar" => "a string".to_owned(),
        "i64" | "u64" | "i128" | "u128" | "u32" | "u16" => "an integer".to_owned(),
        other if other.starts_with("struct ") => "a mapping".to_owned(),
        other => other.to_owned(),
    }
}

/// Convert a deserialisation error (syntax, type, unknown/missing key, budget) into a
/// positioned diagnostic. `path` is the best field path known for the failing node.
pub(crate) fn from_serde(
    file: &str,
    text: &str,
    err: &serde_saphyr::Error,
    segments: &[Seg],
) -> ManifestError {
    let mut location = err.location().unwrap_or(Location::UNKNOWN);
    let path = render_path(segments);
    let path = path.as_str();
    let mut inner = err.without_snippet();
    while let serde_saphyr::Error::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }

    use serde_saphyr::Error as E;
    let (path, message) = match inner {
        E::SerdeMissingField { field, .. } => {
            // The parser points at the mapping's last key; point at the mapping itself.
            if let Some(mapping) = super::locate::locate(text, segments) {
                location = mapping;
            }
            (join_path(path, field), "missing required field".to_owned())
        }
        E::SerdeUnknownField {
            field, expected, ..
        } => {
            // The path ends with the key itself; drop it if the key could be key material.
            let shown = if looks_like_key(field) {
                path.strip_suffix(field.as_str())
                    .map_or(path, |p| p.trim_end_matches('.'))
            } else {
                path
            };
            (
                shown.to_owned(),
                format!(
                    "unknown key {} (expected one of: {})",
                    quoted_key(field),
                    expected.join(", ")
                ),
            )
        }
        E::DuplicateMappingKey { key, .. } => match key {
            Some(k) if !looks_like_key(k) => (
                join_path(path, k),
                format!("duplicate key {}", quoted_key(k)),
            ),
            Some(k) => (path.to_owned(), format!("duplicate key {}", quoted_key(k))),
            None => (path.to_owned(), "duplicate key".to_owned()),
        },
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        }
        | E::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => (
            path.to_owned(),
            format!(
                "expected {}, found {}",
                expected_phrase(expected),
                kind_only(unexpected)
            ),
        ),
        E::Unexpected { expected, .. } => {
            let mut message = format!("expected {}", expected_phrase(expected));
            if path.ends_with(".endpoint") {
                message.push_str(" (quote IPv6 endpoints: \"[fd00::1]:51820\")");
            }
            (path.to_owned(), message)
        }
        E::InvalidScalar { ty, .. } => {
            (path.to_owned(), format!("expected {}", expected_phrase(ty)))
        }
        E::NullIntoString { .. } => (path.to_owned(), "expected a string, found null".to_owned()),
        E::Eof { .. } if path.is_empty() => (
            String::new(),
            "the manifest is empty (expected a mapping with name, interface, peers and routes)"
                .to_owned(),
        ),
        E::MultipleDocuments { .. } => (String::new(), MULTIPLE_DOCUMENTS.to_owned()),
        E::AliasReplayLimitExceeded { .. } => (
            path.to_owned(),
            format!(
                "manifest exceeds parser limits: aliases expand to more than {} YAML events",
                limits::MAX_REPLAYED_EVENTS
            ),
        ),
        E::AliasReplayStackDepthExceeded { .. } => (
            path.to_owned(),
            format!(
                "manifest exceeds parser limits: aliases nested deeper than {} levels",
                limits::MAX_REPLAY_DEPTH
            ),
        ),
        E::Budget {
            breach: BudgetBreach::Documents { .. },
            ..
        } => (String::new(), MULTIPLE_DOCUMENTS.to_owned()),
        E::Budget { breach, .. } => (
            path.to_owned(),
            format!("manifest exceeds parser limits: {}", budget_message(breach)),
        ),
        other => (
            path.to_owned(),
            DefaultMessageFormatter.format_message(other).into_owned(),
        ),
    };
    ManifestError::new(file, location, path, message)
}

fn budget_message(breach: &BudgetBreach) -> String {
    match breach {
        BudgetBreach::Events { .. } => {
            format!("more than {} YAML events", limits::MAX_EVENTS)
        }
        BudgetBreach::Nodes { .. } => format!("more than {} YAML nodes", limits::MAX_NODES),
        BudgetBreach::Depth { .. } => {
            format!("nested deeper than {} levels", limits::MAX_DEPTH)
        }
        BudgetBreach::Aliases { .. } => format!("more than {} aliases", limits::MAX_ALIASES),
        BudgetBreach::Anchors { .. } => format!("more than {} anchors", limits::MAX_ANCHORS),
        BudgetBreach::AliasAnchorRatio { .. } => {
            "too many aliases per anchor (possible alias bomb)".to_owned()
        }
        BudgetBreach::MergeKeys { .. } => {
            format!("more than {} merge keys", limits::MAX_MERGE_KEYS)
        }
        BudgetBreach::ScalarBytes { .. } | BudgetBreach::InputBytes { .. } => {
            format!("more than {} bytes of text", limits::MAX_BYTES)
        }
        BudgetBreach::RecordedAnchorEvents { .. } | BudgetBreach::RecordedAnchorBytes { .. } => {
            "anchored content too large".to_owned()
        }
        other => format!("{other:?}"),
    }
}
