//! A local S3-protocol server (moto_server, PyPI `moto[server]`) on 127.0.0.1 for tests.
//! `scripts/test.sh` installs it; ADSPROC_MOTO_SERVER names another executable.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_moto() -> Moto {
    let exe = std::env::var("ADSPROC_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&exe)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {exe} ({e}): install it with `pip install 'moto[server]'` or run scripts/test.sh"));
    let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not listen on 127.0.0.1:{port} within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    moto
}

/// CreateBucket: object_store reads and writes objects but does not create buckets. Retried
/// on I/O errors: once, in the suite, with two tests starting their servers at the same time, a
/// moto_server that was already listening reset this connection (not reproduced since, also
/// not with both cores kept busy).
pub fn create_bucket(endpoint: &str, bucket: &str) {
    let addr = endpoint.trim_start_matches("http://");
    let attempt = || -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let reply = loop {
        match attempt() {
            Ok(reply) => break reply,
            Err(e) if Instant::now() < deadline => {
                eprintln!("CreateBucket {bucket}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("CreateBucket {bucket} on {addr}: {e}"),
        }
    };
    assert!(reply.starts_with("HTTP/1.1 200"), "CreateBucket failed: {reply}");
}

pub fn s3_options(endpoint: &str) -> Vec<String> {
    [format!("endpoint={endpoint}"), "allow_http=true".into(), "access_key_id=test".into(), "secret_access_key=test".into(), "region=us-east-1".into()]
        .into_iter()
        .flat_map(|o| ["--store-option".to_string(), o])
        .collect()
}

