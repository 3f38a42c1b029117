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

// ---- Snapshots, clones, inflate, decouple and deletes against a model of backing chains ----

mod chains {
    use std::collections::BTreeMap;

    use std::sync::Arc;

    use blobcask::blobstore::native::esnap::{EsnapMap, EsnapResolver};
    use blobcask::blobstore::native::{BlobParent, NativeBlobStore};
    use blobcask::blobstore::{
        Blob, BlobId, BlobStore, CreateOpts, Error, InitOpts, IoChannel, LoadOpts,
    };
    use blobcask::device::{CrashMode, MemoryDevice, SimDevice};
    use proptest::prelude::*;

    use super::{b, Store, DEV, UNIT, UPC};

    #[derive(Debug, Clone)]
    enum Op {
        Create {
            n: u64,
        },
        EsnapClone {
            n: u64,
        },
        Write {
            sel: usize,
            unit: u64,
            len: u64,
            fill: u8,
        },
        Snapshot {
            sel: usize,
        },
        Clone {
            sel: usize,
        },
        Delete {
            sel: usize,
        },
        Inflate {
            sel: usize,
        },
        Decouple {
            sel: usize,
        },
        Resize {
            sel: usize,
            n: u64,
        },
        Reload,
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (1u64..6).prop_map(|n| Op::Create { n }),
            1 => (1u64..7).prop_map(|n| Op::EsnapClone { n }),
            6 => (any::<usize>(), 0u64..24, 1u64..6, 1u8..255)
                .prop_map(|(sel, unit, len, fill)| Op::Write { sel, unit, len, fill }),
            3 => any::<usize>().prop_map(|sel| Op::Snapshot { sel }),
            2 => any::<usize>().prop_map(|sel| Op::Clone { sel }),
            2 => any::<usize>().prop_map(|sel| Op::Delete { sel }),
            1 => any::<usize>().prop_map(|sel| Op::Inflate { sel }),
            1 => any::<usize>().prop_map(|sel| Op::Decouple { sel }),
            1 => (any::<usize>(), 1u64..8).prop_map(|(sel, n)| Op::Resize { sel, n }),
            1 => Just(Op::Reload),
            1 => Just(Op::Crash),
        ]
    }

    /// What the model knows of a blob: its own clusters and what their units hold (`None`:
    /// undefined, a cluster allocated without a copy keeps whatever the device had, as in
    /// SPDK), its parent, read-only. Other units read through the parent, zeroes past it.
    #[derive(Debug, Clone)]
    struct M {
        units: Vec<Option<u8>>,
        own: Vec<bool>,
        parent: Option<BlobId>,
        ro: bool,
        /// Inflated: thick, so a resize allocates.
        thick: bool,
        /// An esnap clone of [`EXT_ID`] (then `parent` is `None`).
        ext: bool,
    }

    struct H {
        store: Option<Store>,
        model: BTreeMap<BlobId, M>,
        seed: u64,
    }

    impl H {
        fn s(&self) -> &Store {
            self.store.as_ref().unwrap()
        }

        fn pick(&self, sel: usize, want_ro: Option<bool>) -> Option<BlobId> {
            let c: Vec<BlobId> = self
                .model
                .iter()
                .filter(|(_, m)| want_ro.is_none_or(|r| m.ro == r))
                .map(|(&id, _)| id)
                .collect();
            (!c.is_empty()).then(|| c[sel % c.len()])
        }

        /// What unit `u` of blob `id` reads.
        fn view(&self, id: BlobId, u: usize) -> Option<u8> {
            let m = &self.model[&id];
            if m.own[u / UPC as usize] {
                return m.units[u];
            }
            if m.ext {
                return Some(ext_byte(u));
            }
            match m.parent {
                Some(p) if u < self.model[&p].units.len() => self.view(p, u),
                _ => Some(0),
            }
        }

        /// Blob `id` gets its own cluster `c`: a copy of what it read there, unless the
        /// chain ends in zeroes there (then nothing is copied and the bytes are undefined).
        fn alloc(&mut self, id: BlobId, c: usize) {
            let per = UPC as usize;
            // Copied from an ancestor that has it, past an ancestor's end (zeroes), or from
            // the external snapshot; nothing when the chain ends in zeroes.
            let mut copy = false;
            let mut cur = id;
            loop {
                let m = &self.model[&cur];
                if m.ext {
                    copy = true;
                    break;
                }
                let Some(p) = m.parent else { break };
                let pm = &self.model[&p];
                if c >= pm.own.len() || pm.own[c] {
                    copy = true;
                    break;
                }
                cur = p;
            }
            let data: Vec<Option<u8>> = (c * per..(c + 1) * per)
                .map(|u| if copy { self.view(id, u) } else { None })
                .collect();
            let m = self.model.get_mut(&id).unwrap();
            m.units[c * per..(c + 1) * per].copy_from_slice(&data);
            m.own[c] = true;
        }

        fn clones(&self, id: BlobId) -> Vec<BlobId> {
            self.model
                .iter()
                .filter(|(_, m)| m.parent == Some(id))
                .map(|(&i, _)| i)
                .collect()
        }

        fn apply(&mut self, op: &Op) {
            let seed = self.seed;
            let ctx = |what: &str| format!("seed {seed}: {op:?}: {what}");
            match *op {
                Op::Create { n } => {
                    let o = CreateOpts {
                        num_clusters: n,
                        thin_provision: true,
                        ..CreateOpts::default()
                    };
                    if let Ok(id) = b(self.s().create(o)) {
                        let m = M {
                            units: vec![None; (n * UPC) as usize],
                            own: vec![false; n as usize],
                            parent: None,
                            ro: false,
                            thick: false,
                            ext: false,
                        };
                        self.model.insert(id, m);
                    }
                }
                Op::EsnapClone { n } => {
                    let o = CreateOpts {
                        num_clusters: n,
                        ..CreateOpts::default()
                    };
                    if let Ok(id) = b(self.s().create_esnap_clone(o, EXT_ID)) {
                        let m = M {
                            units: vec![None; (n * UPC) as usize],
                            own: vec![false; n as usize],
                            parent: None,
                            ro: false,
                            thick: false,
                            ext: true,
                        };
                        self.model.insert(id, m);
                    }
                }
                Op::Write {
                    sel,
                    unit,
                    len,
                    fill,
                } => {
                    let Some(id) = self.pick(sel, None) else {
                        return;
                    };
                    let m = &self.model[&id];
                    let n = m.units.len() as u64;
                    if n == 0 {
                        return;
                    }
                    let unit = unit % n;
                    let len = len.min(n - unit);
                    let s = self.s();
                    let h = b(s.open(id)).unwrap();
                    let ch = s.channel().unwrap();
                    let r = b(ch.write(&h, unit, &vec![fill; len as usize * UNIT]));
                    b(ch.flush()).unwrap();
                    b(s.close(h)).unwrap();
                    match r {
                        Ok(()) => {
                            assert!(!m.ro, "{}", ctx("a read-only blob took a write"));
                            let (first, last) = (unit / UPC, (unit + len - 1) / UPC);
                            for c in first..=last {
                                if !self.model[&id].own[c as usize] {
                                    self.alloc(id, c as usize);
                                }
                            }
                            let m = self.model.get_mut(&id).unwrap();
                            m.units[unit as usize..(unit + len) as usize].fill(Some(fill));
                        }
                        Err(Error::ReadOnly(_)) => assert!(m.ro, "{}", ctx("refused")),
                        Err(Error::NoSpace) => {}
                        Err(e) => panic!("{}", ctx(&e.to_string())),
                    }
                }
                Op::Snapshot { sel } => {
                    let Some(id) = self.pick(sel, Some(false)) else {
                        return;
                    };
                    match b(self.s().create_snapshot(id, &[])) {
                        Ok(snap) => {
                            let mut m = self.model[&id].clone();
                            m.ro = true;
                            self.model.insert(snap, m);
                            let o = self.model.get_mut(&id).unwrap();
                            o.parent = Some(snap);
                            o.own.fill(false);
                            o.thick = false;
                            o.ext = false;
                        }
                        Err(Error::NoMdSpace(_)) => {}
                        Err(e) => panic!("{}", ctx(&e.to_string())),
                    }
                }
                Op::Clone { sel } => {
                    let Some(id) = self.pick(sel, Some(true)) else {
                        return;
                    };
                    match b(self.s().create_clone(id, &[])) {
                        Ok(c) => {
                            let n = self.model[&id].own.len();
                            let m = M {
                                units: vec![None; n * UPC as usize],
                                own: vec![false; n],
                                parent: Some(id),
                                ro: false,
                                thick: false,
                                ext: false,
                            };
                            self.model.insert(c, m);
                        }
                        Err(Error::NoMdSpace(_)) => {}
                        Err(e) => panic!("{}", ctx(&e.to_string())),
                    }
                }
                Op::Delete { sel } => {
                    let Some(id) = self.pick(sel, None) else {
                        return;
                    };
                    let clones = self.clones(id);
                    match b(self.s().delete(id)) {
                        Ok(()) => {
                            assert!(clones.len() <= 1, "{}", ctx("deleted with clones"));
                            let gone = self.model.remove(&id).unwrap();
                            let per = UPC as usize;
                            for c in clones {
                                let m = self.model.get_mut(&c).unwrap();
                                m.parent = gone.parent;
                                m.ext = gone.ext;
                                for k in 0..m.own.len().min(gone.own.len()) {
                                    if !m.own[k] && gone.own[k] {
                                        m.own[k] = true;
                                        m.units[k * per..(k + 1) * per]
                                            .copy_from_slice(&gone.units[k * per..(k + 1) * per]);
                                    }
                                }
                            }
                        }
                        Err(Error::Busy(_)) => {
                            assert!(clones.len() > 1, "{}", ctx("busy"))
                        }
                        Err(e) => panic!("{}", ctx(&e.to_string())),
                    }
                }
                Op::Inflate { sel } | Op::Decouple { sel } => {
                    let Some(id) = self.pick(sel, Some(false)) else {
                        return;
                    };
                    // Decoupling an esnap clone inflates it, as in SPDK.
                    let all = matches!(op, Op::Inflate { .. }) || self.model[&id].ext;
                    let r = if all {
                        b(self.s().inflate(id))
                    } else {
                        b(self.s().decouple_parent(id))
                    };
                    let parent = self.model[&id].parent;
                    match r {
                        Ok(()) => {
                            for c in 0..self.model[&id].own.len() {
                                let in_parent = parent
                                    .is_some_and(|p| self.model[&p].own.get(c) == Some(&true));
                                if !self.model[&id].own[c] && (all || in_parent) {
                                    self.alloc(id, c);
                                }
                            }
                            let grand = parent.and_then(|p| self.model[&p].parent);
                            let m = self.model.get_mut(&id).unwrap();
                            if all {
                                m.thick = true;
                                m.ext = false;
                            }
                            m.parent = if all { None } else { grand };
                        }
                        Err(Error::InvalidArgument(_)) => {
                            assert!(!all && parent.is_none(), "{}", ctx("invalid"))
                        }
                        Err(Error::Unsupported(_)) => {
                            let p_ext = parent.is_some_and(|p| self.model[&p].ext);
                            assert!(!all && p_ext, "{}", ctx("unsupported"))
                        }
                        Err(Error::NoSpace) => {}
                        Err(e) => panic!("{}", ctx(&e.to_string())),
                    }
                }
                Op::Resize { sel, n } => {
                    let Some(id) = self.pick(sel, Some(false)) else {
                        return;
                    };
                    let s = self.s();
                    let h = b(s.open(id)).unwrap();
                    let r = b(s.resize(&h, n));
                    b(s.close(h)).unwrap();
                    if r.is_ok() {
                        let m = self.model.get_mut(&id).unwrap();
                        let thick = m.thick;
                        m.units.resize((n * UPC) as usize, None);
                        m.own.resize(n as usize, thick);
                    }
                }
                Op::Reload | Op::Crash => {
                    let s = self.store.take().unwrap();
                    let dev = if matches!(op, Op::Reload) {
                        b(s.unload()).unwrap();
                        s.into_device().unwrap()
                    } else {
                        let d = s.device().crash().unwrap();
                        drop(s);
                        d
                    };
                    let s = b(NativeBlobStore::load(dev, LoadOpts::default()))
                        .unwrap_or_else(|e| panic!("{}", ctx(&e.to_string())));
                    s.set_esnap_resolver(Some(ext_resolver()));
                    self.store = Some(s);
                    self.check(true);
                }
            }
        }

        /// Every blob reads as the model says, with its parent and read-only flag; no
        /// cluster belongs to two blobs; after a load the mask is exactly what they own.
        fn check(&self, exact: bool) {
            let s = self.s();
            let ctx = format!("seed {}", self.seed);
            assert_eq!(
                b(s.blob_ids()).unwrap(),
                self.model.keys().copied().collect::<Vec<_>>(),
                "{ctx}: blob ids"
            );
            let ch = s.channel().unwrap();
            let mut owned = Vec::new();
            for (&id, m) in &self.model {
                let h = b(s.open(id)).unwrap_or_else(|e| panic!("{ctx}: open {id:#x}: {e}"));
                let mut got = vec![0u8; m.units.len() * UNIT];
                b(ch.read(&h, 0, &mut got)).unwrap();
                for (u, chunk) in got.chunks(UNIT).enumerate() {
                    if let Some(v) = self.view(id, u) {
                        assert!(
                            chunk.iter().all(|&x| x == v),
                            "{ctx}: blob {id:#x} unit {u} reads {:#x}, the model {v:#x}",
                            chunk[0],
                        );
                    }
                }
                let own: Vec<bool> = s.cluster_map(&h).iter().map(|&c| c != 0).collect();
                assert_eq!(own, m.own, "{ctx}: own clusters of {id:#x}");
                let want = if m.ext {
                    BlobParent::External {
                        id: EXT_ID.to_vec(),
                        available: true,
                    }
                } else {
                    m.parent.map_or(BlobParent::None, BlobParent::Snapshot)
                };
                assert_eq!(h.parent(), want, "{ctx}: parent of {id:#x}");
                assert_eq!(h.is_read_only(), m.ro, "{ctx}: read-only {id:#x}");
                owned.extend(s.cluster_map(&h).into_iter().filter(|&c| c != 0));
                b(s.close(h)).unwrap();
            }
            owned.sort();
            let n = owned.len();
            owned.dedup();
            assert_eq!(n, owned.len(), "{ctx}: a cluster owned twice");
            if exact {
                let mut want: Vec<u32> = (0..s.layout().num_md_clusters).collect();
                want.extend(owned);
                want.sort();
                assert_eq!(s.used_clusters(), want, "{ctx}: cluster mask after load");
            }
        }
    }

    const EXT_ID: &[u8] = b"ext-uuid";
    /// The external snapshot: 5 clusters (blobs may be larger: zeroes past it).
    const EXT_UNITS: usize = 5 * UPC as usize;

    fn ext_byte(u: usize) -> u8 {
        if u < EXT_UNITS {
            (u as u8).wrapping_mul(7) | 1
        } else {
            0
        }
    }

    fn ext_resolver() -> Arc<dyn EsnapResolver> {
        let dev = MemoryDevice::new((EXT_UNITS * UNIT) as u64, 4096).unwrap();
        let data: Vec<u8> = (0..EXT_UNITS * UNIT).map(|i| ext_byte(i / UNIT)).collect();
        b(blobcask::device::Device::write(&dev, 0, &data)).unwrap();
        let mut m = EsnapMap::new();
        m.insert(EXT_ID, Arc::new(dev));
        Arc::new(m)
    }

    fn run(seed: u64, ops: &[Op]) {
        let dev = SimDevice::new(DEV, 4096, seed).unwrap();
        dev.set_crash_mode(CrashMode::Random);
        let opts = InitOpts {
            cluster_size: 16384,
            num_md_pages: Some(48),
            ..InitOpts::default()
        };
        let s = b(NativeBlobStore::init(dev, opts)).unwrap();
        s.set_esnap_resolver(Some(ext_resolver()));
        let mut h = H {
            store: Some(s),
            model: BTreeMap::new(),
            seed,
        };
        for op in ops {
            h.apply(op);
            h.check(false);
        }
        h.apply(&Op::Crash);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn snapshot_chains_match_the_model(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..30)) {
            run(seed, &ops);
        }
    }

    #[test]
    fn chains_smoke_sequence() {
        use Op::*;
        run(
            3,
            &[
                Create { n: 4 },
                Write {
                    sel: 0,
                    unit: 1,
                    len: 6,
                    fill: 1,
                },
                Snapshot { sel: 0 },
                Write {
                    sel: 0,
                    unit: 3,
                    len: 2,
                    fill: 2,
                },
                Clone { sel: 0 },
                Write {
                    sel: 2,
                    unit: 9,
                    len: 3,
                    fill: 3,
                },
                Snapshot { sel: 0 },
                Crash,
                Decouple { sel: 0 },
                Delete { sel: 1 },
                Delete { sel: 0 },
                Inflate { sel: 1 },
                Reload,
                Resize { sel: 0, n: 7 },
                Write {
                    sel: 0,
                    unit: 26,
                    len: 2,
                    fill: 4,
                },
            ],
        );
    }
}
