//! Client settings: `--brokers` plus librdkafka properties passed through as `-X key=value`,
//! as kcat does. Pass-through settings are applied last, so they override ours.

use rdkafka::ClientConfig;

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub overrides: Vec<(String, String)>,
}

impl KafkaSettings {
    pub fn new(brokers: &str, overrides: &[(String, String)]) -> Self {
        Self { brokers: brokers.to_string(), overrides: overrides.to_vec() }
    }

    /// A client config with `ours` applied, then the pass-through settings.
    pub fn config(&self, ours: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        // Fail fast and loudly when the broker is not there, instead of retrying for minutes.
        c.set("socket.connection.setup.timeout.ms", "10000");
        for (k, v) in ours {
            c.set(*k, *v);
        }
        for (k, v) in &self.overrides {
            c.set(k, v);
        }
        c
    }
}
