//! The `code` reward: take the program from a completion, run it with the task's tests
//! in the sandbox (through `harness.py`), and score all-pass (1/0) or the fraction of
//! tests passed.

use super::sandbox::{Execution, Limits, Runtime, Sandbox, SandboxError, Verdict, tail};
use rand::RngCore;
use serde::Deserialize;

const HARNESS: &str = include_str!("harness.py");

pub use crate::types::CodeScoring;

#[derive(Debug, Clone)]
pub struct CodeGrade {
    pub score: f64,
    pub verdict: Verdict,
    pub passed: usize,
    pub total: usize,
    pub reason: String,
    pub fuel_used: u64,
    pub wall: std::time::Duration,
}

/// The program in a completion: the last fenced block tagged python/py (or untagged),
/// else the whole completion after any `</think>` when it looks like code.
pub fn extract_code(completion: &str) -> Option<String> {
    let visible = completion
        .rsplit_once("</think>")
        .map_or(completion, |(_, after)| after);
    let mut blocks = Vec::new();
    let mut rest = visible;
    while let Some(open) = rest.find("```") {
        let after_fence = &rest[open + 3..];
        let Some(line_end) = after_fence.find('\n') else {
            break;
        };
        let language = after_fence[..line_end].trim().to_ascii_lowercase();
        let body = &after_fence[line_end + 1..];
        let (code, next) = match body.find("```") {
            Some(close) => (&body[..close], &body[close + 3..]),
            None => (body, ""), // an unclosed fence runs to the end (truncated completion)
        };
        if matches!(language.as_str(), "" | "python" | "py" | "python3") {
            blocks.push(code.to_string());
        }
        rest = next;
    }
    if let Some(last) = blocks.into_iter().rev().find(|b| !b.trim().is_empty()) {
        return Some(last);
    }
    let bare = visible.trim();
    let looks_like_code = bare.lines().any(|l| {
        l.starts_with("def ")
            || l.starts_with("import ")
            || l.starts_with("from ")
            || l.starts_with("class ")
    });
    looks_like_code.then(|| bare.to_string())
}

/// What the tests see besides the submission.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestContext<'a> {
    /// The function the tests call; its results must be plain builtin values. With an
    /// entry point each test runs in a fresh namespace that holds only it and `setup`.
    pub entry_point: Option<&'a str>,
    /// Trusted code run before each test (helpers the tests use).
    pub setup: Option<&'a str>,
}

/// Runs `code` against `tests` (each a snippet of Python that raises on failure).
pub fn grade(
    sandbox: &Sandbox,
    code: &str,
    tests: &[String],
    context: TestContext,
    scoring: CodeScoring,
    limits: &Limits,
) -> Result<CodeGrade, SandboxError> {
    let nonce = format!(
        "__rlvr_result_{:016x}{:016x}",
        rand::rng().next_u64(),
        rand::rng().next_u64()
    );
    let job = serde_json::json!({
        "nonce": nonce,
        "code": code,
        "tests": tests,
        "entry_point": context.entry_point,
        "setup": context.setup,
    });
    let execution = sandbox.run(HARNESS, job.to_string().as_bytes(), limits)?;
    Ok(judge(&execution, &nonce, tests.len(), scoring))
}

#[derive(Deserialize)]
struct HarnessResult {
    passed: usize,
    total: usize,
    error: String,
}

/// Combines the sandbox verdict with the harness's result line.
fn judge(execution: &Execution, nonce: &str, total: usize, scoring: CodeScoring) -> CodeGrade {
    let grade = |score, verdict, passed, reason: String| CodeGrade {
        score,
        verdict,
        passed,
        total,
        reason,
        fuel_used: execution.fuel_used,
        wall: execution.wall,
    };
    // The harness always ends with exit 0 after its report; any other ending (a limit,
    // a trap, another exit code) cut it short, and a result line before that could be
    // forged.
    if execution.verdict != Verdict::Pass {
        let why = match execution.verdict {
            Verdict::Fail => format!("the harness did not finish ({})", execution.reason),
            _ => execution.reason.clone(),
        };
        return grade(0.0, execution.verdict, 0, why);
    }
    // Only the final line counts, and only with the nonce the code never saw.
    let last = execution
        .stdout
        .trim_end()
        .rsplit('\n')
        .next()
        .unwrap_or("");
    let Some(result) = last
        .strip_prefix(nonce)
        .and_then(|json| serde_json::from_str::<HarnessResult>(json.trim()).ok())
        .filter(|r| r.total == total && r.passed <= r.total)
    else {
        let why = if execution.stderr.trim().is_empty() {
            "the program ended without the harness's result (early exit?)".to_string()
        } else {
            tail(&execution.stderr, 300)
        };
        return grade(0.0, Verdict::Error, 0, why);
    };
    if result.passed == result.total {
        return grade(
            1.0,
            Verdict::Pass,
            result.passed,
            format!("{}/{} tests passed", result.passed, result.total),
        );
    }
    let score = match scoring {
        CodeScoring::AllPass => 0.0,
        CodeScoring::Fraction => result.passed as f64 / result.total.max(1) as f64,
    };
    let reason = format!(
        "{}/{} tests passed; first failure: {}",
        result.passed, result.total, result.error
    );
    // A MemoryError the harness caught is still the memory cap at work.
    let verdict = if execution.memory_limit_hit {
        Verdict::Memory
    } else {
        Verdict::Fail
    };
    grade(score, verdict, result.passed, reason)
}

/// Which runtime a task asked for, with the default limits for it.
pub fn default_limits(runtime: Runtime) -> Limits {
    match runtime {
        Runtime::CPython => Limits::default(),
        // MicroPython starts in ~0.2M instructions instead of ~200M.
        Runtime::MicroPython => Limits {
            fuel: 2_000_000_000,
            ..Limits::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_the_last_python_block() {
        let completion = "<think>```python\nwrong()\n```</think>Here:\n```python\ndef f():\n    return 1\n```\nand a shell line\n```bash\nls\n```";
        assert_eq!(
            extract_code(completion).unwrap(),
            "def f():\n    return 1\n"
        );
    }

    #[test]
    fn extracts_bare_and_unclosed_code() {
        assert_eq!(
            extract_code("def f(x):\n    return x").unwrap(),
            "def f(x):\n    return x"
        );
        assert_eq!(
            extract_code("```py\ndef g(): pass").unwrap(),
            "def g(): pass"
        );
        assert_eq!(extract_code("I don't know."), None);
        assert_eq!(extract_code(""), None);
    }
}
