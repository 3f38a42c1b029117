//! Read-only inspection of any SPDK blobstore image (`blobs`, `blob`), store statistics,
//! `check`, `repair` and `replay`.
//!
//! Inspection never writes to the device: it loads the blobstore over a copy-on-write
//! overlay, so a dirty image is recovered in memory only and the image stays byte for byte
//! as it was.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use blobcask::blobstore::native::descriptor::Descriptor;
use blobcask::blobstore::native::esnap::{show_id, EsnapMap};
use blobcask::blobstore::native::mdpage::{self, MdPage};
use blobcask::blobstore::native::superblock::SuperBlock;
use blobcask::blobstore::native::{BlobParent, NativeBlobStore};
use blobcask::blobstore::{Blob, BlobStore, Error as BsError, LoadOpts};
use blobcask::device::{FileDevice, FileOptions, Overlay};
use blobcask::Stats;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::CliResult;

type ReadOnlyStore = NativeBlobStore<Overlay<FileDevice>>;

/// Load any SPDK blobstore on `path` without writing to it (a shared lock, waiting up to
/// `wait` for a writer to let go). `esnap` maps esnap ids to image files (`ID=PATH`), opened
/// read-only, for the reads of esnap clones.
fn load_read_only(
    path: &Path,
    esnap: &[String],
    wait: Option<Duration>,
) -> Result<ReadOnlyStore, blobcask::Error> {
    let opts = FileOptions {
        read_only: true,
        lock_wait: wait,
        ..FileOptions::default()
    };
    let mut map = EsnapMap::new();
    for m in esnap {
        let (id, file) = m
            .split_once('=')
            .ok_or_else(|| blobcask::Error::invalid(format!("--esnap wants ID=PATH, got {m:?}")))?;
        // An id given as 0x-hex names arbitrary bytes; anything else is the id's text.
        let key = match id.strip_prefix("0x").map(hex::decode) {
            Some(Ok(b)) if !b.is_empty() => b,
            _ => id.as_bytes().to_vec(),
        };
        map.insert(key, Arc::new(FileDevice::open_with(file, &opts)?));
    }
    let dev = Overlay::new(FileDevice::open_with(path, &opts)?);
    let bs = pollster::block_on(NativeBlobStore::load(dev, LoadOpts::default()))?;
    bs.set_esnap_resolver(Some(Arc::new(map)));
    Ok(bs)
}

/// What a blob is, for people: "thin", "read-only", "snapshot", "clone of 0x…", "esnap clone
/// of …", joined by commas. Reads the fields [`blob_json`] and [`mark_snapshots`] fill in.
fn kind(b: &Value) -> String {
    let mut k = Vec::new();
    if b["is_snapshot"] == true {
        k.push("snapshot".to_owned());
    }
    if b["read_only"] == true {
        k.push("read-only".to_owned());
    }
    k.push(
        if b["thin_provisioned"] == true {
            "thin"
        } else {
            "thick"
        }
        .to_owned(),
    );
    if let Some(p) = b["parent"]["snapshot_id"].as_str() {
        k.push(format!("clone of {p}"));
    }
    if let Some(e) = b["parent"]["esnap_id"].as_str() {
        let missing = if b["parent"]["esnap_device"] == true {
            ""
        } else {
            " (no device given)"
        };
        k.push(format!("esnap clone of {e}{missing}"));
    }
    for x in b["internal_xattrs"].as_array().into_iter().flatten() {
        match x["name"].as_str() {
            Some("SNAPTMP") => k.push("snapshot in progress".to_owned()),
            Some("SNAPRM") => k.push("snapshot pending removal".to_owned()),
            _ => {}
        }
    }
    k.join(", ")
}

/// Fill in `is_snapshot`, `clones` and `kind` of every blob from the others' parents.
fn mark_snapshots(list: &mut [Value]) {
    let parents: Vec<(String, String)> = list
        .iter()
        .filter_map(|b| {
            let p = b["parent"]["snapshot_id"].as_str()?;
            Some((p.to_owned(), b["id"].as_str()?.to_owned()))
        })
        .collect();
    for b in list.iter_mut() {
        let me = b["id"].as_str().unwrap_or("").to_owned();
        let clones: Vec<&String> = parents
            .iter()
            .filter(|(p, _)| *p == me)
            .map(|(_, c)| c)
            .collect();
        if b.get("error").is_some() {
            continue;
        }
        b["is_snapshot"] = json!(!clones.is_empty());
        b["clones"] = json!(clones);
        b["kind"] = json!(kind(b));
    }
}

/// Every blob as [`blob_json`] says, with snapshot marks; a blob that cannot be opened is an
/// entry with its `error`, and the others are still listed.
fn all_blobs(bs: &ReadOnlyStore) -> Result<Vec<Value>, blobcask::Error> {
    let ids = bs.block_on(bs.blob_ids())?;
    let mut list = Vec::with_capacity(ids.len());
    for id in ids {
        list.push(
            blob_json(bs, id)
                .unwrap_or_else(|e| json!({ "id": format!("{id:#x}"), "error": e.to_string() })),
        );
    }
    mark_snapshots(&mut list);
    Ok(list)
}

fn blob_json(bs: &ReadOnlyStore, id: u64) -> Result<Value, blobcask::Error> {
    bs.block_on(async {
        let blob = bs.open(id).await?;
        let parent = match blob.parent() {
            BlobParent::None => json!({ "kind": "none" }),
            BlobParent::Snapshot(p) => json!({
                "kind": "snapshot",
                "snapshot_id": format!("{p:#x}"),
            }),
            BlobParent::External { id, available } => json!({
                "kind": "esnap",
                "esnap_id": show_id(&id),
                "esnap_id_hex": hex::encode(&id),
                "esnap_device": available,
            }),
        };
        let internal: Vec<Value> = bs
            .internal_xattrs(&blob)?
            .into_iter()
            .map(|(n, v)| json!({ "name": n, "value_hex": hex::encode(v) }))
            .collect();
        let mut xattrs = Vec::new();
        let mut role = None;
        for name in bs.xattr_names(&blob).await? {
            let v = bs.get_xattr(&blob, &name).await?.unwrap_or_default();
            if name == "bc.role" {
                role = Some(String::from_utf8_lossy(&v).into_owned());
            }
            xattrs.push(json!({ "name": name, "value_hex": hex::encode(v) }));
        }
        let flags = root_flags(bs, blob.id()).await?;
        let v = json!({
            "id": format!("{:#x}", blob.id()),
            "num_clusters": blob.num_clusters(),
            "num_allocated_clusters": blob.num_allocated_clusters(),
            "num_io_units": blob.num_io_units(),
            "size_bytes": blob.num_clusters() * u64::from(bs.cluster_size()),
            "thin_provisioned": blob.is_thin(),
            "read_only": blob.is_read_only(),
            "flags": {
                "invalid": flags.0,
                "data_ro": flags.1,
                "md_ro": flags.2,
            },
            "role": role,
            "xattrs": xattrs,
            "internal_xattrs": internal,
            "parent": parent,
            "is_clone": matches!(blob.parent(), BlobParent::Snapshot(_)),
            "is_esnap_clone": matches!(blob.parent(), BlobParent::External { .. }),
        });
        bs.close(blob).await?;
        Ok(v)
    })
}

/// The FLAGS descriptor of a blob's root md page: (invalid, data_ro, md_ro).
async fn root_flags(bs: &ReadOnlyStore, id: u64) -> Result<(u64, u64, u64), blobcask::Error> {
    use blobcask::device::Device;
    let l = bs.layout();
    let off = l.md_offset((id & 0xFFFF_FFFF) as u32);
    let mut b = blobcask::device::AlignedBuf::zeroed(l.md_page_size as usize);
    bs.device().read(off, &mut b).await?;
    let page = MdPage::decode(&b[..4096], off)?;
    for d in mdpage::walk(&page.descriptors)? {
        if let Descriptor::Flags {
            invalid,
            data_ro,
            md_ro,
        } = Descriptor::decode(d.ty, d.payload, off)?
        {
            return Ok((invalid, data_ro, md_ro));
        }
    }
    Ok((0, 0, 0))
}

fn read_super(bs: &ReadOnlyStore) -> Result<SuperBlock, blobcask::Error> {
    use blobcask::device::Device;
    let mut b = blobcask::device::AlignedBuf::zeroed(4096);
    pollster::block_on(bs.device().read(0, &mut b))?;
    Ok(SuperBlock::decode(&b)?)
}

fn super_json(bs: &ReadOnlyStore) -> Result<Value, blobcask::Error> {
    let sb = read_super(bs)?;
    Ok(json!({
        "version": sb.version,
        "clean": sb.clean,
        "super_blob": format!("{:#x}", sb.super_blob),
        "cluster_size": sb.cluster_size,
        "io_unit_size": bs.io_unit_size(),
        "md_page_size": bs.md_page_size(),
        "size": sb.size,
        "md_start": sb.md_start,
        "md_len": sb.md_len,
        "used_page_mask_start": sb.used_page_mask_start,
        "used_page_mask_len": sb.used_page_mask_len,
        "used_cluster_mask_start": sb.used_cluster_mask_start,
        "used_cluster_mask_len": sb.used_cluster_mask_len,
        "used_blobid_mask_start": sb.used_blobid_mask_start,
        "used_blobid_mask_len": sb.used_blobid_mask_len,
        "bstype_hex": hex::encode(sb.bstype.0),
        "bstype": sb.bstype.as_text(),
        "free_clusters": bs.free_clusters(),
        "total_data_clusters": bs.total_data_clusters(),
    }))
}

/// `blobcask blobs`.
pub fn blobs(path: &Path, as_json: bool, esnap: &[String], wait: Option<Duration>) -> CliResult {
    let bs = load_read_only(path, esnap, wait)?;
    let list = all_blobs(&bs)?;
    let mut out = std::io::stdout().lock();
    if as_json {
        let doc = json!({ "super_block": super_json(&bs)?, "blobs": list });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let sb = super_json(&bs)?;
    writeln!(
        out,
        "blobstore v{} bstype {:?} {} clusters of {} bytes ({} free), io unit {}, {}",
        sb["version"],
        sb["bstype"].as_str().unwrap_or(""),
        sb["total_data_clusters"],
        sb["cluster_size"],
        sb["free_clusters"],
        sb["io_unit_size"],
        if sb["clean"] == 1 {
            "clean"
        } else {
            "dirty (recovered in memory)"
        },
    )?;
    writeln!(
        out,
        "{:<20} {:>10} {:>10} {:>5} {:>8} xattrs / kind",
        "id", "clusters", "allocated", "thin", "role"
    )?;
    for b in &list {
        if let Some(e) = b["error"].as_str() {
            writeln!(out, "{:<20} error: {e}", b["id"].as_str().unwrap_or(""))?;
            continue;
        }
        let names: Vec<&str> = b["xattrs"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["name"].as_str()).collect())
            .unwrap_or_default();
        let names = if names.is_empty() {
            "-".to_owned()
        } else {
            names.join(",")
        };
        writeln!(
            out,
            "{:<20} {:>10} {:>10} {:>5} {:>8} {names} / {}",
            b["id"].as_str().unwrap_or(""),
            b["num_clusters"].as_u64().unwrap_or(0),
            b["num_allocated_clusters"].as_u64().unwrap_or(0),
            if b["thin_provisioned"] == true {
                "yes"
            } else {
                "no"
            },
            b["role"].as_str().unwrap_or("-"),
            b["kind"].as_str().unwrap_or(""),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A value for people: quoted text when printable, else hex, cut after 48 bytes.
fn show_value(raw: &[u8]) -> String {
    let cut = &raw[..raw.len().min(48)];
    let more = if raw.len() > cut.len() {
        format!("... ({} bytes)", raw.len())
    } else {
        String::new()
    };
    match std::str::from_utf8(raw) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => {
            let t: String = s.chars().take(48).collect();
            format!("{t:?}{more}")
        }
        _ => format!("0x{}{more}", hex::encode(cut)),
    }
}

fn parse_id(s: &str) -> Result<u64, blobcask::Error> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| blobcask::Error::invalid(format!("not a blob id: {s:?}")))
}

fn parse_range(s: &str) -> Result<(u64, u64), blobcask::Error> {
    let bad = || blobcask::Error::invalid(format!("expected OFFSET:LEN in io units, got {s:?}"));
    let (o, l) = s.split_once(':').ok_or_else(bad)?;
    Ok((o.parse().map_err(|_| bad())?, l.parse().map_err(|_| bad())?))
}

/// `blobcask blob <id>`.
pub fn blob(
    path: &Path,
    id: &str,
    as_json: bool,
    read: Option<&str>,
    esnap: &[String],
    wait: Option<Duration>,
) -> CliResult {
    let id = parse_id(id)?;
    let bs = load_read_only(path, esnap, wait)?;
    if !bs.block_on(bs.blob_ids())?.contains(&id) {
        let _ = writeln!(std::io::stderr().lock(), "NOT_FOUND: no blob {id:#x}");
        return Ok(ExitCode::from(1));
    }
    if let Some(r) = read {
        let (offset, len) = parse_range(r)?;
        let digest = bs.block_on(async {
            let blob = bs.open(id).await?;
            let res = hash_range(&bs, &blob, offset, len).await;
            bs.close(blob).await?;
            res
        });
        if let Err(blobcask::Error::Blobstore(BsError::EsnapUnavailable { esnap_id, .. })) = &digest
        {
            let _ = writeln!(
                std::io::stderr().lock(),
                "hint: give its image with `--esnap {esnap_id}=PATH`"
            );
        }
        let digest = digest?;
        writeln!(std::io::stdout().lock(), "{digest}")?;
        return Ok(ExitCode::SUCCESS);
    }
    // Fails like before for a blob that does not open; a snapshot is known from the others.
    blob_json(&bs, id)?;
    let b = all_blobs(&bs)?
        .into_iter()
        .find(|b| b["id"] == json!(format!("{id:#x}")))
        .ok_or_else(|| blobcask::Error::NotFound(format!("blob {id:#x}")))?;
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&b)?)?;
    } else {
        writeln!(out, "blob {}", b["id"].as_str().unwrap_or(""))?;
        writeln!(out, "  kind: {}", b["kind"].as_str().unwrap_or(""))?;
        for k in [
            "num_clusters",
            "num_allocated_clusters",
            "num_io_units",
            "size_bytes",
            "thin_provisioned",
            "read_only",
            "role",
            "flags",
        ] {
            writeln!(out, "  {k}: {}", b[k])?;
        }
        for x in b["xattrs"].as_array().into_iter().flatten() {
            let name = x["name"].as_str().unwrap_or("");
            let raw = hex::decode(x["value_hex"].as_str().unwrap_or("")).unwrap_or_default();
            writeln!(out, "  xattr {name} = {}", show_value(&raw))?;
        }
        for x in b["internal_xattrs"].as_array().into_iter().flatten() {
            let name = x["name"].as_str().unwrap_or("");
            let raw = hex::decode(x["value_hex"].as_str().unwrap_or("")).unwrap_or_default();
            writeln!(out, "  internal xattr {name} = {}", show_value(&raw))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn hash_range(
    bs: &ReadOnlyStore,
    blob: &<ReadOnlyStore as BlobStore>::Blob,
    offset: u64,
    len: u64,
) -> Result<String, blobcask::Error> {
    use blobcask::blobstore::IoChannel;
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= blob.num_io_units())
        .ok_or_else(|| {
            blobcask::Error::invalid(format!(
                "range {offset}:{len} runs past the blob's {} io units",
                blob.num_io_units()
            ))
        })?;
    let ch = bs.channel()?;
    let unit = u64::from(bs.io_unit_size());
    let step = (1u64 << 20) / unit;
    let mut h = Sha256::new();
    let mut buf = blobcask::device::AlignedBuf::zeroed((step * unit) as usize);
    let mut at = offset;
    while at < end {
        let n = step.min(end - at);
        let b = &mut buf[..(n * unit) as usize];
        ch.read(blob, at, b).await?;
        h.update(&*b);
        at += n;
    }
    Ok(hex::encode(h.finalize()))
}

/// Print `Db::stats` for people or as JSON: the same figures, each once. The counters of
/// writes and merges are the store's totals over every run (persisted at each clean close and merge),
/// not this process's, which only read.
pub fn print_stats(s: &Stats, as_json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let t = &s.totals;
    let blobs = s.blobs.iter().map(|b| {
        (
            format!("{:#x}", b.id),
            b,
            format!("{:?}", b.role).to_lowercase(),
        )
    });
    if as_json {
        let blobs: Vec<Value> = blobs
            .map(|(id, b, state)| {
                json!({"id": id, "role": "data", "state": state, "shard": b.shard, "seq": b.seq,
                       "size": b.size, "live_bytes": b.live_bytes, "dead_bytes": b.dead_bytes})
            })
            .collect();
        let doc = json!({
            "keys": s.keys, "shards": s.shards.len(),
            "live_bytes": s.live_bytes, "dead_bytes": s.dead_bytes,
            "keydir_bytes_per_key": s.keydir_bytes_per_key,
            "free_clusters": s.free_clusters, "total_clusters": s.total_clusters,
            "merges": t.merges, "merged_bytes": t.merged_bytes,
            "user_bytes_written": t.user_bytes, "device_bytes_written": t.device_bytes,
            "write_amplification": t.write_amplification(),
            "io_path": s.io_path,
            "open_ms": s.recovery_time.as_secs_f64() * 1e3,
            "open_used_hints": s.recovery_used_hints, "blobs": blobs,
        });
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).map_err(std::io::Error::other)?
        );
    }
    let total = s.live_bytes + s.dead_bytes;
    let frag = if total == 0 {
        0.0
    } else {
        100.0 * s.dead_bytes as f64 / total as f64
    };
    writeln!(out, "keys                 {}", s.keys)?;
    writeln!(out, "shards               {}", s.shards.len())?;
    writeln!(out, "live bytes           {}", s.live_bytes)?;
    writeln!(
        out,
        "dead bytes           {} ({frag:.1}% of the logs)",
        s.dead_bytes
    )?;
    writeln!(out, "keydir bytes per key {:.1}", s.keydir_bytes_per_key)?;
    writeln!(
        out,
        "free clusters        {} of {}",
        s.free_clusters, s.total_clusters
    )?;
    writeln!(
        out,
        "merges               {} ({} bytes rewritten; all runs)",
        t.merges, t.merged_bytes
    )?;
    writeln!(
        out,
        "bytes written        {} by users, {} to the device (write amplification {:.2}; all runs)",
        t.user_bytes,
        t.device_bytes,
        t.write_amplification()
    )?;
    writeln!(out, "io path              {}", s.io_path)?;
    writeln!(
        out,
        "open took            {:.1} ms ({})",
        s.recovery_time.as_secs_f64() * 1e3,
        if s.recovery_used_hints {
            "from hints"
        } else {
            "scanned data blobs"
        }
    )?;
    writeln!(
        out,
        "{:<20} {:>5} {:>5} {:>7} {:>12} {:>12} {:>12}",
        "data blob", "shard", "seq", "state", "size", "live", "dead"
    )?;
    for (id, b, state) in blobs {
        writeln!(
            out,
            "{:<20} {:>5} {:>5} {:>7} {:>12} {:>12} {:>12}",
            id, b.shard, b.seq, state, b.size, b.live_bytes, b.dead_bytes
        )?;
    }
    Ok(())
}

/// `blobcask replay`.
pub fn replay(manifest: &Path, out: &Path) -> CliResult {
    let text = std::fs::read_to_string(manifest)?;
    let m: Value = serde_json::from_str(&text)?;
    let digest = blobcask::blobstore::replay::replay(&m, out)?;
    writeln!(std::io::stdout().lock(), "{digest}  {}", out.display())?;
    Ok(ExitCode::SUCCESS)
}

fn open_ro(path: &Path, wait: Option<Duration>) -> Result<FileDevice, blobcask::Error> {
    Ok(FileDevice::open_with(
        path,
        &FileOptions {
            read_only: true,
            lock_wait: wait,
            ..FileOptions::default()
        },
    )?)
}

/// `blobcask check`: exit 0 when clean, 1 when problems were found.
pub fn check(path: &Path, wait: Option<Duration>) -> CliResult {
    let mut rep = blobcask::fsck::check(|| open_ro(path, wait))?;
    if rep.is_clean() {
        let (notes, problems) = crate::chunk::check(path, wait);
        rep.notes.extend(notes);
        rep.problems.extend(problems);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} blobs ({} data, {} hint, {} snapshot), {} records and {} hint entries verified, {}",
        rep.blobs,
        rep.data_blobs,
        rep.hint_blobs,
        rep.snapshot_blobs,
        rep.records,
        rep.hint_entries,
        if rep.clean_shutdown {
            "closed cleanly"
        } else {
            "not closed cleanly"
        }
    )?;
    for n in &rep.notes {
        writeln!(out, "note: {n}")?;
    }
    for p in &rep.problems {
        writeln!(out, "PROBLEM: {p}")?;
    }
    if rep.is_clean() {
        writeln!(out, "clean")?;
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(out, "{} problems", rep.problems.len())?;
        Ok(ExitCode::from(1))
    }
}

/// `blobcask repair`: salvage every readable record, then rebuild the store from them.
///
/// The salvaged records are first written to `<device>.salvage.tsv` (a new name if that
/// exists; synced), then a new store with the damaged one's own geometry (cluster size, shard
/// count, size) is built and verified in a staging file beside the target, and only then
/// replaces the target. A failure at any step leaves the original as it was and the backup in
/// place; the backup is removed once the replacement is durable.
pub fn repair(path: &Path, output: Option<&Path>, report: Option<&Path>) -> CliResult {
    if let Some(o) = output.filter(|o| o.exists()) {
        return Err(blobcask::Error::invalid(format!(
            "{} exists; `repair --output` writes a new file and never overwrites one",
            o.display()
        ))
        .into());
    }
    let mut rep =
        blobcask::fsck::salvage(open_ro(path, None)?).map_err(blobcask::fsck::unsalvageable)?;
    // The chunk store's metadata names pages of chunk blobs, which a rebuilt store does not
    // have: the rebuild carries the key-value data only.
    let before = rep.live.len();
    rep.live
        .retain(|k, _| !k.starts_with(blobcask::chunk::META_PREFIX));
    let chunk_keys = before - rep.live.len();
    let mut out = std::io::stdout().lock();
    if chunk_keys > 0 {
        writeln!(
            out,
            "{chunk_keys} chunk metadata keys left out: repair rebuilds the key-value data only (chunks are not carried over)"
        )?;
    }
    writeln!(
        out,
        "salvaged {} live keys from {} readable records ({} found past damage, {} unflushed records past a torn tail and {} records of uncommitted batches dropped)",
        rep.live.len(),
        rep.records,
        rep.beyond_damage,
        rep.unflushed,
        rep.uncommitted
    )?;
    for r in &rep.restored {
        writeln!(out, "{r}")?;
    }
    for b in &rep.damaged_blobs {
        writeln!(
            out,
            "damaged md page: blob {:#x} (per the catalog, the {}): {}",
            b.blob,
            b.what,
            if b.restored_prefix {
                "restored from an older catalog; its log past the restored clusters is treated as damaged"
            } else {
                "not restorable; its records are lost"
            }
        )?;
    }
    for d in &rep.damaged {
        writeln!(
            out,
            "damaged: shard {} blob {:#x} (seq {}) bytes {}..{} ({} bytes unreadable)",
            d.shard,
            d.blob,
            d.blob_seq,
            d.offset,
            d.offset + d.len,
            d.len
        )?;
    }
    writeln!(
        out,
        "{} keys lost (newest version damaged; left out), {} keys may be stale (older value, back from deletion, or missing)",
        rep.lost.len(),
        rep.suspect.len()
    )?;
    if let Some(r) = report {
        let mut json = blobcask::salvage::report_json(&rep);
        hex_ids(&mut json);
        let f = std::fs::File::create(r)?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(&f), &json)
            .map_err(std::io::Error::other)?;
        f.sync_all()?;
        writeln!(out, "report written to {}", r.display())?;
    }
    let backup = write_backup(path, &rep.live)?;
    writeln!(
        out,
        "salvaged records saved to {} (`blobcask load` restores them)",
        backup.display()
    )?;
    let shape = rep.shape.ok_or_else(|| {
        blobcask::Error::invalid("the damaged store's geometry is unknown; not rebuilding")
    })?;
    let target = output.unwrap_or(path).to_path_buf();
    // Build and verify the new store beside the target; the original is untouched until then.
    let staging = sibling(&target, ".repair-staging")?;
    let built = build_store(&staging, &shape, &rep.live).and_then(|()| {
        verify_store(&staging, &rep.live)?;
        match output {
            Some(o) => std::fs::rename(&staging, o)?,
            None => copy_over(&staging, path)?,
        }
        Ok(())
    });
    let _ = std::fs::remove_file(&staging);
    built?;
    std::fs::remove_file(&backup)?;
    writeln!(
        out,
        "rebuilt {} with {} keys",
        target.display(),
        rep.live.len()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Blob ids in hex, as everywhere in the CLI: every `blob` field of the report's lists.
fn hex_ids(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x.as_u64() {
                    Some(id) if k == "blob" => *x = Value::String(format!("{id:#x}")),
                    _ => hex_ids(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(hex_ids),
        _ => {}
    }
}

/// A path beside `p` named `p` + `suffix` (+ `.N` if taken) that does not exist yet.
fn sibling(p: &Path, suffix: &str) -> Result<std::path::PathBuf, blobcask::Error> {
    for n in 0..1000u32 {
        let mut name = p.as_os_str().to_owned();
        name.push(suffix);
        if n > 0 {
            name.push(format!(".{n}"));
        }
        let c = std::path::PathBuf::from(name);
        if !c.exists() {
            return Ok(c);
        }
    }
    Err(blobcask::Error::invalid(format!(
        "no free name beside {} for {suffix}",
        p.display()
    )))
}

/// Write the salvaged records to a new backup file (an existing one is never overwritten).
fn write_backup(
    path: &Path,
    live: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<std::path::PathBuf, blobcask::Error> {
    let mut name = path.as_os_str().to_owned();
    name.push(".salvage");
    let stem = std::path::PathBuf::from(name);
    for n in 0..1000u32 {
        let mut p = stem.clone().into_os_string();
        if n > 0 {
            p.push(format!(".{n}"));
        }
        p.push(".tsv");
        let p = std::path::PathBuf::from(p);
        let f = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        };
        let mut w = std::io::BufWriter::new(&f);
        for (k, v) in live {
            writeln!(w, "{}\t{}", crate::tsv::escape(k), crate::tsv::escape(v))?;
        }
        w.flush()?;
        drop(w);
        f.sync_all()?;
        return Ok(p);
    }
    Err(blobcask::Error::invalid(format!(
        "no free backup name beside {}",
        path.display()
    )))
}

/// Format a new store on `at` with `shape` and write `live` into it.
fn build_store(
    at: &Path,
    shape: &blobcask::salvage::StoreShape,
    live: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<(), blobcask::Error> {
    let mut opts = blobcask::Options::new(blobcask::DeviceSpec::Path(at.to_path_buf()));
    opts.create = true;
    opts.device_size = shape.size;
    opts.cluster_size = shape.cluster_size;
    if (512..=4096).contains(&shape.io_unit_size) {
        // The rebuilt store keeps the io unit of the damaged one.
        opts.io_unit_size = shape.io_unit_size;
    }
    opts.shards = shape.shards;
    opts.sync = blobcask::SyncPolicy::Never;
    let db = blobcask::Db::open(opts)?;
    let mut batch = crate::Batched::new(&db);
    for (k, v) in live {
        batch.put(k, v)?;
    }
    batch.finish()?;
    db.sync()?;
    db.close()
}

/// Open the built store read-only and compare it with `live`, key by key.
fn verify_store(
    at: &Path,
    live: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<(), blobcask::Error> {
    let mut opts = blobcask::Options::new(blobcask::DeviceSpec::Path(at.to_path_buf()));
    opts.create = false;
    opts.read_only = true;
    let db = blobcask::Db::open_read_only(opts)?;
    let keys = db.keys()?;
    if keys.len() != live.len() {
        return Err(blobcask::Error::invalid(format!(
            "the rebuilt store holds {} keys, {} were salvaged; not replacing",
            keys.len(),
            live.len()
        )));
    }
    for (k, v) in live {
        if db.get(k)?.as_deref() != Some(v.as_slice()) {
            return Err(blobcask::Error::invalid(format!(
                "the rebuilt store does not hold key {:?} as salvaged; not replacing",
                String::from_utf8_lossy(k)
            )));
        }
    }
    db.close()
}

/// Copy the finished image `from` over `to` in place and make it durable.
fn copy_over(from: &Path, to: &Path) -> Result<(), blobcask::Error> {
    let mut src = std::fs::File::open(from)?;
    let mut dst = std::fs::OpenOptions::new().write(true).open(to)?;
    std::io::copy(&mut src, &mut dst)?;
    dst.sync_all()?;
    Ok(())
}
