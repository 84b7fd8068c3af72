//! The header of a safetensors file, read with the checks both readers (model files and
//! datasets) need before trusting a byte of it: a length that fits the file, UTF-8, JSON
//! without duplicate keys at any level (JSON parsers keep the last; a file that says two
//! things is refused), offsets that tile the data, and a data size equal to what is left of
//! the file. Only the header is read; tensors are read by the caller, in place.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::path::Path;

use safetensors::tensor::Metadata;
use safetensors::SafeTensorError as E;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::{Error, Result};

/// Largest header accepted (the safetensors crate's own limit).
const MAX_HEADER_LEN: u64 = 100_000_000;

/// A parsed header and where the data begins.
pub(crate) struct Header {
    /// Tensors and `__metadata__`.
    pub meta: Metadata,
    /// Byte offset of the data section (8 + header length).
    pub data_start: u64,
}

/// Reads the header of a safetensors file of `file_len` bytes from `reader`, which is at
/// the start of the file.
///
/// # Errors
/// `FileFormat` naming `path`: "truncated or padded: ..." when the file's size disagrees with
/// its header, "not a valid safetensors file: ..." for anything else; `Io` for read failures.
pub(crate) fn read(reader: &mut impl Read, file_len: u64, path: &Path) -> Result<Header> {
    let truncated = |e: E| {
        Error::format(
            path,
            format!("truncated or padded: its size does not match its header ({e})"),
        )
    };
    let invalid =
        |e: &dyn fmt::Display| Error::format(path, format!("not a valid safetensors file: {e}"));
    let mut n8 = [0u8; 8];
    if file_len < 8 {
        return Err(truncated(E::HeaderTooSmall));
    }
    reader.read_exact(&mut n8).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(n8);
    if n > MAX_HEADER_LEN {
        return Err(invalid(&E::HeaderTooLarge));
    }
    if n > file_len - 8 {
        return Err(truncated(E::InvalidHeaderLength));
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(n as usize)
        .map_err(|_| Error::OutOfMemory(format!("{}: a {n}-byte header", path.display())))?;
    reader
        .take(n)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 != n {
        return Err(truncated(E::InvalidHeaderLength));
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| invalid(&E::InvalidHeader(e)))?;
    serde_json::from_str::<UniqueKeys>(text)
        .map_err(|e| invalid(&E::InvalidHeaderDeserialization(e)))?;
    let meta: Metadata =
        serde_json::from_str(text).map_err(|e| invalid(&E::InvalidHeaderDeserialization(e)))?;
    let data_start = 8 + n;
    if meta.data_len() as u64 != file_len - data_start {
        return Err(truncated(E::MetadataIncompleteBuffer));
    }
    Ok(Header { meta, data_start })
}

/// Any JSON value, accepted only when no object in it repeats a key.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(UniqueKeys)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!(
                    "key {key:?} appears more than once"
                )));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_bool<Er: de::Error>(self, _: bool) -> std::result::Result<Self, Er> {
        Ok(UniqueKeys)
    }
    fn visit_i64<Er: de::Error>(self, _: i64) -> std::result::Result<Self, Er> {
        Ok(UniqueKeys)
    }
    fn visit_u64<Er: de::Error>(self, _: u64) -> std::result::Result<Self, Er> {
        Ok(UniqueKeys)
    }
    fn visit_f64<Er: de::Error>(self, _: f64) -> std::result::Result<Self, Er> {
        Ok(UniqueKeys)
    }
    fn visit_str<Er: de::Error>(self, _: &str) -> std::result::Result<Self, Er> {
        Ok(UniqueKeys)
    }
    fn visit_unit<Er: de::Error>(self) -> std::result::Result<Self, Er> {
        Ok(UniqueKeys)
    }
}
