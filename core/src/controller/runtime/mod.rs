//! What the controller process runs besides reconciles: leader election, metrics, the memory
//! budget of in-flight fetches, the restore pass of a new leader, and the lenient parsing of
//! watched objects.

pub mod leader;
pub mod memory;
pub mod metrics;
pub mod readable;
pub mod restore_pass;
