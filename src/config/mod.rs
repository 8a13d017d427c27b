//! Loading YAML run configs and task files into typed structs.
//!
//! Every schema rejects unknown keys, and every error names the file, the key path
//! and the line/column, plus the nearest known key when a key looks misspelt. The
//! schemas themselves live in `run.rs` (run configs) and `task.rs` (task files);
//! `diff.rs` names what differs between two resolved run configs.

pub(crate) mod checks;
pub mod diff;
pub mod files;
pub mod run;
pub mod task;

pub use run::RunConfig;
pub use task::TaskConfig;

use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// A config that could not be loaded, with everything a user needs to fix it.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path such as `rl.num_generations` or `rewards[1].weight`; empty at
    /// the top level or when the file could not be read at all.
    pub key_path: String,
    /// 1-based line and column of the offending token, when the parser knows it.
    pub line_column: Option<(usize, usize)>,
    pub message: String,
    /// The nearest known key or value for a misspelt one.
    pub suggestion: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.line_column {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": ")?;
        if !self.key_path.is_empty() {
            write!(f, "at `{}`: ", self.key_path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(suggestion) = &self.suggestion {
            write!(f, " (did you mean `{suggestion}`?)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads and parses a YAML file into `T`.
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        key_path: String::new(),
        line_column: None,
        message: format!("cannot read the file: {e}"),
        suggestion: None,
    })?;
    parse_yaml(&text, path)
}

/// Parses YAML text; `origin` is only used to name the source in errors.
pub fn parse_yaml<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T, ConfigError> {
    let error = |key_path: String, line_column, message: String, suggestion| ConfigError {
        file: origin.to_path_buf(),
        key_path,
        line_column,
        message,
        suggestion,
    };
    if is_blank_yaml(text) {
        return Err(error(
            String::new(),
            None,
            "the file is empty (no YAML mapping found)".into(),
            None,
        ));
    }
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key_path = render_key_path(e.path());
        let inner = e.inner();
        let line_column = inner.location().map(|l| (l.line(), l.column()));
        let message = strip_parent_path(&strip_location(&inner.to_string()), &key_path);
        let suggestion = nearest_known_name(&message);
        error(key_path, line_column, message, suggestion)
    })
}

/// True when the text holds nothing but whitespace, comments and document markers.
fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

/// `serde_path_to_error` renders the root as `.`; we show nothing there.
fn render_key_path(path: &serde_path_to_error::Path) -> String {
    let rendered = path.to_string();
    if rendered == "." {
        String::new()
    } else {
        rendered
    }
}

/// serde_yaml appends " at line L column C" to its messages; we print the location
/// in `file:line:column` form instead.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

/// serde_yaml prefixes messages with the path of the enclosing value ("rl: unknown
/// field ..."); the key path is shown separately, so drop it.
fn strip_parent_path(message: &str, key_path: &str) -> String {
    match message.split_once(": ") {
        Some((prefix, rest)) if !prefix.is_empty() && key_path.starts_with(prefix) => {
            rest.to_string()
        }
        _ => message.to_string(),
    }
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (and the same for enum
/// variants), returns the expected name closest to `x`, if it is close enough to be a
/// plausible typo.
fn nearest_known_name(message: &str) -> Option<String> {
    if !message.starts_with("unknown field") && !message.starts_with("unknown variant") {
        return None;
    }
    let mut quoted = message.split('`').skip(1).step_by(2);
    let unknown = quoted.next()?;
    quoted
        .map(|candidate| (strsim::damerau_levenshtein(unknown, candidate), candidate))
        .filter(|&(distance, candidate)| distance <= 3.max(candidate.len() / 3))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_field() {
        let message =
            "unknown field `num_generation`, expected one of `seed`, `num_generations`, `beta`";
        assert_eq!(
            nearest_known_name(message).as_deref(),
            Some("num_generations")
        );
    }

    #[test]
    fn no_suggestion_when_nothing_is_close() {
        let message = "unknown field `zzzzzzzzzz`, expected `seed` or `beta`";
        assert_eq!(nearest_known_name(message), None);
    }

    #[test]
    fn blank_yaml_detection() {
        assert!(is_blank_yaml("  \n# only a comment\n---\n"));
        assert!(!is_blank_yaml("seed: 1\n"));
    }
}
