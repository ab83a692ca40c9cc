//! The union job: every region's output tables merged, on the local cluster, into one upsert
//! stream per table (contract §6), collapsing replicas of one value. Rules: `jobs/union.toml`;
//! semantics: `docs/union.md`.

pub mod audit;
pub mod merge;
pub mod operator;
pub mod record;
pub mod rules;

use arrow::array::{Array, AsArray, RecordBatch};

use crate::contract::format::Format;
use crate::contract::records::col;
use crate::contract::table::OutputTable;
use crate::core::config::ConfigError;
use crate::core::job::{BackfillRange, Input, Job, ReadRange, Route, RunSettings};
use crate::core::key_group::group_of_uuid;
use operator::{UnionOperator, UnionState};
use record::UnionRecord;
use rules::UnionRules;

pub struct Union;

impl Job for Union {
    const NAME: &'static str = "union";
    const ABOUT: &'static str = "merge every region's ad-metrics and attributed-orders into one upsert stream per table";
    const DEFAULT_JOB_FILE: &'static str = rules::DEFAULT_JOB_FILE;
    /// A region that was away must not hold the others back until it falls idle, and no
    /// result depends on ingest order across source partitions.
    const RELEASE_ON_ARRIVAL: bool = true;

    type Rules = UnionRules;
    type Record = UnionRecord;
    type Audit = audit::Audit;
    type State = UnionState;
    type Operator = UnionOperator;

    fn parse_rules(job_file: &str) -> Result<UnionRules, ConfigError> {
        UnionRules::from_toml(job_file)
    }

    fn set_regions(rules: &mut UnionRules, regions: &[String]) -> anyhow::Result<()> {
        anyhow::ensure!(!regions.is_empty(), "the union job reads every region's cluster: name each with --input <region>=<brokers>");
        rules.regions = regions.to_vec();
        Ok(())
    }

    /// Table t of region r is input `r * tables + t`.
    fn inputs(rules: &UnionRules) -> Vec<Input> {
        let regions: Vec<Option<String>> = if rules.regions.is_empty() { vec![None] } else { rules.regions.iter().cloned().map(Some).collect() };
        regions
            .iter()
            .flat_map(|r| {
                rules.tables.iter().map(move |t| Input { topic: t.source.clone(), format: Format::Records, dead_letters: true, region: r.clone() })
            })
            .collect()
    }

    fn set_topic(rules: &mut UnionRules, input: usize, topic: &str) {
        let n = rules.tables.len();
        rules.tables[input % n].source = topic.to_string();
    }

    fn outputs(rules: &UnionRules) -> Vec<OutputTable> {
        rules.tables.iter().map(|t| OutputTable { name: t.target.clone(), kind: t.kind }).collect()
    }

    fn set_output(rules: &mut UnionRules, table: usize, name: &str) {
        rules.tables[table].target = name.to_string();
    }

    /// By `record_uuid`: the last value of each record_uuid lives in one group.
    fn route(_rules: &UnionRules, _input: usize, batch: &RecordBatch, key_groups: usize) -> Route {
        let uuids = batch.column(col::RECORD_UUID).as_fixed_size_binary();
        let mut rows: Vec<Vec<u32>> = (0..key_groups).map(|_| Vec::with_capacity(batch.num_rows() / key_groups + 1)).collect();
        for i in 0..batch.num_rows() {
            let g = if uuids.is_null(i) { 0 } else { group_of_uuid(&uuid::Uuid::from_slice(uuids.value(i)).expect("16 bytes"), key_groups) };
            rows[g].push(i as u32);
        }
        Route::Keyed(rows)
    }

    fn operator(rules: &UnionRules, settings: RunSettings) -> UnionOperator {
        UnionOperator::new(rules.clone(), settings)
    }

    fn restore(rules: &UnionRules, settings: RunSettings, state: UnionState) -> UnionOperator {
        UnionOperator::restore(rules.clone(), settings, state)
    }

    fn reading(_rules: &UnionRules, _range: BackfillRange) -> anyhow::Result<Vec<ReadRange>> {
        anyhow::bail!(
            "the union job's backfill reads the regions' output tables, not the topics' archives: \
             `adsproc backfill --job union --source <region a's tables> --source <region b's tables> …`"
        )
    }
}
