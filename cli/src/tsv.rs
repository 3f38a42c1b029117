//! The CLI's one key/value encoding, used alike for arguments, output and `load`/`dump` lines
//! (`key<TAB>value`): bytes outside printable ASCII written as `\xHH`, and `\t`, `\n`, `\r`,
//! `\\` escaped, so any binary key or value survives a round trip; or, with `--hex`, plain hex.

/// Escape arbitrary bytes into one TSV field.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Undo [`escape`]. Bytes that need no escaping may also appear raw (UTF-8 is kept as is).
pub fn unescape(field: &str) -> Result<Vec<u8>, String> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let esc = *b.get(i + 1).ok_or("a trailing backslash")?;
        match esc {
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = field.get(i + 2..i + 4).ok_or("a truncated \\x escape")?;
                let v = u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape \\x{hex}"))?;
                out.push(v);
                i += 2;
            }
            other => return Err(format!("unknown escape \\{}", other as char)),
        }
        i += 2;
    }
    Ok(out)
}

/// How keys and values are written on the command line, in output and in `load`/`dump` lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// [`escape`] / [`unescape`].
    Escaped,
    /// Lowercase hex out; either case in.
    Hex,
}

impl Encoding {
    pub fn new(hex: bool) -> Self {
        if hex {
            Encoding::Hex
        } else {
            Encoding::Escaped
        }
    }

    pub fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Escaped => escape(bytes),
            Encoding::Hex => hex::encode(bytes),
        }
    }

    pub fn decode(self, field: &str) -> Result<Vec<u8>, String> {
        match self {
            Encoding::Escaped => unescape(field),
            Encoding::Hex => hex::decode(field).map_err(|e| format!("not hex ({e}): {field:?}")),
        }
    }

    /// Split one line into key and value (exactly one tab).
    pub fn split_line(self, line: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let (k, v) = line.split_once('\t').ok_or("expected key<TAB>value")?;
        if v.contains('\t') {
            return Err("more than one tab on the line".into());
        }
        let key = self.decode(k).map_err(|e| format!("key: {e}"))?;
        let value = self.decode(v).map_err(|e| format!("value: {e}"))?;
        Ok((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255u8).collect();
        let e = escape(&all);
        assert!(!e.contains('\t') && !e.contains('\n'));
        assert_eq!(unescape(&e).unwrap(), all);
    }

    #[test]
    fn lines_split_on_one_tab() {
        let e = Encoding::Escaped;
        assert_eq!(
            e.split_line("a\\tb\tc\\x00").unwrap(),
            (b"a\tb".to_vec(), b"c\0".to_vec())
        );
        assert!(e.split_line("no tab").is_err());
        assert!(e.split_line("a\tb\tc").is_err());
        let h = Encoding::Hex;
        assert_eq!(
            h.split_line("6109\t00FF\r").unwrap(),
            (b"a\t".to_vec(), vec![0, 0xff])
        );
        assert!(h.split_line("zz\t00").is_err());
        assert_eq!(h.encode(b"a\t"), "6109");
        assert!(unescape("bad\\q").is_err());
        assert!(unescape("bad\\x4").is_err());
    }
}
