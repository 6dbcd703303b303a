//! [`ConfigError`]: every way a configuration file can be rejected, in one
//! `FILE:LINE:COLUMN: KEY: MESSAGE` form.

use crate::key_path::KeyPath;

/// Why a configuration file was rejected.
///
/// Displays as `FILE:LINE:COLUMN: KEY: MESSAGE`, for example
///
/// ```text
/// /etc/overlayd.toml:9:8: tunnel.port: expected a UDP port between 1 and 65535, found 0
/// ```
///
/// `LINE` and `COLUMN` are 1-based (columns count characters, not bytes) and point at
/// the offending value, the unknown key, or — for a missing key — the table that lacks
/// it. `KEY` is the dotted path of the key (`peer[1].pod_subnet`), or `(top level)` when
/// the error concerns no key, such as a TOML syntax error. `MESSAGE` says what is wrong
/// and what is expected instead.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {key}: {message}")]
pub struct ConfigError {
    file: String,
    line: usize,
    column: usize,
    key: String,
    message: String,
    /// Set when the file could not be read at all.
    #[source]
    io: Option<std::io::Error>,
}

impl ConfigError {
    /// The file name as given to [`crate::parse`] or [`crate::load`].
    pub fn file(&self) -> &str {
        &self.file
    }

    /// 1-based line of the error.
    pub fn line(&self) -> usize {
        self.line
    }

    /// 1-based column of the error, in characters.
    pub fn column(&self) -> usize {
        self.column
    }

    /// Dotted path of the key the error is about (`peer[1].pod_subnet`), or `(top level)`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong and what is expected, without the location prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// An error about `key`, located at byte `offset` of `source`.
    pub(crate) fn at(
        file: &str,
        source: &str,
        offset: usize,
        key: &KeyPath,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = line_column(source, offset);
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
            io: None,
        }
    }

    /// The file could not be read.
    pub(crate) fn unreadable(file: &str, error: std::io::Error) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            line: 1,
            column: 1,
            key: KeyPath::root().to_string(),
            message: format!("cannot read the file: {error}; expected a readable TOML file"),
            io: Some(error),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `source`. An offset past
/// the end, or inside a character, counts as the nearest character boundary before it.
pub(crate) fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = source.floor_char_boundary(offset);
    let before = &source[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let source = "a = 1\nb = \"é\" x\n";

        assert_eq!(line_column(source, 0), (1, 1));
        assert_eq!(line_column(source, 4), (1, 5));
        assert_eq!(line_column(source, 6), (2, 1));
        // After the two-byte `é` the column is one more, not two.
        assert_eq!(line_column(source, 6 + 8), (2, 8));
        assert_eq!(line_column(source, source.len()), (3, 1));
        assert_eq!(line_column(source, source.len() + 10), (3, 1));
        assert_eq!(line_column("", 0), (1, 1));
    }

    #[test]
    fn displays_file_line_column_key_message() {
        let key = KeyPath::root().key("tunnel").key("port");

        let error = ConfigError::at("o.toml", "x\ny = 0\n", 6, &key, "expected a port");

        assert_eq!(
            error.to_string(),
            "o.toml:2:5: tunnel.port: expected a port"
        );
        assert_eq!((error.line(), error.column()), (2, 5));
        assert_eq!(error.key(), "tunnel.port");
        assert_eq!(error.file(), "o.toml");
        assert_eq!(error.message(), "expected a port");
    }
}
