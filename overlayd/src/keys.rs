//! Gossip key files: 32 random bytes written as 64 hex digits (what `overlayd key
//! generate` prints) or as standard base64 (what `openssl rand -base64 32` prints).

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use overlayd_proto::gossip::SecretKey;

/// Largest key file read; a key (64 hex digits or 44 base64 characters) is far smaller.
const MAX_KEY_FILE: u64 = 4096;

/// Reads and parses one key file: a regular file of at most 4 KiB (a FIFO or a device
/// such as /dev/zero is refused instead of blocking or filling memory).
pub fn load(path: &Path) -> Result<SecretKey> {
    read_small(path)
        .and_then(|text| parse(&text))
        .with_context(|| format!("gossip key {}", path.display()))
}

fn read_small(path: &Path) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking so that opening a FIFO returns at once instead of waiting for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .context("cannot open the file")?;
    if !file.metadata()?.is_file() {
        bail!("not a regular file");
    }
    let mut text = String::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .context("cannot read the file as text")?;
    if text.len() as u64 > MAX_KEY_FILE {
        bail!("longer than {MAX_KEY_FILE} bytes; a key file holds one key");
    }
    Ok(text)
}

/// Parses a key: 64 hex digits or base64 of 32 bytes, surrounding whitespace ignored.
pub fn parse(text: &str) -> Result<SecretKey> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()?
    } else {
        base64(text).context(
            "expected 64 hex digits or base64 of 32 bytes (`overlayd key generate` makes one)",
        )?
    };
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("a key is 32 bytes, this one has {}", b.len()))?;
    Ok(SecretKey(key))
}

/// Reads every key file, in order (the first is the primary).
pub fn load_all(paths: &[std::path::PathBuf]) -> Result<Vec<SecretKey>> {
    paths.iter().map(|p| load(p)).collect()
}

/// A new random key from the kernel's CSPRNG, as 64 hex digits.
pub fn generate() -> Result<String> {
    Ok(urandom::<32>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A random u64 from the kernel's CSPRNG (seeds for the gossip core's nonce salt).
pub fn random_u64() -> Result<u64> {
    Ok(u64::from_le_bytes(urandom()?))
}

fn urandom<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes)
}

fn base64(text: &str) -> Result<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let digits = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in digits.bytes() {
        let Some(v) = ALPHABET.iter().position(|a| *a == c) else {
            bail!("not base64: unexpected character {:?}", c as char);
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_only_small_regular_files() {
        let dir = std::env::temp_dir().join(format!("overlayd-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.key");
        std::fs::write(&good, format!("{}\n", generate().unwrap())).unwrap();
        assert!(load(&good).is_ok());

        let big = dir.join("big.key");
        std::fs::write(&big, vec![b' '; 5000]).unwrap();
        let err = format!("{:#}", load(&big).unwrap_err());
        assert!(err.contains("longer than 4096 bytes"), "{err}");

        let err = format!("{:#}", load(Path::new("/dev/zero")).unwrap_err());
        assert!(err.contains("not a regular file"), "{err}");

        // A FIFO nobody writes to: refused at once rather than blocking the reader.
        let fifo = dir.join("fifo.key");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let err = format!("{:#}", load(&fifo).unwrap_err());
        assert!(err.contains("not a regular file"), "{err}");

        let err = format!("{:#}", load(&dir.join("missing.key")).unwrap_err());
        assert!(err.contains("cannot open the file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parses_hex_and_base64_of_the_same_key() {
        let hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        let b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let want: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(parse(hex).unwrap().0, want);
        assert_eq!(parse(&format!("  {b64}\n")).unwrap().0, want);
    }

    #[test]
    fn rejects_wrong_lengths_and_garbage() {
        assert!(parse("abcd").is_err());
        assert!(parse("AAEC").is_err());
        assert!(parse("not a key at all!").is_err());
    }

    #[test]
    fn generated_keys_parse_and_differ() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        parse(&a).unwrap();
    }
}
