//! Resolve function symbols of an ELF binary to the file offsets uprobes attach to.
//!
//! Distribution QEMU binaries are stripped but export their functions as dynamic
//! symbols, so we look in `.dynsym` as well as `.symtab`. Resolving once per binary (not
//! once per attach) keeps attaching a dozen probes to a 20 MB QEMU cheap.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not an ELF object we can parse: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: object::Error,
    },
}

/// File offsets of the requested symbols that exist, and the names of those that do not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub offsets: BTreeMap<String, u64>,
    pub missing: Vec<String>,
}

/// Looks up `names` among the function symbols of the ELF file at `path`.
pub fn resolve(path: &Path, names: &[&str]) -> Result<Resolved, SymbolError> {
    let data = fs::read(path).map_err(|source| SymbolError::Read { path: path.into(), source })?;
    let file = object::File::parse(&*data).map_err(|source| SymbolError::Parse { path: path.into(), source })?;
    let mut offsets = BTreeMap::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if symbol.kind() != SymbolKind::Text || symbol.address() == 0 {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        if !names.contains(&name) || offsets.contains_key(name) {
            continue;
        }
        let Some(section) = symbol.section_index().and_then(|i| file.section_by_index(i).ok()) else {
            continue;
        };
        let Some((section_offset, _)) = section.file_range() else {
            continue;
        };
        // file offset = virtual address − section address + section file offset
        if let Some(offset) = symbol.address().checked_sub(section.address()).map(|d| d + section_offset) {
            offsets.insert(name.to_owned(), offset);
        }
    }
    let missing = names.iter().filter(|n| !offsets.contains_key(**n)).map(|n| (*n).to_owned()).collect();
    Ok(Resolved { offsets, missing })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[unsafe(no_mangle)]
    #[inline(never)]
    pub extern "C" fn migtrace_symbols_test_target(x: u64) -> u64 {
        std::hint::black_box(x) + 1
    }

    #[test]
    fn resolves_own_function_and_reports_missing() {
        assert_eq!(migtrace_symbols_test_target(1), 2);
        let exe = std::env::current_exe().expect("current exe");
        let got = resolve(&exe, &["migtrace_symbols_test_target", "no_such_function_here"]).expect("parse");
        let offset = got.offsets["migtrace_symbols_test_target"];
        assert!(offset > 0);
        assert_eq!(got.missing, vec!["no_such_function_here".to_owned()]);
        // The bytes at the offset are the function's first instruction bytes in memory.
        let file = fs::read(&exe).expect("read exe");
        let in_memory = migtrace_symbols_test_target as *const u8;
        // SAFETY: reading 8 bytes of our own function's code.
        let code = unsafe { std::slice::from_raw_parts(in_memory, 8) };
        assert_eq!(&file[offset as usize..offset as usize + 8], code);
    }

    #[test]
    fn unreadable_file_is_an_error_naming_it() {
        let err = resolve(Path::new("/nonexistent/qemu"), &["x"]).expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/qemu"));
    }
}
