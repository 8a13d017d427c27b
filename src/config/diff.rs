//! What differs between two resolved run configs, key path by key path, and a
//! fingerprint of one.
//!
//! Both work on the config as JSON (every default filled in), so that a key left out of
//! one file and set to its default in the other is no difference.

use super::RunConfig;
use anyhow::Result;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;

/// One key whose value differs; `None` where a side lacks the key.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Dotted key path, as the config errors name keys (`optim.learning_rate`,
    /// `rl.ppo.kl_coef`, `rewards[1]`).
    pub key: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |side: &Option<Value>| match side {
            None => "(absent)".to_string(),
            Some(Value::String(text)) => text.clone(),
            Some(value) => value.to_string(),
        };
        write!(
            f,
            "{}: {} -> {}",
            self.key,
            show(&self.old),
            show(&self.new)
        )
    }
}

/// The resolved config as JSON: what is stored, compared and hashed.
pub fn resolved(config: &RunConfig) -> Result<Value> {
    Ok(serde_json::to_value(config)?)
}

/// SHA-256 of the resolved config's JSON (keys sorted, so the text is canonical); the
/// seed is a key of the config, so it is part of the hash.
pub fn fingerprint(config: &RunConfig) -> Result<String> {
    let text = serde_json::to_string(&resolved(config)?)?;
    let digest = Sha256::digest(text.as_bytes());
    Ok(digest.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Every key whose value differs between `old` and `new`, in key order.
pub fn differences(old: &Value, new: &Value) -> Vec<Change> {
    let mut changes = Vec::new();
    walk("", Some(old), Some(new), &mut changes);
    changes
}

fn walk(key: &str, old: Option<&Value>, new: Option<&Value>, changes: &mut Vec<Change>) {
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for name in keys {
                let path = match key {
                    "" => name.clone(),
                    _ => format!("{key}.{name}"),
                };
                walk(&path, a.get(name), b.get(name), changes);
            }
        }
        // Lists of the same length compare item by item; otherwise as a whole.
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk(&format!("{key}[{i}]"), Some(x), Some(y), changes);
            }
        }
        (a, b) if a != b => changes.push(Change {
            key: key.to_string(),
            old: a.cloned(),
            new: b.cloned(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_every_key_that_differs() {
        let old = json!({"seed": 7, "optim": {"learning_rate": 0.001, "warmup": 0},
                         "task": "a.yaml", "rewards": [1, 2], "rl": null});
        let new = json!({"seed": 8, "optim": {"learning_rate": 0.002, "warmup": 0},
                         "task": "b.yaml", "rewards": [1, 3], "rl": {"beta": 0.0}});
        let shown: Vec<String> = differences(&old, &new)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            shown,
            [
                "optim.learning_rate: 0.001 -> 0.002",
                "rewards[1]: 2 -> 3",
                r#"rl: null -> {"beta":0.0}"#,
                "seed: 7 -> 8",
                "task: a.yaml -> b.yaml",
            ]
        );
        assert!(differences(&old, &old).is_empty());
        let gone = differences(&json!({"a": 1}), &json!({}));
        assert_eq!(gone[0].to_string(), "a: 1 -> (absent)");
    }
}
