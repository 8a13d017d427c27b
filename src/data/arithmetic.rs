//! Synthetic multi-digit arithmetic with worked steps: the demo's task, small enough
//! for a tiny model to learn and exact to grade.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArithmeticItem {
    pub question: String,
    /// Digit-by-digit working, ending in `#### <answer>`.
    pub solution: String,
    pub answer: String,
    /// `N-digit`, N the longer operand's length (for accuracy per category).
    pub category: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArithmeticParams {
    pub min_digits: u32,
    pub max_digits: u32,
}

impl ArithmeticParams {
    /// From a task's `source.params`; unknown keys and digits outside 1..=18 are errors.
    pub fn from_yaml(
        params: &std::collections::BTreeMap<String, serde_yaml::Value>,
    ) -> anyhow::Result<Self> {
        let parsed: Self = super::params_from_yaml(params)?;
        if !(1..=18).contains(&parsed.min_digits)
            || !(parsed.min_digits..=18).contains(&parsed.max_digits)
        {
            anyhow::bail!(
                "need 1 <= min_digits <= max_digits <= 18, got {} and {}",
                parsed.min_digits,
                parsed.max_digits
            );
        }
        Ok(parsed)
    }
}

impl Default for ArithmeticParams {
    fn default() -> Self {
        Self {
            min_digits: 1,
            max_digits: 3,
        }
    }
}

/// `count` additions drawn with `seed`; the same seed gives the same items.
pub fn generate(params: ArithmeticParams, count: usize, seed: u64) -> Vec<ArithmeticItem> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let a = draw(&mut rng, params);
            let b = draw(&mut rng, params);
            addition(a, b)
        })
        .collect()
}

fn draw(rng: &mut StdRng, params: ArithmeticParams) -> u64 {
    let digits = rng.random_range(params.min_digits.max(1)..=params.max_digits.max(1));
    let low = if digits == 1 {
        0
    } else {
        10u64.pow(digits - 1)
    };
    rng.random_range(low..10u64.pow(digits))
}

/// Column addition from the right, one line per digit, with carries.
pub fn addition(a: u64, b: u64) -> ArithmeticItem {
    let (mut x, mut y, mut carry) = (a, b, 0);
    let mut steps = Vec::new();
    while x > 0 || y > 0 || carry > 0 {
        let (dx, dy) = (x % 10, y % 10);
        let sum = dx + dy + carry;
        steps.push(format!("{dx}+{dy}+{carry}={sum}"));
        carry = sum / 10;
        x /= 10;
        y /= 10;
    }
    if steps.is_empty() {
        steps.push("0+0+0=0".into());
    }
    let answer = (a + b).to_string();
    ArithmeticItem {
        question: format!("What is {a} + {b}?"),
        solution: format!("{} #### {answer}", steps.join(", ")),
        answer,
        category: format!("{}-digit", a.max(b).to_string().len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_steps_carry_correctly() {
        let item = addition(57, 68);
        assert_eq!(item.solution, "7+8+0=15, 5+6+1=12, 0+0+1=1 #### 125");
        assert_eq!(item.answer, "125");
    }

    #[test]
    fn generation_is_seeded_and_in_range() {
        let params = ArithmeticParams {
            min_digits: 2,
            max_digits: 3,
        };
        let a = generate(params, 50, 7);
        assert_eq!(a, generate(params, 50, 7));
        assert_ne!(a, generate(params, 50, 8));
        for item in &a {
            let answer: u64 = item.answer.parse().unwrap();
            assert!((20..=1998).contains(&answer), "{item:?}");
        }
    }
}
