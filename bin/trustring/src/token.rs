//! The admin bearer token: from `TRUSTRING_ADMIN_TOKEN`, else `DATA/admin-token` (created
//! on first start with 256 random bits, mode 0600).

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Where the token came from (so `serve` logs a new one exactly once).
pub(crate) enum Origin {
    Env,
    File,
    Generated,
}

pub(crate) fn admin_token(data: &Path) -> anyhow::Result<(String, Origin)> {
    secret(&data.join("admin-token"), "TRUSTRING_ADMIN_TOKEN")
}

/// The secret the server shares with its IP->PSTN gateway (the `Trunk-Auth` MAC key):
/// `TRUSTRING_TRUNK_SECRET`, else `DATA/trunk-secret` (created like the admin token). Give
/// the gateway the same file (`trustring gateway --trunk-secret-file`).
pub(crate) fn trunk_secret(data: &Path) -> anyhow::Result<(String, Origin)> {
    secret(&data.join("trunk-secret"), "TRUSTRING_TRUNK_SECRET")
}

/// A secret from the environment variable `env`, else from `path` (created with 256 random
/// bits in hex, mode 0600, when missing or empty).
pub(crate) fn secret(path: &Path, env: &str) -> anyhow::Result<(String, Origin)> {
    if let Ok(t) = std::env::var(env)
        && !t.is_empty()
    {
        return Ok((t, Origin::Env));
    }
    let path = path.to_path_buf();
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_owned(), Origin::File)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = hex::encode(random_bytes::<32>());
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(token.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((token, Origin::Generated))
}

/// Random bytes from the OS.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::fill(&mut b[..]);
    b
}
