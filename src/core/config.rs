//! What every job file shares: its errors and its durations.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid job file: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid job file: {0}")]
    Rule(String),
}

/// A duration of a job file in milliseconds (saturating).
pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Checks the `[job] name` of a job file against the job it is given to.
pub fn check_name(found: &str, job: &str) -> Result<(), ConfigError> {
    if found == job {
        return Ok(());
    }
    Err(ConfigError::Rule(format!("job.name is '{found}'; this file must define '{job}'")))
}
