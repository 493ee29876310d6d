//! The task layer, the same for every modality: the run written once ([`task`]), the run
//! directory ([`run_dir`]), heads on features ([`heads`]), the shared data helpers
//! ([`split`]), modality detection ([`detect`]), resume decisions ([`resume`]) and where a run's time
//! went ([`timings`]).

pub mod detect;
pub mod heads;
pub mod resume;
pub mod run_dir;
pub mod shared_pass;
pub mod split;
pub mod task;
pub mod timings;
