//! The `weir` binary's library half: the command line, `weir demo`, and the throwaway
//! PostgreSQL cluster that the demo, the tests and the benchmark share.

pub mod approvals_cmd;
pub mod audit_cmd;
pub mod cli;
pub mod cluster;
pub mod demo;
pub mod login;
pub mod mariadb;
pub mod mcp_cmd;
pub mod policy_cmd;
pub mod serve;
pub mod tags_cmd;
pub mod token;
pub mod undo_cmd;
