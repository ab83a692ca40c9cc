//! Layer 3: the jobs, one module each, pure like the core they build on. Each implements
//! [`crate::core::job::Job`]; the runtimes, sinks, replay and the command line reach them only
//! through that trait and the registry below, so a new job is its module, its job file
//! (`jobs/<name>.toml`) and one line in `registered!`.

pub mod aggregation;
pub mod attribution;
pub mod union;

use crate::core::job::Job;

/// Something to do with a job chosen by name: `visit` is called with the job's type.
pub trait JobVisitor {
    type Output;
    fn visit<J: Job>(self) -> Self::Output;
}

/// Declares the registered jobs once: their names, and the dispatch from a name to a type.
macro_rules! registered {
    ($($job:ty),+ $(,)?) => {
        /// The names `--job` takes, in registration order.
        pub const NAMES: &[&str] = &[$(<$job as Job>::NAME),+];

        /// What each registered job does, as `(name, about)`.
        pub const ABOUT: &[(&str, &str)] = &[$((<$job as Job>::NAME, <$job as Job>::ABOUT)),+];

        /// Calls `visitor` with the job named `name`; None if no job has that name.
        pub fn with_job<V: JobVisitor>(name: &str, visitor: V) -> Option<V::Output> {
            $(if name == <$job as Job>::NAME {
                return Some(visitor.visit::<$job>());
            })+
            None
        }
    };
}

registered!(aggregation::Aggregation, attribution::Attribution, union::Union);
