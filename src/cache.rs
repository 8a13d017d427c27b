//! Where setup puts what it downloads: `$RLVR_CACHE`, else `~/.cache/rlvr`.

use std::path::PathBuf;

pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RLVR_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("rlvr")
}

/// The WASI Python modules fetched by `scripts/setup.sh`.
pub fn wasm_module(name: &str) -> PathBuf {
    cache_dir().join("wasm").join(name)
}
