//! Behaviour beyond the tables: which extraction rule fires, the reasons given,
//! YAML options, and robustness against gigantic, degenerate and random inputs.

use super::*;

#[test]
fn extraction_rules_in_priority_order() {
    use ExtractionRule::*;
    let options = MathOptions::default();
    let cases: &[(&str, &str, ExtractionRule)] = &[
        ("The answer is 3. \\boxed{4}", "4", Boxed),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", Boxed),
        ("$\\boxed{\\{1,2\\}}$", "\\{1,2\\}", Boxed),
        ("#### 1,234\nThe answer is 5", "1,234", Hashes),
        ("<answer> 12 </answer> The answer is 5", "12", AnswerTag),
        (
            "The answer is $\\frac{3}{4}$. I hope it is correct.",
            "\\frac{3}{4}",
            AnswerPhrase,
        ),
        ("Answer: 7.\nThat is all.", "7", AnswerPhrase),
        ("The final answer is **12**", "12", AnswerPhrase),
        ("The answer is:\n\n42", "42", AnswerPhrase),
        ("#### 3. Add them up\nThe answer is 42.", "42", AnswerPhrase),
        ("The answer is 42, since 6 · 7 = 42.", "42", AnswerPhrase),
        (
            "The answer is approximately 0.5 (rounded).",
            "0.5",
            AnswerPhrase,
        ),
        ("We get 3.5 apples.", "3.5", LastNumber),
        ("Total: $1,234.", "1,234", LastNumber),
        ("x-5 = 3 so -2", "-2", LastNumber),
        ("candidates 4, 5, 6", "4, 5, 6", LastNumber),
    ];
    for (text, answer, rule) in cases {
        let got = extract_answer(text, &options);
        let want = Extracted {
            answer: answer.to_string(),
            rule: *rule,
        };
        assert_eq!(got, Ok(want), "{text:?}");
    }
}

#[test]
fn no_answer_reasons() {
    let options = MathOptions::default();
    let no_fallback = MathOptions {
        last_number_fallback: false,
        ..MathOptions::default()
    };
    assert_eq!(extract_answer("", &options), Err(NoAnswer::NotFound));
    assert_eq!(
        extract_answer("we get 8", &no_fallback),
        Err(NoAnswer::NotFound)
    );
    assert_eq!(
        extract_answer("<think>so 8", &options),
        Err(NoAnswer::UnterminatedThink)
    );
    let hedge = "\\boxed{1}\\boxed{2}\\boxed{3}\\boxed{4}\\boxed{5}";
    assert_eq!(
        extract_answer(hedge, &options),
        Err(NoAnswer::TooManyBoxed(5))
    );
    let s = score(hedge, "5", &options);
    assert_eq!(s.reason, "too many boxed answers (5 distinct)");
    assert!(!s.correct && s.extracted.is_none());
}

#[test]
fn reasons_name_the_rule() {
    let options = MathOptions::default();
    assert_eq!(
        score("\\boxed{42}", "42", &options).reason,
        "boxed answer 42 matches 42"
    );
    assert_eq!(
        score("it is 41", "42", &options).reason,
        "answer 41 (last number) != 42"
    );
    assert_eq!(
        score("nothing", "42", &options).reason,
        "no final answer found"
    );
    let long = format!("\\boxed{{{}}}", "7".repeat(500));
    assert!(score(&long, "7", &options).reason.chars().count() < 100);
}

#[test]
fn gigantic_and_degenerate_inputs_do_not_panic() {
    let options = MathOptions::default();
    let huge = "9".repeat(100_000);
    assert!(answers_match(&huge, &huge, &options));
    assert!(!answers_match(&huge, &"9".repeat(99_999), &options));
    assert!(!answers_match(
        &format!("1{}", "0".repeat(400)),
        &format!("1{}1", "0".repeat(399)),
        &options
    ));
    assert!(!score(&format!("The answer is {huge}"), "9", &options).correct);
    let deep = format!("{}1{}", "(".repeat(300), ")".repeat(300));
    assert!(!answers_match(&deep, "1", &options));
    let braces = "\\boxed{".repeat(5_000);
    assert!(!score(&braces, "1", &options).correct);
    // Quadratic traps: long runs that a naive scan would revisit per position.
    let started = std::time::Instant::now();
    let hashes = "#".repeat(200_000);
    assert!(!score(&hashes, "1", &options).correct);
    let texts = format!("<answer>{}</answer>", "\\text{".repeat(15_000));
    assert!(!score(&texts, "1", &options).correct);
    let answers = "answer is $".repeat(20_000);
    assert!(!score(&answers, "1", &options).correct);
    let boxes = format!("{}{}", "\\boxed{\\text{".repeat(3_000), "}".repeat(6_000));
    let _ = score(&boxes, "1", &options);
    assert!(
        started.elapsed().as_secs() < 10,
        "took {:?}",
        started.elapsed()
    );
    for odd in [
        "\\",
        "{",
        "}",
        "$",
        "^",
        "\\frac",
        "\\sqrt",
        "1e99999",
        "--",
        "ﬁ½",
        "𝟙",
        "\u{0}",
        "\\boxed{\\}",
        "0^{-1}",
        "(-8)^{1/3}",
        "1,,2",
        "\\{\\}",
        "[",
        "x=",
    ] {
        for other in ["1", "0", "", odd] {
            let _ = answers_match(odd, other, &options);
            let _ = score(odd, other, &options);
        }
    }
}

#[test]
fn options_from_yaml() {
    let options: MathOptions = serde_yaml::from_str("tolerance: 0.01").expect("valid options");
    assert_eq!(options.tolerance, 0.01);
    assert!(options.last_number_fallback);
    assert!(serde_yaml::from_str::<MathOptions>("tolerence: 0.01").is_err());
    assert!(serde_yaml::from_str::<MathOptions>("tolerance: -1").is_err());
    assert!(answers_match("3.14", "\\pi", &options));
    assert!(!answers_match("3.14", "\\pi", &MathOptions::default()));
}

/// Random concatenations of answer-like fragments: must never panic or hang.
#[test]
fn fuzz_fragments_never_panic() {
    #[rustfmt::skip]
    const FRAGMENTS: &[&str] = &[
        "\\boxed{",
        "\\fbox",
        "{",
        "}",
        "\\{",
        "\\}",
        "(",
        ")",
        "[",
        "]",
        "|",
        "\\frac",
        "\\sqrt",
        "[3]",
        "\\pi",
        "\\infty",
        "\\text{",
        "\\left(",
        "\\right.",
        "^",
        "_",
        "!",
        "-",
        "−",
        "+",
        "*",
        "/",
        ",",
        ";",
        "=",
        "%",
        "\\%",
        "$",
        "\\$",
        ".",
        "0",
        "1",
        "9",
        "12",
        "1,234",
        "1e5",
        "e",
        "x",
        "i",
        "or",
        " ",
        "\n",
        "####",
        "<answer>",
        "</answer>",
        "<think>",
        "</think>",
        "The answer is ",
        "Answer:",
        "\\pm",
        "\\cup",
        "\\binom",
        "\\cdot",
        "^\\circ",
        "°",
        "π",
        "√",
        "é",
        "𝟙",
        "\\",
        "\\,",
        "{,}",
        "cm",
        "999999999999999999999999999999999999999",
        "\\theta",
        "\\in",
        "\\dfrac12",
    ];
    let options = MathOptions::default();
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = (next() % 12) as usize;
        let text: String = (0..len)
            .map(|_| FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize])
            .collect();
        let reference = FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize];
        let _ = score(&text, reference, &options);
        let _ = answers_match(&text, &text, &options);
        let _ = answers_match(reference, &text, &options);
    }
}
