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

/// Messages behind each assigned partition's end: (topic, partition, lag), from the consumer's
/// own position and the high watermark of its last fetch, without a request to the broker. A
/// partition not fetched yet is left out.
pub fn consumer_lag<C: rdkafka::consumer::ConsumerContext>(consumer: &rdkafka::consumer::BaseConsumer<C>) -> Vec<(String, i32, i64)> {
    use rdkafka::bindings as rd;
    use rdkafka::consumer::Consumer;
    let Ok(positions) = consumer.position() else { return Vec::new() };
    let mut out = Vec::new();
    for e in positions.elements() {
        let rdkafka::Offset::Offset(position) = e.offset() else { continue };
        let Ok(topic) = std::ffi::CString::new(e.topic()) else { continue };
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: a live client, a NUL-terminated topic name and two out-parameters; librdkafka
        // answers from its cache.
        let err = unsafe { rd::rd_kafka_get_watermark_offsets(consumer.client().native_ptr(), topic.as_ptr(), e.partition(), &mut low, &mut high) };
        if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0 {
            out.push((e.topic().to_string(), e.partition(), (high - position).max(0)));
        }
    }
    out
}
