//! Countdown (as in TinyZero): reach a target with + - * / using each given number
//! once. Every item is built from a random expression, so it has a known solution.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountdownItem {
    pub question: String,
    pub numbers: Vec<i64>,
    pub target: i64,
    /// A reference completion: `<answer>EXPRESSION</answer>`.
    pub solution: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountdownParams {
    pub min_numbers: usize,
    pub max_numbers: usize,
    pub max_number: i64,
    pub max_target: i64,
}

impl Default for CountdownParams {
    fn default() -> Self {
        Self {
            min_numbers: 3,
            max_numbers: 4,
            max_number: 99,
            max_target: 999,
        }
    }
}

impl CountdownParams {
    pub fn from_yaml(
        params: &std::collections::BTreeMap<String, serde_yaml::Value>,
    ) -> anyhow::Result<Self> {
        let parsed: Self = super::params_from_yaml(params)?;
        if parsed.min_numbers < 2
            || parsed.max_numbers < parsed.min_numbers
            || parsed.max_numbers > 6
        {
            anyhow::bail!("need 2 <= min_numbers <= max_numbers <= 6");
        }
        if parsed.max_number < 2 || parsed.max_target < 1 {
            anyhow::bail!("max_number must be >= 2 and max_target >= 1");
        }
        Ok(parsed)
    }
}

pub fn generate(params: CountdownParams, count: usize, seed: u64) -> Vec<CountdownItem> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut items = Vec::with_capacity(count);
    while items.len() < count {
        if let Some(item) = attempt(&mut rng, params) {
            items.push(item);
        }
    }
    items
}

/// Combines the numbers in random order with random operators, left to right; keeps
/// the item when every step stays a positive integer within range.
fn attempt(rng: &mut StdRng, params: CountdownParams) -> Option<CountdownItem> {
    let n = rng.random_range(params.min_numbers..=params.max_numbers);
    let numbers: Vec<i64> = (0..n)
        .map(|_| rng.random_range(1..=params.max_number))
        .collect();
    let mut order = numbers.clone();
    order.shuffle(rng);
    let (mut value, mut expression) = (order[0], order[0].to_string());
    for &next in &order[1..] {
        let (op, result) = match rng.random_range(0..4) {
            0 => ('+', value + next),
            1 => ('-', value - next),
            2 => ('*', value * next),
            _ if next != 0 && value % next == 0 => ('/', value / next),
            _ => ('+', value + next),
        };
        if result <= 0 || result > params.max_target * 10 {
            return None;
        }
        expression = format!("({expression} {op} {next})");
        value = result;
    }
    if value > params.max_target {
        return None;
    }
    let expression = expression
        .strip_prefix('(')
        .and_then(|e| e.strip_suffix(')'))
        .unwrap_or(&expression)
        .to_string();
    Some(CountdownItem {
        question: format!(
            "Using the numbers {numbers:?}, create an equation that equals {value}. Use + - * / and each number exactly once. Give the equation in <answer></answer> tags."
        ),
        numbers,
        target: value,
        solution: format!("<answer>{expression}</answer>"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_seeded_and_solvable_by_their_solution() {
        let items = generate(CountdownParams::default(), 100, 3);
        assert_eq!(items, generate(CountdownParams::default(), 100, 3));
        for item in &items {
            assert!((1..=999).contains(&item.target), "{item:?}");
            assert!((3..=4).contains(&item.numbers.len()));
            assert!(item.solution.starts_with("<answer>") && item.solution.ends_with("</answer>"));
        }
    }
}
