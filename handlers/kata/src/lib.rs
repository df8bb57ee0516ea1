//! placeholder
pub mod agent_client;
