//! The input topics' formats, as one closed set: what a runtime or connector needs to read any
//! job's inputs (decode a Kafka message, normalize an archive file, find the Kafka position
//! columns) without naming a topic's fields.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::columns as c;
use super::orders::{self, OrderDecoder};
use super::raw::{self, MessageDecoder};
use super::records::{self, RecordDecoder};
use super::schema::{self, ColumnTypeError, MissingColumns};

/// The format of an input topic (contract §1, §2) and of its archive (§3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Format {
    AdEvents,
    Orders,
    /// Records of an output table read back (the union job's inputs); not archived.
    Records,
}

/// Positions of the Kafka metadata columns in a format's canonical batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaColumns {
    pub partition: usize,
    pub offset: usize,
    pub timestamp: usize,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::AdEvents, Format::Orders];

    /// The contract's default topic name, which also names the format on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::AdEvents => c::AD_EVENTS_TOPIC,
            Self::Orders => c::ORDERS_TOPIC,
            Self::Records => "records",
        }
    }

    /// How messages say "a file of this format" and "its messages": (`ad-event`, `events`).
    pub fn nouns(self) -> (&'static str, &'static str) {
        match self {
            Self::AdEvents => ("ad-event", "events"),
            Self::Orders => ("order", "orders"),
            Self::Records => ("record", "records"),
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The form decoders build and the core reads (plain strings).
    pub fn canonical_schema(self) -> SchemaRef {
        match self {
            Self::AdEvents => schema::canonical_input_schema(),
            Self::Orders => orders::canonical_schema(),
            Self::Records => records::canonical_schema(),
        }
    }

    /// The same with views for the columns that are (nearly) unique per row, if the format has
    /// such a form: what archive files decode to (see [`schema::canonical_viewed_schema`]).
    pub fn viewed_schema(self) -> Option<SchemaRef> {
        match self {
            Self::AdEvents => Some(schema::canonical_viewed_schema()),
            Self::Orders | Self::Records => None,
        }
    }

    pub fn archive_schema(self) -> SchemaRef {
        match self {
            Self::AdEvents => schema::archive_schema(),
            Self::Orders => orders::archive_schema(),
            Self::Records => records::canonical_schema(),
        }
    }

    /// Brings a batch read from any archiver's file into a canonical form.
    pub fn normalize(self, batch: &RecordBatch) -> Result<(RecordBatch, MissingColumns), ColumnTypeError> {
        match self {
            Self::AdEvents => schema::normalize(batch),
            Self::Orders => orders::normalize(batch),
            Self::Records => Ok((batch.clone(), Vec::new())),
        }
    }

    pub fn meta_columns(self) -> MetaColumns {
        match self {
            Self::AdEvents => MetaColumns {
                partition: schema::col::KAFKA_PARTITION,
                offset: schema::col::KAFKA_OFFSET,
                timestamp: schema::col::KAFKA_TIMESTAMP,
            },
            Self::Orders => MetaColumns {
                partition: orders::col::KAFKA_PARTITION,
                offset: orders::col::KAFKA_OFFSET,
                timestamp: orders::col::KAFKA_TIMESTAMP,
            },
            Self::Records => MetaColumns {
                partition: records::col::KAFKA_PARTITION,
                offset: records::col::KAFKA_OFFSET,
                timestamp: records::col::KAFKA_TIMESTAMP,
            },
        }
    }

    /// A decoder for `n` messages of `payload_bytes` in all.
    pub fn decoder(self, n: usize, payload_bytes: usize) -> Decoder {
        match self {
            Self::AdEvents => Decoder::AdEvents(MessageDecoder::with_capacity_for(n, payload_bytes)),
            Self::Orders => Decoder::Orders(OrderDecoder::with_capacity(n, payload_bytes)),
            Self::Records => Decoder::Records(RecordDecoder::with_capacity(n, payload_bytes)),
        }
    }

    /// What the contract's archiver writes of a decoded batch.
    pub fn to_archive_rows(self, batch: &RecordBatch) -> RecordBatch {
        match self {
            Self::AdEvents => raw::to_archive_rows(batch),
            Self::Orders => orders::to_archive_rows(batch),
            Self::Records => batch.clone(),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Decodes Kafka messages of one format into its canonical batch, one row per message.
// One lives per poll slice and input, never many at once: boxing the larger variant would only
// add an allocation to the stream job's hot path.
#[allow(clippy::large_enum_variant)]
pub enum Decoder {
    AdEvents(MessageDecoder),
    Orders(OrderDecoder),
    Records(RecordDecoder),
}

impl Decoder {
    #[inline]
    pub fn append(&mut self, partition: i32, offset: i64, timestamp: i64, payload: &[u8]) {
        match self {
            Self::AdEvents(d) => d.append(partition, offset, timestamp, payload),
            Self::Orders(d) => d.append(partition, offset, timestamp, payload),
            Self::Records(d) => d.append(partition, offset, timestamp, payload),
        }
    }

    pub fn finish(self) -> RecordBatch {
        match self {
            Self::AdEvents(d) => d.finish(),
            Self::Orders(d) => d.finish(),
            Self::Records(d) => d.finish(),
        }
    }
}

/// Decodes messages of one format: a test's or a replay's polls.
pub fn decode(format: Format, messages: &[raw::RawMessage]) -> RecordBatch {
    let mut d = format.decoder(messages.len(), messages.iter().map(|m| m.payload.len()).sum());
    for m in messages {
        d.append(m.partition, m.offset, m.timestamp, &m.payload);
    }
    d.finish()
}
