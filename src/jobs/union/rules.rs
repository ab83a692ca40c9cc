//! The union job's rules (`jobs/union.toml`).

use std::time::Duration;

use serde::Deserialize;

use crate::contract::table::TableKind;
use crate::core::config::ConfigError;

pub const DEFAULT_JOB_FILE: &str = include_str!("../../../jobs/union.toml");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub source: String,
    pub target: String,
    pub kind: TableKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnionRules {
    pub tables: Vec<Table>,
    /// The regions read, in `--input` order: input `r * tables.len() + t` is table t of region r.
    pub regions: Vec<String>,
    pub forget_after_ms: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    job: JobSection,
    tables: Vec<TableSection>,
    collapse: CollapseSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobSection {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableSection {
    source: String,
    target: String,
    kind: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CollapseSection {
    #[serde(with = "humantime_serde")]
    forget_after: Duration,
}

impl UnionRules {
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let f: File = toml::from_str(text)?;
        if f.job.name != "union" {
            return Err(ConfigError::Rule(format!("[job] name is {:?}: this is the union job's file", f.job.name)));
        }
        if f.tables.is_empty() {
            return Err(ConfigError::Rule("[[tables]]: the union job needs at least one table".into()));
        }
        let mut tables = Vec::new();
        for t in f.tables {
            let kind = TableKind::parse(&t.kind).ok_or_else(|| {
                let names: Vec<&str> = TableKind::ALL.iter().map(|k| k.name()).collect();
                ConfigError::Rule(format!("[[tables]] kind {:?}: one of {}", t.kind, names.join(", ")))
            })?;
            if tables.iter().any(|x: &Table| x.kind == kind) {
                return Err(ConfigError::Rule(format!("[[tables]]: two tables of kind {:?}", t.kind)));
            }
            tables.push(Table { source: t.source, target: t.target, kind });
        }
        let forget_after_ms = f.collapse.forget_after.as_millis() as i64;
        if forget_after_ms <= 0 {
            return Err(ConfigError::Rule("[collapse] forget_after must be positive".into()));
        }
        Ok(Self { tables, regions: Vec::new(), forget_after_ms })
    }
}
