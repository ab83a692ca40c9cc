//! Typed, interned access to one canonical batch.
//!
//! Dictionary-encoded columns are resolved per distinct value, lazily: a batch read from
//! Parquet carries the column chunk's whole dictionary, and a key-group operator only ever
//! touches the values of its own rows.

use arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Int32Array, Int64Array, PrimitiveArray, RecordBatch, StringArray, StringViewArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{ArrowPrimitiveType, Int32Type, TimestampMillisecondType};

use super::interner::Interner;
use crate::contract::canonical_payload::{self, EventFields};
use crate::contract::columns as c;
use crate::contract::schema::{col, is_canonical};

const UNRESOLVED: u32 = u32::MAX;
/// How many values ahead [`DictColumn::resolve`] prefetches.
const PREFETCH_AHEAD: usize = 8;
/// Null or empty: the contract treats both as missing.
pub const ABSENT: u32 = u32::MAX - 1;

pub struct DictColumn<'a> {
    keys: &'a Int32Array,
    values: &'a StringArray,
    ids: Vec<u32>,
    /// Dedupe seed per dictionary value, computed with the id (only for the ad column).
    seeds: Option<Vec<u64>>,
}

impl<'a> DictColumn<'a> {
    fn new(array: &'a dyn Array) -> Self {
        let dict: &DictionaryArray<Int32Type> = array.as_dictionary();
        let values = dict.values().as_string::<i32>();
        Self { keys: dict.keys(), values, ids: vec![UNRESOLVED; values.len()], seeds: None }
    }

    fn with_seeds(mut self) -> Self {
        self.seeds = Some(vec![0; self.values.len()]);
        self
    }

    /// The dedupe seed of the row's value (see [`crate::core::dedupe::ad_seed`]); only for rows
    /// whose [`Self::resolved`] id is a present value.
    #[inline]
    pub fn seed(&self, row: usize) -> u64 {
        self.seeds.as_ref().expect("seeds are kept for the ad column")[self.keys.value(row) as usize]
    }

    /// The interned id of the row's value, or [`ABSENT`], for a row [`Self::resolve`] has
    /// seen. No interning path, so the four of these per row are inlined into the validation;
    /// calls of the lazy `id` (which interns on a miss and was not inlined; now the tests'
    /// definition) cost ~4 % of a backfill's CPU samples to enter and leave.
    #[inline(always)]
    pub fn resolved(&self, row: usize) -> u32 {
        let Some(k) = BatchView::opt(self.keys, row) else {
            return ABSENT;
        };
        let id = self.ids[k as usize];
        debug_assert_ne!(id, UNRESOLVED, "row {row} was not resolved");
        id
    }

    /// The interned id of the row's value, or [`ABSENT`], interning it on first sight: the
    /// definition [`Self::resolve`] with [`Self::resolved`] is held to.
    #[cfg(test)]
    pub fn id(&mut self, row: usize, interner: &mut Interner) -> u32 {
        if self.keys.is_null(row) {
            return ABSENT;
        }
        let k = self.keys.value(row) as usize;
        let id = self.ids[k];
        if id != UNRESOLVED {
            return id;
        }
        let id = if self.values.is_null(k) || self.values.value(k).is_empty() {
            ABSENT
        } else {
            if let Some(seeds) = self.seeds.as_mut() {
                seeds[k] = super::dedupe::ad_seed(self.values.value(k));
            }
            interner.intern(self.values.value(k))
        };
        self.ids[k] = id;
        id
    }

    /// Resolves the values `rows` refer to, in order of first reference, with the interner's
    /// slot of the value `PREFETCH_AHEAD` places ahead being fetched meanwhile;
    /// [`Self::resolved`] then only reads an array. Each batch of a backfill brings its own
    /// dictionaries (~15,000 ad ids per file of the bench), and resolving them one miss at a
    /// time as rows came was ~8 % of the CPU samples.
    pub fn resolve(&mut self, rows: impl Iterator<Item = usize>, interner: &mut Interner) {
        let mut pending: Vec<(usize, u128)> = Vec::new();
        for row in rows {
            let Some(k) = self.key(row) else { continue };
            if self.ids[k] != UNRESOLVED {
                continue;
            }
            let present = !self.values.is_null(k) && !self.values.value(k).is_empty();
            // ABSENT also marks a present value as queued; the loop below sets its id.
            self.ids[k] = ABSENT;
            if present {
                pending.push((k, Interner::key(self.values.value(k))));
            }
        }
        for &(_, key) in pending.iter().take(PREFETCH_AHEAD) {
            interner.prefetch(key);
        }
        for (i, &(k, key)) in pending.iter().enumerate() {
            if let Some(&(_, ahead)) = pending.get(i + PREFETCH_AHEAD) {
                interner.prefetch(ahead);
            }
            let value = self.values.value(k);
            if let Some(seeds) = self.seeds.as_mut() {
                seeds[k] = super::dedupe::ad_seed(value);
            }
            self.ids[k] = interner.intern_keyed(key, value);
        }
    }

    pub fn str(&self, row: usize) -> Option<&'a str> {
        if self.keys.is_null(row) {
            return None;
        }
        let k = self.keys.value(row) as usize;
        (!self.values.is_null(k)).then(|| self.values.value(k))
    }

    /// Dictionary key of the row, to compute per-value properties once.
    #[inline]
    pub fn key(&self, row: usize) -> Option<usize> {
        (!self.keys.is_null(row)).then(|| self.keys.value(row) as usize)
    }

    pub fn values(&self) -> &'a StringArray {
        self.values
    }
}

/// A string column of the core's input that may be plain or views (see
/// [`crate::contract::schema::VIEWABLE`]). Which one is the same for a whole batch, so the
/// branch on it is predicted.
#[derive(Clone, Copy)]
pub enum Strings<'a> {
    Plain(&'a StringArray),
    Views(&'a StringViewArray),
}

impl<'a> Strings<'a> {
    /// A column of plain strings or views.
    pub fn new(a: &'a ArrayRef) -> Self {
        match a.as_string_opt::<i32>() {
            Some(plain) => Self::Plain(plain),
            None => Self::Views(a.as_string_view()),
        }
    }

    #[inline]
    fn is_null(self, row: usize) -> bool {
        match self {
            Self::Plain(a) => BatchView::null(a, row),
            Self::Views(a) => BatchView::null(a, row),
        }
    }

    /// The row's value, which means nothing for a null row (see [`Self::is_null`]).
    #[inline]
    fn value(self, row: usize) -> &'a str {
        match self {
            Self::Plain(a) => a.value(row),
            Self::Views(a) => a.value(row),
        }
    }

    /// The row's value, None if null.
    #[inline]
    pub fn get(self, row: usize) -> Option<&'a str> {
        (!self.is_null(row)).then(|| self.value(row))
    }

    /// The row's value, None if null or empty: what validation counts as a present field.
    #[inline]
    pub fn present(self, row: usize) -> Option<&'a str> {
        self.get(row).filter(|s| !s.is_empty())
    }

    /// Starts fetching the row's bytes, for a read a few rows on.
    #[inline]
    pub fn prefetch(self, row: usize) {
        super::prefetch::prefetch(self.value(row).as_ptr());
    }
}

/// Impression/click code of each event_type dictionary value, computed once per batch.
pub const IMPRESSION: u8 = 0;
pub const CLICK: u8 = 1;
pub const OTHER_TYPE: u8 = 2;

pub struct BatchView<'a> {
    pub batch: &'a RecordBatch,
    pub event_id: Strings<'a>,
    pub event_type: DictColumn<'a>,
    pub event_type_codes: Vec<u8>,
    pub ad: DictColumn<'a>,
    pub campaign: DictColumn<'a>,
    pub advertiser: DictColumn<'a>,
    pub region: DictColumn<'a>,
    pub user_id: Strings<'a>,
    pub store_id: Strings<'a>,
    pub event_time: &'a TimestampMillisecondArray,
    pub partition: &'a Int32Array,
    pub offset: &'a Int64Array,
    pub ingest: &'a TimestampMillisecondArray,
    pub decode_error: &'a StringArray,
    pub raw: &'a StringArray,
}

impl<'a> BatchView<'a> {
    /// `batch` must have the canonical schema (see [`crate::contract::schema::normalize`]).
    pub fn new(batch: &'a RecordBatch) -> Self {
        assert!(is_canonical(&batch.schema()), "the core takes canonical batches only");
        let event_type = DictColumn::new(batch.column(col::EVENT_TYPE).as_ref());
        let event_type_codes = event_type
            .values()
            .iter()
            .map(|v| match v {
                Some(c::IMPRESSION) => IMPRESSION,
                Some(c::CLICK) => CLICK,
                _ => OTHER_TYPE,
            })
            .collect();
        Self {
            batch,
            event_id: Strings::new(batch.column(col::EVENT_ID)),
            event_type,
            event_type_codes,
            ad: DictColumn::new(batch.column(col::AD_ID).as_ref()).with_seeds(),
            campaign: DictColumn::new(batch.column(col::CAMPAIGN_ID).as_ref()),
            advertiser: DictColumn::new(batch.column(col::ADVERTISER_ID).as_ref()),
            region: DictColumn::new(batch.column(col::REGION).as_ref()),
            user_id: Strings::new(batch.column(col::USER_ID)),
            store_id: Strings::new(batch.column(col::STORE_ID)),
            event_time: batch.column(col::EVENT_TIME).as_primitive::<TimestampMillisecondType>(),
            partition: batch.column(col::KAFKA_PARTITION).as_primitive(),
            offset: batch.column(col::KAFKA_OFFSET).as_primitive(),
            ingest: batch.column(col::KAFKA_TIMESTAMP).as_primitive::<TimestampMillisecondType>(),
            decode_error: batch.column(col::DECODE_ERROR).as_string::<i32>(),
            raw: batch.column(col::RAW_PAYLOAD).as_string::<i32>(),
        }
    }

    /// Resolves the ad, campaign, advertiser and region ids of `rows` (all rows if None), so
    /// that [`DictColumn::resolved`] gives them; see [`DictColumn::resolve`].
    pub fn resolve(&mut self, rows: Option<&[u32]>, interner: &mut Interner) {
        for column in [&mut self.ad, &mut self.campaign, &mut self.advertiser, &mut self.region] {
            match rows {
                Some(rows) => column.resolve(rows.iter().map(|&r| r as usize), interner),
                None => column.resolve(0..self.batch.num_rows(), interner),
            }
        }
    }

    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// The row's value, None if null. Validation reads several of these per row; arrow's
    /// accessors (`is_null` through the `Array` trait, `value` with its bounds message) were
    /// left as calls there, ~3 % of a backfill's CPU samples.
    #[inline(always)]
    pub fn opt<T: ArrowPrimitiveType>(a: &PrimitiveArray<T>, row: usize) -> Option<T::Native> {
        if Self::null(a, row) {
            None
        } else {
            Some(a.values()[row])
        }
    }

    /// Whether the row's value is null (see [`Self::opt`]).
    #[inline(always)]
    pub fn null(a: &impl Array, row: usize) -> bool {
        a.nulls().is_some_and(|n| n.is_null(row))
    }

    pub fn position(&self, row: usize) -> (Option<i32>, Option<i64>, Option<i64>) {
        (Self::opt(self.partition, row), Self::opt(self.offset, row), Self::opt(self.ingest, row))
    }

    /// The message as received when the runtime kept its bytes, else re-created from the
    /// row's fields ([`canonical_payload`]): an archived row, or a consumed message whose bytes
    /// were that re-creation.
    pub fn payload(&self, row: usize) -> String {
        if !self.raw.is_null(row) {
            return self.raw.value(row).to_string();
        }
        let s = |a: Strings<'a>| a.get(row);
        let fields = EventFields {
            ad_id: self.ad.str(row),
            advertiser_id: self.advertiser.str(row),
            campaign_id: self.campaign.str(row),
            event_id: s(self.event_id),
            event_time: Self::opt(self.event_time, row),
            event_type: self.event_type.str(row),
            region: self.region.str(row),
            store_id: s(self.store_id),
            user_id: s(self.user_id),
        };
        let mut out = Vec::with_capacity(256);
        canonical_payload::write(&mut out, &fields);
        String::from_utf8(out).expect("written from UTF-8 strings")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, DictionaryArray, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Int32Type};
    use proptest::prelude::*;

    use super::*;
    use crate::contract::schema::{canonical_input_schema, viewed};

    /// The payload as a `serde_json::Map` writes it: the rule [`BatchView::payload`] follows.
    fn map_payload(fields: &[Option<String>; 8], event_time: Option<i64>) -> String {
        let [event_id, event_type, ad_id, campaign_id, advertiser_id, user_id, store_id, region] = fields.each_ref().map(|f| f.as_deref());
        canonical_payload::serde_json_map_of(&EventFields {
            ad_id,
            advertiser_id,
            campaign_id,
            event_id,
            event_time,
            event_type,
            region,
            store_id,
            user_id,
        })
    }

    fn batch_of(fields: &[Option<String>; 8], event_time: Option<i64>) -> RecordBatch {
        let schema = canonical_input_schema();
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| -> ArrayRef {
                let string_field = [
                    col::EVENT_ID,
                    col::EVENT_TYPE,
                    col::AD_ID,
                    col::CAMPAIGN_ID,
                    col::ADVERTISER_ID,
                    col::USER_ID,
                    col::STORE_ID,
                    col::REGION,
                ]
                .iter()
                .position(|&c| c == i);
                match (string_field, f.data_type()) {
                    (Some(k), DataType::Dictionary(..)) => {
                        Arc::new([fields[k].as_deref()].into_iter().collect::<DictionaryArray<Int32Type>>())
                    }
                    (Some(k), _) => Arc::new(StringArray::from(vec![fields[k].clone()])),
                    (None, t) if i == col::EVENT_TIME => {
                        Arc::new(TimestampMillisecondArray::from(vec![event_time]).with_data_type(t.clone()))
                    }
                    (None, t) => arrow::array::new_null_array(t, 1),
                }
            })
            .collect();
        RecordBatch::try_new(schema, columns).unwrap()
    }

    fn dictionary() -> impl Strategy<Value = (DictionaryArray<Int32Type>, Vec<usize>)> {
        let values = proptest::collection::vec(proptest::option::of("[ab]{0,2}"), 1..12);
        values.prop_flat_map(|values| {
            let n = values.len() as i32;
            let keys = proptest::collection::vec(proptest::option::of(0..n), 0..40);
            (Just(values), keys).prop_flat_map(|(values, keys)| {
                let rows = proptest::sample::subsequence((0..keys.len()).collect::<Vec<_>>(), 0..=keys.len());
                let dict = DictionaryArray::try_new(keys.into(), Arc::new(StringArray::from(values))).unwrap();
                (Just(dict), rows)
            })
        })
    }

    proptest! {
        /// Resolved ahead, a column gives every row the id and seed that resolving it as it
        /// comes gives: the same string, ABSENT for null and empty values, the ad seed.
        #[test]
        fn resolving_ahead_is_resolving_as_rows_come((dict, rows) in dictionary()) {
            let (mut ahead, mut lazy) = (Interner::default(), Interner::default());
            let mut a = DictColumn::new(&dict).with_seeds();
            let mut l = DictColumn::new(&dict).with_seeds();
            a.resolve(rows.iter().copied(), &mut ahead);
            for &row in &rows {
                let (ia, il) = (a.resolved(row), l.id(row, &mut lazy));
                prop_assert_eq!(ia == ABSENT, il == ABSENT);
                if ia != ABSENT {
                    prop_assert_eq!(ahead.name(ia), lazy.name(il));
                    prop_assert_eq!(a.seed(row), l.seed(row));
                }
            }
            prop_assert_eq!(ahead.len(), lazy.len(), "resolving ahead interned more than the rows name");
        }

        /// Written directly, a rebuilt payload is byte for byte what `serde_json` made of a map
        /// of the fields: field order, escapes, nulls.
        #[test]
        fn payload_is_the_fields_as_a_json_map(
            fields in proptest::array::uniform8(proptest::option::of("(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}\u{2028}]){0,12}")),
            event_time in proptest::option::of(any::<i64>()),
        ) {
            let batch = batch_of(&fields, event_time);
            prop_assert_eq!(BatchView::new(&batch).payload(0), map_payload(&fields, event_time));
            // The same from the viewed form, which archive files decode to.
            let viewed = viewed(&batch);
            let view = BatchView::new(&viewed);
            prop_assert_eq!(view.payload(0), map_payload(&fields, event_time));
            prop_assert_eq!(view.event_id.get(0), fields[0].as_deref());
        }
    }

    /// A test message's value for a string field, as JSON text: mostly a plain id.
    fn string_value() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => "[a-z0-9-]{0,12}".prop_map(|s| format!("\"{s}\"")),
            1 => "(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}\u{2028}]){0,4}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            1 => Just("\"a\\u0041\"".to_string()),
            1 => Just("null".to_string()),
            1 => prop_oneof![Just("true".to_string()), any::<i32>().prop_map(|n| n.to_string())],
        ]
    }

    fn time_value() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => any::<i64>().prop_map(|n| n.to_string()),
            1 => Just("null".to_string()),
            1 => Just("\"1767225600000\"".to_string()),
            1 => Just("1767225600000.0".to_string()),
            1 => Just("-0".to_string()),
        ]
    }

    /// A message with the contract's fields in the order a re-created payload has them, then
    /// one change or none: two keys swapped, a key dropped, repeated or added, whitespace, a
    /// byte replaced or removed.
    fn message() -> impl Strategy<Value = Vec<u8>> {
        let names = canonical_payload::names_in_written_order();
        let values: Vec<BoxedStrategy<String>> =
            names.iter().map(|&n| if n == c::EVENT_TIME { time_value().boxed() } else { string_value().boxed() }).collect();
        (values, 0..9u8, any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>()).prop_map(
            move |(values, change, a, b, byte)| {
                let mut fields: Vec<(String, String)> = names.iter().map(|n| n.to_string()).zip(values).collect();
                let (i, j) = (a.index(fields.len()), b.index(fields.len()));
                let mut space = false;
                match change {
                    1 => fields.swap(i, j),
                    2 => {
                        fields.remove(i);
                    }
                    3 => fields.push(fields[i].clone()),
                    4 => fields.insert(i, ("campaign".into(), "\"x\"".into())),
                    5 => space = true,
                    _ => {}
                }
                let sep = if space { ", " } else { "," };
                let mut p =
                    format!("{{{}}}", fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(sep)).into_bytes();
                let at = a.index(p.len());
                match change {
                    6 => p[at] = byte,
                    7 => {
                        p.remove(at);
                    }
                    _ => {}
                }
                p
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// A dead letter's payload is the message as received, whether the decoder kept its
        /// bytes or left them to be re-created from the row.
        #[test]
        fn a_decoded_messages_payload_is_the_message(p in message()) {
            use crate::contract::raw::{decode_messages, RawMessage};
            let batch = decode_messages(&[RawMessage { partition: 0, offset: 0, timestamp: 0, payload: p.clone() }]);
            prop_assert_eq!(BatchView::new(&batch).payload(0), String::from_utf8_lossy(&p));
        }
    }
}
