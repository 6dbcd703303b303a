//! Dotted key paths like `peer[1].pod_subnet`: how an error names the key it is about.

use std::fmt;

/// A path from the top of the document to a key or table, as it appears in error
/// messages: `tunnel.port`, `peer[1].pod_subnet`, or `(top level)` for the document itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(Vec<Segment>);

/// One step of a [`KeyPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// A key of a table.
    Key(String),
    /// An element of an array, such as one `[[peer]]` table.
    Index(usize),
}

impl KeyPath {
    /// The document itself.
    pub(crate) fn root() -> KeyPath {
        KeyPath::default()
    }

    /// This path extended by the table key `key`.
    pub(crate) fn key(&self, key: &str) -> KeyPath {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.to_owned()));
        path
    }

    /// This path extended by the array index `index`.
    pub(crate) fn index(&self, index: usize) -> KeyPath {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }

    pub(crate) fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// The path with array indices left out (`peer.pod_subnet`): the key's place in the
    /// schema, shared by every element of an array of tables.
    pub(crate) fn schema_key(&self) -> String {
        let keys: Vec<&str> = self
            .0
            .iter()
            .filter_map(|segment| match segment {
                Segment::Key(key) => Some(key.as_str()),
                Segment::Index(_) => None,
            })
            .collect();
        keys.join(".")
    }

    /// True if the path ends in an array index, i.e. names one `[[peer]]` table.
    pub(crate) fn is_element(&self) -> bool {
        matches!(self.0.last(), Some(Segment::Index(_)))
    }
}

impl From<&serde_path_to_error::Path> for KeyPath {
    fn from(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment as S;
        let segments = path
            .iter()
            .filter_map(|segment| match segment {
                S::Seq { index } => Some(Segment::Index(*index)),
                S::Map { key } => Some(Segment::Key(key.clone())),
                S::Enum { variant } => Some(Segment::Key(variant.clone())),
                // Only produced by deserializers that cannot name the key; toml always can.
                S::Unknown => None,
            })
            .collect();
        KeyPath(segments)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_the_file_spells_it() {
        let path = KeyPath::root().key("peer").index(1).key("pod_subnet");

        assert_eq!(path.to_string(), "peer[1].pod_subnet");
        assert_eq!(path.schema_key(), "peer.pod_subnet");
        assert_eq!(KeyPath::root().to_string(), "(top level)");
        assert_eq!(
            KeyPath::root().key("tunnel").key("port").to_string(),
            "tunnel.port"
        );
    }
}
