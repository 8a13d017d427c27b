//! The wasm sandbox and the code reward against what a policy might write: endless
//! loops, huge allocations, floods, escapes, and tricks to collect a reward without
//! solving the task. Every case ends in a verdict with a reason and the process goes on.

use rlvr::reward::code::{CodeScoring, TestContext, grade};
use rlvr::reward::sandbox::{Limits, Runtime, Sandbox, Verdict};
use std::sync::Arc;

fn context() -> TestContext<'static> {
    TestContext {
        entry_point: Some("add"),
        setup: None,
    }
}

fn cpython() -> Arc<Sandbox> {
    Sandbox::shared(Runtime::CPython).expect("CPython module (run scripts/setup.sh)")
}

/// Grades `code` against two asserts on `add`.
fn grade_add(sandbox: &Sandbox, code: &str) -> rlvr::reward::code::CodeGrade {
    let tests = vec![
        "assert add(2, 3) == 5".to_string(),
        "assert add(-1, 1) == 0".to_string(),
    ];
    let limits = Limits {
        fuel: 1_500_000_000,
        ..Limits::default()
    };
    grade(
        sandbox,
        code,
        &tests,
        context(),
        CodeScoring::AllPass,
        &limits,
    )
    .expect("no infrastructure error")
}

fn assert_no_reward(code: &str, want: Verdict, reason_part: &str) {
    let result = grade_add(&cpython(), code);
    assert_eq!(result.score, 0.0, "{code:?} collected a reward: {result:?}");
    assert_eq!(result.verdict, want, "{code:?}: {result:?}");
    assert!(
        result.reason.contains(reason_part),
        "{code:?}: reason {:?} lacks {reason_part:?}",
        result.reason
    );
}

#[test]
fn correct_and_wrong_solutions() {
    let pass = grade_add(&cpython(), "def add(a, b):\n    return a + b\n");
    assert_eq!(
        (pass.score, pass.verdict, pass.passed),
        (1.0, Verdict::Pass, 2),
        "{pass:?}"
    );
    assert_no_reward(
        "def add(a, b):\n    return a - b\n",
        Verdict::Fail,
        "AssertionError",
    );
    assert_no_reward("def add(a, b) return", Verdict::Fail, "SyntaxError");
}

#[test]
fn fraction_scoring_counts_passed_tests() {
    let tests = vec![
        "assert add(2, 3) == 5".to_string(),
        "assert add(-1, 1) == 1".to_string(),
    ];
    let result = grade(
        &cpython(),
        "def add(a, b):\n    return a + b\n",
        &tests,
        context(),
        CodeScoring::Fraction,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(
        (result.score, result.passed, result.verdict),
        (0.5, 1, Verdict::Fail),
        "{result:?}"
    );
}

#[test]
fn resource_abuse_gets_a_verdict() {
    assert_no_reward("while True:\n    pass\n", Verdict::Timeout, "fuel budget");
    assert_no_reward("x = bytearray(1024**3)\n", Verdict::Memory, "MemoryError");
    // 2 GB does not even fit a wasm32 index: a plain failure, still no reward.
    assert_no_reward(
        "x = bytearray(2 * 1024**3)\n",
        Verdict::Fail,
        "OverflowError",
    );
    assert_no_reward(
        "def add(a, b):\n    return add(a, b)\n",
        Verdict::Fail,
        "RecursionError",
    );
    assert_no_reward(
        "while True:\n    print('spam' * 1000)\n",
        Verdict::Error,
        "stdout exceeded",
    );
}

#[test]
fn escapes_fail() {
    assert_no_reward(
        "print(open('/etc/passwd').read())\n",
        Verdict::Fail,
        "FileNotFoundError",
    );
    assert_no_reward(
        "import socket\nsocket.create_connection(('127.0.0.1', 80))\n",
        Verdict::Fail,
        "raised",
    );
    assert_no_reward("import os\nos.system('echo hi')\n", Verdict::Fail, "system");
    assert_no_reward(
        "import subprocess\nsubprocess.run(['ls'])\n",
        Verdict::Fail,
        "raised",
    );
}

#[test]
fn grader_gaming_does_not_pay() {
    assert_no_reward("import sys\nsys.exit(0)\n", Verdict::Fail, "not allowed");
    assert_no_reward("import os\nos._exit(0)\n", Verdict::Fail, "not allowed");
    assert_no_reward("raise SystemExit(0)\n", Verdict::Fail, "SystemExit");
    assert_no_reward(
        "class Anything:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Anything()\n",
        Verdict::Fail,
        "not a plain builtin value",
    );
    assert_no_reward(
        "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\ndef add(a, b):\n    return 0\n",
        Verdict::Fail,
        "modified the standard library or builtins",
    );
    // Forging the harness's result line without the nonce.
    let forged = "print('__rlvr_result_0000 {\"passed\": 2, \"total\": 2, \"error\": \"\"}')\nimport sys\nsys.stdout.flush()\nimport os\nos._exit(0)\n";
    assert_no_reward(forged, Verdict::Fail, "not allowed");
    // Looking for the nonce through frames.
    assert_no_reward(
        "import sys\nframe = sys._getframe(1)\n",
        Verdict::Fail,
        "_getframe",
    );
}

#[test]
fn odd_output_is_handled() {
    let result = grade_add(
        &cpython(),
        "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x00')\ndef add(a, b):\n    return a + b\n",
    );
    assert_eq!(result.verdict, Verdict::Pass, "{result:?}");
}

#[test]
fn fuel_is_deterministic() {
    let sandbox = cpython();
    let program = "total = 0\nfor i in range(100000):\n    total += i * i\nprint(total)\n";
    let a = sandbox.run(program, b"", &Limits::default()).unwrap();
    let b = sandbox.run(program, b"", &Limits::default()).unwrap();
    assert_eq!(a.stdout, "333328333350000\n");
    assert_eq!(
        a.fuel_used, b.fuel_used,
        "the same program must burn the same fuel"
    );
}

#[test]
fn micropython_runs_and_is_limited() {
    let sandbox = Sandbox::shared(Runtime::MicroPython).expect("MicroPython module");
    let pass = grade_add(&sandbox, "def add(a, b):\n    return a + b\n");
    assert_eq!(pass.verdict, Verdict::Pass, "{pass:?}");
    let looped = sandbox
        .run(
            "while True:\n    pass\n",
            b"",
            &Limits {
                fuel: 50_000_000,
                ..Limits::default()
            },
        )
        .unwrap();
    assert_eq!(looped.verdict, Verdict::Timeout);
}

#[test]
fn a_missing_module_is_an_infrastructure_error() {
    let error = Sandbox::load(
        Runtime::CPython,
        std::path::Path::new("/nonexistent/python.wasm"),
    )
    .err()
    .unwrap();
    assert!(
        error
            .to_string()
            .starts_with("sandbox infrastructure error"),
        "{error}"
    );
}

#[test]
fn sleeping_cannot_stall_the_grader() {
    let started = std::time::Instant::now();
    assert_no_reward("import time\ntime.sleep(10**9)\n", Verdict::Fail, "OSError");
    assert!(
        started.elapsed().as_secs() < 30,
        "time.sleep blocked the host thread"
    );
}

/// Completions found by red-teaming the harness: each got full marks on HumanEval-style
/// tests without solving the task before the harness was hardened.
#[test]
fn red_team_attacks_do_not_pay() {
    let attacks: &[(&str, &str)] = &[
        // Patch json.dumps so the harness itself prints a forged result.
        (
            "import json\n_d = json.dumps\njson.dumps = lambda o, *a, **k: _d({**o, 'passed': o['total']}) if isinstance(o, dict) and 'total' in o else _d(o, *a, **k)\ndef add(a, b):\n    return 0\n",
            "modified",
        ),
        // Walk a traceback to the harness's frame and empty the test list.
        (
            "try:\n    raise ValueError\nexcept ValueError as e:\n    f = e.__traceback__.tb_frame.f_back\n    f.f_locals['tests']\ndef add(a, b):\n    return 0\n",
            "not allowed",
        ),
        // Find the job through the garbage collector.
        (
            "import gc\nfor o in gc.get_objects():\n    pass\ndef add(a, b):\n    return 0\n",
            "not allowed",
        ),
        // Skip the asserts with a trace hook.
        (
            "import sys\nsys.settrace(lambda *a: None)\ndef add(a, b):\n    return 0\n",
            "not allowed",
        ),
        // A metaclass whose __eq__ makes `type(v) in plain` true.
        (
            "class M(type):\n    __eq__ = lambda c, o: True\n    __hash__ = type.__hash__\nclass Y(metaclass=M):\n    __eq__ = lambda s, o: True\ndef add(a, b):\n    return Y()\n",
            "not a plain builtin value",
        ),
        // Shadow a builtin the tests use, as a global or through __builtins__.
        (
            "abs = lambda x: 0\ndef add(a, b):\n    return a - b\n",
            "AssertionError",
        ),
        (
            "import builtins\n__builtins__ = dict(vars(builtins), abs=lambda x: 0)\ndef add(a, b):\n    return a - b\n",
            "AssertionError",
        ),
        // Patch a stdlib module the tests use.
        (
            "import math\nmath.fabs = lambda x: 0.0\ndef add(a, b):\n    return 0\n",
            "modified",
        ),
        // Patch a method of a stdlib class.
        (
            "import random\nrandom.Random.randint = lambda self, a, b: 1\ndef add(a, b):\n    return 0\n",
            "modified",
        ),
        // Make json.dumps, through the encoder object it shares, print a full score.
        (
            "import json\n_e = json.JSONEncoder()\ndef _it(o, _one_shot=False):\n    if type(o) is dict and 'total' in o:\n        return [_e.encode({'passed': o['total'], 'total': o['total'], 'error': ''})]\n    return _e.iterencode(o, _one_shot)\njson._default_encoder.iterencode = _it\ndef add(a, b):\n    return 0\n",
            "AssertionError",
        ),
        // Patch a builtin during the call so that it undoes itself when the test
        // calls it, before the harness looks.
        (
            "import builtins\n_real = builtins.abs\ndef _fake(*a, **k):\n    builtins.abs = _real\n    return 0\ndef add(a, b):\n    builtins.abs = _fake\n    return 0\n",
            "AssertionError",
        ),
    ];
    let tests = [
        "assert abs(add(2, 3) - 5) < 1e-9",
        "import math\nassert math.fabs(add(-1, 1)) < 1e-9",
    ];
    assert_attacks_do_not_pay(&cpython(), attacks, &tests);
}

/// The same kind of attacks under MicroPython, which has no audit hooks, no `vars()`
/// and no `os._exit`.
#[test]
fn micropython_red_team_attacks_do_not_pay() {
    let sandbox = Sandbox::shared(Runtime::MicroPython).expect("MicroPython module");
    let attacks: &[(&str, &str)] = &[
        // Read the nonce from the interpreter's memory and print a full score from an
        // exit handler, after the harness's own line.
        (
            "import sys, uctypes\n\
             def _scan():\n    p = ('__rlvr' + '_result_').encode()\n    mem = bytes(uctypes.bytearray_at(0, 1 << 20))\n    i = mem.find(p)\n    while i >= 0:\n        tok = mem[i:i + len(p) + 32]\n        if all(c in b'0123456789abcdef' for c in tok[len(p):]):\n            return tok.decode()\n        i = mem.find(p, i + 1)\n\
             _nonce = _scan()\n\
             sys.atexit(lambda: sys.stdout.write('\\n' + _nonce + ' {\"passed\": 2, \"total\": 2, \"error\": \"\"}\\n'))\n\
             def add(a, b):\n    return 0\n",
            "AssertionError",
        ),
        // A builtin patched during the call that undoes itself when the test calls it.
        (
            "import builtins\n_real = builtins.max\ndef _fake(*a, **k):\n    builtins.max = _real\n    return 0\ndef add(a, b):\n    builtins.max = _fake\n    return 0\n",
            "AssertionError",
        ),
        // A lasting patch of a builtin (MicroPython has no vars() to notice it with).
        (
            "import builtins\nbuiltins.max = lambda *a: 0\ndef add(a, b):\n    return 0\n",
            "AssertionError",
        ),
    ];
    let tests = [
        "assert add(2, 3) == max(5, 1)",
        "assert add(-1, 1) == max(0, -3)",
    ];
    assert_attacks_do_not_pay(&sandbox, attacks, &tests);
    // An exit handler no longer hides the result of an honest solution.
    let honest = "import sys\nsys.atexit(lambda: print('bye'))\ndef add(a, b):\n    return a + b\n";
    let tests = tests.map(String::from).to_vec();
    let result = grade(
        &sandbox,
        honest,
        &tests,
        context(),
        CodeScoring::AllPass,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(result.score, 1.0, "{result:?}");
}

/// Programs read frozen clocks, so a verdict cannot depend on when or where it ran.
#[test]
fn clocks_are_frozen() {
    let code = "import time\nt0 = time.time()\nfor _ in range(100000):\n    pass\ndef add(a, b):\n    return a + b if int(t0) == 946684800 and time.time() == t0 else 0\n";
    for runtime in [Runtime::CPython, Runtime::MicroPython] {
        let sandbox = Sandbox::shared(runtime).expect("sandbox module");
        let result = grade_add(&sandbox, code);
        assert_eq!(result.score, 1.0, "{runtime:?}: {result:?}");
    }
}

/// Grades each `(code, reason)` attack against `tests`: no reward, and a reason that
/// names what stopped it.
fn assert_attacks_do_not_pay(sandbox: &Sandbox, attacks: &[(&str, &str)], tests: &[&str]) {
    let tests: Vec<String> = tests.iter().map(|t| t.to_string()).collect();
    for (code, reason) in attacks {
        let result = grade(
            sandbox,
            code,
            &tests,
            context(),
            CodeScoring::AllPass,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(result.score, 0.0, "{code}\n{result:?}");
        assert!(
            result.reason.contains(reason),
            "{code}\nreason {:?} lacks {reason:?}",
            result.reason
        );
    }
}
