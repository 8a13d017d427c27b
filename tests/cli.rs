//! The `rlvr` binary: it starts without LD_LIBRARY_PATH (libtorch is found through
//! the RPATH that build.rs adds), lists only working commands, and reports bad
//! configs with file, line and suggestion.

use std::process::Command;

fn rlvr(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_rlvr"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the rlvr binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn help_lists_the_working_commands() {
    let (ok, stdout, _) = rlvr(&["--help"]);
    assert!(ok);
    for command in ["check", "env", "demo"] {
        assert!(
            stdout.contains(command),
            "--help lacks `{command}`:\n{stdout}"
        );
    }
}

#[test]
fn env_loads_libtorch_and_finds_the_sandbox_modules() {
    let (ok, stdout, stderr) = rlvr(&["env"]);
    assert!(ok, "rlvr env failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("= 14"),
        "libtorch computed a wrong dot product:\n{stdout}"
    );
    assert!(stdout.contains("python-3.12.wasm"), "{stdout}");
}

#[test]
fn check_accepts_shipped_files_and_rejects_a_typo() {
    let (ok, stdout, stderr) = rlvr(&[
        "check",
        "--quiet",
        "configs/grpo.yaml",
        "tasks/arithmetic.yaml",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ok: configs/grpo.yaml (run config)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok: tasks/arithmetic.yaml (task)"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: x\nmodel:\n  path: m\n  dtpye: bf16\n").unwrap();
    let (ok, _, stderr) = rlvr(&["check", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("bad.yaml:4:"), "{stderr}");
    assert!(stderr.contains("did you mean `dtype`?"), "{stderr}");
    assert!(stderr.contains("1 of 1 file(s) failed"), "{stderr}");
}
