//! Column and field names fixed by the contract.

pub const EVENT_ID: &str = "event_id";
pub const EVENT_TYPE: &str = "event_type";
pub const AD_ID: &str = "ad_id";
pub const CAMPAIGN_ID: &str = "campaign_id";
pub const ADVERTISER_ID: &str = "advertiser_id";
pub const USER_ID: &str = "user_id";
pub const STORE_ID: &str = "store_id";
pub const EVENT_TIME: &str = "event_time";
pub const REGION: &str = "region";

pub const KAFKA_PARTITION: &str = "_kafka_partition";
pub const KAFKA_OFFSET: &str = "_kafka_offset";
pub const KAFKA_TIMESTAMP: &str = "_kafka_timestamp";

/// Not in the archive: set by the stream decoder when a field of a JSON message had the wrong
/// type, so the dead-letter reason names the field instead of saying "missing".
pub const DECODE_ERROR: &str = "_decode_error";
/// Not in the archive: the original message bytes, kept so a dead-letter record carries the
/// payload exactly as received.
pub const RAW_PAYLOAD: &str = "_raw_payload";

/// The string fields of a raw ad event, in contract order.
pub const AD_EVENT_STRING_FIELDS: [&str; 8] =
    [EVENT_ID, EVENT_TYPE, AD_ID, CAMPAIGN_ID, ADVERTISER_ID, USER_ID, STORE_ID, REGION];

/// Fields of an order (`orders` topic, contract §2); `user_id`, `store_id` and `region` are
/// named above.
pub const ORDER_ID: &str = "order_id";
pub const ORDER_TIME: &str = "order_time";
pub const STATUS: &str = "status";
pub const AMOUNT_CENTS: &str = "amount_cents";
pub const CURRENCY: &str = "currency";

/// Order statuses (contract §2).
pub const PLACED: &str = "placed";
pub const COMPLETED: &str = "completed";
pub const CANCELLED: &str = "cancelled";

/// The key of every output record (see `record_uuid`).
pub const RECORD_UUID: &str = "record_uuid";

pub const IMPRESSION: &str = "impression";
pub const CLICK: &str = "click";

/// Default topic names.
pub const AD_EVENTS_TOPIC: &str = "ad-events";
pub const ORDERS_TOPIC: &str = "orders";
pub const AD_METRICS_TABLE: &str = "ad-metrics";
pub const ATTRIBUTED_ORDERS_TABLE: &str = "attributed-orders";
pub const DLQ_TABLE: &str = "dlq";
