//! Peer engines, each behind the bench crate's cargo feature of the same name.
//!
//! Common settings: compression off (values are random and blobcask does not compress),
//! `--sync=1` makes every write durable before it returns (RocksDB: WAL on + `sync`; sled:
//! `flush()`; fjall: `persist(SyncData)`; redb: `Durability::Immediate`), `--sync=0` leaves
//! writes in OS buffers (RocksDB's and fjall's default). `--cache_size` sets each engine's
//! read cache.

#[allow(unused_imports)]
use crate::config::Config;
#[allow(unused_imports)]
use crate::engine::{disk_usage, Engine, EngineStats};
#[allow(unused_imports)]
use crate::BenchResult;

#[cfg(feature = "rocksdb")]
pub mod rocks {
    use super::*;
    use std::path::{Path, PathBuf};

    use rocksdb::{
        BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, IteratorMode, Options,
        WriteOptions, DB, DEFAULT_COLUMN_FAMILY_NAME,
    };

    pub struct Rocks {
        db: DB,
        wo: WriteOptions,
        path: PathBuf,
        direct: bool,
    }

    /// RocksDB as its users run it: the documented defaults of `Options` and
    /// `BlockBasedOptions` (RocksDB's own 32 MiB block cache, no bloom filter, its default
    /// background jobs), apart from what every engine of the bench gets: compression off
    /// (values are random) and the block cache that `--cache_size` gives. `--bloom_bits` and
    /// `--use_direct_reads` are there for runs that ask for them.
    pub fn open(cfg: &Config, path: &Path, create: bool) -> BenchResult<Box<dyn Engine>> {
        if create && path.exists() {
            std::fs::remove_dir_all(path)?;
        }
        let mut o = Options::default();
        o.create_if_missing(create);
        o.set_compression_type(DBCompressionType::None);
        if cfg.use_direct_reads {
            o.set_use_direct_reads(true);
            o.set_use_direct_io_for_flush_and_compaction(true);
        }
        let cache = cfg.cache_bytes()?;
        if cache.is_some() || cfg.bloom_bits >= 0 {
            let mut t = BlockBasedOptions::default();
            match cache {
                None => {}
                Some(0) => t.disable_cache(),
                Some(c) => t.set_block_cache(&Cache::new_lru_cache(usize::try_from(c)?)),
            }
            if cfg.bloom_bits >= 0 {
                t.set_bloom_filter(f64::from(cfg.bloom_bits), false);
            }
            o.set_block_based_table_factory(&t);
        }
        // The default column family by name, so that `multi_get` can use the batched API.
        let cf = ColumnFamilyDescriptor::new(DEFAULT_COLUMN_FAMILY_NAME, o.clone());
        let db = DB::open_cf_descriptors(&o, path, [cf])?;
        let mut wo = WriteOptions::default();
        wo.set_sync(cfg.sync);
        Ok(Box::new(Rocks {
            db,
            wo,
            path: path.to_path_buf(),
            direct: cfg.use_direct_reads,
        }))
    }

    impl Engine for Rocks {
        fn name(&self) -> String {
            if self.direct {
                "rocksdb (direct reads)".into()
            } else {
                "rocksdb".into()
            }
        }
        fn put(&self, key: &[u8], value: &[u8]) -> BenchResult<()> {
            Ok(self.db.put_opt(key, value, &self.wo)?)
        }
        fn get(&self, key: &[u8]) -> BenchResult<Option<Vec<u8>>> {
            Ok(self.db.get_pinned(key)?.map(|v| v.to_vec()))
        }
        fn multi_get(&self, keys: &[Vec<u8>]) -> BenchResult<Vec<Option<Vec<u8>>>> {
            let cf = self
                .db
                .cf_handle(DEFAULT_COLUMN_FAMILY_NAME)
                .ok_or("rocksdb: the default column family has no handle")?;
            self.db
                .batched_multi_get_cf(cf, keys, false)
                .into_iter()
                .map(|r| Ok(r?.map(|v| v.to_vec())))
                .collect()
        }
        fn delete(&self, key: &[u8]) -> BenchResult<()> {
            Ok(self.db.delete_opt(key, &self.wo)?)
        }
        fn sync(&self) -> BenchResult<()> {
            Ok(self.db.flush_wal(true)?)
        }
        fn scan(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> BenchResult<u64> {
            let mut n = 0;
            for kv in self.db.iterator(IteratorMode::Start) {
                let (k, v) = kv?;
                n += 1;
                if !f(&k, &v) {
                    break;
                }
            }
            Ok(n)
        }
        fn compact(&self) -> BenchResult<()> {
            self.db.compact_range::<&[u8], &[u8]>(None, None);
            Ok(())
        }
        fn stats(&self) -> BenchResult<EngineStats> {
            let keys = self.db.property_int_value("rocksdb.estimate-num-keys")?;
            let mut lines = Vec::new();
            for p in [
                "rocksdb.estimate-table-readers-mem",
                "rocksdb.cur-size-all-mem-tables",
                "rocksdb.block-cache-usage",
                "rocksdb.total-sst-files-size",
            ] {
                if let Ok(Some(v)) = self.db.property_int_value(p) {
                    lines.push(format!("{p:<36} {v}"));
                }
            }
            Ok(EngineStats {
                keys,
                used_bytes: Some(disk_usage(&self.path)),
                lines,
                ..Default::default()
            })
        }
        fn close(self: Box<Self>) -> BenchResult<()> {
            self.db.flush()?;
            drop(self);
            Ok(())
        }
    }
}

#[cfg(feature = "sled")]
pub mod sled_engine {
    use super::*;
    use std::path::{Path, PathBuf};

    pub struct Sled {
        db: sled::Db,
        sync: bool,
        path: PathBuf,
    }

    pub fn open(cfg: &Config, path: &Path, create: bool) -> BenchResult<Box<dyn Engine>> {
        if create && path.exists() {
            std::fs::remove_dir_all(path)?;
        }
        let mut c = sled::Config::new().path(path).use_compression(false);
        if let Some(b) = cfg.cache_bytes()? {
            c = c.cache_capacity(b.max(1 << 20));
        }
        if cfg.sync {
            c = c.flush_every_ms(None);
        }
        Ok(Box::new(Sled {
            db: c.open()?,
            sync: cfg.sync,
            path: path.to_path_buf(),
        }))
    }

    impl Engine for Sled {
        fn name(&self) -> String {
            "sled".into()
        }
        fn put(&self, key: &[u8], value: &[u8]) -> BenchResult<()> {
            self.db.insert(key, value)?;
            if self.sync {
                self.db.flush()?;
            }
            Ok(())
        }
        fn get(&self, key: &[u8]) -> BenchResult<Option<Vec<u8>>> {
            Ok(self.db.get(key)?.map(|v| v.to_vec()))
        }
        fn delete(&self, key: &[u8]) -> BenchResult<()> {
            self.db.remove(key)?;
            if self.sync {
                self.db.flush()?;
            }
            Ok(())
        }
        fn sync(&self) -> BenchResult<()> {
            self.db.flush()?;
            Ok(())
        }
        fn scan(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> BenchResult<u64> {
            let mut n = 0;
            for kv in self.db.iter() {
                let (k, v) = kv?;
                n += 1;
                if !f(&k, &v) {
                    break;
                }
            }
            Ok(n)
        }
        fn stats(&self) -> BenchResult<EngineStats> {
            Ok(EngineStats {
                keys: Some(self.db.len() as u64),
                used_bytes: Some(disk_usage(&self.path)),
                ..Default::default()
            })
        }
        fn close(self: Box<Self>) -> BenchResult<()> {
            self.db.flush()?;
            Ok(())
        }
    }
}

#[cfg(feature = "fjall")]
pub mod fjall_engine {
    use super::*;
    use std::path::{Path, PathBuf};

    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

    pub struct Fjall {
        db: Database,
        ks: Keyspace,
        sync: bool,
        path: PathBuf,
    }

    pub fn open(cfg: &Config, path: &Path, create: bool) -> BenchResult<Box<dyn Engine>> {
        if create && path.exists() {
            std::fs::remove_dir_all(path)?;
        }
        let mut b = Database::builder(path);
        if let Some(c) = cfg.cache_bytes()? {
            b = b.cache_size(c.max(1 << 20));
        }
        let db = b.open()?;
        let ks = db.keyspace("bench", KeyspaceCreateOptions::default)?;
        Ok(Box::new(Fjall {
            db,
            ks,
            sync: cfg.sync,
            path: path.to_path_buf(),
        }))
    }

    impl Engine for Fjall {
        fn name(&self) -> String {
            "fjall".into()
        }
        fn put(&self, key: &[u8], value: &[u8]) -> BenchResult<()> {
            self.ks.insert(key, value)?;
            if self.sync {
                self.db.persist(PersistMode::SyncData)?;
            }
            Ok(())
        }
        fn get(&self, key: &[u8]) -> BenchResult<Option<Vec<u8>>> {
            Ok(self.ks.get(key)?.map(|v| v.to_vec()))
        }
        fn delete(&self, key: &[u8]) -> BenchResult<()> {
            self.ks.remove(key)?;
            if self.sync {
                self.db.persist(PersistMode::SyncData)?;
            }
            Ok(())
        }
        fn sync(&self) -> BenchResult<()> {
            Ok(self.db.persist(PersistMode::SyncData)?)
        }
        fn scan(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> BenchResult<u64> {
            let mut n = 0;
            for g in self.ks.iter() {
                let (k, v) = g.into_inner()?;
                n += 1;
                if !f(&k, &v) {
                    break;
                }
            }
            Ok(n)
        }
        fn compact(&self) -> BenchResult<()> {
            Ok(self.ks.major_compact()?)
        }
        fn stats(&self) -> BenchResult<EngineStats> {
            Ok(EngineStats {
                keys: Some(self.ks.approximate_len() as u64),
                used_bytes: Some(disk_usage(&self.path)),
                ..Default::default()
            })
        }
        fn close(self: Box<Self>) -> BenchResult<()> {
            self.db.persist(PersistMode::SyncAll)?;
            Ok(())
        }
    }
}

#[cfg(feature = "redb")]
pub mod redb_engine {
    use super::*;
    use std::path::{Path, PathBuf};

    use redb::{
        Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
        TableDefinition,
    };

    const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");

    pub struct Redb {
        db: Database,
        sync: bool,
        path: PathBuf,
    }

    pub fn open(cfg: &Config, path: &Path, create: bool) -> BenchResult<Box<dyn Engine>> {
        if create && path.exists() {
            std::fs::remove_dir_all(path)?;
        }
        std::fs::create_dir_all(path)?;
        let mut b = Database::builder();
        if let Some(c) = cfg.cache_bytes()? {
            b.set_cache_size(c.max(1 << 20) as usize);
        }
        let db = b.create(path.join("redb.db"))?;
        {
            let tx = db.begin_write()?;
            tx.open_table(TABLE)?;
            tx.commit()?;
        }
        Ok(Box::new(Redb {
            db,
            sync: cfg.sync,
            path: path.to_path_buf(),
        }))
    }

    impl Redb {
        fn write(
            &self,
            f: impl FnOnce(&mut redb::Table<'_, &[u8], &[u8]>) -> BenchResult<()>,
        ) -> BenchResult<()> {
            let mut tx = self.db.begin_write()?;
            tx.set_durability(if self.sync {
                Durability::Immediate
            } else {
                Durability::None
            })?;
            {
                let mut t = tx.open_table(TABLE)?;
                f(&mut t)?;
            }
            tx.commit()?;
            Ok(())
        }
    }

    impl Engine for Redb {
        fn name(&self) -> String {
            "redb".into()
        }
        fn put(&self, key: &[u8], value: &[u8]) -> BenchResult<()> {
            self.write(|t| {
                t.insert(key, value)?;
                Ok(())
            })
        }
        fn get(&self, key: &[u8]) -> BenchResult<Option<Vec<u8>>> {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(TABLE)?;
            let v = t.get(key)?.map(|v| v.value().to_vec());
            Ok(v)
        }
        fn delete(&self, key: &[u8]) -> BenchResult<()> {
            self.write(|t| {
                t.remove(key)?;
                Ok(())
            })
        }
        fn sync(&self) -> BenchResult<()> {
            // An empty durable commit makes the earlier non-durable ones durable.
            let mut tx = self.db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            tx.commit()?;
            Ok(())
        }
        fn scan(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> BenchResult<u64> {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(TABLE)?;
            let mut n = 0;
            for kv in t.iter()? {
                let (k, v) = kv?;
                n += 1;
                if !f(k.value(), v.value()) {
                    break;
                }
            }
            Ok(n)
        }
        fn stats(&self) -> BenchResult<EngineStats> {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(TABLE)?;
            Ok(EngineStats {
                keys: Some(t.len()?),
                used_bytes: Some(disk_usage(&self.path)),
                ..Default::default()
            })
        }
        fn close(self: Box<Self>) -> BenchResult<()> {
            self.sync()
        }
    }
}
