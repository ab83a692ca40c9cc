//! The unbounded runtime. [`driver::StreamDriver`] is its pure core: how polls become epochs
//! and how Kafka timestamps become watermarks. The Kafka connector puts a consumer and a
//! transactional producer around it.

pub mod driver;
