//! Synthetic "write a small Python function" tasks: one-line functions with a varying
//! name and constant, a reference solution and assert tests. Small enough for a tiny
//! model to learn, so the code demo can show RL gains graded in the sandbox.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionItem {
    pub question: String,
    pub entry_point: String,
    /// A reference completion: the function in a ```python block.
    pub solution: String,
    /// Assert statements, each one test.
    pub tests: Vec<String>,
}

/// (name stem, description, body): `{k}` stands for the constant, `x` for the argument.
const TEMPLATES: &[(&str, &str, &str)] = &[
    ("add", "returns x plus {k}", "x + {k}"),
    ("subtract", "returns x minus {k}", "x - {k}"),
    ("times", "returns x multiplied by {k}", "x * {k}"),
    (
        "is_multiple_of",
        "returns True when x is divisible by {k}, else False",
        "x % {k} == 0",
    ),
    (
        "mod",
        "returns the remainder of x divided by {k}",
        "x % {k}",
    ),
    ("max_with", "returns the larger of x and {k}", "max(x, {k})"),
    (
        "min_with",
        "returns the smaller of x and {k}",
        "min(x, {k})",
    ),
    ("square_plus", "returns x squared plus {k}", "x * x + {k}"),
];

/// `source.params` of the generator.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FunctionParams {
    /// Constants are drawn from 2..=max_constant (9: 64 distinct functions; 999: 7,984).
    pub max_constant: i64,
}

impl Default for FunctionParams {
    fn default() -> Self {
        Self { max_constant: 9 }
    }
}

impl FunctionParams {
    pub fn from_yaml(
        params: &std::collections::BTreeMap<String, serde_yaml::Value>,
    ) -> anyhow::Result<Self> {
        let parsed: Self = super::params_from_yaml(params)?;
        if !(2..=1_000_000).contains(&parsed.max_constant) {
            anyhow::bail!(
                "max_constant must lie in 2..=1000000, got {}",
                parsed.max_constant
            );
        }
        Ok(parsed)
    }
}

pub fn generate(params: FunctionParams, count: usize, seed: u64) -> Vec<FunctionItem> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let (stem, description, body) = TEMPLATES[rng.random_range(0..TEMPLATES.len())];
            let k: i64 = rng.random_range(2..=params.max_constant);
            let inputs: Vec<i64> = (0..4).map(|_| rng.random_range(-20..50)).collect();
            item(stem, description, body, k, &inputs)
        })
        .collect()
}

fn item(stem: &str, description: &str, body: &str, k: i64, inputs: &[i64]) -> FunctionItem {
    let name = format!("{stem}_{k}");
    let body = body.replace("{k}", &k.to_string());
    let tests = inputs
        .iter()
        .map(|x| format!("x = {x}\nassert {name}({x}) == ({body})"))
        .collect();
    FunctionItem {
        question: format!(
            "Write a Python function `{name}(x)` that {}.",
            description.replace("{k}", &k.to_string())
        ),
        solution: format!("```python\ndef {name}(x):\n    return {body}\n```"),
        entry_point: name,
        tests,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_seeded_and_consistent() {
        let items = generate(FunctionParams::default(), 50, 1);
        assert_eq!(items, generate(FunctionParams::default(), 50, 1));
        for item in &items {
            assert!(
                item.solution
                    .contains(&format!("def {}(x):", item.entry_point))
            );
            assert_eq!(item.tests.len(), 4);
            assert!(item.question.contains(&item.entry_point));
        }
    }
}
