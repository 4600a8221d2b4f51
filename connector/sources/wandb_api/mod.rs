//! The W&B GraphQL API source: `wandb://ENTITY/PROJECT`.
//!
//! The listing asks for exactly the fields the plan needs (see [`queries`]);
//! history is fetched only for runs whose `historyKeys` hold a selected key.

pub mod credentials;
pub mod listing;
pub mod queries;
