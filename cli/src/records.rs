//! Reading records in bulk (`scan`, `keys`, `dump`): key order, a selection by prefix and
//! range, a limit. Every bulk read of the CLI goes through [`scan`], so it can move to a
//! streaming iterator of the library without touching the commands.

use blobcask::Db;

/// Which records a scan visits.
#[derive(Debug, Default, Clone)]
pub struct Selection {
    /// Only keys starting with these bytes.
    pub prefix: Option<Vec<u8>>,
    /// Only keys at or after this one.
    pub from: Option<Vec<u8>>,
    /// Only keys before this one (exclusive).
    pub to: Option<Vec<u8>>,
    /// At most this many records.
    pub limit: Option<u64>,
}

impl Selection {
    fn admits(&self, key: &[u8]) -> bool {
        self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
            && self.from.as_deref().is_none_or(|f| key >= f)
            && self.to.as_deref().is_none_or(|t| key < t)
    }
}

/// Visit the selected live records in key order: `visit(key, value)`, the value `None` when
/// `keys_only`. Stops at the first error of `visit`. Returns how many records were visited.
///
/// Today this sorts the key list and reads each value by key; the store is opened read-only
/// (shared lock) by every caller, so no write can come between the two.
pub fn scan<E: From<blobcask::Error>>(
    db: &Db,
    sel: &Selection,
    keys_only: bool,
    mut visit: impl FnMut(&[u8], Option<&[u8]>) -> Result<(), E>,
) -> Result<u64, E> {
    let limit = sel.limit.unwrap_or(u64::MAX);
    if limit == 0 {
        return Ok(0);
    }
    let mut keys = db.keys()?;
    keys.retain(|k| sel.admits(k));
    keys.sort_unstable();
    let mut n = 0u64;
    for k in keys {
        if keys_only {
            visit(&k, None)?;
        } else {
            // A key removed since the listing (only possible on a writable handle) is skipped.
            let Some(v) = db.get(&k)? else { continue };
            visit(&k, Some(&v))?;
        }
        n += 1;
        if n == limit {
            break;
        }
    }
    Ok(n)
}

/// Visit every live record in the store's log order (no sorting, no key list in memory): the
/// streaming iterator reads each data blob sequentially in large I/Os. Stops at the first
/// error, of the store (a damaged record) or of `visit`. Returns how many were visited.
pub fn dump<E: From<blobcask::Error>>(
    db: &Db,
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let mut it = db.iter()?;
    let mut n = 0u64;
    while let Some(item) = it.next_pair() {
        let (k, v) = item?;
        visit(k, v)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_is_prefix_and_half_open_range() {
        let sel = Selection {
            prefix: Some(b"a".to_vec()),
            from: Some(b"ab".to_vec()),
            to: Some(b"ad".to_vec()),
            limit: None,
        };
        assert!(!sel.admits(b"aa"));
        assert!(sel.admits(b"ab"));
        assert!(sel.admits(b"ac\xff"));
        assert!(!sel.admits(b"ad"));
        assert!(!sel.admits(b"b"));
        assert!(Selection::default().admits(b""));
    }
}
