//! The parsed TOML document with the byte span of every key and value: where errors point.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{ConfigError, line_column};
use crate::key_path::{KeyPath, Segment};

/// A syntactically valid TOML document, kept with its spans so that any key path can be
/// turned into a line and column.
pub(crate) struct Document<'a> {
    file: &'a str,
    source: &'a str,
    root: Spanned<DeTable<'a>>,
}

/// Where a key path is in the source.
pub(crate) struct Location {
    /// The span of the key's value; for a table, of its header. When the document lacks
    /// the key, the span of the nearest enclosing table it does have.
    pub(crate) span: Range<usize>,
    /// False when the key is absent and `span` is that of an enclosing table.
    pub(crate) present: bool,
}

impl<'a> Document<'a> {
    /// Parses `source` as TOML. Returns `Err` iff it is not valid TOML.
    pub(crate) fn parse(source: &'a str, file: &'a str) -> Result<Document<'a>, ConfigError> {
        match DeTable::parse(source) {
            Ok(root) => Ok(Document { file, source, root }),
            Err(error) => {
                let offset = error.span().map_or(0, |span| span.start);
                let found = error.span().map_or("", |span| text(source, span));
                let message = syntax_message(error.message(), found);
                Err(ConfigError::at(
                    file,
                    source,
                    offset,
                    &KeyPath::root(),
                    message,
                ))
            }
        }
    }

    /// A copy of the document tree for deserializing, which consumes it.
    pub(crate) fn tree(&self) -> Spanned<DeTable<'a>> {
        self.root.clone()
    }

    /// Where `path` is in the source. Every error about a key finds its place here.
    pub(crate) fn locate(&self, path: &KeyPath) -> Location {
        let mut span = self.root.span();
        let mut value: Option<&DeValue<'a>> = None;
        for segment in path.segments() {
            let next = match (segment, value) {
                (Segment::Key(key), None) => self.root.get_ref().get(key.as_str()),
                (Segment::Key(key), Some(DeValue::Table(table))) => table.get(key.as_str()),
                (Segment::Index(index), Some(DeValue::Array(array))) => array.get(*index),
                _ => None,
            };
            let Some(next) = next else {
                return Location {
                    span,
                    present: false,
                };
            };
            span = next.span();
            value = Some(next.get_ref());
        }
        Location {
            span,
            present: true,
        }
    }

    /// How a message refers to the place of another key: `line 14`, or `the default`
    /// when the file does not set it.
    pub(crate) fn whereabouts(&self, path: &KeyPath) -> String {
        let location = self.locate(path);
        if !location.present {
            return "the default".to_owned();
        }
        let (line, _) = line_column(self.source, location.span.start);
        format!("line {line}")
    }

    /// The first line of the source text of `span`.
    pub(crate) fn text(&self, span: Range<usize>) -> &'a str {
        text(self.source, span)
    }

    /// An error about `path`, pointing at its value (or the table that lacks it).
    pub(crate) fn error(&self, path: &KeyPath, message: impl Into<String>) -> ConfigError {
        self.error_at(self.locate(path).span.start, path, message)
    }

    /// An error about `path`, pointing at byte `offset`.
    pub(crate) fn error_at(
        &self,
        offset: usize,
        path: &KeyPath,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::at(self.file, self.source, offset, path, message)
    }
}

/// The first line of `span` in `source`; empty if `span` is not a range of `source`.
fn text(source: &str, span: Range<usize>) -> &str {
    let text = source.get(span).unwrap_or("");
    text.lines().next().unwrap_or("")
}

/// toml's syntax error text, reworded to say what is wrong and then what is expected.
fn syntax_message(description: &str, found: &str) -> String {
    if let Some((what, expected)) = description.split_once(", expected ") {
        return format!("{what}; expected {expected}");
    }
    if description == "duplicate key" {
        return format!(
            "duplicate key `{found}`; expected every key and table to be defined only once"
        );
    }
    format!("{description}; expected TOML syntax as in overlayd.example.toml")
}
