//! Data sources: synthetic task generators (and, later, jsonl/parquet readers).

pub mod arithmetic;
