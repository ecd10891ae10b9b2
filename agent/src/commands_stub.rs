//! temporary stub
use crate::{config::Config, outbound::Outbound, protocol::Incoming, state::AgentState};
use std::sync::Arc;
/// stub
pub const SUPERVISE_FLAG: &str = "--supervise-switch";
/// stub
pub fn supervise_main(_a: &[String]) -> i32 {
    1
}
/// stub
#[derive(Clone)]
pub struct Commands;
impl Commands {
    /// stub
    pub fn new(_c: Arc<Config>, _s: Arc<AgentState>, _o: Arc<Outbound>) -> Self {
        Commands
    }
    /// stub
    pub async fn startup(&self) {}
    /// stub
    pub fn handle(&self, m: Incoming) {
        tracing::info!("command {m:?}");
    }
    /// stub
    pub async fn shutdown(&self) {}
}
