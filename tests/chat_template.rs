//! Render parity with transformers 5.24 on real chat templates (the trl wheel's
//! trl/chat_templates/, fetched by scripts/chat-templates.sh): single and multi-turn,
//! system prompts, tools, thinking on and off, continue_final_message, templates that
//! raise. Fixtures come from scripts/make_chat_fixtures.py.

use rlvr::tokenizer::{ChatTemplate, Conversation};
use serde_json::Value;
use std::path::PathBuf;

fn template_dir() -> PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("bash")
        .arg(format!("{root}/scripts/chat-templates.sh"))
        .output()
        .expect("run scripts/chat-templates.sh");
    assert!(
        out.status.success(),
        "scripts/chat-templates.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Byte range → Python character range, as transformers reports spans.
fn char_range(text: &str, range: &std::ops::Range<usize>) -> (usize, usize) {
    (
        text[..range.start].chars().count(),
        text[..range.end].chars().count(),
    )
}

#[test]
fn renders_real_templates_as_transformers_does() {
    let dir = template_dir();
    let fixtures: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/chat_templates.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let cases = fixtures["cases"].as_array().unwrap();
    let mut templates = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for case in cases {
        let name = case["template"].as_str().unwrap();
        let label = case["label"].as_str().unwrap();
        templates.insert(name);
        let source = std::fs::read_to_string(dir.join(format!("{name}.jinja"))).unwrap();
        let specials = case["special_tokens"].as_object().unwrap().clone();
        let template = ChatTemplate::new(source, name.into(), Vec::new(), specials);
        let mut conversation: Conversation =
            serde_json::from_value(case["conversation"].clone()).unwrap();
        conversation
            .template_kwargs
            .insert("date_string".into(), "26 Jul 2024".into());
        let rendered = template.render_marked(&conversation);
        match (rendered, case.get("text"), case.get("error")) {
            (Ok(r), Some(text), _) => {
                if r.text != text.as_str().unwrap() {
                    failures.push(format!(
                        "{name}/{label}: text differs\n rlvr: {:?}\n   hf: {text}",
                        r.text
                    ));
                } else if let Some(spans) = case.get("assistant_spans") {
                    let ours: Vec<Value> = r
                        .assistant_spans
                        .iter()
                        .map(|s| serde_json::to_value(char_range(&r.text, s)).unwrap())
                        .collect();
                    // transformers leaves a span running past the text that
                    // continue_final_message cut; rlvr cuts it too.
                    let len = r.text.chars().count() as u64;
                    let clip = |v: &Value| v.as_u64().unwrap().min(len);
                    let spans: Vec<Value> = spans
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| serde_json::json!([clip(&s[0]), clip(&s[1])]))
                        .collect();
                    if ours != spans {
                        failures.push(format!("{name}/{label}: spans {ours:?} vs {spans:?}"));
                    }
                }
            }
            (Err(e), None, Some(error)) => {
                let error = error.as_str().unwrap();
                // A raise_exception message must come through unchanged.
                if error.contains("must alternate") && !e.to_string().contains(error) {
                    failures.push(format!("{name}/{label}: error {e:#} vs {error}"));
                }
            }
            (Ok(r), None, _) => {
                failures.push(format!("{name}/{label}: rendered {:?}, hf raised", r.text))
            }
            (Err(e), _, _) => failures.push(format!("{name}/{label}: {e:#}")),
        }
    }
    assert!(templates.len() >= 8, "{templates:?}");
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
