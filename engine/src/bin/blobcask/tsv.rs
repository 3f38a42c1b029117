//! TSV escaping for `load` and `dump`: one `key<TAB>value` line per record, bytes outside
//! printable ASCII written as `\xHH`, and `\t`, `\n`, `\r`, `\\` escaped, so any binary key or
//! value survives a round trip.

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

/// Split one TSV line into key and value (exactly one tab).
pub fn split_line(line: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (k, v) = line.split_once('\t').ok_or("expected key<TAB>value")?;
    if v.contains('\t') {
        return Err("more than one tab on the line".into());
    }
    Ok((unescape(k)?, unescape(v)?))
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
        assert_eq!(
            split_line("a\\tb\tc\\x00").unwrap(),
            (b"a\tb".to_vec(), b"c\0".to_vec())
        );
        assert!(split_line("no tab").is_err());
        assert!(split_line("a\tb\tc").is_err());
        assert!(unescape("bad\\q").is_err());
        assert!(unescape("bad\\x4").is_err());
    }
}
