//! Synthetic preference pairs for reward-model training: a prompt asks for a sentence
//! about a topic; the chosen response is upbeat, the rejected one glum. Small enough
//! for a tiny reward model to learn, and the signal a policy can then over-optimise
//! (more cheerful words score higher, sense or not).

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

const TOPICS: &[&str] = &[
    "the sea",
    "a garden",
    "the city",
    "a cat",
    "the morning",
    "a song",
    "the forest",
    "a train",
    "the moon",
    "a river",
    "the market",
    "a book",
];
const GOOD: &[&str] = &[
    "bright", "lovely", "warm", "joyful", "kind", "calm", "golden", "gentle",
];
const BAD: &[&str] = &[
    "grey", "dull", "cold", "gloomy", "harsh", "bleak", "tired", "sour",
];

pub fn generate(count: usize, seed: u64) -> Vec<PreferencePair> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let topic = TOPICS.choose(&mut rng).copied().unwrap_or("the sea");
            let sentence = |words: &[&str], rng: &mut StdRng| {
                let a = words.choose(rng).copied().unwrap_or_default();
                let b = words.choose(rng).copied().unwrap_or_default();
                let template = rng.random_range(0..3);
                match template {
                    0 => format!("{topic} is {a} and {b}."),
                    1 => format!("Today {topic} feels {a}, almost {b}."),
                    _ => format!("I find {topic} {a} and a little {b}."),
                }
            };
            PreferencePair {
                prompt: format!("Write a sentence about {topic}."),
                chosen: sentence(GOOD, &mut rng),
                rejected: sentence(BAD, &mut rng),
            }
        })
        .collect()
}
