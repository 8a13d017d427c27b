//! The policy model: a Llama/Qwen2/Qwen3-family decoder in libtorch, its KV cache, and Hugging
//! Face checkpoint folders.

pub mod checkpoint;
pub mod config;
pub(crate) mod cpu_decoder;
pub(crate) mod cpu_kernels;
pub mod init;
pub mod kv_cache;
pub mod transformer;

pub use checkpoint::Model;
pub use config::ModelConfig;
pub use kv_cache::KvCache;
pub use transformer::{Transformer, position_ids_from_mask};
