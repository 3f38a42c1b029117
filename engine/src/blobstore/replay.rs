//! Replaying a fixture manifest's recorded operations (`sessions`) on the native blobstore,
//! and checking an image against a manifest (`blobs[].reads`).
//!
//! A manifest (see `tests/fixtures/spdk/README.md`) lists sessions; each is one process:
//! `init`/`load`, blob operations on named `slot`s, and either `unload` or `crash` (the
//! process stops without closing or unloading). Replay runs them in order on a
//! [`MemoryDevice`] of the manifest's image size (a fresh, zeroed image, as a new sparse file
//! is), so the result is deterministic; [`replay`] writes it to a file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::native::blobmd::root_index;
use super::native::esnap::{EsnapMap, EsnapResolver};
use super::native::layout::Layout;
use super::native::mdpage::MdPage;
use super::native::superblock::SuperBlock;
use super::native::{NativeBlob, NativeBlobStore};
use super::{Blob, BlobId, BlobStore, Bstype, CreateOpts, InitOpts, IoChannel, LoadOpts};
use crate::blobstore::error::{Error, Result};
use crate::device::{Device, FileDevice, MemoryDevice};

fn bad(d: impl Into<String>) -> Error {
    Error::invalid(format!("manifest: {}", d.into()))
}

fn field<'a>(v: &'a Value, k: &str) -> Result<&'a Value> {
    v.get(k).ok_or_else(|| bad(format!("missing {k:?} in {v}")))
}

fn u64_of(v: &Value, k: &str) -> Result<u64> {
    field(v, k)?
        .as_u64()
        .ok_or_else(|| bad(format!("{k:?} is not an integer")))
}

fn str_of<'a>(v: &'a Value, k: &str) -> Result<&'a str> {
    field(v, k)?
        .as_str()
        .ok_or_else(|| bad(format!("{k:?} is not a string")))
}

fn bool_of(v: &Value, k: &str, default: bool) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(default)
}

fn bstype_of(v: &Value) -> Result<Bstype> {
    match v.get("bstype") {
        Some(Value::String(s)) => Bstype::new(s),
        _ => Ok(Bstype::default()),
    }
}

/// The bytes of a data pattern over blob byte offsets `start .. start + len`.
///
/// - `word64(seed)`: the u64 at every 8-aligned offset `o` is `(seed << 56) | (o / 8)`, LE.
/// - `fill(byte)`: every byte is `byte`.
/// - `mod251(seed)`: the byte at `o` is `(o + seed) mod 251`.
/// - `zero`: zeroes.
pub fn pattern_bytes(pattern: &Value, start: u64, len: usize) -> Result<Vec<u8>> {
    let kind = str_of(pattern, "kind")?;
    let mut out = vec![0u8; len];
    match kind {
        "word64" => {
            let seed = u64_of(pattern, "seed")?;
            for (i, b) in out.iter_mut().enumerate() {
                let o = start + i as u64;
                let w = (seed << 56) | (o / 8);
                *b = w.to_le_bytes()[(o % 8) as usize];
            }
        }
        "fill" => out.fill(u64_of(pattern, "byte")? as u8),
        "mod251" => {
            let seed = u64_of(pattern, "seed")?;
            for (i, b) in out.iter_mut().enumerate() {
                *b = ((start + i as u64 + seed) % 251) as u8;
            }
        }
        "zero" => {}
        k => return Err(bad(format!("unknown pattern {k:?}"))),
    }
    Ok(out)
}

/// One session's live state.
struct Session<D: Device> {
    store: NativeBlobStore<D>,
    handles: HashMap<String, Vec<NativeBlob>>,
}

/// Image size and block size a manifest asks for.
pub fn image_geometry(manifest: &Value) -> Result<(u64, u32)> {
    let size = u64_of(field(manifest, "image")?, "size_bytes")?;
    let block = manifest
        .get("spdk")
        .and_then(|s| s.get("aio_block_size"))
        .and_then(Value::as_u64)
        .unwrap_or(4096) as u32;
    Ok((size, block))
}

/// The device size a session runs on: its `device_size_bytes` (the image file was extended
/// before it, for a grow), else the previous session's, else the image's size.
fn session_size(s: &Value, prev: u64) -> Result<u64> {
    match s.get("device_size_bytes") {
        Some(v) => v
            .as_u64()
            .ok_or_else(|| bad("device_size_bytes is not an integer")),
        None => Ok(prev),
    }
}

/// The size of the device the first session starts on.
fn initial_size(manifest: &Value) -> Result<u64> {
    let (size, _) = image_geometry(manifest)?;
    match field(manifest, "sessions")?
        .as_array()
        .and_then(|s| s.first())
    {
        Some(s) => session_size(s, size),
        None => Ok(size),
    }
}

/// Run every session of `manifest` on a fresh memory device and return it.
pub fn replay_to_device(manifest: &Value) -> Result<MemoryDevice> {
    let (_, block) = image_geometry(manifest)?;
    replay_with(
        manifest,
        MemoryDevice::new(initial_size(manifest)?, block)?,
        |d, size| {
            let mut bytes = d.to_bytes();
            bytes.resize(size as usize, 0);
            MemoryDevice::from_bytes(bytes, block).map_err(Error::from)
        },
    )
}

/// Run every session of `manifest` on `dev` (which must be zeroed, like a new image file).
/// A manifest whose sessions extend the device is refused: use [`replay_to_device`] or
/// [`replay`].
pub fn replay_on<D: Device>(manifest: &Value, dev: D) -> Result<D> {
    replay_with(manifest, dev, |_, size| {
        Err(bad(format!(
            "this device cannot be extended to {size} bytes"
        )))
    })
}

/// [`replay_on`], with `extend` giving back the device extended to a session's
/// `device_size_bytes` (zeroes appended, as when an image file is lengthened).
fn replay_with<D: Device>(
    manifest: &Value,
    dev: D,
    mut extend: impl FnMut(D, u64) -> Result<D>,
) -> Result<D> {
    let mut dev = Some(dev);
    let mut slots: HashMap<String, BlobId> = HashMap::new();
    let sessions = field(manifest, "sessions")?
        .as_array()
        .ok_or_else(|| bad("sessions is not a list"))?;
    for s in sessions {
        if let Some(d) = dev.take() {
            let want = session_size(s, d.size())?;
            dev = Some(if want > d.size() { extend(d, want)? } else { d });
        }
        let ops = field(s, "ops")?
            .as_array()
            .ok_or_else(|| bad("ops is not a list"))?;
        let mut sess: Option<Session<D>> = None;
        for op in ops {
            let name = str_of(op, "op")?;
            match name {
                "init" | "load" => {
                    let d = dev
                        .take()
                        .ok_or_else(|| bad("init/load with a store running"))?;
                    let store = pollster::block_on(async {
                        if name == "init" {
                            let mut o = InitOpts {
                                bstype: bstype_of(op)?,
                                ..InitOpts::default()
                            };
                            if let Some(c) = op.get("cluster_sz").and_then(Value::as_u64) {
                                o.cluster_size = c as u32;
                            }
                            if let Some(n) = op.get("num_md_pages").and_then(Value::as_u64) {
                                o.num_md_pages = Some(n as u32);
                            }
                            if let Some(n) = op.get("md_page_size").and_then(Value::as_u64) {
                                o.md_page_size = Some(n as u32);
                            }
                            NativeBlobStore::init(d, o).await
                        } else {
                            let o = LoadOpts {
                                bstype: bstype_of(op)?,
                                force_recover: bool_of(op, "force_recover", false),
                            };
                            NativeBlobStore::load(d, o).await
                        }
                    })?;
                    store.set_esnap_resolver(esnap_devices(manifest)?);
                    sess = Some(Session {
                        store,
                        handles: HashMap::new(),
                    });
                }
                "unload" | "crash" => {
                    let s = sess.take().ok_or_else(|| bad("unload without a store"))?;
                    if name == "unload" {
                        pollster::block_on(s.store.unload())?;
                    }
                    // A crash: the process stops; nothing more reaches the device.
                    drop(s.handles);
                    dev = Some(s.store.into_device()?);
                }
                _ => {
                    let s = sess
                        .as_mut()
                        .ok_or_else(|| bad(format!("{name} without a store")))?;
                    let r = pollster::block_on(run_op(s, &mut slots, name, op));
                    // An op recorded with SPDK's negative errno must fail the same way.
                    match (op.get("rc").and_then(Value::as_i64).unwrap_or(0), r) {
                        (0, r) => r?,
                        (rc, Err(e)) if i64::from(e.errno()) == rc => {}
                        (rc, r) => {
                            return Err(bad(format!("{name} should fail with {rc}, got {r:?}")))
                        }
                    }
                }
            }
        }
        if let Some(s) = sess.take() {
            // A session that ends without unload or crash: treat as a crash.
            drop(s.handles);
            dev = Some(s.store.into_device()?);
        }
    }
    dev.ok_or_else(|| bad("no device at the end"))
}

/// The external snapshots a manifest's esnap clones read (`esnap_devices`: id, size and the
/// data pattern of the whole device), as memory devices.
fn esnap_devices(manifest: &Value) -> Result<Option<Arc<dyn EsnapResolver>>> {
    let Some(list) = manifest.get("esnap_devices").and_then(Value::as_array) else {
        return Ok(None);
    };
    let mut map = EsnapMap::new();
    for e in list {
        let id = hex::decode(str_of(e, "esnap_id_hex")?).map_err(|x| bad(x.to_string()))?;
        let size = u64_of(e, "size")?;
        let block = e.get("block_size").and_then(Value::as_u64).unwrap_or(4096) as u32;
        let dev = MemoryDevice::new(size, block)?;
        let data = pattern_bytes(field(e, "pattern")?, 0, size as usize)?;
        pollster::block_on(dev.write(0, &data))?;
        map.insert(id, Arc::new(dev));
    }
    Ok(Some(Arc::new(map)))
}

fn handle<'a, D: Device>(s: &'a Session<D>, slot: &str) -> Result<&'a NativeBlob> {
    s.handles
        .get(slot)
        .and_then(|v| v.last())
        .ok_or_else(|| bad(format!("slot {slot:?} is not open")))
}

async fn run_op<D: Device>(
    s: &mut Session<D>,
    slots: &mut HashMap<String, BlobId>,
    name: &str,
    op: &Value,
) -> Result<()> {
    let slot = op
        .get("slot")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let id_of = |slots: &HashMap<String, BlobId>| {
        slots
            .get(&slot)
            .copied()
            .ok_or_else(|| bad(format!("unknown slot {slot:?}")))
    };
    let mut xattrs = Vec::new();
    if let Some(list) = op.get("xattrs").and_then(Value::as_array) {
        for x in list {
            let v = hex::decode(str_of(x, "value_hex")?).map_err(|e| bad(e.to_string()))?;
            xattrs.push((str_of(x, "name")?.to_string(), v));
        }
    }
    let of = |slots: &HashMap<String, BlobId>| {
        let o = str_of(op, "of")?;
        slots
            .get(o)
            .copied()
            .ok_or_else(|| bad(format!("unknown slot {o:?}")))
    };
    match name {
        "create" | "create_esnap_clone" => {
            let opts = CreateOpts {
                num_clusters: u64_of(op, "num_clusters")?,
                thin_provision: bool_of(op, "thin", name == "create_esnap_clone"),
                use_extent_table: bool_of(op, "extent_table", true),
                xattrs,
                ..CreateOpts::default()
            };
            let id = if name == "create" {
                s.store.create(opts).await?
            } else {
                let e = hex::decode(str_of(op, "esnap_id_hex")?).map_err(|e| bad(e.to_string()))?;
                s.store.create_esnap_clone(opts, &e).await?
            };
            slots.insert(slot, id);
        }
        "create_snapshot" => {
            let id = s.store.create_snapshot(of(slots)?, &xattrs).await?;
            slots.insert(slot, id);
        }
        "inflate" => s.store.inflate(id_of(slots)?).await?,
        "decouple_parent" => s.store.decouple_parent(id_of(slots)?).await?,
        "create_clone" => {
            let id = s.store.create_clone(of(slots)?, &xattrs).await?;
            slots.insert(slot, id);
        }
        "open" => {
            let b = s.store.open(id_of(slots)?).await?;
            s.handles.entry(slot).or_default().push(b);
        }
        "close" => {
            let b = s
                .handles
                .get_mut(&slot)
                .and_then(|v| v.pop())
                .ok_or_else(|| bad(format!("close of {slot:?} which is not open")))?;
            s.store.close(b).await?;
        }
        "set_xattr" => {
            let v = hex::decode(str_of(op, "value_hex")?).map_err(|e| bad(e.to_string()))?;
            s.store
                .set_xattr(handle(s, &slot)?, str_of(op, "name")?, &v)
                .await?;
        }
        "remove_xattr" => {
            s.store
                .remove_xattr(handle(s, &slot)?, str_of(op, "name")?)
                .await?
        }
        "resize" => {
            s.store
                .resize(handle(s, &slot)?, u64_of(op, "clusters")?)
                .await?
        }
        "sync" | "sync_md" => s.store.sync_md(handle(s, &slot)?).await?,
        // SPDK's live grow: to the device's size (its bdev's blocks, here the io unit).
        "grow" => {
            let unit = u64::from(s.store.io_unit_size());
            let size = s.store.device().size() / unit * unit;
            s.store.grow(size).await?
        }
        "set_read_only" => s.store.set_read_only(handle(s, &slot)?).await?,
        "set_super" => s.store.set_super(id_of(slots)?).await?,
        "delete" => s.store.delete(id_of(slots)?).await?,
        "write" | "write_zeroes" | "unmap" => {
            let b = handle(s, &slot)?.clone();
            let ch = s.store.channel()?;
            let off = u64_of(op, "offset")?;
            let len = u64_of(op, "length")?;
            let ius = u64::from(s.store.io_unit_size());
            let kind = op
                .get("pattern")
                .and_then(|p| p.get("kind"))
                .and_then(Value::as_str)
                .unwrap_or("zero");
            if name == "unmap" {
                ch.unmap(&b, off, len).await?;
            } else if name == "write_zeroes" || kind == "zero" {
                ch.write_zeroes(&b, off, len).await?;
            } else {
                let data = pattern_bytes(field(op, "pattern")?, off * ius, (len * ius) as usize)?;
                ch.write(&b, off, &data).await?;
            }
        }
        n => return Err(Error::Unsupported(format!("replay op {n:?}"))),
    }
    Ok(())
}

/// Replay `manifest` into a new image file at `out` (any old file there is replaced) through
/// the file device; returns the image's sha256 (hex). Like SPDK's aio bdev without
/// `fallocate`, the file device ignores unmap, so freed clusters keep their bytes.
pub fn replay(manifest: &Value, out: &Path) -> Result<String> {
    let (_, block) = image_geometry(manifest)?;
    match std::fs::remove_file(out) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(os_error(out, "remove", e))
        }
        _ => {}
    }
    let first = initial_size(manifest)?;
    let opts = crate::device::FileOptions {
        block_size: Some(block),
        ..Default::default()
    };
    let dev = replay_with(
        manifest,
        FileDevice::create_with(out, first, &opts)?,
        |d, n| {
            drop(d);
            FileDevice::extend(out, n)?;
            Ok(FileDevice::open_with(out, &opts)?)
        },
    )?;
    drop(dev);
    let image = std::fs::read(out).map_err(|e| os_error(out, "read image", e))?;
    Ok(sha256_hex(&image))
}

fn os_error(path: &Path, what: &str, source: std::io::Error) -> Error {
    Error::Device(crate::device::Error::Os {
        context: format!("{}: {what}", path.display()),
        source,
    })
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Describe the first difference between two images of one blobstore: which structure
/// (super block, a mask, md page `i`, cluster `c`) and, for metadata, both decodings.
/// `None` when they are identical.
pub fn first_difference(expected: &[u8], actual: &[u8]) -> Option<String> {
    if expected == actual {
        return None;
    }
    if expected.len() != actual.len() {
        return Some(format!(
            "sizes differ: {} vs {}",
            expected.len(),
            actual.len()
        ));
    }
    let pos = expected.iter().zip(actual).position(|(a, b)| a != b)? as u64;
    let Ok(sb) = SuperBlock::decode(expected) else {
        return Some(format!(
            "byte {pos} differs; expected image has no valid super block"
        ));
    };
    let Ok(l) = Layout::from_super(&sb, expected.len() as u64, 512) else {
        return Some(format!(
            "byte {pos} differs; expected image has a bad layout"
        ));
    };
    let ps = u64::from(l.md_page_size);
    let page = pos / ps;
    let slice = |img: &[u8], p: u64| img[(p * ps) as usize..((p + 1) * ps) as usize].to_vec();
    let region = if page == 0 {
        let a = SuperBlock::decode(actual)
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|e| e.to_string());
        format!("super block (byte {pos})\n expected: {sb:?}\n actual:   {a}")
    } else if page < u64::from(l.md_start) {
        format!(
            "mask region, md page {page} (byte {pos}): expected {} vs actual {}",
            hex::encode(&slice(expected, page)[..64]),
            hex::encode(&slice(actual, page)[..64])
        )
    } else if page < u64::from(l.md_start) + u64::from(l.md_len) {
        let i = (page - u64::from(l.md_start)) as u32;
        let dec = |img: &[u8]| describe_md_page(&slice(img, page));
        format!(
            "md page {i} (byte {pos}, offset {} in the page)\n expected: {}\n actual:   {}",
            pos % ps,
            dec(expected),
            dec(actual)
        )
    } else {
        let c = pos / u64::from(l.cluster_size);
        format!(
            "cluster {c} (byte {pos}, offset {} in the cluster): expected {:02x} actual {:02x}",
            pos % u64::from(l.cluster_size),
            expected[pos as usize],
            actual[pos as usize]
        )
    };
    Some(region)
}

fn describe_md_page(b: &[u8]) -> String {
    if b.iter().all(|&x| x == 0) {
        return "all zero".into();
    }
    match MdPage::decode(b, 0) {
        Err(e) => format!("undecodable ({e})"),
        Ok(p) => {
            let descs = super::native::mdpage::walk(&p.descriptors)
                .map(|v| {
                    v.iter()
                        .map(|d| {
                            format!(
                                "{:?}",
                                super::native::descriptor::Descriptor::decode(d.ty, d.payload, 0)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|e| e.to_string());
            format!(
                "id {:#x} seq {} next {:#x} root_of {:?}: [{descs}]",
                p.id,
                p.sequence_num,
                p.next,
                root_index(p.id)
            )
        }
    }
}

/// Load `dev` and check every blob of `manifest.blobs` against it: ids, sizes, thin flag,
/// allocated clusters, user xattrs in order, and the sha256 of every `reads[]` range.
/// Returns the loaded store's device (after a clean unload) on success.
pub fn verify_manifest(
    manifest: &Value,
    dev: MemoryDevice,
    force_recover: bool,
) -> Result<MemoryDevice> {
    let store = pollster::block_on(NativeBlobStore::load(
        dev,
        LoadOpts {
            bstype: Bstype::default(),
            force_recover,
        },
    ))?;
    let fail = |d: String| Error::invalid(format!("manifest mismatch: {d}"));
    let blobs = field(manifest, "blobs")?
        .as_array()
        .ok_or_else(|| bad("blobs"))?;
    let ids = pollster::block_on(store.blob_ids())?;
    let want: Vec<u64> = blobs
        .iter()
        .map(|b| u64_of(b, "id"))
        .collect::<Result<_>>()?;
    if ids != want {
        return Err(fail(format!("blob ids {ids:x?} != {want:x?}")));
    }
    if let Some(api) = manifest
        .get("spdk_reported_after_load")
        .and_then(|v| v.get("api"))
    {
        if let Some(f) = api.get("free_cluster_count").and_then(Value::as_u64) {
            if store.free_clusters() != f {
                return Err(fail(format!(
                    "free clusters {} != {f}",
                    store.free_clusters()
                )));
            }
        }
        let sup = api.get("super_blob").and_then(Value::as_u64);
        if store.super_blob() != sup {
            return Err(fail(format!(
                "super blob {:?} != {sup:?}",
                store.super_blob()
            )));
        }
    }
    let ch = store.channel()?;
    for b in blobs {
        let id = u64_of(b, "id")?;
        let blob = pollster::block_on(store.open(id))?;
        let name = b
            .get("scenario_name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let chk = |what: &str, got: u64, key: &str| -> Result<()> {
            let w = u64_of(b, key)?;
            if got != w {
                return Err(fail(format!("blob {name}: {what} {got} != {w}")));
            }
            Ok(())
        };
        chk("num_clusters", blob.num_clusters(), "num_clusters")?;
        chk("num_io_units", blob.num_io_units(), "num_io_units")?;
        chk(
            "allocated",
            blob.num_allocated_clusters(),
            "num_allocated_clusters",
        )?;
        if blob.is_thin() != bool_of(b, "thin_provisioned", false) {
            return Err(fail(format!("blob {name}: thin flag")));
        }
        let names = pollster::block_on(store.xattr_names(&blob))?;
        let want_x = field(b, "xattrs")?
            .as_array()
            .ok_or_else(|| bad("xattrs"))?;
        let want_names: Vec<&str> = want_x
            .iter()
            .filter_map(|x| x.get("name")?.as_str())
            .collect();
        if names != want_names {
            return Err(fail(format!(
                "blob {name}: xattrs {names:?} != {want_names:?}"
            )));
        }
        for x in want_x {
            let n = str_of(x, "name")?;
            let v = pollster::block_on(store.get_xattr(&blob, n))?.unwrap_or_default();
            if hex::encode(&v) != str_of(x, "value_hex")? {
                return Err(fail(format!("blob {name}: xattr {n} value")));
            }
        }
        let ius = u64::from(store.io_unit_size());
        for r in field(b, "reads")?.as_array().ok_or_else(|| bad("reads"))? {
            let off = u64_of(r, "offset")?;
            let len = u64_of(r, "length")?;
            let mut buf = vec![0u8; (len * ius) as usize];
            pollster::block_on(ch.read(&blob, off, &mut buf))?;
            if sha256_hex(&buf) != str_of(r, "sha256")? {
                return Err(fail(format!("blob {name}: read {off}+{len} hash differs")));
            }
        }
        pollster::block_on(store.close(blob))?;
    }
    drop(ch);
    pollster::block_on(store.unload())?;
    store.into_device()
}
