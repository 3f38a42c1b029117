//! Opening a [`Db`] on real SPDK (feature `spdk`): the engine's [`Options`] become the
//! blobstore's load and init options here, so the SPDK backend never sees the engine's.

use crate::blobstore::spdk::{SpdkBlobStore, SpdkConfig, SpdkEnvOpts};
use crate::blobstore::{Bstype, InitOpts, LoadOpts};
use crate::device::IoPath;
use crate::{Db, Options, Result};

impl Db<SpdkBlobStore> {
    /// Open (or, with `opts.create`, format) a store on SPDK bdev `bdev`, created from
    /// `config` (JSON text or a path, SPDK `save_config` format) unless it exists already.
    /// `opts.device` and `opts.device_size` are ignored: the bdev is the device.
    pub fn open_spdk(config: &str, bdev: &str, opts: Options) -> Result<Self> {
        let store = spdk_store(&SpdkConfig::parse(config), bdev, &opts)?;
        Db::open_on(store, opts, IoPath::Spdk)
    }
}

/// Load the blobstore on `bdev` as [`Db::open_spdk`] does: with `opts.bstype`, formatting it
/// with `opts.cluster_size` if it holds none and `opts.create` is set.
pub fn spdk_store(config: &SpdkConfig, bdev: &str, opts: &Options) -> Result<SpdkBlobStore> {
    let bstype = Bstype::new(&opts.bstype)?;
    let init = opts.create.then(|| InitOpts {
        cluster_size: opts.cluster_size,
        bstype,
        ..InitOpts::default()
    });
    let load = LoadOpts {
        bstype,
        force_recover: false,
    };
    Ok(SpdkBlobStore::open_or_init(
        &SpdkEnvOpts::default(),
        config,
        bdev,
        load,
        init,
    )?)
}
