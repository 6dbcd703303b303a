//! From a TOML document to a typed [`Config`]: type errors, unknown keys and missing keys.

use crate::document::Document;
use crate::error::ConfigError;
use crate::expected::expected;
use crate::key_path::KeyPath;
use crate::schema::Config;

/// Longest source excerpt quoted after "found".
const MAX_FOUND_CHARS: usize = 60;

/// Deserializes `doc` into a [`Config`]. Returns `Err` iff a key is unknown, a required
/// key is missing, or a value has the wrong type or cannot be parsed (an address, a
/// subnet, a MAC). Values are not checked against each other here; see `validate`.
pub(crate) fn decode(doc: &Document<'_>) -> Result<Config, ConfigError> {
    let deserializer = toml::de::Deserializer::from(doc.tree());
    serde_path_to_error::deserialize(deserializer).map_err(|error| describe(doc, &error))
}

/// Rewords serde's error in the file's terms: TOML keys rather than Rust fields, and what
/// the key expects rather than the Rust type.
fn describe(
    doc: &Document<'_>,
    error: &serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let path = KeyPath::from(error.path());
    // toml gives the span of the whole array for an element that does not parse: point
    // at the element itself.
    let element = doc.locate(&path);
    let span = match error.inner().span() {
        Some(_) if path.is_element() && element.present => element.span,
        Some(span) => span,
        None => element.span,
    };
    let raw = error.inner().message();
    // serde words these two itself and quotes every name in backticks.
    let names = backticked(raw);
    if raw.starts_with("unknown field ")
        && let Some((unknown, known)) = names.split_first()
    {
        let message = if known.is_empty() {
            format!("unknown key `{unknown}`; this table takes no keys")
        } else {
            format!(
                "unknown key `{unknown}`; expected one of: {}",
                known.join(", ")
            )
        };
        return doc.error_at(span.start, &path, message);
    }
    if raw.starts_with("missing field ")
        && let Some(missing) = names.first()
    {
        // The span is that of the table lacking the key.
        let path = path.key(missing);
        let message = format!(
            "missing required key `{missing}`; expected {}",
            expected(&path)
        );
        return doc.error_at(span.start, &path, message);
    }
    let message = format!(
        "expected {}, found {}",
        expected(&path),
        found(doc.text(span.clone()))
    );
    doc.error_at(span.start, &path, message)
}

/// The names serde quotes in backticks, in order.
fn backticked(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

/// A source excerpt for "found …", as the user wrote it.
fn found(text: &str) -> String {
    if text.is_empty() {
        return "nothing".to_owned();
    }
    match text.char_indices().nth(MAX_FOUND_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backticked_names_in_serde_messages() {
        let message = "unknown field `prot`, expected one of `device`, `port`";

        assert_eq!(backticked(message), ["prot", "device", "port"]);
        assert!(backticked("no names").is_empty());
    }

    #[test]
    fn long_found_text_is_shortened() {
        let long = "x".repeat(100);

        assert_eq!(found(&long), format!("{}...", "x".repeat(MAX_FOUND_CHARS)));
        assert_eq!(found(""), "nothing");
        assert_eq!(found("\"10.244.1\""), "\"10.244.1\"");
    }
}
