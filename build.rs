//! Makes every binary, test and example find libtorch at run time without
//! LD_LIBRARY_PATH: torch-sys exports its library folder to crates that depend on
//! it directly, and we bake that folder into the executables' RPATH.
//!
//! Also embeds what identifies this build (`src/build_info.rs`): the git revision it
//! was built from and a hash of the sources, so that saved results made by other code
//! are never taken for this build's.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    // The default `--as-needed` link drops libtorch_cuda because no symbol of it is
    // referenced directly; CUDA kernels register themselves when it is loaded.
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    embed_build_identity();
}

fn embed_build_identity() {
    let sources = ["src", "Cargo.toml", "Cargo.lock", "build.rs"];
    for path in sources {
        println!("cargo:rerun-if-changed={path}");
    }
    for git in [".git/HEAD", ".git/index"] {
        if Path::new(git).exists() {
            println!("cargo:rerun-if-changed={git}");
        }
    }
    let mut files = Vec::new();
    for path in sources {
        collect(Path::new(path), &mut files);
    }
    files.sort();
    // FNV-1a over each file's path and bytes: stable, and no dependency to build.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_default();
        for byte in file.to_string_lossy().bytes().chain([0]).chain(bytes) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=RLVR_SOURCE_HASH={hash:016x}");
    let revision = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=RLVR_GIT_REVISION={revision}");
}

fn collect(path: &Path, files: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            collect(&entry.path(), files);
        }
    } else if path.is_file() {
        files.push(path.to_path_buf());
    }
}
