//! The one interface every workload is written against, and the adapters for each engine.

use std::collections::HashMap;
use std::path::Path;

use parking_lot_free::ShardedMap;

use crate::config::{Config, EngineKind};
use crate::BenchResult;

/// Figures an engine can report about itself (all optional).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EngineStats {
    /// Live keys.
    pub keys: Option<u64>,
    /// In-memory index bytes per key beyond the key bytes themselves.
    pub keydir_bytes_per_key: Option<f64>,
    /// Bytes of the device/files in use.
    pub used_bytes: Option<u64>,
    /// Live user bytes (keys + values of live records).
    pub live_bytes: Option<u64>,
    /// Engine-counted write amplification (device bytes written / user bytes written).
    pub write_amplification: Option<f64>,
    /// Free-form lines printed by the `stats` benchmark.
    pub lines: Vec<String>,
}

/// A key-value engine under test. Shared by all client threads.
pub trait Engine: Send + Sync {
    /// Display name, e.g. `blobcask/native`.
    fn name(&self) -> String;
    fn put(&self, key: &[u8], value: &[u8]) -> BenchResult<()>;
    /// The value, or `None` if absent. `buf` may be used to avoid an allocation.
    fn get(&self, key: &[u8]) -> BenchResult<Option<Vec<u8>>>;
    /// The values of `keys`, in order (db_bench `multireadrandom`). The default is a loop of
    /// `get`s; engines with a batched read override it.
    fn multi_get(&self, keys: &[Vec<u8>]) -> BenchResult<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    fn delete(&self, key: &[u8]) -> BenchResult<()>;
    /// Make every acknowledged write durable.
    fn sync(&self) -> BenchResult<()>;
    /// Visit every live pair (in any order); `f` returns false to stop. Returns pairs visited.
    fn scan(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> BenchResult<u64>;
    /// Compaction / merge, if the engine has one.
    fn compact(&self) -> BenchResult<()> {
        Ok(())
    }
    /// What the engine knows about itself.
    fn stats(&self) -> BenchResult<EngineStats> {
        Ok(EngineStats::default())
    }
    /// Whether a close + reopen keeps the data (false for RAM-only engines).
    fn reopenable(&self) -> bool {
        true
    }
    /// Flush and close.
    fn close(self: Box<Self>) -> BenchResult<()>;
}

/// Open (or create) the configured engine at `path` (an image file for blobcask, a
/// directory for the peers).
pub fn open_engine(cfg: &Config, path: &Path, create: bool) -> BenchResult<Box<dyn Engine>> {
    match cfg.engine {
        EngineKind::Hashmap => Ok(Box::new(HashMapEngine::default())),
        EngineKind::Blobcask => crate::blobcask_engine::open(cfg, path, create),
        EngineKind::Rocksdb => {
            #[cfg(feature = "rocksdb")]
            {
                crate::peers::rocks::open(cfg, path, create)
            }
            #[cfg(not(feature = "rocksdb"))]
            {
                Err(not_built("rocksdb"))
            }
        }
        EngineKind::Sled => {
            #[cfg(feature = "sled")]
            {
                crate::peers::sled_engine::open(cfg, path, create)
            }
            #[cfg(not(feature = "sled"))]
            {
                Err(not_built("sled"))
            }
        }
        EngineKind::Fjall => {
            #[cfg(feature = "fjall")]
            {
                crate::peers::fjall_engine::open(cfg, path, create)
            }
            #[cfg(not(feature = "fjall"))]
            {
                Err(not_built("fjall"))
            }
        }
        EngineKind::Redb => {
            #[cfg(feature = "redb")]
            {
                crate::peers::redb_engine::open(cfg, path, create)
            }
            #[cfg(not(feature = "redb"))]
            {
                Err(not_built("redb"))
            }
        }
    }
}

#[allow(dead_code)]
fn not_built(name: &str) -> crate::BenchError {
    format!(
        "--engine={name} needs the bench crate's `{name}` feature: \
         cargo build -p blobcask-bench --release --features {name}"
    )
    .into()
}

/// Sum of the sizes of the files under `path` (a file or a directory tree).
pub fn disk_usage(path: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(md) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if md.is_dir() {
            std::fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0)
        } else {
            use std::os::unix::fs::MetadataExt;
            // Allocated bytes, not the apparent size (preallocated files are sparse-free).
            md.blocks() * 512
        }
    }
    walk(path)
}

mod parking_lot_free {
    //! A tiny sharded map on std locks (the harness baseline needs no dependency).
    use std::collections::HashMap;
    use std::sync::Mutex;

    pub struct ShardedMap {
        pub shards: Vec<Mutex<HashMap<Vec<u8>, Vec<u8>>>>,
    }

    impl Default for ShardedMap {
        fn default() -> Self {
            ShardedMap {
                shards: (0..64).map(|_| Mutex::new(HashMap::new())).collect(),
            }
        }
    }

    impl ShardedMap {
        pub fn shard(&self, key: &[u8]) -> &Mutex<HashMap<Vec<u8>, Vec<u8>>> {
            // FNV-1a.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for &b in key {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            &self.shards[(h % self.shards.len() as u64) as usize]
        }
    }
}

/// `--engine=hashmap`: a RAM-only sharded hash map. Its rates are the harness's ceiling.
#[derive(Default)]
pub struct HashMapEngine {
    map: ShardedMap,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine for HashMapEngine {
    fn name(&self) -> String {
        "hashmap".into()
    }
    fn put(&self, key: &[u8], value: &[u8]) -> BenchResult<()> {
        lock(self.map.shard(key)).insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    fn get(&self, key: &[u8]) -> BenchResult<Option<Vec<u8>>> {
        Ok(lock(self.map.shard(key)).get(key).cloned())
    }
    fn delete(&self, key: &[u8]) -> BenchResult<()> {
        lock(self.map.shard(key)).remove(key);
        Ok(())
    }
    fn sync(&self) -> BenchResult<()> {
        Ok(())
    }
    fn scan(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> BenchResult<u64> {
        let mut n = 0;
        for s in &self.map.shards {
            let snapshot: HashMap<Vec<u8>, Vec<u8>> = lock(s).clone();
            for (k, v) in &snapshot {
                n += 1;
                if !f(k, v) {
                    return Ok(n);
                }
            }
        }
        Ok(n)
    }
    fn stats(&self) -> BenchResult<EngineStats> {
        let keys: usize = self.map.shards.iter().map(|s| lock(s).len()).sum();
        Ok(EngineStats {
            keys: Some(keys as u64),
            ..Default::default()
        })
    }
    fn reopenable(&self) -> bool {
        false
    }
    fn close(self: Box<Self>) -> BenchResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_multi_get_answers_each_key_in_order() {
        let e = HashMapEngine::default();
        e.put(b"a", b"1").unwrap();
        e.put(b"c", b"3").unwrap();
        let keys = [b"c".to_vec(), b"b".to_vec(), b"a".to_vec(), b"c".to_vec()];
        let got = e.multi_get(&keys).unwrap();
        assert_eq!(
            got,
            [
                Some(b"3".to_vec()),
                None,
                Some(b"1".to_vec()),
                Some(b"3".to_vec())
            ]
        );
        assert!(e.multi_get(&[]).unwrap().is_empty());
    }
}
