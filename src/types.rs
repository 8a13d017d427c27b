//! Small shared types that several layers name: a run config chooses them, the model,
//! the sandbox or the code reward acts on them. They live here, below everything, so
//! that no module has to import a higher one to name them.

use serde::{Deserialize, Serialize};

/// The floating-point type of a model's weights and compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    Bf16,
    F16,
}

/// Which Python runs sandboxed code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// CPython 3.12 for WASI: the full language and standard library.
    #[default]
    CPython,
    /// MicroPython for WASI: starts fast, but is not CPython (some correct programs fail).
    MicroPython,
}

/// How a code reward turns test results into a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeScoring {
    /// 1 when every test passes, else 0.
    #[default]
    AllPass,
    /// Fraction of tests passed.
    Fraction,
}
