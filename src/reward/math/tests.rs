//! Table-driven tests: one line per case. Tables hold realistic model outputs
//! (GSM8K, MATH, R1/Qwen thinking, Minerva phrasing) and adversarial ones.

use super::*;

/// (predicted answer, reference, expected `answers_match`).
#[rustfmt::skip]
const MATCH: &[(&str, &str, bool)] = &[
    // Integers, separators, signs.
    ("1,234", "1234", true),
    ("1 234", "1234", true),
    ("1\\,234", "1234", true),
    ("1{,}234", "1234", true),
    ("1,234,567", "1234567", true),
    ("12,345.5", "12345.5", true),
    ("1234", "1235", false),
    // 1e-6 relative would accept this; integers compare exactly.
    ("1234567", "1234568", false),
    (
        "123456789012345678901234567890",
        "123456789012345678901234567891",
        false,
    ),
    ("-3", "−3", true),
    ("+3", "3", true),
    ("- 3", "-3", true),
    ("3", "-3", false),
    ("007", "7", true),
    // Decimals and tolerance.
    ("0.5", "\\frac{1}{2}", true),
    (".5", "0.5", true),
    ("5.", "5", true),
    ("5.0", "5", true),
    ("0.999999", "1", false),
    ("1000000.5", "1000000", false),
    ("1000000.5", "1000001", false),
    ("0.99", "1", false),
    ("0.3333333", "\\frac13", true),
    ("0.33", "\\frac{1}{3}", false),
    ("0.000000001", "0", true),
    ("6.6e-34", "1e-33", false),
    // Fractions and mixed numbers.
    ("\\dfrac{3}{4}", "\\frac{3}{4}", true),
    ("\\tfrac34", "0.75", true),
    ("3/4", "\\frac{3}{4}", true),
    ("\\frac{6}{8}", "\\frac34", true),
    ("\\frac{3}{4}", "\\frac{4}{3}", false),
    ("-\\frac{1}{2}", "\\frac{-1}{2}", true),
    ("\\frac{1}{0}", "\\infty", false),
    ("\\frac{}{}", "1", false),
    ("2\\frac{1}{2}", "\\frac{5}{2}", true),
    ("2\\frac12", "2.5", true),
    ("-1\\frac{1}{4}", "-\\frac{5}{4}", true),
    // Percentages: the sign is dropped, and value/100 is also accepted.
    ("50\\%", "50", true),
    ("50%", "0.5", true),
    ("50", "0.5", false),
    ("12.5\\%", "\\frac{1}{8}", true),
    ("50 percent", "50", true),
    ("40%", "0.5", false),
    // Scientific notation and powers.
    ("1e3", "1000", true),
    ("1.5 \\times 10^{3}", "1500", true),
    ("1.5\\cdot10^3", "1500", true),
    ("2^{10}", "1024", true),
    ("3 \\times 10^8", "300000000", true),
    ("2^{1000}", "2^{1001}", false),
    ("10^{400}", "10^{401}", false),
    // LaTeX presentation, units, currency, degrees.
    ("$\\left( 1, 2 \\right)$", "(1,2)", true),
    ("\\!5", "5", true),
    ("5 \\text{ cm}", "5", true),
    ("5\\text{ cm}^2", "5", true),
    ("12 \\mbox{ inches}", "12", true),
    ("\\$5", "5", true),
    ("\\$1,234.50", "1234.5", true),
    ("5 dollars", "5", true),
    ("18 eggs", "18", true),
    ("5cm", "5", true),
    ("90^\\circ", "90", true),
    ("90^{\\circ}", "90", true),
    ("45°", "45", true),
    ("\\textbf{42}", "42", true),
    ("\\displaystyle \\frac{1}{2}", "1/2", true),
    ("\\(\\frac{1}{2}\\)", "0.5", true),
    // Radicals, pi, functions.
    ("\\sqrt{2}", "\\sqrt2", true),
    ("2\\sqrt{3}", "\\sqrt{12}", true),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", true),
    ("\\frac{\\sqrt3}{2}", "0.866", false),
    ("\\sqrt{3}", "3", false),
    ("√3", "\\sqrt{3}", true),
    ("2\\pi", "2 \\pi", true),
    ("2π", "2\\pi", true),
    ("\\pi", "3.14", false),
    ("\\pi/2", "\\frac{\\pi}{2}", true),
    ("6\\pi", "18.84955592", true),
    ("\\sqrt[3]{8}", "2", true),
    ("\\sqrt{-4}", "2", false),
    ("5!", "120", true),
    ("\\binom{5}{2}", "10", true),
    ("|-3|", "3", true),
    // Tuples, intervals, unions.
    ("(1, 2)", "(1,2)", true),
    ("(2, 1)", "(1, 2)", false),
    ("(1, 2)", "[1, 2]", false),
    ("[0, 1)", "[0,1)", true),
    ("[0, 1]", "[0, 1)", false),
    ("(-\\infty, 3]", "(-\\infty,3]", true),
    ("(-\\infty, 3)", "(-\\infty, 3]", false),
    ("(-∞, 3]", "(-\\infty, 3]", true),
    (
        "(-\\infty, -2) \\cup (3, \\infty)",
        "(3,\\infty)\\cup(-\\infty,-2)",
        true,
    ),
    ("(-\\infty, -2) \\cup (3, \\infty)", "(-\\infty, -2)", false),
    ("(\\frac{1}{2}, -3)", "(0.5, -3)", true),
    ("\\left[ -1, \\frac{3}{2} \\right]", "[-1, 1.5]", true),
    ("x \\in [0, 1]", "[0,1]", true),
    ("\\infty", "inf", true),
    ("-\\infty", "\\infty", false),
    // Sets and lists: order-insensitive, multiplicity-sensitive.
    ("\\{1, 2\\}", "\\{2,1\\}", true),
    ("\\{1,2,3\\}", "\\{1,2\\}", false),
    ("1, 2", "\\{1,2\\}", true),
    ("-2, 1", "1, -2", true),
    ("\\{5\\}", "5", true),
    ("1, 2, 3", "1, 2, 4", false),
    // Hedging: several values never equal one.
    ("3 or 4", "3", false),
    ("3 \\text{ or } 4", "4", false),
    ("4, 5, 6", "5", false),
    ("3; 4", "3", false),
    ("3, 3", "3", false),
    ("3 \\pm \\sqrt{2}", "3+\\sqrt{2}", false),
    ("3 \\pm \\sqrt{2}", "3 + \\sqrt2, 3 - \\sqrt2", true),
    ("x = 3 or x = 4", "3, 4", true),
    ("x = 3, x = -2", "-2, 3", true),
    // Equations and single-variable assignments.
    ("x = 5", "5", true),
    ("x=5", "x = 5", true),
    ("5", "x = 5", true),
    ("y = 2x + 3", "y=3+2x", true),
    ("2x + 3 = y", "y = 2x+3", true),
    ("2 + 3 = 5", "5", true),
    ("2 + 3 = 6", "6", false),
    ("x = 5", "6", false),
    ("\\theta = 30^\\circ", "30", true),
    ("k=-\\frac{1}{2}", "-0.5", true),
    ("x \\le 5", "5", false),
    // Symbolic expressions, compared at sample points.
    ("x^2 + 2x + 1", "(x+1)^2", true),
    ("x^2 + 1", "x^2 - 1", false),
    ("2x", "x + x", true),
    ("\\frac{x+1}{2}", "\\frac{1}{2}x + \\frac{1}{2}", true),
    ("3+4i", "4i+3", true),
    ("3-4i", "3+4i", false),
    ("a^2b", "ba^2", true),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", true),
    // Text answers.
    ("\\text{Monday}", "Monday", true),
    ("monday", "\\text{Monday}", true),
    ("Tuesday", "Monday", false),
    ("\\text{(C)}", "(C)", true),
    (
        "\\begin{pmatrix} 12 \\\\ 3 \\end{pmatrix}",
        "\\begin{pmatrix}1\\\\23\\end{pmatrix}",
        false,
    ),
    (
        "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
        "\\begin{pmatrix}1\\\\2\\end{pmatrix}",
        true,
    ),
    ("C", "B", false),
    ("Yes", "yes", true),
    ("no", "on", false),
    ("\\text{pi}", "\\pi", true),
    // Symbolic look-alikes that differ for negative values.
    ("|x|", "x", false),
    ("\\sqrt{x^2}", "x", false),
    ("\\sqrt{x}\\sqrt{y}", "\\sqrt{xy}", false),
    ("\\sqrt{2x}", "\\sqrt{2}\\sqrt{x}", true),
    // Malformed input: never a panic, never a match by accident.
    ("", "5", false),
    ("5", "", false),
    ("\\frac{1", "1", false),
    ("}{", "1", false),
    ("((((((((((1))))))))))", "1", true),
    ("\\", "\\", false),
    ("$$", "0", false),
    ("1/0", "2/0", false),
];

/// (completion, reference, expected `score(..).correct`) with default options.
#[rustfmt::skip]
const SCORE: &[(&str, &str, bool)] = &[
    // GSM8K.
    (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72",
        "72",
        true,
    ),
    ("She earns 1234 in total.\n#### 1,234", "1234", true),
    ("#### $18", "18", true),
    ("#### 18 dollars.", "18", true),
    (
        "#### Step 1: Find the total\nShe has 5 apples.\n#### 5",
        "5",
        true,
    ),
    ("#### Step 1\nWe compute 3+4=7.", "7", true),
    (
        "#### 71",
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72",
        false,
    ),
    (
        "#### 72",
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72",
        true,
    ),
    // MATH style.
    ("So the total is $\\boxed{\\frac{1}{2}}$.", "0.5", true),
    ("Hence the set is $\\boxed{\\{1,2\\}}$.", "\\{1, 2\\}", true),
    ("The roots are $\\boxed{-2, 1}$.", "1,-2", true),
    (
        "The interval is $\\boxed{(-\\infty, 3]}$.",
        "(-\\infty,3]",
        true,
    ),
    ("The angle is $\\boxed{30^\\circ}$.", "30", true),
    ("It costs $\\boxed{\\$18.50}$.", "18.5", true),
    ("So $x = \\boxed{\\sqrt{2}}$.", "\\sqrt2", true),
    ("$\\boxed{x = 5}$", "5", true),
    ("\\boxed 5", "5", true),
    ("\\fbox{7}", "7", true),
    ("The answer is $\\boxed{\\dfrac{7}{2}}$", "3.5", true),
    ("Thus the answer is \\boxed{\\frac{1}{2}}}}}", "1/2", true),
    ("\\boxed{3}", "Adding gives $1+2=\\boxed{3}$.", true),
    // Phrases and tags.
    ("The answer is $\\frac{3}{4}$.", "\\frac34", true),
    (
        "Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.",
        "0.75",
        true,
    ),
    ("**Answer:** 42", "42", true),
    ("The final answer is: 1,000.", "1000", true),
    ("The answer is 50%.", "0.5", true),
    ("Answer: −7", "-7", true),
    ("The answer is -7", "-8", false),
    // More text after the answer in the same sentence.
    ("The answer is 42, since 6 times 7 is 42.", "42", true),
    ("The answer is 42 because he has 6 boxes of 7.", "42", true),
    ("The answer is 42 apples, which is what we expected.", "42", true),
    ("So the answer is therefore 42.", "42", true),
    ("The answer is simply 42.", "42", true),
    ("The answer is $18 and she is happy.", "18", true),
    ("The answer is $\\$18$.", "18", true),
    ("The answer is 18 (dollars).", "18", true),
    ("The answer is 42!", "42", true),
    ("The answer is 5 or 6.", "5", false),
    ("\\boxed{5 \\text{ is not correct}}", "5", false),
    ("\\boxed{5 \\text{ maybe}}", "5", false),
    ("\\boxed{5 \\text{ thousand}}", "5", false),
    ("\\boxed{12 \\text{ square units}}", "12", true),
    ("\\boxed{5\\text{ m}}", "5", true),
    ("\\boxed{5\\,\\text{m}}", "5", true),
    ("\\boxed{9.8 \\, \\text{m/s}^2}", "9.8", true),
    ("\\boxed{60\\text{ km/h}}", "60", true),
    ("\\boxed{5\\mathrm{~cm}}", "5", true),
    ("\\boxed{6}", "6\\text{ m}", true),
    ("\\boxed{5\\text{ m}}", "6", false),
    ("\\boxed{x\\text{ m}}", "5", false),
    ("\\boxed{5\\text{ or 6}}", "5", false),
    ("\\boxed{5\\text{ is wrong}}", "5", false),
    ("\\boxed{50\\text{ percent}}", "0.5", true),
    // Equations that state the answer.
    ("\\boxed{f(2) = 5}", "5", true),
    ("\\boxed{AB = 5}", "5", true),
    ("\\boxed{a + b = 5}", "5", true),
    ("\\boxed{P(A) = \\frac{1}{2}}", "0.5", true),
    ("\\boxed{6 \\times 7 = 42}", "42", true),
    ("\\boxed{6 \\times 7 = 41}", "41", false),
    ("\\boxed{5 = 7}", "7", false),
    ("\\boxed{f(2) = 5}", "6", false),
    ("The answer is 5 and 6.", "5", false),
    ("The answer is 5, or 6.", "5", false),
    ("The answer is 5, 6 and 7.", "7", false),
    ("#### 3. Add them up\nThe total is 42. The answer is 42.", "42", true),
    ("**#### 42**", "42", true),
    ("<answer>17</answer>", "17", true),
    ("<answer>The answer is 17</answer>", "17", true),
    ("<answer>$17$</answer>", "17", true),
    // Thinking models: only the text after the last </think> counts.
    (
        "<think>Maybe \\boxed{5}? Recheck... it's 6.</think>\nThe answer is \\boxed{6}.",
        "6",
        true,
    ),
    (
        "<think>Maybe \\boxed{5}? Recheck... it's 6.</think>\nThe answer is \\boxed{6}.",
        "5",
        false,
    ),
    (
        "<think>The answer is 5.</think> So the final answer is 7.",
        "5",
        false,
    ),
    (
        "<think>\nokay, 9 * 2 = 18\n</think>\n\nThe total cost is $\\boxed{\\$18}$.",
        "18",
        true,
    ),
    (
        "<think>I think it is 42 but the output was cut",
        "42",
        false,
    ),
    (
        "<think>a</think> Let me think again. <think>so \\boxed{42}",
        "42",
        false,
    ),
    (
        "okay, 6*7 = 42.\n</think>\n\n**Final Answer**: \\boxed{42}",
        "42",
        true,
    ),
    // Hedging.
    ("\\boxed{1} \\boxed{2} \\boxed{3}", "2", false),
    // Up to MAX_DISTINCT_BOXED boxes are tolerated and the last one counts: listing
    // earns nothing over committing to 3 alone.
    ("\\boxed{1} \\boxed{2} \\boxed{3}", "3", true),
    (
        "\\boxed{1} \\boxed{2} \\boxed{3} \\boxed{4} \\boxed{5}",
        "5",
        false,
    ),
    (
        "\\boxed{5} \\boxed{5} \\boxed{5} \\boxed{5} \\boxed{5} \\boxed{5}",
        "5",
        true,
    ),
    ("The answer is 3 or 4.", "3", false),
    ("The answer is $\\boxed{3 \\text{ or } 4}$.", "4", false),
    ("<answer>4, 5, 6</answer>", "5", false),
    ("I think it's 4, 5, 6", "6", false),
    ("It could be 3 or 4", "4", false),
    // Last-number fallback.
    ("So she has 12 - 4 = 8 eggs left.", "8", true),
    (
        "Janet's ducks lay 16 eggs per day. She eats 3 for breakfast and bakes with 4.",
        "18",
        false,
    ),
    ("The result is -12.", "-12", true),
    ("The difference is 10-4", "4", true),
    // Malformed.
    ("", "5", false),
    ("\\boxed{}", "0", false),
    // The box was cut off; the last number still shows the committed value.
    ("\\boxed{42", "42", true),
    ("\\boxed{\\frac{1}{2}", "\\frac{1}{3}", false),
];

#[test]
fn answers_match_table() {
    let options = MathOptions::default();
    let failures: Vec<_> = MATCH
        .iter()
        .filter(|(p, r, want)| answers_match(p, r, &options) != *want)
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} failed: {failures:#?}",
        failures.len(),
        MATCH.len()
    );
}

#[test]
fn score_table() {
    let options = MathOptions::default();
    let failures: Vec<_> = SCORE
        .iter()
        .map(|(c, r, want)| (c, r, want, score(c, r, &options)))
        .filter(|(_, _, want, got)| got.correct != **want)
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} failed: {failures:#?}",
        failures.len(),
        SCORE.len()
    );
}

#[test]
fn at_least_a_hundred_pairs() {
    assert!(MATCH.len() + SCORE.len() >= 100);
}
