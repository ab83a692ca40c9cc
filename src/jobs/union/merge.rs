//! The union's backfill: the regions' tables merged into one, deduplicated on `record_uuid`.
//! Pure: rows in, one record per `record_uuid` out.

use std::collections::HashMap;

use uuid::Uuid;

use crate::core::job::OutputRecord;

/// What a merge kept and found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Merged<R> {
    /// One per record_uuid, in no particular order.
    pub records: Vec<R>,
    /// Rows read.
    pub read: usize,
    /// Rows whose record_uuid another row also had, with the same value (replicas).
    pub replicas: usize,
    /// Rows whose record_uuid another row had with another value: the newest file's row won.
    pub conflicts: usize,
}

/// `(written, file, record)` rows: per `record_uuid`, the row of the most recently written
/// file (ties: the greater file name), as an upsert that applied the files in the order they
/// were written would keep. Two runs of a backfill over one range write the same values; a
/// later restatement (`--complete`, a fixed job file) writes newer ones, which win.
pub fn newest_per_uuid<R: OutputRecord>(rows: impl IntoIterator<Item = (i64, String, R)>) -> Merged<R> {
    let mut best: HashMap<Uuid, (i64, String, R)> = HashMap::new();
    let (mut read, mut replicas, mut conflicts) = (0, 0, 0);
    for (written, file, record) in rows {
        read += 1;
        match best.get_mut(&record.record_uuid()) {
            None => {
                best.insert(record.record_uuid(), (written, file, record));
            }
            Some(kept) => {
                if kept.2 == record {
                    replicas += 1;
                } else {
                    conflicts += 1;
                }
                if (written, &file) > (kept.0, &kept.1) {
                    *kept = (written, file, record);
                }
            }
        }
    }
    Merged { records: best.into_values().map(|(_, _, r)| r).collect(), read, replicas, conflicts }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::outputs::AdMetric;

    fn m(ad: &str, impressions: i64) -> AdMetric {
        AdMetric {
            record_uuid: crate::contract::record_uuid::ad_metric("region-a", ad, 0),
            region: "region-a".into(),
            ad_id: ad.into(),
            campaign_id: None,
            advertiser_id: None,
            window_start: 0,
            window_end: 60_000,
            impressions,
            clicks: 0,
        }
    }

    #[test]
    fn the_newest_file_wins_and_replicas_and_conflicts_are_counted() {
        let rows = vec![
            (20, "b.parquet".to_string(), m("ad-1", 5)),
            (10, "a.parquet".to_string(), m("ad-1", 4)),
            (10, "a.parquet".to_string(), m("ad-2", 1)),
            (10, "c.parquet".to_string(), m("ad-2", 1)),
            (20, "a.parquet".to_string(), m("ad-3", 7)),
            (20, "b.parquet".to_string(), m("ad-3", 8)),
        ];
        let mut merged = newest_per_uuid(rows);
        merged.records.sort_by(|a, b| a.ad_id.cmp(&b.ad_id));
        assert_eq!(merged.records.iter().map(|r| (&*r.ad_id, r.impressions)).collect::<Vec<_>>(), [("ad-1", 5), ("ad-2", 1), ("ad-3", 8)]);
        assert_eq!((merged.read, merged.replicas, merged.conflicts), (6, 1, 2));
    }
}
