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
        BlockBasedOptions, Cache, DBCompressionType, IteratorMode, Options, WriteOptions, DB,
    };

    /// RocksDB 7.8's C API has no `rocksdb_write_buffer_manager_destroy` (the 11.x bindings
    /// reference it from a destructor); the bench never creates a write buffer manager, so
    /// the function is never reached with a real object.
    #[cfg(feature = "rocksdb-syslib")]
    #[no_mangle]
    pub extern "C" fn rocksdb_write_buffer_manager_destroy(_wbm: *mut std::ffi::c_void) {}

    pub struct Rocks {
        db: DB,
        wo: WriteOptions,
        path: PathBuf,
        direct: bool,
    }

    pub fn open(cfg: &Config, path: &Path, create: bool) -> BenchResult<Box<dyn Engine>> {
        if create && path.exists() {
            std::fs::remove_dir_all(path)?;
        }
        let mut o = Options::default();
        o.create_if_missing(create);
        o.increase_parallelism(2);
        o.set_max_background_jobs(2);
        o.set_compression_type(DBCompressionType::None);
        o.set_use_direct_reads(cfg.use_direct_reads);
        o.set_use_direct_io_for_flush_and_compaction(cfg.use_direct_reads);
        let mut t = BlockBasedOptions::default();
        // db_bench's default block cache is 8 MiB.
        let cache = cfg.cache_bytes()?.unwrap_or(8 << 20) as usize;
        if cache == 0 {
            t.disable_cache();
        } else {
            t.set_block_cache(&Cache::new_lru_cache(cache));
        }
        // What a user of point lookups configures (db_bench: --bloom_bits=10).
        t.set_bloom_filter(10.0, false);
        o.set_block_based_table_factory(&t);
        let db = DB::open(&o, path)?;
        let mut wo = WriteOptions::default();
        wo.set_sync(cfg.sync);
        wo.disable_wal(false);
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
