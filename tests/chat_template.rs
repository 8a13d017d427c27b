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

/// Token ids (and, for `{% generation %}` templates, the assistant mask) equal to
/// transformers' `apply_chat_template` on tokenizers shaped like Qwen's, Llama 3's (its
/// post-processor adds BOS, the template writes it too: one BOS) and SentencePiece
/// Gemma/Phi ones; fixtures from scripts/make_chat_token_fixtures.py. A template
/// without `{% generation %}` blocks gets its mask by rendering; where TRL's
/// `{name}_training` variant of it gives the same ids, transformers' mask from that
/// variant must equal it.
#[test]
fn tokenizes_real_templates_as_transformers_does() {
    let templates = template_dir();
    let root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/chat-tokenizers"
    );
    let fixtures: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{root}/expected.json")).unwrap())
            .unwrap();
    let cases = fixtures["cases"].as_array().unwrap();
    let key = |c: &Value| {
        let field = |k: &str| c[k].as_str().unwrap().to_string();
        (field("tokenizer"), field("template"), field("label"))
    };
    let by_key: std::collections::HashMap<_, &Value> = cases.iter().map(|c| (key(c), c)).collect();
    let mut failures = Vec::new();
    let (mut checked_masks, mut rendered_masks) = (0, 0);
    for case in cases {
        let (family, name, label) = (
            case["tokenizer"].as_str().unwrap(),
            case["template"].as_str().unwrap(),
            case["label"].as_str().unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        for file in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(format!("{root}/{family}/{file}"), dir.path().join(file)).unwrap();
        }
        std::fs::copy(
            templates.join(format!("{name}.jinja")),
            dir.path().join("chat_template.jinja"),
        )
        .unwrap();
        let tokenizer =
            rlvr::tokenizer::Tokenizer::load(&dir.path().join("tokenizer.json")).unwrap();
        let mut conversation: Conversation =
            serde_json::from_value(case["conversation"].clone()).unwrap();
        conversation
            .template_kwargs
            .insert("date_string".into(), "26 Jul 2024".into());
        let template = tokenizer.template.as_ref().expect("the folder's template");
        match (
            tokenizer.render_conversation(template, &conversation),
            case.get("input_ids"),
        ) {
            (Ok(ours), Some(ids)) => {
                let ids: Vec<i64> = serde_json::from_value(ids.clone()).unwrap();
                if ours.ids != ids {
                    failures.push(format!(
                        "{family}/{name}/{label}: ids {:?}\n   hf: {ids:?}",
                        ours.ids
                    ));
                    continue;
                }
                let (f, t, l) = key(case);
                let training = by_key
                    .get(&(f, format!("{t}_training"), l))
                    .filter(|c| c.get("input_ids") == Some(&serde_json::to_value(&ids).unwrap()));
                let mask = case
                    .get("assistant_mask")
                    .or_else(|| training.and_then(|c| c.get("assistant_mask")));
                if let Some(mask) = mask {
                    let mask: Vec<u8> = serde_json::from_value(mask.clone()).unwrap();
                    checked_masks += 1;
                    let rendered = case.get("assistant_mask").is_none();
                    rendered_masks += usize::from(rendered);
                    let piece = |k: usize| tokenizer.decode(&ids[k..k + 1], false).unwrap();
                    if let Err(why) = masks_agree(&ours.assistant_mask, &mask, piece, rendered) {
                        failures.push(format!("{family}/{name}/{label}: {why}"));
                    }
                }
            }
            (Err(_), None) => {}
            (Ok(_), None) => {
                failures.push(format!("{family}/{name}/{label}: hf raised, rlvr did not"))
            }
            (Err(e), Some(_)) => failures.push(format!("{family}/{name}/{label}: {e:#}")),
        }
    }
    eprintln!(
        "{} cases; {checked_masks} masks compared, {rendered_masks} of them computed by rendering",
        cases.len()
    );
    assert!(
        cases.len() >= 100 && rendered_masks >= 30,
        "{} cases, {checked_masks} masks ({rendered_masks} by rendering)",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Equal masks; a mask rlvr computed by rendering may leave out what a TRL training
/// variant's `{% generation %}` block also holds and the model never writes: the
/// whitespace after the end-of-turn token, and the `<｜Assistant｜>` header that R1's
/// generation prompt already writes. It may never mark a token transformers does not.
fn masks_agree(
    ours: &[u8],
    theirs: &[u8],
    piece: impl Fn(usize) -> String,
    rendered: bool,
) -> Result<(), String> {
    let mut header = String::new();
    for k in 0..ours.len() {
        let (o, t) = (ours[k], theirs[k]);
        let tolerated = rendered && o == 0 && t == 1;
        if o != t && !tolerated {
            return Err(format!(
                "token {k} {:?}: rlvr {o}, transformers {t}",
                piece(k)
            ));
        }
        if tolerated && !piece(k).trim().is_empty() {
            header.push_str(&piece(k));
        } else if !header.is_empty() && header != "<｜Assistant｜>" {
            return Err(format!("rlvr leaves out {header:?} before token {k}"));
        } else {
            header.clear();
        }
    }
    Ok(())
}
