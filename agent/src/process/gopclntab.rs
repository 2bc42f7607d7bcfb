//! Go's function table (`.gopclntab`), which stripping keeps: where a function of a Go
//! executable starts, by its Go name, for binaries without a symbol table.
//!
//! Layout (Go 1.20+, magic 0xfffffff1, written by the linker; Go 1.18-1.19, 0xfffffff0, is the
//! same for what is read here): a header of `magic u32, pad u8 x2, quantum u8, ptrsize u8`, then
//! ptrsize-wide words `nfunc, nfiles, textStart, funcnameOffset, cuOffset, filetabOffset,
//! pctabOffset, pclnOffset` (offsets from the header's start). At `pclnOffset`, `nfunc + 1`
//! pairs of u32 `(entry offset from textStart, func offset from pclnOffset)`; each func starts
//! with `entryOff u32, nameOff i32`, the name a NUL-terminated string at `funcnameOffset +
//! nameOff`.

/// Where each of `names` starts, as an offset from the start of Go's text (`runtime.text`),
/// read from the bytes of a `.gopclntab` section, with the header's `textStart` (0 where the
/// linker left it to the runtime). None where the table is not one loupe reads; a name not
/// found is None in its slot.
pub fn entries(table: &[u8], names: &[&str]) -> Option<(u64, Vec<Option<u64>>)> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(table.get(at..at + 4)?.try_into().ok()?))
    };
    let word_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(table.get(at..at + 8)?.try_into().ok()?))
    };
    let magic = u32_at(0)?;
    if !matches!(magic, 0xffff_fff0 | 0xffff_fff1) || *table.get(7)? != 8 {
        return None;
    }
    let nfunc = usize::try_from(word_at(8)?).ok()?;
    let text_start = word_at(24)?;
    let funcnames = usize::try_from(word_at(32)?).ok()?;
    let functab = usize::try_from(word_at(64)?).ok()?;
    if nfunc > table.len() / 8 {
        return None;
    }
    let mut found = vec![None; names.len()];
    let mut left = names.len();
    for i in 0..nfunc {
        if left == 0 {
            break;
        }
        let pair = functab + i * 8;
        let entry = u32_at(pair)?;
        let func = functab + usize::try_from(u32_at(pair + 4)?).ok()?;
        let name_off = usize::try_from(u32_at(func + 4)?).ok()?;
        let start = funcnames.checked_add(name_off)?;
        let rest = table.get(start..)?;
        let end = rest.iter().take(4096).position(|&b| b == 0)?;
        let name = &rest[..end];
        for (slot, wanted) in found.iter_mut().zip(names) {
            if slot.is_none() && name == wanted.as_bytes() {
                *slot = Some(u64::from(entry));
                left -= 1;
            }
        }
    }
    Some((text_start, found))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table as Go 1.20+ writes it, with functions `names` at entries 0, 0x10, 0x20, ...
    fn table(names: &[&str]) -> Vec<u8> {
        let header = 72usize;
        let mut funcnames = Vec::new();
        let mut name_offsets = Vec::new();
        for name in names {
            name_offsets.push(funcnames.len() as u32);
            funcnames.extend_from_slice(name.as_bytes());
            funcnames.push(0);
        }
        let funcname_at = header;
        let functab_at = funcname_at + funcnames.len();
        let pairs = (names.len() + 1) * 8;
        let mut out = vec![0u8; header];
        out[..4].copy_from_slice(&0xffff_fff1u32.to_le_bytes());
        out[6] = 1;
        out[7] = 8;
        out[8..16].copy_from_slice(&(names.len() as u64).to_le_bytes());
        out[32..40].copy_from_slice(&(funcname_at as u64).to_le_bytes());
        out[64..72].copy_from_slice(&(functab_at as u64).to_le_bytes());
        out.extend_from_slice(&funcnames);
        let mut functab = Vec::new();
        let mut funcs = Vec::new();
        for (i, name_off) in name_offsets.iter().enumerate() {
            let entry = (i as u32) * 0x10;
            functab.extend_from_slice(&entry.to_le_bytes());
            functab.extend_from_slice(&((pairs + funcs.len()) as u32).to_le_bytes());
            funcs.extend_from_slice(&entry.to_le_bytes());
            funcs.extend_from_slice(&name_off.to_le_bytes());
        }
        functab.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&functab);
        out.extend_from_slice(&funcs);
        out
    }

    #[test]
    fn functions_are_found_by_their_go_names() {
        let bytes = table(&["go:buildid", "runtime.newproc", "net/http.(*Request).write"]);
        let (text, found) = entries(
            &bytes,
            &["net/http.(*Request).write", "runtime.newproc", "main.nope"],
        )
        .expect("a table");
        assert_eq!(text, 0);
        assert_eq!(found, vec![Some(0x20), Some(0x10), None]);
    }

    #[test]
    fn what_is_not_a_table_is_refused_not_misread() {
        assert_eq!(entries(&[], &["x"]), None);
        let mut wrong = table(&["a"]);
        wrong[0] = 0;
        assert_eq!(entries(&wrong, &["a"]), None, "another magic");
        let mut cut = table(&["a", "b"]);
        cut.truncate(80);
        assert_eq!(
            entries(&cut, &["b"]).map(|(_, found)| found),
            None,
            "a cut table"
        );
    }
}
