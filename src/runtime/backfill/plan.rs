//! Which ingest hours of which archive a backfill reads: the job says which ingest-time range
//! of each input its rules need ([`Job::reading`]); this lists the hours the archives hold in
//! them, refuses a range without input, and warns where an archive does not cover its range.

use super::{ArchiveSource, HourPartition};
use crate::contract::time::{ceil_to, floor_to, rfc3339, HOUR_MS};
use crate::core::job::{BackfillRange, Job, ReadRange};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("--from {from} is not before --to {to}")]
    EmptyRange { from: String, to: String },
    #[error("the archive at {source_desc} has no {noun} files for ingest hours {first} to {last}, which could hold {things} of [{from}, {to}){bounds}")]
    NoData {
        source_desc: String,
        noun: &'static str,
        things: &'static str,
        first: String,
        last: String,
        from: String,
        to: String,
        bounds: String,
    },
    #[error("{}; --fail-on-gap makes a missing hour an error (without it, the backfill warns and reads the hours there are)", .0.join("; "))]
    Gaps(Vec<String>),
}

/// What a backfill reads of one input.
#[derive(Debug, Clone)]
pub struct InputPlan {
    pub topic: String,
    /// Ingest-time range read, [read_from, read_to), before rounding to hours.
    pub read_from: i64,
    pub read_to: i64,
    pub hours: Vec<HourPartition>,
    pub archive_bounds: Option<(i64, i64)>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub from: i64,
    pub to: i64,
    /// Indexed as the job's inputs.
    pub inputs: Vec<InputPlan>,
    pub warnings: Vec<String>,
    /// Hours missing inside an archive (between its first and last hour), by input: also in
    /// `warnings`.
    pub gaps: Vec<String>,
}

impl Plan {
    pub fn files(&self) -> u64 {
        self.inputs.iter().flat_map(|i| &i.hours).map(|h| h.files.len() as u64).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.inputs.iter().flat_map(|i| &i.hours).flat_map(|h| &h.files).map(|f| f.size).sum()
    }

    /// Every hour any input reads, ascending: the backfill's epochs.
    pub fn epochs(&self) -> Vec<i64> {
        let mut hours: Vec<i64> = self.inputs.iter().flat_map(|i| i.hours.iter().map(|h| h.hour)).collect();
        hours.sort_unstable();
        hours.dedup();
        hours
    }
}

/// `sources[i]` is the archive of the job's input `i`.
pub fn plan<J: Job>(rules: &J::Rules, sources: &[&dyn ArchiveSource], range: BackfillRange) -> anyhow::Result<Plan> {
    if range.from >= range.to {
        return Err(PlanError::EmptyRange { from: rfc3339(range.from), to: rfc3339(range.to) }.into());
    }
    let reads = J::reading(rules, range)?;
    let inputs = J::inputs(rules);
    assert_eq!(reads.len(), sources.len(), "a read range and an archive per input");
    let mut planned = Vec::with_capacity(reads.len());
    let mut warnings = Vec::new();
    let mut gaps = Vec::new();
    for ((read, source), input) in reads.iter().zip(sources).zip(&inputs) {
        let p = plan_input(read, *source, &input.topic, range, &mut warnings)?;
        if let Some(gap) = gaps_of(&p, source.describe()) {
            warnings.push(gap.clone());
            gaps.push(gap);
        }
        planned.push(p);
    }
    Ok(Plan { from: range.from, to: range.to, inputs: planned, warnings, gaps })
}

/// The hours the read range needs that the archive lacks although it holds hours before and
/// after them: an hour lost in the middle (a failed archiver, a deleted directory), whose
/// messages would otherwise go silently uncounted.
fn gaps_of(p: &InputPlan, source: String) -> Option<String> {
    let (first, last) = p.archive_bounds?;
    let lo = first.max(floor_to(p.read_from, HOUR_MS));
    let hi = last.min(ceil_to(p.read_to, HOUR_MS) - HOUR_MS);
    let present: std::collections::BTreeSet<i64> = p.hours.iter().filter(|h| !h.files.is_empty()).map(|h| h.hour).collect();
    let missing: Vec<i64> = (lo..=hi).step_by(HOUR_MS as usize).filter(|h| !present.contains(h)).collect();
    if missing.is_empty() {
        return None;
    }
    let mut names: Vec<String> = missing.iter().take(8).map(|h| crate::contract::time::hive_hour_dir(*h)).collect();
    if missing.len() > names.len() {
        names.push(format!("and {} more", missing.len() - names.len()));
    }
    Some(format!(
        "the {} archive at {source} has no files for {} hour{} between its first hour {} and its last {}: {}",
        p.topic,
        missing.len(),
        if missing.len() == 1 { "" } else { "s" },
        rfc3339(first),
        rfc3339(last),
        names.join(", ")
    ))
}

fn plan_input(read: &ReadRange, source: &dyn ArchiveSource, topic: &str, range: BackfillRange, warnings: &mut Vec<String>) -> anyhow::Result<InputPlan> {
    let hours = source.hours(floor_to(read.read_from, HOUR_MS), ceil_to(read.read_to, HOUR_MS))?;
    let archive_bounds = source.bounds()?;
    let first_relevant = floor_to(read.relevant_from, HOUR_MS);
    let has_data = hours.iter().any(|h| h.hour >= first_relevant && !h.files.is_empty());
    if !has_data {
        let bounds = match archive_bounds {
            Some((a, b)) => format!(" (the archive holds ingest hours {} to {})", rfc3339(a), rfc3339(b)),
            None => " (the archive is empty)".to_string(),
        };
        let (noun, things) = source.format().nouns();
        return Err(PlanError::NoData {
            source_desc: source.describe(),
            noun,
            things,
            first: rfc3339(first_relevant),
            last: rfc3339(ceil_to(read.read_to, HOUR_MS) - HOUR_MS),
            from: rfc3339(range.from),
            to: rfc3339(range.to),
            bounds,
        }
        .into());
    }
    if let Some((first, last)) = archive_bounds {
        if first > floor_to(read.read_from, HOUR_MS) {
            warnings.push(format!(
                "the {topic} archive starts at {}, after the warm-up start {}: {}",
                rfc3339(first),
                rfc3339(read.read_from),
                read.warm_up_note
            ));
        }
        if last + HOUR_MS < read.read_to {
            warnings.push(format!(
                "the {topic} archive ends with ingest hour {}, before {}: {}",
                rfc3339(last),
                rfc3339(read.read_to),
                read.tail_note
            ));
        }
    }
    Ok(InputPlan { topic: topic.to_string(), read_from: read.read_from, read_to: read.read_to, hours, archive_bounds })
}
