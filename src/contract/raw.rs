//! Kafka messages of the `ad-events` topic as bytes, and their lenient decoding into the
//! canonical columnar form.
//!
//! Real traffic holds malformed messages; none may stop a job or vanish. A message that is not
//! a JSON object becomes a dead letter here. A JSON object decodes field by field: a field of
//! the wrong type becomes null and its name goes into `_decode_error`, so the validator can
//! reject the row with a precise reason while the other fields stay visible in the payload.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Builder, Int64Builder, RecordBatch, StringArray, StringBuilder,
    TimestampMillisecondBuilder,
};
use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::canonical_payload::{self, EventFields};
use super::columns as c;
use super::dictionary_column::DictionaryColumn;
use super::flat_json;
use super::schema::canonical_input_schema;

/// One consumed message: its position, its Kafka timestamp (the ingest time) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub payload: Vec<u8>,
}

/// `_decode_error` of a message that was not a JSON object starts with this.
pub const NOT_JSON: &str = "not_json: ";

/// Decodes a poll's messages into one canonical batch, one row per message in order. A message
/// that is not a JSON object becomes a row with only its position and payload, and
/// `_decode_error` = [`NOT_JSON`] + why: the validator dead-letters it like any other invalid
/// row, so every message has exactly one row and one fate.
pub fn decode_messages(messages: &[RawMessage]) -> RecordBatch {
    let mut d = MessageDecoder::with_capacity(messages.len());
    for m in messages {
        d.append(m.partition, m.offset, m.timestamp, &m.payload);
    }
    d.finish()
}

/// Builds a canonical batch message by message, from borrowed payloads: a consumer can decode
/// each message straight out of its client's buffer, with no copy of its own.
pub struct MessageDecoder {
    b: Builders,
    /// The key order of the last message read by the fast path.
    keys: flat_json::KeyOrder,
}

impl MessageDecoder {
    pub fn with_capacity(n: usize) -> Self {
        Self::with_capacity_for(n, n * 256)
    }

    /// Room for `n` messages of `payload_bytes` in all. Worth getting right for large polls:
    /// a builder that outgrows its buffer copies it into a fresh one twice the size, and on
    /// the VMs measured here fresh memory (the kernel zeroing each page) cost more than the
    /// decoding (a fifth of the stream job's CPU went to growing the payload column).
    pub fn with_capacity_for(n: usize, payload_bytes: usize) -> Self {
        Self { b: Builders::with_capacity(n, payload_bytes), keys: flat_json::KeyOrder::default() }
    }

    pub fn len(&self) -> usize {
        arrow::array::ArrayBuilder::len(&self.b.partition)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn append(&mut self, partition: i32, offset: i64, timestamp: i64, payload: &[u8]) {
        // One UTF-8 check serves the fast path and the payload column.
        let text = std::str::from_utf8(payload).ok();
        let parsed = match text.and_then(|t| flat_json::parse_predicting(t, &mut self.keys)) {
            Some(fields) => Ok(Message::Object(fields)),
            None => parse(payload),
        };
        self.append_parsed_text((partition, offset, timestamp), payload, text, parsed);
    }

    #[cfg(test)]
    fn append_parsed(&mut self, partition: i32, offset: i64, timestamp: i64, payload: &[u8], parsed: Result<Message, String>) {
        self.append_parsed_text((partition, offset, timestamp), payload, std::str::from_utf8(payload).ok(), parsed);
    }

    /// `pos`: partition, offset, timestamp; `text`: the payload if it is UTF-8.
    fn append_parsed_text(&mut self, pos: (i32, i64, i64), payload: &[u8], text: Option<&str>, parsed: Result<Message, String>) {
        let recreated = match parsed {
            Ok(Message::Object(fields)) => self.b.append(pos, &fields, payload),
            Ok(Message::Other(kind)) => self.b.append_not_json(pos, &format!("a JSON {kind}, not an object")),
            Err(e) => self.b.append_not_json(pos, &e),
        };
        if recreated {
            self.b.raw.append_null();
        } else {
            self.b.append_raw(payload, text);
        }
    }

    pub fn finish(self) -> RecordBatch {
        self.b.finish()
    }
}

/// The general path, for what the fast path ([`flat_json`]) does not read.
///
/// Parses a payload with sonic-rs (SIMD: JSON parsing was a quarter of the stream job's CPU
/// with serde_json) when it is one sonic-rs is known to read as serde_json does; everything
/// else, and whatever sonic-rs rejects, goes to serde_json. So a dead letter's reason keeps
/// serde_json's wording, and `tests::sonic_reads_messages_as_serde_json_does` holds the two
/// parsers to the same reading of what sonic-rs is given.
///
/// Not given to sonic-rs:
/// - a payload with a backslash: sonic-rs skips an ignored field's `\u` escape without
///   checking its four hex digits (`"\u\0000"` passes), where serde_json rejects the message.
///   Escapes are rare in ad events, so this costs little.
/// - a payload with many brackets: sonic-rs nests 255 levels deep before it gives up, and its
///   frames are large enough that 200 levels overflowed a test thread's 2 MiB stack, where
///   serde_json stops at 128. The count bounds the nesting depth; a contract message has one
///   level.
fn parse(payload: &[u8]) -> Result<Message<'_>, String> {
    if !for_sonic(payload) {
        return parse_serde_json(payload);
    }
    sonic_rs::from_slice::<Message>(payload).or_else(|_| parse_serde_json(payload))
}

/// Whether [`parse`] gives the payload to sonic-rs first: one pass, which the compiler
/// vectorizes.
fn for_sonic(payload: &[u8]) -> bool {
    let (mut brackets, mut backslash) = (0usize, false);
    for &b in payload {
        brackets += usize::from(b == b'{' || b == b'[');
        backslash |= b == b'\\';
    }
    !backslash && brackets <= MAX_SONIC_BRACKETS
}

const MAX_SONIC_BRACKETS: usize = 32;

fn parse_serde_json(payload: &[u8]) -> Result<Message<'_>, String> {
    serde_json::from_slice::<Message>(payload).map_err(|e| e.to_string())
}

/// Whether a decoded row is a message that was not a JSON object.
pub fn is_not_json(decode_error: &StringArray, row: usize) -> bool {
    !decode_error.is_null(row) && decode_error.value(row).starts_with(NOT_JSON)
}

/// A message as the decoder reads it: the contract's fields of a JSON object, borrowed from
/// the payload where no unescaping is needed, or what else the JSON value was. Decoding
/// straight into this instead of a `serde_json::Value` skips a map and a string allocation per
/// field, which is most of the stream job's decoding cost.
// One lives on the stack per message decoded; boxing the object would allocate per message.
#[allow(clippy::large_enum_variant)]
enum Message<'a> {
    Object(Fields<'a>),
    Other(&'static str),
}

/// The contract's fields; `None` when absent. A repeated key keeps its last value, as a JSON
/// object read into a map would.
#[derive(Default)]
pub(super) struct Fields<'a> {
    pub(super) strings: [Option<Scalar<'a>>; c::AD_EVENT_STRING_FIELDS.len()],
    pub(super) event_time: Option<Scalar<'a>>,
    /// Set by the fast path: the payload is the contract's fields, each once, in the order and
    /// form [`canonical_payload::write`] writes them, if they are all of the right type.
    pub(super) canonical_layout: bool,
}

/// One field's JSON value, reduced to what validation needs.
#[derive(Debug)]
pub(super) enum Scalar<'a> {
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    /// A number that is not an integer in the range of i64.
    OtherNumber,
    Other(&'static str),
}

impl Scalar<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Str(_) => "string",
            Scalar::Int(_) | Scalar::OtherNumber => "number",
            Scalar::Other(k) => k,
        }
    }
}

impl<'de> Deserialize<'de> for Message<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Message<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Fields::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key.0 {
                        Some(FieldSlot::String(i)) => fields.strings[i] = Some(map.next_value()?),
                        Some(FieldSlot::EventTime) => fields.event_time = Some(map.next_value()?),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Message::Object(fields))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Message::Other("array"))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Message::Other("null"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Message::Other("boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Message::Other("number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Message::Other("number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Message::Other("number"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Message::Other("string"))
            }
        }
        d.deserialize_any(V)
    }
}

enum FieldSlot {
    /// Index into [`c::AD_EVENT_STRING_FIELDS`].
    String(usize),
    EventTime,
}

/// An object key: which contract field it names, if any.
struct Key(Option<FieldSlot>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, k: &str) -> Result<Key, E> {
                if k == c::EVENT_TIME {
                    return Ok(Key(Some(FieldSlot::EventTime)));
                }
                Ok(Key(c::AD_EVENT_STRING_FIELDS.iter().position(|f| *f == k).map(FieldSlot::String)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(s)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(Scalar::OtherNumber, Scalar::Int))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Scalar::OtherNumber)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Other("boolean"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("object"))
            }
        }
        d.deserialize_any(V)
    }
}

struct Builders {
    event_id: StringBuilder,
    event_type: DictionaryColumn,
    ad_id: DictionaryColumn,
    campaign_id: DictionaryColumn,
    advertiser_id: DictionaryColumn,
    user_id: StringBuilder,
    store_id: StringBuilder,
    event_time: TimestampMillisecondBuilder,
    region: DictionaryColumn,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    decode_error: StringBuilder,
    /// The payload, null when the row's fields re-create it ([`canonical_payload`]).
    raw: StringBuilder,
}

impl Builders {
    fn with_capacity(n: usize, payload_bytes: usize) -> Self {
        Self {
            event_id: StringBuilder::with_capacity(n, n * 36),
            event_type: DictionaryColumn::with_capacity(n),
            ad_id: DictionaryColumn::with_capacity(n),
            campaign_id: DictionaryColumn::with_capacity(n),
            advertiser_id: DictionaryColumn::with_capacity(n),
            user_id: StringBuilder::with_capacity(n, n * 16),
            store_id: StringBuilder::with_capacity(n, n * 16),
            event_time: TimestampMillisecondBuilder::with_capacity(n),
            region: DictionaryColumn::with_capacity(n),
            partition: Int32Builder::with_capacity(n),
            offset: Int64Builder::with_capacity(n),
            timestamp: TimestampMillisecondBuilder::with_capacity(n),
            decode_error: StringBuilder::new(),
            raw: StringBuilder::with_capacity(n, payload_bytes),
        }
    }

    /// Appends a JSON object's fields; true if they re-create `payload` byte for byte, so that
    /// the payload column need not hold it.
    fn append(&mut self, (partition, offset, timestamp): (i32, i64, i64), fields: &Fields, payload: &[u8]) -> bool {
        let mut errors: Vec<String> = Vec::new();
        let mut strings: [Option<&str>; c::AD_EVENT_STRING_FIELDS.len()] = Default::default();
        for (i, (value, name)) in fields.strings.iter().zip(c::AD_EVENT_STRING_FIELDS).enumerate() {
            strings[i] = match value {
                None | Some(Scalar::Null) => None,
                Some(Scalar::Str(s)) => Some(s.as_ref()),
                Some(other) => {
                    errors.push(format!("{name} is a {}, expected a string", other.kind()));
                    None
                }
            };
        }
        let [event_id, event_type, ad_id, campaign_id, advertiser_id, user_id, store_id, region] = strings;
        self.event_id.append_option(event_id);
        self.event_type.append_option(event_type);
        self.ad_id.append_option(ad_id);
        self.campaign_id.append_option(campaign_id);
        self.advertiser_id.append_option(advertiser_id);
        self.user_id.append_option(user_id);
        self.store_id.append_option(store_id);
        self.region.append_option(region);
        let event_time = match &fields.event_time {
            None | Some(Scalar::Null) => None,
            Some(Scalar::Int(t)) => Some(*t),
            Some(other) => {
                errors.push(format!(
                    "event_time is {}, expected integer epoch milliseconds",
                    if matches!(other, Scalar::OtherNumber) { "a non-integer number".to_string() } else { format!("a {}", other.kind()) }
                ));
                None
            }
        };
        self.event_time.append_option(event_time);
        self.position(partition, offset, timestamp);
        if !errors.is_empty() {
            self.decode_error.append_value(errors.join("; "));
            return false;
        }
        self.decode_error.append_null();
        if cfg!(debug_assertions) && fields.canonical_layout {
            let mut written = Vec::new();
            let event = EventFields { ad_id, advertiser_id, campaign_id, event_id, event_time, event_type, region, store_id, user_id };
            canonical_payload::write(&mut written, &event);
            assert_eq!(written, payload, "the fast path's canonical layout must re-create the payload");
        }
        fields.canonical_layout
    }

    /// Appends a message that is not a JSON object; false: its payload is kept.
    fn append_not_json(&mut self, (partition, offset, timestamp): (i32, i64, i64), why: &str) -> bool {
        self.event_id.append_null();
        self.event_type.append_null();
        self.ad_id.append_null();
        self.campaign_id.append_null();
        self.advertiser_id.append_null();
        self.user_id.append_null();
        self.store_id.append_null();
        self.region.append_null();
        self.event_time.append_null();
        self.position(partition, offset, timestamp);
        self.decode_error.append_value(format!("{NOT_JSON}{why}"));
        false
    }

    fn position(&mut self, partition: i32, offset: i64, timestamp: i64) {
        self.partition.append_value(partition);
        self.offset.append_value(offset);
        self.timestamp.append_value(timestamp);
    }

    /// The payload, given as `text` if it is UTF-8. No copy but the builder's; checked with
    /// `from_utf8` first because `from_utf8_lossy` checks valid text byte by byte, `from_utf8`
    /// a word at a time while it is ASCII.
    fn append_raw(&mut self, payload: &[u8], text: Option<&str>) {
        match text {
            Some(text) => self.raw.append_value(text),
            None => self.raw.append_value(String::from_utf8_lossy(payload)),
        }
    }

    fn finish(mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.ad_id.finish()),
            Arc::new(self.campaign_id.finish()),
            Arc::new(self.advertiser_id.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.store_id.finish()),
            Arc::new(self.event_time.finish().with_timezone("UTC")),
            Arc::new(self.region.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish().with_timezone("UTC")),
            Arc::new(self.decode_error.finish()),
            Arc::new(self.raw.finish()),
        ];
        RecordBatch::try_new(canonical_input_schema(), columns).expect("built to the canonical schema")
    }
}

/// What the contract's archiver writes for a decoded batch: the archive columns only (wrongly
/// typed values were already nulled by the decoder, as a typed Parquet column cannot hold them),
/// and no row for a message that was not a JSON object (the contract does not archive those).
pub fn to_archive_rows(batch: &RecordBatch) -> RecordBatch {
    let schema = super::schema::archive_schema();
    let n = schema.fields().len();
    let errors = batch.column(super::schema::col::DECODE_ERROR).as_string::<i32>();
    let keep: BooleanArray = (0..batch.num_rows()).map(|r| Some(!is_not_json(errors, r))).collect();
    let kept = arrow::compute::filter_record_batch(batch, &keep).expect("same length");
    RecordBatch::try_new(schema, kept.columns()[..n].to_vec()).expect("archive columns are a prefix")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::schema::col;

    fn msg(offset: i64, payload: &str) -> RawMessage {
        RawMessage { partition: 1, offset, timestamp: 5, payload: payload.as_bytes().to_vec() }
    }

    #[test]
    fn non_objects_are_dead_letters_and_wrong_types_are_named() {
        let msgs = [
            msg(0, "{\"event_id\":\"e\",\"ad_id\":7,\"event_time\":\"soon\"}"),
            msg(1, "not json"),
            msg(2, "[1,2]"),
        ];
        let batch = decode_messages(&msgs);
        assert_eq!(batch.num_rows(), 3);
        let err = batch.column(col::DECODE_ERROR).as_any().downcast_ref::<StringArray>().unwrap();
        assert!(is_not_json(err, 1) && is_not_json(err, 2) && !is_not_json(err, 0));
        assert_eq!(err.value(2), "not_json: a JSON array, not an object");
        let raw = batch.column(col::RAW_PAYLOAD).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(raw.value(2), "[1,2]");
        assert_eq!(to_archive_rows(&batch).num_rows(), 1);
        assert_eq!(
            err.value(0),
            "ad_id is a number, expected a string; event_time is a string, expected integer epoch milliseconds"
        );
        assert!(batch.column(col::AD_ID).is_null(0));
    }

    /// Decodes the `payloads` that `accepts` takes twice, once through `parse` (the parser
    /// called `name`) and once as serde_json reads them; serde_json must accept them too, and
    /// every column but those in `skip` must be the same.
    fn agrees_with_serde_json(
        name: &str,
        payloads: &[Vec<u8>],
        accepts: impl Fn(&[u8]) -> bool,
        parse: fn(&[u8]) -> Result<Message<'_>, String>,
        skip: &[usize],
    ) -> Result<usize, String> {
        let accepted: Vec<&Vec<u8>> = payloads.iter().filter(|p| accepts(p)).collect();
        let decode = |parse: fn(&[u8]) -> Result<Message<'_>, String>| {
            let mut d = MessageDecoder::with_capacity(accepted.len());
            for (i, p) in accepted.iter().enumerate() {
                d.append_parsed(0, i as i64, 0, p, parse(p));
            }
            d.finish()
        };
        for p in &accepted {
            if let Err(e) = parse_serde_json(p) {
                return Err(format!("{name} accepts what serde_json rejects ({e}): {:?}", String::from_utf8_lossy(p)));
            }
        }
        let theirs = decode(parse);
        let serde = decode(parse_serde_json);
        for (i, (a, b)) in theirs.columns().iter().zip(serde.columns()).enumerate().filter(|(i, _)| !skip.contains(i)) {
            for (row, p) in accepted.iter().enumerate() {
                if a.slice(row, 1).to_data() != b.slice(row, 1).to_data() {
                    let field = theirs.schema().field(i).name().clone();
                    return Err(format!("{field} differs for {:?}: {:?} vs {:?}", String::from_utf8_lossy(p), a.slice(row, 1), b.slice(row, 1)));
                }
            }
        }
        Ok(accepted.len())
    }

    /// The payloads sonic-rs is given and accepts read as serde_json reads them.
    fn sonic_and_serde_json_agree(payloads: &[Vec<u8>]) -> Result<usize, String> {
        agrees_with_serde_json(
            "sonic-rs",
            payloads,
            |p| for_sonic(p) && sonic_rs::from_slice::<Message>(p).is_ok(),
            |p| sonic_rs::from_slice::<Message>(p).map_err(|e| e.to_string()),
            &[],
        )
    }

    /// Payloads at the edges of JSON's grammar and of serde_json's readings.
    fn edge_cases() -> Vec<Vec<u8>> {
        let numbers = [
            "0", "-0", "1.0", "-0.0", "1e3", "1E3", "-1", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
            "-9223372036854775809", "18446744073709551615", "18446744073709551616", "1e400", "0.1", "01", "1.", ".5", "+1", "NaN",
        ];
        let strings = [
            r#""""#, r#""é😀""#, r#""a\nb""#, r#""\"q\\""#, r#""\/""#, r#""\u00e9""#, r#""\ud83d\ude00""#, r#""\ud800""#,
            r#""\udc00x""#, r#""\u0000""#, "\"\u{1}\"", r#""\x""#, r#""\uD83D\uDE00""#,
        ];
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        for v in numbers.iter().chain(&strings).chain(&["null", "true", "[]", "{}", "[1,{\"a\":2}]"]) {
            payloads.push(format!("{{\"event_time\":{v},\"ad_id\":{v},\"other\":{v}}}").into_bytes());
            payloads.push(v.as_bytes().to_vec());
        }
        for raw in ["", " ", "{", "{}x", "{} ", " {\"event_id\":\"a\",\"event_id\":\"b\"}\n", "{\"event_id\":\"a\",}", "{\"a\" : 1 , \"b\":[ ] }"] {
            payloads.push(raw.as_bytes().to_vec());
        }
        payloads.push(b"{\"event_id\":\"\xff\"}".to_vec());
        payloads.push(b"{\"other\":\"\xc3\"}".to_vec());
        payloads
    }

    #[test]
    fn sonic_reads_edge_cases_as_serde_json_does() {
        let accepted = sonic_and_serde_json_agree(&edge_cases()).unwrap();
        assert!(accepted > 40, "only {accepted} payloads accepted: the test would check little");
    }

    /// The payloads the fast path accepts read as serde_json reads them. The fast path leaves
    /// out a payload its row re-creates, the general path never: `core::batch_view`'s
    /// `a_decoded_messages_payload_is_the_message` checks that column.
    fn flat_and_serde_json_agree(payloads: &[Vec<u8>]) -> Result<usize, String> {
        agrees_with_serde_json(
            "the fast path",
            payloads,
            |p| std::str::from_utf8(p).ok().and_then(flat_json::parse).is_some(),
            |p| Ok(Message::Object(flat_json::parse(std::str::from_utf8(p).expect("accepted")).expect("accepted"))),
            &[col::RAW_PAYLOAD],
        )
    }

    #[test]
    fn the_fast_path_reads_edge_cases_as_serde_json_does() {
        let accepted = flat_and_serde_json_agree(&edge_cases()).unwrap();
        assert!(accepted >= 10, "only {accepted} payloads accepted: the test would check little");
    }

    /// The shape producers send (`adsproc produce`, `Row::to_json`) takes the fast path, or
    /// the fast path would be dead code that only tests run.
    #[test]
    fn a_producers_message_takes_the_fast_path() {
        let p = concat!(
            r#"{"ad_id":"ad-00017","advertiser_id":"adv-003","campaign_id":"cmp-0042","event_id":"8d6f1a0e-5b1c-4f7e-9a55-2c1f0b9e7d31","#,
            r#""event_time":1767225600123,"event_type":"click","region":"us-east","store_id":null,"user_id":"u-991"}"#
        );
        let fields = flat_json::parse(p).expect("the fast path reads it");
        assert!(matches!(&fields.strings[2], Some(Scalar::Str(s)) if s == "ad-00017"));
        assert!(matches!(fields.event_time, Some(Scalar::Int(1767225600123))));
        assert!(matches!(fields.strings[6], Some(Scalar::Null)));
        assert_eq!(flat_and_serde_json_agree(&[p.as_bytes().to_vec()]), Ok(1));
        // Its row re-creates it, so its bytes are not kept; with other whitespace or another
        // order of keys they are.
        let spaced = p.replacen(",", ", ", 1);
        let reordered = p.replacen(r#""ad_id":"ad-00017","advertiser_id":"adv-003""#, r#""advertiser_id":"adv-003","ad_id":"ad-00017""#, 1);
        assert_ne!(reordered, p);
        let batch = decode_messages(&[msg(0, p), msg(1, &spaced), msg(2, &reordered)]);
        let raw = batch.column(col::RAW_PAYLOAD).as_string::<i32>();
        assert!(raw.is_null(0));
        assert_eq!(raw.value(1), spaced);
        assert_eq!(raw.value(2), reordered);
    }

    /// Deep nesting never reaches sonic-rs (see [`parse`]). serde_json skips an ignored field
    /// without recursing, so the message is read, and on a thread with a small stack.
    #[test]
    fn deep_nesting_in_an_ignored_field_is_read_as_serde_json_reads_it() {
        let deep = format!("{{\"event_id\":\"e\",\"other\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(!for_sonic(deep.as_bytes()));
        let batch = std::thread::Builder::new().stack_size(256 * 1024).spawn(move || decode_messages(&[msg(0, &deep)])).unwrap().join().unwrap();
        assert!(batch.column(col::DECODE_ERROR).is_null(0));
        assert_eq!(batch.column(col::EVENT_ID).as_string::<i32>().value(0), "e");
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            "[0-9]{1,25}",
            "-?[0-9]{1,3}(\\.[0-9]{0,3})?([eE][+-]?[0-9]{1,3})?",
            proptest::collection::vec(
                prop_oneof!["[a-z0-9 ]{0,4}", "\\PC{0,2}", Just("\\n".to_string()), Just("\\\"".to_string()), "\\\\u[0-9a-fA-F]{4}"],
                0..4
            )
            .prop_map(|parts| format!("\"{}\"", parts.concat())),
        ];
        leaf.prop_recursive(3, 12, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec(("[a-z_]{1,10}", inner), 0..3)
                    .prop_map(|kv| format!("{{{}}}", kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(","))),
            ]
        })
    }

    fn message() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let key = prop_oneof![
            proptest::sample::select(c::AD_EVENT_STRING_FIELDS.to_vec()).prop_map(str::to_string),
            Just(c::EVENT_TIME.to_string()),
            "[a-z_]{1,8}",
        ];
        let object = proptest::collection::vec((key, json_value()), 0..8).prop_map(|kv| {
            format!("{{{}}}", kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",")).into_bytes()
        });
        // Single-byte damage: a byte replaced or dropped, which makes most of them invalid in
        // ways a parser might miss.
        (object, any::<u8>(), any::<proptest::sample::Index>(), 0..3u8).prop_map(|(mut p, byte, at, damage)| {
            if !p.is_empty() {
                let i = at.index(p.len());
                match damage {
                    1 => p[i] = byte,
                    2 => {
                        p.remove(i);
                    }
                    _ => {}
                }
            }
            p
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        #[test]
        fn sonic_reads_messages_as_serde_json_does(p in message()) {
            if let Err(e) = sonic_and_serde_json_agree(std::slice::from_ref(&p)) {
                proptest::prop_assert!(false, "{}", e);
            }
        }

        #[test]
        fn flat_reads_messages_as_serde_json_does(p in message()) {
            if let Err(e) = flat_and_serde_json_agree(std::slice::from_ref(&p)) {
                proptest::prop_assert!(false, "{}", e);
            }
        }

        /// Whatever the key order predicted (the last message's, learned in any order), the
        /// fast path reads a message as it reads it without a prediction.
        #[test]
        fn a_predicted_key_order_reads_messages_as_without(p in message(), learned in message(), fresh in proptest::prelude::any::<bool>()) {
            let Ok(text) = std::str::from_utf8(&p) else { return Ok(()) };
            let mut order = flat_json::KeyOrder::default();
            if !fresh {
                if let Ok(l) = std::str::from_utf8(&learned) {
                    flat_json::parse_predicting(l, &mut order);
                }
            }
            let (plain, predicted) = (flat_json::parse(text), flat_json::parse_predicting(text, &mut order));
            proptest::prop_assert_eq!(plain.is_some(), predicted.is_some());
            if let (Some(a), Some(b)) = (plain, predicted) {
                proptest::prop_assert_eq!(format!("{:?}", (&a.strings, &a.event_time, a.canonical_layout)), format!("{:?}", (&b.strings, &b.event_time, b.canonical_layout)));
            }
        }
    }
}
