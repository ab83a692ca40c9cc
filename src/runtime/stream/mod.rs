//! The unbounded runtime. [`driver::StreamDriver`] is its pure core: how polls become epochs,
//! how Kafka timestamps become watermarks, and what a key group's checkpoint holds.
//! [`checkpoint`] is the checkpoint file format; [`job`] is the loop that wires a broker, a
//! checkpoint store and the driver into the exactly-once stream job; [`trigger`] decides when
//! it checkpoints.

pub mod checkpoint;
pub mod driver;
pub mod job;
#[cfg(test)]
pub mod memory_broker;
pub mod trigger;
