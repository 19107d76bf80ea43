//! Command-line arguments: the definition lives in `lifeboat-operations`, shared with the
//! control plane, which authorizes a job from the command as this same parser reads it.

pub use lifeboat_operations::command_line::*;
