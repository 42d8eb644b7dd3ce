//! The admin port file: the readiness signal of the test fixture.
//!
//! The file must not exist beforehand and its directory must. Once the
//! admin API is bound, `"[addr]:port\n"` is written to a temporary file in
//! the same directory and linked into place (which fails, unlike a rename,
//! if the file appeared meanwhile), so a reader that sees the file always
//! sees all of it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Check, before anything starts, that the port file can be written.
pub fn precheck(path: &Path) -> Result<(), String> {
    if path.exists() {
        return Err(format!(
            "admin port file {} already exists; remove it or choose another",
            path.display()
        ));
    }
    let dir = parent(path);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "admin port file {}: {} is not a directory",
            path.display(),
            dir.display()
        )),
        Err(e) => Err(format!(
            "admin port file {}: directory {}: {e}",
            path.display(),
            dir.display()
        )),
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Write `"[addr]:port\n"` atomically.
pub fn write(path: &Path, addr: SocketAddr) -> Result<(), String> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = parent(path).join(format!(
        ".{}.{}.tmp",
        name.unwrap_or_else(|| "ddmd_port".to_string()),
        std::process::id()
    ));
    let fail = |e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        format!("admin port file {}: {e}", path.display())
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(format!("{addr}\n").as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    drop(f);
    // A link, not a rename: it fails if the port file appeared since the
    // precheck (another daemon given the same path), where a rename would
    // replace that daemon's file.
    let linked = match std::fs::hard_link(&tmp, path) {
        // A link whose success was lost (NFS retries the request) finds
        // itself.
        Err(e)
            if e.kind() == std::io::ErrorKind::AlreadyExists
                && same_file(&tmp, path) =>
        {
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(fail(std::io::Error::new(
                e.kind(),
                "it appeared while the daemon started (another daemon \
                 given the same path?)",
            )));
        }
        // A file system without hard links: the rename, after one more
        // look.
        Err(_) if !path.exists() => std::fs::rename(&tmp, path),
        linked => linked,
    };
    linked.map_err(fail)?;
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

/// Whether `a` and `b` name one file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_address_with_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ddmd_port");
        precheck(&path).unwrap();
        write(&path, "[::1]:4567".parse().unwrap()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[::1]:4567\n");
        // Only the port file remains: the temporary was renamed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_that_appeared_after_the_precheck_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ddmd_port");
        precheck(&path).unwrap();
        std::fs::write(&path, "[::1]:1111\n").unwrap();
        let err = write(&path, "[::1]:4567".parse().unwrap()).unwrap_err();
        assert!(err.contains("appeared"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[::1]:1111\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn existing_file_or_missing_dir_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ddmd_port");
        std::fs::write(&path, "x").unwrap();
        assert!(precheck(&path).unwrap_err().contains("already exists"));
        let missing = dir.path().join("nope/ddmd_port");
        assert!(precheck(&missing).unwrap_err().contains("nope"));
    }
}
