//! Kafka through librdkafka (rdkafka): client settings, topic admin, a reader for the source
//! topic, the key-group membership consumer and the transactional output.

pub mod admin;
pub mod archiver;
pub mod broker;
pub mod membership;
pub mod reader;
pub mod regions;
pub mod settings;
pub mod table_sink;
pub mod topic_dump;
pub mod txn_output;

pub use settings::KafkaSettings;
