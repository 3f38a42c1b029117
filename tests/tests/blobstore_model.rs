//! Model-based test of the native blobstore: random sequences of create / resize / write /
//! xattr / sync_md / delete / grow / unload+load / crash run against the store on a sim device
//! (a crash loses or tears unflushed writes at random) and against a plain in-memory model.
//! The store starts on half the device, so `grow` has room; a completed grow is durable.
//!
//! The model knows what is durable: metadata as of the blob's last persist (create, sync_md,
//! close, and every thin allocation, which persists the whole blob before the data write),
//! and data (each write is flushed). Content the store may legitimately leave undefined
//! (fresh thick clusters, the unwritten rest of a fresh thin cluster: freed clusters keep
//! their old bytes, as on SPDK) is `None` and not compared.
//! After every load the cluster mask must equal exactly the metadata clusters plus the
//! clusters the blobs own: no leak, no double allocation.

use std::collections::{BTreeMap, HashMap};

use blobcask::blobstore::native::{NativeBlob, NativeBlobStore};
use blobcask::blobstore::Error;
use blobcask::blobstore::{Blob, BlobId, BlobStore, CreateOpts, InitOpts, IoChannel, LoadOpts};
use blobcask::device::{CrashMode, SimDevice};
use proptest::prelude::*;

const UNIT: usize = 4096;
const UPC: u64 = 4; // 16 KiB clusters
const DEV: u64 = 2 << 20;

type Store = NativeBlobStore<SimDevice>;

fn b<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        thin: bool,
        ext: bool,
        n: u64,
    },
    Resize {
        sel: usize,
        n: u64,
    },
    Write {
        sel: usize,
        unit: u64,
        len: u64,
        fill: u8,
    },
    SetXattr {
        sel: usize,
        key: u8,
        len: usize,
    },
    RemoveXattr {
        sel: usize,
        key: u8,
    },
    Sync {
        sel: usize,
    },
    Delete {
        sel: usize,
    },
    /// Grow the store by `by` clusters (capped at the device).
    Grow {
        by: u64,
    },
    Reload,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<bool>(), any::<bool>(), 0u64..10).prop_map(|(thin, ext, n)| Op::Create { thin, ext, n }),
        2 => (any::<usize>(), 0u64..14).prop_map(|(sel, n)| Op::Resize { sel, n }),
        6 => (any::<usize>(), 0u64..56, 1u64..7, 1u8..255).prop_map(|(sel, unit, len, fill)| Op::Write { sel, unit, len, fill }),
        2 => (any::<usize>(), 0u8..4, 0usize..1500).prop_map(|(sel, key, len)| Op::SetXattr { sel, key, len }),
        1 => (any::<usize>(), 0u8..4).prop_map(|(sel, key)| Op::RemoveXattr { sel, key }),
        2 => any::<usize>().prop_map(|sel| Op::Sync { sel }),
        1 => any::<usize>().prop_map(|sel| Op::Delete { sel }),
        1 => (1u64..40).prop_map(|by| Op::Grow { by }),
        1 => Just(Op::Reload),
        1 => Just(Op::Crash),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct State {
    size: u64,
    thin: bool,
    xattrs: Vec<(String, Vec<u8>)>,
    content: Vec<Option<u8>>,
    alloc: Vec<bool>,
}

struct ModelBlob {
    cur: State,
    dur: State,
    /// Smallest size since the last persist: below it, current and durable share clusters.
    min_size: u64,
}

impl ModelBlob {
    fn persisted(&mut self) {
        self.dur = self.cur.clone();
        self.min_size = self.cur.size;
    }
}

struct Harness {
    store: Option<Store>,
    /// The store's size as last grown (durable once `grow` returned).
    size: u64,
    handles: HashMap<BlobId, NativeBlob>,
    model: BTreeMap<BlobId, ModelBlob>,
    seed: u64,
}

impl Harness {
    fn new(seed: u64) -> Harness {
        // Made on the first half of the device, so it can grow.
        let small = SimDevice::new(DEV / 2, 4096, seed).unwrap();
        let opts = InitOpts {
            cluster_size: 16384,
            num_md_pages: Some(48),
            ..InitOpts::default()
        };
        let s = b(NativeBlobStore::init(small, opts)).unwrap();
        b(s.unload()).unwrap();
        let mut image = s.into_device().unwrap().durable_image();
        image.resize(DEV as usize, 0);
        let dev = SimDevice::from_image(image, 4096, seed).unwrap();
        dev.set_crash_mode(CrashMode::Random);
        Harness {
            store: Some(b(NativeBlobStore::load(dev, LoadOpts::default())).unwrap()),
            size: DEV / 2,
            handles: HashMap::new(),
            model: BTreeMap::new(),
            seed,
        }
    }

    fn s(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    fn pick(&self, sel: usize) -> Option<BlobId> {
        let n = self.model.len();
        (n > 0).then(|| *self.model.keys().nth(sel % n).unwrap())
    }

    fn reopen_all(&mut self, dev: SimDevice, clean: bool) {
        let s = b(NativeBlobStore::load(dev, LoadOpts::default())).unwrap_or_else(|e| {
            panic!(
                "seed {}: load after {} failed: {e}",
                self.seed,
                if clean { "unload" } else { "crash" }
            )
        });
        assert_eq!(s.layout().size, self.size, "store size after load");
        self.store = Some(s);
        let ids = b(self.s().blob_ids()).unwrap();
        assert_eq!(
            ids,
            self.model.keys().copied().collect::<Vec<_>>(),
            "blob ids after load"
        );
        for &id in self.model.keys() {
            let h = b(self.s().open(id)).unwrap();
            self.handles.insert(id, h);
        }
        self.check_ownership(true);
    }

    fn check_ownership(&self, exact: bool) {
        let s = self.s();
        let mut owned: Vec<u32> = Vec::new();
        for h in self.handles.values() {
            owned.extend(s.cluster_map(h).into_iter().filter(|&c| c != 0));
        }
        owned.sort();
        let n = owned.len();
        owned.dedup();
        assert_eq!(n, owned.len(), "a cluster is owned by two blobs");
        if exact {
            let mut want: Vec<u32> = (0..s.layout().num_md_clusters).collect();
            want.extend(owned);
            want.sort();
            assert_eq!(
                s.used_clusters(),
                want,
                "cluster mask after load (leak or loss)"
            );
        }
    }

    fn check_blobs(&self) {
        let s = self.s();
        let ch = s.channel().unwrap();
        for (id, m) in &self.model {
            let h = &self.handles[id];
            assert_eq!(h.num_clusters(), m.cur.size, "size of {id:#x}");
            if m.cur.thin {
                let a = m.cur.alloc.iter().filter(|&&x| x).count() as u64;
                assert_eq!(
                    h.num_allocated_clusters(),
                    a,
                    "allocated clusters of {id:#x}"
                );
            }
            let names = b(s.xattr_names(h)).unwrap();
            let want: Vec<String> = m.cur.xattrs.iter().map(|x| x.0.clone()).collect();
            assert_eq!(names, want, "xattrs of {id:#x}");
            for (k, v) in &m.cur.xattrs {
                assert_eq!(b(s.get_xattr(h, k)).unwrap().as_ref(), Some(v));
            }
            let units = m.cur.size * UPC;
            let mut buf = vec![0u8; units as usize * UNIT];
            b(ch.read(h, 0, &mut buf)).unwrap();
            for (u, want) in m.cur.content.iter().enumerate() {
                if let Some(w) = want {
                    let got = &buf[u * UNIT..(u + 1) * UNIT];
                    assert!(
                        got.iter().all(|x| x == w),
                        "blob {id:#x} unit {u}: want {w:#x}, got {:#x}",
                        got[0]
                    );
                }
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Create { thin, ext, n } => {
                let opts = CreateOpts {
                    num_clusters: n,
                    thin_provision: thin,
                    use_extent_table: ext,
                    ..CreateOpts::default()
                };
                match b(self.s().create(opts)) {
                    Ok(id) => {
                        let st = State {
                            size: n,
                            thin,
                            xattrs: vec![],
                            content: vec![if thin { Some(0) } else { None }; (n * UPC) as usize],
                            alloc: vec![false; n as usize],
                        };
                        self.model.insert(
                            id,
                            ModelBlob {
                                cur: st.clone(),
                                dur: st,
                                min_size: n,
                            },
                        );
                        let h = b(self.s().open(id)).unwrap();
                        self.handles.insert(id, h);
                    }
                    Err(Error::NoSpace) | Err(Error::NoMdSpace(_)) => {}
                    Err(e) => panic!("create: {e}"),
                }
            }
            Op::Resize { sel, n } => {
                let Some(id) = self.pick(sel) else { return };
                match b(self.s().resize(&self.handles[&id], n)) {
                    Ok(()) => {
                        let m = self.model.get_mut(&id).unwrap();
                        let fill = if m.cur.thin { Some(0) } else { None };
                        m.cur.content.resize((n * UPC) as usize, fill);
                        m.cur.alloc.resize(n as usize, false);
                        m.cur.size = n;
                        m.min_size = m.min_size.min(n);
                    }
                    Err(Error::NoSpace) => {}
                    Err(e) => panic!("resize: {e}"),
                }
            }
            Op::Write {
                sel,
                unit,
                len,
                fill,
            } => {
                let Some(id) = self.pick(sel) else { return };
                let m = &self.model[&id];
                if unit + len > m.cur.size * UPC {
                    return;
                }
                let ch = self.s().channel().unwrap();
                let data = vec![fill; (len * UNIT as u64) as usize];
                match b(ch.write(&self.handles[&id], unit, &data)) {
                    Ok(()) => {
                        b(ch.flush()).unwrap();
                        let m = self.model.get_mut(&id).unwrap();
                        let mut allocated = false;
                        for c in unit / UPC..=(unit + len - 1) / UPC {
                            if m.cur.thin && !m.cur.alloc[c as usize] {
                                m.cur.alloc[c as usize] = true;
                                allocated = true;
                                for u in c * UPC..(c + 1) * UPC {
                                    m.cur.content[u as usize] = None;
                                }
                            }
                        }
                        for u in unit..unit + len {
                            m.cur.content[u as usize] = Some(fill);
                            if u < m.min_size * UPC {
                                m.dur.content[u as usize] = Some(fill);
                            }
                        }
                        if allocated {
                            m.persisted();
                        }
                    }
                    Err(Error::NoSpace) => {}
                    Err(e) => panic!("write: {e}"),
                }
            }
            Op::SetXattr { sel, key, len } => {
                let Some(id) = self.pick(sel) else { return };
                let name = format!("key{key}");
                let value = vec![key.wrapping_mul(31).wrapping_add(len as u8); len];
                b(self.s().set_xattr(&self.handles[&id], &name, &value)).unwrap();
                let x = &mut self.model.get_mut(&id).unwrap().cur.xattrs;
                match x.iter_mut().find(|(k, _)| *k == name) {
                    Some((_, v)) => *v = value,
                    None => x.push((name, value)),
                }
            }
            Op::RemoveXattr { sel, key } => {
                let Some(id) = self.pick(sel) else { return };
                let name = format!("key{key}");
                let r = b(self.s().remove_xattr(&self.handles[&id], &name));
                let x = &mut self.model.get_mut(&id).unwrap().cur.xattrs;
                let had = x.iter().any(|(k, _)| *k == name);
                assert_eq!(r.is_ok(), had, "remove_xattr {name}: {r:?}");
                x.retain(|(k, _)| *k != name);
            }
            Op::Sync { sel } => {
                let Some(id) = self.pick(sel) else { return };
                match b(self.s().sync_md(&self.handles[&id])) {
                    Ok(()) => self.model.get_mut(&id).unwrap().persisted(),
                    Err(Error::NoMdSpace(_)) => {}
                    Err(e) => panic!("sync_md: {e}"),
                }
            }
            Op::Delete { sel } => {
                let Some(id) = self.pick(sel) else { return };
                let h = self.handles.remove(&id).unwrap();
                match b(self.s().close(h.clone())) {
                    Ok(()) => {}
                    Err(Error::NoMdSpace(_)) => {
                        self.handles.insert(id, h);
                        return;
                    }
                    Err(e) => panic!("close: {e}"),
                }
                self.model.get_mut(&id).unwrap().persisted();
                b(self.s().delete(id)).unwrap();
                self.model.remove(&id);
            }
            Op::Grow { by } => {
                let new = (self.size + by * 16384).min(DEV);
                let total_before = self.s().total_data_clusters();
                b(self.s().grow(new)).unwrap();
                let gained = new / 16384 - self.size / 16384;
                assert_eq!(self.s().total_data_clusters(), total_before + gained);
                self.size = new;
            }
            Op::Reload => {
                for (id, h) in self.handles.drain() {
                    b(self.store.as_ref().unwrap().close(h)).unwrap();
                    self.model.get_mut(&id).unwrap().persisted();
                }
                let s = self.store.take().unwrap();
                b(s.unload()).unwrap();
                let dev = s.into_device().unwrap();
                self.reopen_all(dev, true);
            }
            Op::Crash => {
                let s = self.store.take().unwrap();
                let dev = s.device().crash().unwrap();
                self.handles.clear();
                drop(s);
                for m in self.model.values_mut() {
                    m.cur = m.dur.clone();
                    m.min_size = m.cur.size;
                }
                self.reopen_all(dev, false);
            }
        }
    }
}

fn run(seed: u64, ops: &[Op]) {
    let mut h = Harness::new(seed);
    for (i, op) in ops.iter().enumerate() {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            h.apply(op);
            h.check_ownership(false);
        }));
        if let Err(e) = r {
            eprintln!("seed {seed}: failed at op {i} {op:?} of {ops:?}");
            std::panic::resume_unwind(e);
        }
    }
    h.check_blobs();
    h.apply(&Op::Crash);
    h.check_blobs();
    h.apply(&Op::Reload);
    h.check_blobs();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn random_ops_match_the_model(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..40)) {
        run(seed, &ops);
    }
}

#[test]
fn model_smoke_sequence() {
    run(
        7,
        &[
            Op::Create {
                thin: true,
                ext: true,
                n: 6,
            },
            Op::Create {
                thin: false,
                ext: false,
                n: 3,
            },
            Op::Write {
                sel: 0,
                unit: 5,
                len: 6,
                fill: 9,
            },
            Op::SetXattr {
                sel: 1,
                key: 1,
                len: 1200,
            },
            Op::Resize { sel: 1, n: 1 },
            Op::Crash,
            Op::Write {
                sel: 1,
                unit: 0,
                len: 4,
                fill: 3,
            },
            Op::Resize { sel: 0, n: 2 },
            Op::Sync { sel: 0 },
            Op::Grow { by: 30 },
            Op::Create {
                thin: false,
                ext: true,
                n: 9,
            },
            Op::Reload,
            Op::Delete { sel: 1 },
            Op::Grow { by: 39 },
            Op::Crash,
        ],
    );
}
