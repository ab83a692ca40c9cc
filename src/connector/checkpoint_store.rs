//! Checkpoints in an object store: `<root>/kg-<group>/<seq, 20 digits>.ckpt`.

use anyhow::Context;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::runtime::Handle;

use super::store::Location;
use crate::runtime::stream::checkpoint::CheckpointStore;

pub struct ObjectCheckpoints {
    location: Location,
    rt: Handle,
}

impl ObjectCheckpoints {
    pub fn new(location: Location, rt: Handle) -> Self {
        Self { location, rt }
    }

    fn path(&self, g: u32, seq: u64) -> object_store::path::Path {
        self.location.child(&format!("kg-{g:04}/{seq:020}.ckpt"))
    }

    fn url(&self, g: u32, seq: u64) -> String {
        format!("{}/kg-{g:04}/{seq:020}.ckpt", self.location.url.trim_end_matches('/'))
    }
}

impl CheckpointStore for ObjectCheckpoints {
    /// All at once: one round trip's wait for all the groups' puts on S3, and on a local
    /// directory the writes run on tokio's blocking threads in parallel.
    fn put_all(&self, checkpoints: Vec<(u32, u64, Vec<u8>)>) -> anyhow::Result<()> {
        let puts = checkpoints.into_iter().map(|(g, seq, bytes)| async move {
            self.location
                .store
                .put(&self.path(g, seq), PutPayload::from(bytes))
                .await
                .with_context(|| format!("cannot write checkpoint {}", self.url(g, seq)))
        });
        self.rt.block_on(futures::future::try_join_all(puts))?;
        Ok(())
    }

    fn get(&self, g: u32, seq: u64) -> anyhow::Result<Vec<u8>> {
        let path = self.path(g, seq);
        let got = self.rt.block_on(async { self.location.store.get(&path).await?.bytes().await });
        match got {
            Ok(b) => Ok(b.to_vec()),
            Err(object_store::Error::NotFound { .. }) => anyhow::bail!(
                "checkpoint {} is missing: the consumer group's committed offsets name it, so starting without it would lose or repeat output",
                self.url(g, seq)
            ),
            Err(e) => Err(e).with_context(|| format!("cannot read checkpoint {}", self.url(g, seq))),
        }
    }

    fn prune(&self, g: u32, keep_from: u64) -> anyhow::Result<()> {
        let dir = self.location.child(&format!("kg-{g:04}"));
        self.rt.block_on(async {
            let listed: Vec<_> = self.location.store.list(Some(&dir)).try_collect().await?;
            for meta in listed {
                let seq = meta.location.filename().and_then(|f| f.strip_suffix(".ckpt")).and_then(|s| s.parse::<u64>().ok());
                if seq.is_some_and(|s| s < keep_from) {
                    self.location.store.delete(&meta.location).await?;
                }
            }
            Ok::<_, object_store::Error>(())
        })
        .with_context(|| format!("cannot prune old checkpoints under {}", self.location.url))
    }
}
