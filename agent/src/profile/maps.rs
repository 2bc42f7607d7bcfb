//! Executable mappings of a process (`/proc/PID/maps`), to name a frame blazesym could not
//! symbolize as `module+0xoffset`, and to tell a frame that points nowhere (a frame-pointer walk
//! through code built without frame pointers) from one that points into code.

/// One executable mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The file's name (no directory), or the pseudo-name (`[vdso]`).
    pub module: String,
}

/// One executable mapping line of a maps file: its addresses, file offset and path (empty for
/// anonymous memory; `[vdso]` and the like as written; " (deleted)" kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecLine<'a> {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: &'a str,
}

/// The executable mapping on one line of a maps file (`address perms offset dev inode path`),
/// None for any other line.
pub fn exec_line(line: &str) -> Option<ExecLine<'_>> {
    let mut fields = line.splitn(6, ' ');
    let (range, perms, offset) = (fields.next()?, fields.next()?, fields.next()?);
    if !perms.contains('x') {
        return None;
    }
    let path = fields.nth(2).unwrap_or("").trim();
    let (start, end) = range.split_once('-')?;
    Some(ExecLine {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        path,
    })
}

/// The executable mappings in a maps file, by start address.
pub fn parse_exec_mappings(maps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = maps
        .lines()
        .filter_map(exec_line)
        .map(|line| {
            let module = line.path.rsplit('/').next().unwrap_or("");
            Mapping {
                start: line.start,
                end: line.end,
                offset: line.offset,
                module: if module.is_empty() {
                    "[anon]".to_owned()
                } else {
                    module.to_owned()
                },
            }
        })
        .collect();
    out.sort_by_key(|m| m.start);
    out
}

/// The mapping holding `addr`.
pub fn find(mappings: &[Mapping], addr: u64) -> Option<&Mapping> {
    let index = mappings.partition_point(|m| m.start <= addr);
    let mapping = mappings.get(index.checked_sub(1)?)?;
    (addr < mapping.end).then_some(mapping)
}

/// `module+0xoffset` for an address in `mapping` (the offset is into the file).
pub fn module_offset(mapping: &Mapping, addr: u64) -> String {
    format!(
        "{}+0x{:x}",
        mapping.module,
        addr - mapping.start + mapping.offset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0a0000000-55d0a0010000 r--p 00000000 08:01 123 /usr/bin/demo-app
55d0a0010000-55d0a0200000 r-xp 00010000 08:01 123 /usr/bin/demo-app
7f0000000000-7f0000100000 r-xp 00020000 08:01 456 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f0000100000-7f0000200000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
";

    #[test]
    fn executable_mappings_name_their_module() {
        let maps = parse_exec_mappings(MAPS);
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].module, "demo-app");
        assert_eq!(maps[1].module, "libcrypto.so.3");
        assert_eq!(maps[2].module, "[vdso]");
    }

    #[test]
    fn an_address_finds_its_mapping_and_file_offset() {
        let maps = parse_exec_mappings(MAPS);
        let crypto = find(&maps, 0x7f0000000abc).unwrap();
        assert_eq!(
            module_offset(crypto, 0x7f0000000abc),
            "libcrypto.so.3+0x20abc"
        );
        assert!(find(&maps, 0x7f0000150000).is_none(), "data, not code");
        assert!(find(&maps, 0x10).is_none());
        assert!(find(&maps, 0x55d0a0000100).is_none(), "not executable");
    }
}
