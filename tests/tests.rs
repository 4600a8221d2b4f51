//! Integration tests: one binary, a small harness, one module per area.
//! The test bed (Python venv with the real W&B SDK, runs it writes, the
//! reference reader) is set up on first use; see `harness`.

mod crash;
mod harness;
mod large_runs;
mod mlflow;
mod object_store;
mod orchestrators;
mod sync;
mod system;
mod tensorboard;
mod wandb_api;
mod wandb_api_large;
mod wandb_files;
