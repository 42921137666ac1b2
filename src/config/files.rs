//! Reading the files a config is or names, each with a size bound.

use std::path::Path;

/// Largest config file accepted.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Largest certificate, key or secret file a config may name.
pub const MAX_REFERENCED_FILE_BYTES: u64 = 1 << 20;

/// Read a whole file, refusing one larger than `limit` bytes (a config naming
/// `/dev/zero` or a huge file must fail, not exhaust memory).
pub fn read_file_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(buf)
}

/// [`read_file_bounded`], as UTF-8 text (a config or site file).
pub fn read_text_bounded(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_file_bounded(path, limit)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}
