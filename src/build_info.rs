//! What identifies the running build: its version, the git revision it was built from
//! and a hash of its sources (both embedded by build.rs at compile time, so they hold
//! wherever the binary is run from).

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the build was made from ("unknown" outside a git checkout); the sources
/// may have had changes on top of it, which [`SOURCE_HASH`] tells apart.
pub const GIT_REVISION: &str = env!("RLVR_GIT_REVISION");

/// A hash of `src/`, Cargo.toml, Cargo.lock and build.rs at build time.
pub const SOURCE_HASH: &str = env!("RLVR_SOURCE_HASH");

/// One string for "the same build": saved results are reused only under it.
pub fn fingerprint() -> String {
    format!("rlvr {VERSION} {GIT_REVISION} {SOURCE_HASH}")
}
