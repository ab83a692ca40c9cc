//! Two versions of an output table compared record by record on `record_uuid` (the live job's
//! output against a restatement, say), and the differences rolled up per advertiser, campaign
//! and hour: who a restatement affects, and by how much.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use uuid::Uuid;

use super::job::OutputRecord;

/// What a record of a table counts towards: the measures advertisers are billed on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Measures {
    pub impressions: i64,
    pub clicks: i64,
    pub attributed_orders: i64,
    pub amount_cents: i64,
}

impl Measures {
    fn add(&mut self, o: Measures, sign: i64) {
        self.impressions += sign * o.impressions;
        self.clicks += sign * o.clicks;
        self.attributed_orders += sign * o.attributed_orders;
        self.amount_cents += sign * o.amount_cents;
    }

    /// How much a change moves money-bearing figures, for ranking who is most affected.
    pub fn magnitude(&self) -> i64 {
        self.impressions.abs() + self.clicks.abs() + self.attributed_orders.abs() + self.amount_cents.abs()
    }
}

/// A record a diff can place: who owns it and what it counts.
pub trait DiffRecord: OutputRecord {
    fn advertiser(&self) -> Option<&str>;
    fn campaign(&self) -> Option<&str>;
    fn measures(&self) -> Measures;
}

/// The differences of one group (or of everything).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Delta {
    /// Records only the new version has.
    pub added: u64,
    /// Records only the old version has.
    pub removed: u64,
    /// Records in both, with another value.
    pub changed: u64,
    pub unchanged: u64,
    /// New minus old.
    pub delta: Measures,
}

impl Delta {
    pub fn affected(&self) -> u64 {
        self.added + self.removed + self.changed
    }

    fn merge(&mut self, o: &Delta) {
        self.added += o.added;
        self.removed += o.removed;
        self.changed += o.changed;
        self.unchanged += o.unchanged;
        self.delta.add(o.delta, 1);
    }
}

/// (advertiser, campaign, hour of the record's partition time); an absent owner is "".
pub type GroupKey = (String, String, i64);

#[derive(Debug, Clone, Default, Serialize)]
pub struct TableDiff {
    pub old_records: u64,
    pub new_records: u64,
    /// Measures of each version, whole.
    pub old: Measures,
    pub new: Measures,
    pub total: Delta,
    /// Only groups with a difference.
    #[serde(skip)]
    pub groups: BTreeMap<GroupKey, Delta>,
}

impl TableDiff {
    /// Compares `old` and `new` (each one record per `record_uuid`).
    pub fn of<R: DiffRecord>(old: &HashMap<Uuid, R>, new: &HashMap<Uuid, R>) -> Self {
        let mut d = TableDiff { old_records: old.len() as u64, new_records: new.len() as u64, ..Default::default() };
        let key = |r: &R| {
            let hour = r.partition_time().div_euclid(crate::contract::time::HOUR_MS) * crate::contract::time::HOUR_MS;
            (r.advertiser().unwrap_or_default().to_string(), r.campaign().unwrap_or_default().to_string(), hour)
        };
        for r in old.values() {
            d.old.add(r.measures(), 1);
        }
        for (uuid, n) in new {
            d.new.add(n.measures(), 1);
            let mut delta = Delta::default();
            match old.get(uuid) {
                None => {
                    delta.added = 1;
                    delta.delta.add(n.measures(), 1);
                }
                Some(o) if o == n => delta.unchanged = 1,
                Some(o) => {
                    delta.changed = 1;
                    delta.delta.add(n.measures(), 1);
                    delta.delta.add(o.measures(), -1);
                    // A change of owner or hour (a restated attribution) moves the old
                    // value out of its group and the new one into its own.
                    if key(o) != key(n) {
                        let mut out = Delta::default();
                        out.delta.add(o.measures(), -1);
                        d.groups.entry(key(o)).or_default().merge(&out);
                        delta.delta = n.measures();
                    }
                }
            }
            d.total.merge(&delta);
            if delta.unchanged == 0 {
                d.groups.entry(key(n)).or_default().merge(&delta);
            }
        }
        for (uuid, o) in old {
            if !new.contains_key(uuid) {
                let mut delta = Delta { removed: 1, ..Default::default() };
                delta.delta.add(o.measures(), -1);
                d.total.merge(&delta);
                d.groups.entry(key(o)).or_default().merge(&delta);
            }
        }
        // The total's measures are new minus old, whole: per record, a record that moved to
        // another group added its whole new value to the new group (and took its old value
        // out of the old one), which the sum over records above counts once too often.
        d.total.delta = d.new;
        d.total.delta.add(d.old, -1);
        d
    }

    /// The differences per hour, in time order.
    pub fn by_hour(&self) -> BTreeMap<i64, Delta> {
        let mut out: BTreeMap<i64, Delta> = BTreeMap::new();
        for ((_, _, hour), d) in &self.groups {
            out.entry(*hour).or_default().merge(d);
        }
        out
    }

    /// The `n` advertisers most affected: by the size of their change, then by records affected.
    pub fn top_advertisers(&self, n: usize) -> Vec<(String, Delta)> {
        let mut by: BTreeMap<&str, Delta> = BTreeMap::new();
        for ((adv, _, _), d) in &self.groups {
            by.entry(adv).or_default().merge(d);
        }
        let mut v: Vec<(String, Delta)> = by.into_iter().map(|(a, d)| (a.to_string(), d)).collect();
        v.sort_by(|a, b| b.1.delta.magnitude().cmp(&a.1.delta.magnitude()).then(b.1.affected().cmp(&a.1.affected())).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// The `n` (advertiser, campaign) pairs most affected, summed over hours.
    pub fn top_campaigns(&self, n: usize) -> Vec<((String, String), Delta)> {
        let mut by: BTreeMap<(&str, &str), Delta> = BTreeMap::new();
        for ((adv, camp, _), d) in &self.groups {
            by.entry((adv, camp)).or_default().merge(d);
        }
        let mut v: Vec<((String, String), Delta)> = by.into_iter().map(|((a, c), d)| ((a.to_string(), c.to_string()), d)).collect();
        v.sort_by(|a, b| b.1.delta.magnitude().cmp(&a.1.delta.magnitude()).then(b.1.affected().cmp(&a.1.affected())).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::outputs::AdMetric;
    use crate::contract::record_uuid;

    fn m(ad: &str, adv: &str, start: i64, impressions: i64, clicks: i64) -> AdMetric {
        AdMetric {
            record_uuid: record_uuid::ad_metric("r", ad, start),
            region: "r".into(),
            ad_id: ad.into(),
            campaign_id: Some(format!("c-{adv}").into()),
            advertiser_id: Some(adv.into()),
            window_start: start,
            window_end: start + 60_000,
            impressions,
            clicks,
        }
    }

    fn map(v: Vec<AdMetric>) -> HashMap<Uuid, AdMetric> {
        v.into_iter().map(|m| (m.record_uuid, m)).collect()
    }

    #[test]
    fn added_removed_and_changed_records_roll_up_per_advertiser_and_hour() {
        let h = 3_600_000;
        let old = map(vec![m("a1", "x", 0, 10, 1), m("a2", "x", h, 5, 0), m("a3", "y", 0, 7, 2), m("a4", "y", 0, 1, 0)]);
        let new = map(vec![m("a1", "x", 0, 12, 1), m("a2", "x", h, 5, 0), m("a3", "y", 0, 7, 2), m("a5", "z", h, 3, 1)]);
        let d = TableDiff::of(&old, &new);
        assert_eq!((d.total.added, d.total.removed, d.total.changed, d.total.unchanged), (1, 1, 1, 2));
        assert_eq!(d.total.delta, Measures { impressions: 2 - 1 + 3, clicks: 1, attributed_orders: 0, amount_cents: 0 });
        assert_eq!(d.old.impressions, 23);
        assert_eq!(d.new.impressions, 27);
        let x0 = d.groups[&("x".to_string(), "c-x".to_string(), 0)];
        assert_eq!((x0.changed, x0.delta.impressions), (1, 2));
        let y0 = d.groups[&("y".to_string(), "c-y".to_string(), 0)];
        assert_eq!((y0.removed, y0.delta.impressions), (1, -1));
        assert!(!d.groups.contains_key(&("x".to_string(), "c-x".to_string(), h)), "unchanged groups are left out");
        let hours = d.by_hour();
        assert_eq!(hours[&0].delta.impressions, 1);
        assert_eq!(hours[&h].delta.impressions, 3);
        let top = d.top_advertisers(2);
        assert_eq!(top.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(), ["z", "x"]);
    }

    /// A record whose owner changed (a restated attribution, a corrected campaign) leaves its
    /// old group and joins its new one; the total moves by the change of value only.
    #[test]
    fn a_record_that_changes_owner_moves_between_groups() {
        let old = map(vec![m("a1", "x", 0, 10, 1)]);
        let new = map(vec![AdMetric { advertiser_id: Some("y".into()), campaign_id: Some("c-y".into()), impressions: 12, ..m("a1", "x", 0, 10, 1) }]);
        let d = TableDiff::of(&old, &new);
        assert_eq!((d.total.changed, d.total.delta.impressions, d.total.delta.clicks), (1, 2, 0));
        assert_eq!(d.groups[&("x".to_string(), "c-x".to_string(), 0)].delta.impressions, -10);
        let y = d.groups[&("y".to_string(), "c-y".to_string(), 0)];
        assert_eq!((y.changed, y.delta.impressions), (1, 12));
        let sum: i64 = d.groups.values().map(|g| g.delta.impressions).sum();
        assert_eq!(sum, d.total.delta.impressions, "the groups add up to the total");
    }

    #[test]
    fn identical_versions_have_no_differences() {
        let old = map(vec![m("a1", "x", 0, 10, 1)]);
        let d = TableDiff::of(&old, &old.clone());
        assert_eq!(d.total.affected(), 0);
        assert!(d.groups.is_empty());
    }
}
