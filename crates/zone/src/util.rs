//! Small helpers shared by the modules of this crate: strict base64url and private files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

/// base64url without padding.
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Strict base64url decode: no padding, no whitespace, canonical trailing bits.
pub(crate) fn unb64(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.as_bytes()).ok()
}

/// Strict base64url decode into a fixed-size array.
pub(crate) fn unb64_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let v = Zeroizing::new(unb64(text)?);
    <[u8; N]>::try_from(v.as_slice()).ok()
}

/// Length-prefixed (u32 BE) append, used by every canonical byte form in this crate.
pub(crate) fn put_lp32(out: &mut Vec<u8>, part: &[u8]) {
    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(part.get(..len as usize).unwrap_or(part));
}

/// Creates `dir` (and parents) if missing and makes it private (0700 on Unix).
pub(crate) fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    set_mode(dir, 0o700)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// Whether group or others may read or write `path` (always false off Unix).
pub(crate) fn is_group_or_world_accessible(path: &Path) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(path)?.permissions().mode();
        Ok(mode & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(false)
    }
}

fn temp_path_for(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp = name.to_os_string();
    tmp.push(".tmp");
    Ok(path.with_file_name(tmp))
}

/// Writes `bytes` to `path` atomically: a 0600 temporary file beside it, `fsync`, `rename`
/// over `path`, then `fsync` of the directory. A crash leaves either the old or the new file.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path_for(path)?;
    let _ = fs::remove_file(&tmp);
    {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        let written = f.write_all(bytes).and_then(|()| f.sync_all());
        if let Err(e) = written {
            drop(f);
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path)
}

/// Creates `path` with `bytes` (0600), failing if it exists. Durable like
/// [`write_private_atomic`].
pub(crate) fn create_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    sync_parent(path)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        if let Some(parent) = path.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            File::open(parent)?.sync_all()?;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
    }
    Ok(())
}

/// Reads at most `max` bytes of a secret file into zeroized memory.
pub(crate) fn read_secret(path: &Path, max: u64) -> io::Result<Zeroizing<Vec<u8>>> {
    let f = File::open(path)?;
    let mut buf = Zeroizing::new(Vec::new());
    f.take(max.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file larger than expected",
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_strict() {
        assert_eq!(b64(&[0xff, 0xfe]), "__4");
        assert_eq!(unb64("__4"), Some(vec![0xff, 0xfe]));
        assert_eq!(unb64("__4="), None, "padding refused");
        assert_eq!(unb64("__5"), None, "non-canonical trailing bits refused");
        assert_eq!(unb64("_ _4"), None, "whitespace refused");
        assert_eq!(unb64("+/4"), None, "standard alphabet refused");
        assert_eq!(unb64_array::<2>("__4"), Some([0xff, 0xfe]));
        assert_eq!(unb64_array::<3>("__4"), None);
    }

    #[test]
    fn atomic_write_is_private_and_replaces() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("f");
        write_private_atomic(&p, b"one")?;
        write_private_atomic(&p, b"two")?;
        assert_eq!(fs::read(&p)?, b"two");
        assert!(!is_group_or_world_accessible(&p)?);
        assert!(!temp_path_for(&p)?.exists());
        assert!(
            create_private(&p, b"x").is_err(),
            "create refuses to overwrite"
        );
        assert_eq!(read_secret(&p, 3)?.as_slice(), b"two");
        assert!(read_secret(&p, 2).is_err());
        Ok(())
    }
}
