//! rlvr: reinforcement-learning post-training for language models.
//!
//! Data flows one way (see docs/ARCHITECTURE.md): run config and task →
//! prompts → sampler → rewards → advantages → loss → optimizer → run directory.

pub mod allocator;
pub mod bench;
pub mod build_info;
pub mod cache;
pub mod cli;
pub mod compare;
pub mod config;
pub mod data;
pub mod demo;
pub mod env_report;
pub mod eval;
pub mod inspect;
pub mod model;
pub mod reward;
pub mod run;
pub mod sample;
pub mod tokenizer;
pub mod train;
pub mod types;
