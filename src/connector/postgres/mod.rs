//! PostgreSQL as the serving store (the seed system's Pinot, upserting on `record_uuid`): the
//! tables `adsproc load` writes, checked against the contract before anything is written, and
//! the batch upsert that commits rows and the consumed offsets in one database transaction.

use std::time::Duration;

use anyhow::Context;

pub mod read;
pub mod rows;
pub mod table;
pub mod upsert;

/// A database URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Where the database is, for messages: never the password.
pub fn describe_database(url: &str) -> String {
    match url.parse::<postgres::Config>() {
        Ok(c) => {
            let host = c
                .get_hosts()
                .first()
                .map(|h| match h {
                    postgres::config::Host::Tcp(h) => h.clone(),
                    postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_else(|| "localhost".into());
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!("postgres://{host}:{port}/{}", c.get_dbname().unwrap_or(c.get_user().unwrap_or("")))
        }
        Err(_) => "the database".into(),
    }
}

/// A client of the database at `url` (a URL or libpq's key=value form), named `application`
/// in the server's activity, with a 10 s connect timeout unless the URL sets one.
pub fn connect(url: &str, application: &str) -> anyhow::Result<postgres::Client> {
    let mut config: postgres::Config = url.parse().with_context(|| format!("{:?} is not a PostgreSQL URL (postgres://user@host:port/db)", redacted(url)))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    // CREATE … IF NOT EXISTS says NOTICE when the table exists: not worth a log line.
    config
        .options("-c client_min_messages=warning")
        .application_name(application)
        .connect(postgres::NoTls)
        .with_context(|| format!("cannot connect to {}", describe_database(url)))
}
