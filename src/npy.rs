//! Reading and writing NumPy `.npy` arrays (format versions 1, 2 and 3).
//!
//! Reading streams: [`NpyReader`] parses the header and then hands out the elements in order,
//! converted to f64, so arrays larger than memory can be consumed chunk by chunk. Supported
//! element types are booleans, integers of 8 to 64 bits and floats of 16, 32 and 64 bits, in
//! either byte order, in C (row-major) order. Fortran-ordered arrays are accepted only when
//! their memory layout equals the C layout (at most one axis longer than 1).
//!
//! Writing ([`write_f32`]) produces a version 1 little-endian f32 file (version 2 when the
//! header needs it), written atomically.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Headers longer than this are treated as corrupt rather than read into memory.
const MAX_HEADER_LEN: usize = 1 << 20;
/// Elements converted per internal read, bounding the scratch buffer.
const CHUNK_ELEMENTS: usize = 1 << 16;

/// Element type of a `.npy` array (the byte order is kept by the reader).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    /// `b1`: one byte, nonzero is true (read as 1.0).
    Bool,
    /// `u1`.
    U8,
    /// `i1`.
    I8,
    /// `u2`.
    U16,
    /// `i2`.
    I16,
    /// `u4`.
    U32,
    /// `i4`.
    I32,
    /// `u8`.
    U64,
    /// `i8`.
    I64,
    /// `f2` (IEEE half precision).
    F16,
    /// `f4`.
    F32,
    /// `f8`.
    F64,
    /// bfloat16. Not a NumPy type (no descr parses to it): it describes raw little-endian
    /// data of other containers, such as safetensors tensors, read through
    /// [`NpyReader::raw`].
    BF16,
}

impl NpyDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            NpyDtype::Bool | NpyDtype::U8 | NpyDtype::I8 => 1,
            NpyDtype::U16 | NpyDtype::I16 | NpyDtype::F16 | NpyDtype::BF16 => 2,
            NpyDtype::U32 | NpyDtype::I32 | NpyDtype::F32 => 4,
            NpyDtype::U64 | NpyDtype::I64 | NpyDtype::F64 => 8,
        }
    }

    /// Parses the type part of a descr (after the byte-order character), e.g. `f4`.
    fn parse(kind: &str) -> std::result::Result<NpyDtype, String> {
        Ok(match kind {
            "b1" | "?" => NpyDtype::Bool,
            "u1" | "B" => NpyDtype::U8,
            "i1" | "b" => NpyDtype::I8,
            "u2" => NpyDtype::U16,
            "i2" => NpyDtype::I16,
            "u4" => NpyDtype::U32,
            "i4" => NpyDtype::I32,
            "u8" => NpyDtype::U64,
            "i8" => NpyDtype::I64,
            "f2" | "e" => NpyDtype::F16,
            "f4" => NpyDtype::F32,
            "f8" => NpyDtype::F64,
            _ => {
                let what = match kind.chars().next() {
                    Some('c') => "complex numbers",
                    Some('O') => "Python objects",
                    Some('U') => "unicode strings",
                    Some('S') | Some('a') => "byte strings",
                    Some('V') => "raw void records",
                    Some('M') => "datetimes",
                    Some('m') => "timedeltas",
                    Some('f') => "floats of this width",
                    Some('i') | Some('u') => "integers of this width",
                    _ => "an unknown type",
                };
                return Err(format!(
                    "unsupported dtype {kind:?} ({what}); expected bool, integers or floats of 16, 32 or 64 bits"
                ));
            }
        })
    }
}

/// A `.npy` array whose header has been read; the elements are read in order on demand.
#[derive(Debug)]
pub struct NpyReader<R: Read> {
    reader: R,
    name: PathBuf,
    shape: Vec<usize>,
    dtype: NpyDtype,
    big_endian: bool,
    len: usize,
    read: usize,
    bytes: Vec<u8>,
}

impl NpyReader<BufReader<File>> {
    /// Opens a `.npy` file and reads its header. A file too short for the data its header
    /// announces is rejected here, before any element is read.
    ///
    /// # Errors
    /// `Io` when the file cannot be opened or read; `FileFormat` naming the file for a bad
    /// magic string, a malformed or unsupported header, an unsupported dtype, a shape whose
    /// size overflows, or missing data ("expected N bytes of data, found M").
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut counted = Counted {
            inner: BufReader::new(file),
            count: 0,
        };
        let header = read_header(&mut counted, path)?;
        let data_bytes = header.len * header.dtype.size();
        let found = file_len.saturating_sub(counted.count);
        if found < data_bytes as u64 {
            return Err(Error::format(
                path,
                format!("expected {data_bytes} bytes of data, found {found}"),
            ));
        }
        Ok(Self::with_header(counted.inner, path, header))
    }
}

impl<R: Read> NpyReader<R> {
    /// Reads the header of a `.npy` stream; `name` labels errors (e.g. `data.npz:images.npy`).
    ///
    /// # Errors
    /// As [`NpyReader::open`], except that missing data is only noticed when it is read.
    pub fn from_reader(mut reader: R, name: &Path) -> Result<Self> {
        let header = read_header(&mut reader, name)?;
        Ok(Self::with_header(reader, name, header))
    }

    /// A reader over headerless element data: `shape` elements of `dtype`, little-endian,
    /// in C order (e.g. a tensor inside a safetensors file). The caller checked that the
    /// shape's size does not overflow; missing data is noticed when it is read.
    pub(crate) fn raw(reader: R, name: &Path, shape: Vec<usize>, dtype: NpyDtype) -> Self {
        let len = shape.iter().product();
        Self::with_header(
            reader,
            name,
            Header {
                shape,
                dtype,
                big_endian: false,
                len,
            },
        )
    }

    fn with_header(reader: R, name: &Path, header: Header) -> Self {
        NpyReader {
            reader,
            name: name.to_path_buf(),
            shape: header.shape,
            dtype: header.dtype,
            big_endian: header.big_endian,
            len: header.len,
            read: 0,
            bytes: Vec::new(),
        }
    }

    /// The array's shape (empty for a scalar).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> NpyDtype {
        self.dtype
    }

    /// Total number of elements (the product of the shape; 1 for a scalar).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of elements not read yet.
    pub fn remaining(&self) -> usize {
        self.len - self.read
    }

    /// Appends up to `n` more elements, converted to f64, to `out`; returns how many (fewer
    /// than `n` only at the end of the array). Reads only what it returns.
    ///
    /// # Errors
    /// `FileFormat` when the data ends early ("expected N bytes of data, found M");
    /// `Io` for other read failures. Elements appended before the failure stay in `out`.
    pub fn read_f64(&mut self, n: usize, out: &mut Vec<f64>) -> Result<usize> {
        self.read_with(n, out, |v| v)
    }

    /// As [`NpyReader::read_f64`], converting to f32 (f64 values are rounded once).
    ///
    /// # Errors
    /// As [`NpyReader::read_f64`].
    pub fn read_f32(&mut self, n: usize, out: &mut Vec<f32>) -> Result<usize> {
        self.read_with(n, out, |v| v as f32)
    }

    fn read_with<T>(
        &mut self,
        n: usize,
        out: &mut Vec<T>,
        conv: impl Fn(f64) -> T,
    ) -> Result<usize> {
        let total = n.min(self.remaining());
        out.reserve(total);
        let size = self.dtype.size();
        let mut done = 0;
        while done < total {
            let count = (total - done).min(CHUNK_ELEMENTS);
            self.bytes.resize(count * size, 0);
            let got =
                fill(&mut self.reader, &mut self.bytes).map_err(|e| Error::io(&self.name, e))?;
            if got < self.bytes.len() {
                let expected = self.len * size;
                let found = self.read * size + got;
                return Err(Error::format(
                    &self.name,
                    format!("expected {expected} bytes of data, found {found}"),
                ));
            }
            let (dtype, big) = (self.dtype, self.big_endian);
            out.extend(
                self.bytes
                    .chunks_exact(size)
                    .map(|b| conv(decode(dtype, big, b))),
            );
            self.read += count;
            done += count;
        }
        Ok(total)
    }
}

/// Reads a whole `.npy` file of any supported dtype as f32 (f64 values are rounded once,
/// integers beyond 2^24 lose their low bits); returns the shape and the elements.
///
/// # Errors
/// As [`NpyReader::open`] and [`NpyReader::read_f64`].
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let mut reader = NpyReader::open(path)?;
    let mut data = Vec::new();
    reader.read_f32(reader.len(), &mut data)?;
    Ok((reader.shape.clone(), data))
}

/// Writes `data` (C order) as a little-endian f32 `.npy` file of the given shape, atomically:
/// through a temporary file in the same folder and a rename, so nothing is left on error.
///
/// # Errors
/// `ShapeMismatch` when the shape's product is not `data.len()`; `Io` when the file cannot
/// be written.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let count = element_count(shape)
        .ok_or_else(|| Error::arg("shape", format!("{} overflows", show_shape(shape))))?;
    if count != data.len() {
        return Err(Error::shape(
            "data",
            format!("{count} elements for shape {shape:?}"),
            data.len(),
        ));
    }
    let mut bytes = header_bytes("<f4", shape);
    bytes.reserve(data.len() * 4);
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    crate::model::write_atomic(path, &bytes)
}

/// Magic, version and header dict, padded with spaces to a multiple of 64 bytes and ended by
/// a newline, as NumPy writes them (so the data is aligned for memory mapping).
fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    let pad = |prefix: usize| (64 - (prefix + dict.len() + 1) % 64) % 64;
    // Version 1 stores the header length in 16 bits; longer headers need version 2.
    let (version, prefix) = if dict.len() + 1 + pad(MAGIC.len() + 4) <= usize::from(u16::MAX) {
        (1u8, MAGIC.len() + 4)
    } else {
        (2u8, MAGIC.len() + 6)
    };
    let header_len = dict.len() + pad(prefix) + 1;
    let mut out = Vec::with_capacity(prefix + header_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(prefix + header_len - 1, b' ');
    out.push(b'\n');
    out
}

/// Converts one element's bytes.
fn decode(dtype: NpyDtype, big: bool, b: &[u8]) -> f64 {
    macro_rules! num {
        ($t:ty) => {{
            let a = b.try_into().expect("element size matches the dtype");
            (if big {
                <$t>::from_be_bytes(a)
            } else {
                <$t>::from_le_bytes(a)
            }) as f64
        }};
    }
    macro_rules! half {
        ($t:ty) => {{
            let a = [b[0], b[1]];
            (if big {
                <$t>::from_be_bytes(a)
            } else {
                <$t>::from_le_bytes(a)
            })
            .to_f64()
        }};
    }
    match dtype {
        NpyDtype::Bool => f64::from(u8::from(b[0] != 0)),
        NpyDtype::U8 => f64::from(b[0]),
        NpyDtype::I8 => f64::from(b[0] as i8),
        NpyDtype::U16 => num!(u16),
        NpyDtype::I16 => num!(i16),
        NpyDtype::U32 => num!(u32),
        NpyDtype::I32 => num!(i32),
        NpyDtype::U64 => num!(u64),
        NpyDtype::I64 => num!(i64),
        NpyDtype::F16 => half!(half::f16),
        NpyDtype::F32 => num!(f32),
        NpyDtype::F64 => num!(f64),
        NpyDtype::BF16 => half!(half::bf16),
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A reader that counts the bytes it has handed out (to locate the data in a file).
struct Counted<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.count += k as u64;
        Ok(k)
    }
}

/// What the header says about the data that follows it.
#[derive(Debug)]
struct Header {
    shape: Vec<usize>,
    dtype: NpyDtype,
    big_endian: bool,
    len: usize,
}

fn read_header(reader: &mut impl Read, name: &Path) -> Result<Header> {
    let bad = |reason: String| Error::format(name, reason);
    let mut exact = |buf: &mut [u8], what: &str| -> Result<()> {
        let got = fill(reader, buf).map_err(|e| Error::io(name, e))?;
        if got < buf.len() {
            return Err(Error::format(
                name,
                format!(
                    "not a .npy file: it ends inside the {what} ({got} of {} bytes)",
                    buf.len()
                ),
            ));
        }
        Ok(())
    };
    let mut lead = [0u8; 8];
    exact(&mut lead, "header")?;
    if &lead[..6] != MAGIC {
        return Err(bad(format!(
            "not a .npy file: bad magic string \"{}\" (expected \"\\x93NUMPY\")",
            lead[..6].escape_ascii()
        )));
    }
    let (major, minor) = (lead[6], lead[7]);
    let header_len = match major {
        1 => {
            let mut b = [0u8; 2];
            exact(&mut b, "header")?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            exact(&mut b, "header")?;
            u32::from_le_bytes(b) as usize
        }
        _ => {
            return Err(bad(format!(
            "unsupported .npy format version {major}.{minor} (this reader knows 1.0, 2.0 and 3.0)"
        )))
        }
    };
    if header_len > MAX_HEADER_LEN {
        return Err(bad(format!(
            "header length {header_len} bytes is implausible (over {MAX_HEADER_LEN}); the file is corrupt"
        )));
    }
    let mut raw = vec![0u8; header_len];
    exact(&mut raw, "header")?;
    // Versions 1 and 2 store the header in latin-1, version 3 in UTF-8.
    let text: String = if major == 3 {
        String::from_utf8(raw).map_err(|_| bad("header is not valid UTF-8".into()))?
    } else {
        raw.iter().map(|&b| b as char).collect()
    };
    parse_header(&text).map_err(|reason| {
        bad(format!(
            "bad .npy header {}: {reason}",
            quote(text.trim_end())
        ))
    })
}

/// The number of elements of an array of `shape` (1 for a scalar), or `None` when the
/// product of the sizes overflows `usize`.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// A shape for messages: `[2, 3]`, or its first dimensions and their count when it has many.
pub fn show_shape(shape: &[usize]) -> String {
    const SHOWN: usize = 8;
    if shape.len() <= SHOWN {
        format!("{shape:?}")
    } else {
        let head: Vec<String> = shape[..SHOWN].iter().map(usize::to_string).collect();
        format!("[{}, ... ({} dimensions)]", head.join(", "), shape.len())
    }
}

/// Longest piece of a header quoted in an error message.
const QUOTE_MAX: usize = 120;

/// `text` in quotes, cut to [`QUOTE_MAX`] characters with its full length when longer.
fn quote(text: &str) -> String {
    let count = text.chars().count();
    if count <= QUOTE_MAX {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(QUOTE_MAX).collect();
        format!("{head:?}... ({count} characters)")
    }
}

/// Parses the header dict `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(text: &str) -> std::result::Result<Header, String> {
    let value = Parser::new(text).document()?;
    let Value::Dict(entries) = value else {
        return Err("expected a dictionary".into());
    };
    if let Some(k) =
        (1..entries.len()).find(|&k| entries[..k].iter().any(|(e, _)| *e == entries[k].0))
    {
        return Err(format!("key '{}' appears more than once", entries[k].0));
    }
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("key '{key}' is missing"))
    };
    let descr = match get("descr")? {
        Value::Str(s) => s.as_str(),
        Value::List(_) => return Err("structured (record) dtypes are not supported".into()),
        _ => return Err("'descr' is not a string".into()),
    };
    let fortran = match get("fortran_order")? {
        Value::Bool(b) => *b,
        _ => return Err("'fortran_order' is not True or False".into()),
    };
    let shape = match get("shape")? {
        Value::List(items) => items
            .iter()
            .map(|v| match v {
                Value::Int(n) => Ok(*n),
                _ => Err("'shape' holds something other than sizes".to_string()),
            })
            .collect::<std::result::Result<Vec<usize>, String>>()?,
        _ => return Err("'shape' is not a tuple".into()),
    };
    let (order, kind) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
        _ => ('=', descr),
    };
    let dtype = NpyDtype::parse(kind)?;
    let big_endian = match order {
        '>' => true,
        '<' => false,
        '|' if dtype.size() > 1 => return Err(format!("dtype {descr:?} has no byte order")),
        _ => cfg!(target_endian = "big"),
    };
    if fortran && shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(format!(
            "Fortran-ordered (column-major) arrays of shape {} are not supported; save the array in C order (numpy.ascontiguousarray)",
            show_shape(&shape)
        ));
    }
    // Every sub-product must fit too: a 0 anywhere would hide an overflow of the others.
    let len = element_count(&shape)
        .filter(|_| {
            shape
                .iter()
                .filter(|&&d| d > 0)
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .is_some()
        })
        .filter(|&n| n.checked_mul(dtype.size()).is_some())
        .ok_or_else(|| {
            format!(
                "shape {} is too large (its size overflows)",
                show_shape(&shape)
            )
        })?;
    Ok(Header {
        shape,
        dtype,
        big_endian,
        len,
    })
}

/// The subset of Python literals that appears in `.npy` headers.
#[derive(Debug)]
enum Value {
    Dict(Vec<(String, Value)>),
    List(Vec<Value>),
    Str(String),
    Int(usize),
    Bool(bool),
    None,
}

/// Deepest nesting of brackets the parser follows. A real header nests two deep (the dict
/// and its shape tuple); the limit keeps a hostile header from exhausting the stack.
const MAX_DEPTH: usize = 16;

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser {
            s: text.as_bytes(),
            at: 0,
            depth: 0,
        }
    }

    /// Parses a value one level deeper, refusing nesting beyond [`MAX_DEPTH`].
    fn nested(&mut self) -> std::result::Result<Value, String> {
        if self.depth >= MAX_DEPTH {
            return Err(format!(
                "brackets nested more than {MAX_DEPTH} deep at byte {}",
                self.at
            ));
        }
        self.depth += 1;
        let v = self.value();
        self.depth -= 1;
        v
    }

    fn document(mut self) -> std::result::Result<Value, String> {
        let v = self.value()?;
        self.skip_ws();
        if self.at != self.s.len() {
            return Err(format!(
                "unexpected text after the dictionary at byte {}",
                self.at
            ));
        }
        Ok(v)
    }

    fn skip_ws(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.at).copied()
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        match self.peek() {
            Some(x) if x == c => {
                self.at += 1;
                Ok(())
            }
            _ => Err(format!("expected '{}' at byte {}", c as char, self.at)),
        }
    }

    fn value(&mut self) -> std::result::Result<Value, String> {
        match self.peek() {
            Some(b'{') => {
                self.at += 1;
                let mut entries = Vec::new();
                loop {
                    if self.peek() == Some(b'}') {
                        self.at += 1;
                        break;
                    }
                    let Value::Str(key) = self.nested()? else {
                        return Err(format!(
                            "dictionary key at byte {} is not a string",
                            self.at
                        ));
                    };
                    self.expect(b':')?;
                    entries.push((key, self.nested()?));
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {}
                        _ => return Err(format!("expected ',' or '}}' at byte {}", self.at)),
                    }
                }
                Ok(Value::Dict(entries))
            }
            Some(open @ (b'(' | b'[')) => {
                let close = if open == b'(' { b')' } else { b']' };
                self.at += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(close) {
                        self.at += 1;
                        break;
                    }
                    items.push(self.nested()?);
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(c) if c == close => {}
                        _ => {
                            return Err(format!(
                                "expected ',' or '{}' at byte {}",
                                close as char, self.at
                            ))
                        }
                    }
                }
                Ok(Value::List(items))
            }
            Some(q @ (b'\'' | b'"')) => {
                self.at += 1;
                let start = self.at;
                while self.at < self.s.len() && self.s[self.at] != q {
                    self.at += 1;
                }
                if self.at == self.s.len() {
                    return Err("unterminated string".into());
                }
                let text = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
                self.at += 1;
                Ok(Value::Str(text))
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.at;
                while self.at < self.s.len() && self.s[self.at].is_ascii_digit() {
                    self.at += 1;
                }
                let digits = std::str::from_utf8(&self.s[start..self.at]).expect("ASCII digits");
                // Python 2 wrote long integers with an `L` suffix.
                if self.s.get(self.at) == Some(&b'L') {
                    self.at += 1;
                }
                digits
                    .parse()
                    .map(Value::Int)
                    .map_err(|_| format!("size {digits} is too large"))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.at;
                while self.at < self.s.len() && self.s[self.at].is_ascii_alphanumeric() {
                    self.at += 1;
                }
                match &self.s[start..self.at] {
                    b"True" => Ok(Value::Bool(true)),
                    b"False" => Ok(Value::Bool(false)),
                    b"None" => Ok(Value::None),
                    w => Err(format!("unexpected word {:?}", String::from_utf8_lossy(w))),
                }
            }
            Some(b'-') => Err(format!("negative number at byte {}", self.at)),
            Some(c) => Err(format!(
                "unexpected character {:?} at byte {}",
                c as char, self.at
            )),
            None => Err("the header ends too early".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gaussskip-npy-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(format!("{name}.npy"))
    }

    /// A complete .npy image with an arbitrary descr, header version and raw data.
    fn npy_bytes(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[version, 0]);
        let header = format!("{dict}\n");
        if version == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn read_all(bytes: &[u8]) -> Result<(Vec<usize>, NpyDtype, Vec<f64>)> {
        let mut r = NpyReader::from_reader(bytes, Path::new("mem.npy"))?;
        let mut out = Vec::new();
        let n = r.read_f64(usize::MAX, &mut out)?;
        assert_eq!(n, r.len());
        assert_eq!(r.remaining(), 0);
        Ok((r.shape().to_vec(), r.dtype(), out))
    }

    fn err_text(bytes: &[u8]) -> String {
        match read_all(bytes) {
            Err(e @ Error::FileFormat { .. }) => e.to_string(),
            other => panic!("expected a FileFormat error, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let path = tmp("round");
        let data: Vec<f32> = (0..2 * 3 * 5).map(|i| i as f32 * 0.37 - 4.1).collect();
        write_f32(&path, &[2, 3, 5], &data).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // NumPy aligns the data to 64 bytes and ends the header with a newline.
        let data_start = bytes.len() - data.len() * 4;
        assert_eq!(data_start % 64, 0);
        assert_eq!(bytes[data_start - 1], b'\n');
        let (shape, back) = read_f32(&path).unwrap();
        assert_eq!(shape, vec![2, 3, 5]);
        assert_eq!(back, data);
        let mut r = NpyReader::open(&path).unwrap();
        assert_eq!((r.dtype(), r.len(), r.remaining()), (NpyDtype::F32, 30, 30));
        let mut part = Vec::new();
        assert_eq!(r.read_f64(7, &mut part).unwrap(), 7);
        assert_eq!(r.remaining(), 23);
        assert_eq!(r.read_f64(100, &mut part).unwrap(), 23);
        assert_eq!(r.read_f64(100, &mut part).unwrap(), 0);
        let want: Vec<f64> = data.iter().map(|&v| v as f64).collect();
        assert_eq!(part, want);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn header_matches_numpy_save() {
        // The first 128 bytes of `numpy.save(f, numpy.zeros((2, 3), "<f4"))` (NumPy 1.x/2.x).
        let mut want = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
        want.extend_from_slice(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
        want.resize(127, b' ');
        want.push(b'\n');
        assert_eq!(header_bytes("<f4", &[2, 3]), want);
        assert!(header_bytes("<f4", &[5]).ends_with(b"\n"));
        let one = header_bytes("<f4", &[5]);
        assert!(String::from_utf8_lossy(&one).contains("'shape': (5,), }"));
        let scalar = header_bytes("<f4", &[]);
        assert!(String::from_utf8_lossy(&scalar).contains("'shape': (), }"));
    }

    #[test]
    fn scalar_empty_and_one_dimensional_shapes() {
        for shape in [vec![], vec![0, 4], vec![7]] {
            let path = tmp(&format!("shape{}", shape.len()));
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
            write_f32(&path, &shape, &data).unwrap();
            assert_eq!(read_f32(&path).unwrap(), (shape.clone(), data));
            let _ = std::fs::remove_dir_all(path.parent().unwrap());
        }
        let err = write_f32(&tmp("mismatch"), &[2, 3], &[1.0; 5]).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
        assert!(!tmp("mismatch").exists());
    }

    #[test]
    fn every_dtype_in_both_byte_orders() {
        let vals = [-3.0f64, 0.0, 1.0, 2.5, 100.0];
        type Enc = fn(f64, bool) -> Vec<u8>;
        macro_rules! enc {
            ($t:ty) => {
                (|v: f64, big: bool| {
                    let x = v as $t;
                    if big {
                        x.to_be_bytes().to_vec()
                    } else {
                        x.to_le_bytes().to_vec()
                    }
                }) as Enc
            };
        }
        let f16_enc: Enc = |v, big| {
            let h = half::f16::from_f64(v);
            if big {
                h.to_be_bytes().to_vec()
            } else {
                h.to_le_bytes().to_vec()
            }
        };
        let cases: [(&str, NpyDtype, Enc, bool); 11] = [
            ("i1", NpyDtype::I8, enc!(i8), true),
            ("u2", NpyDtype::U16, enc!(u16), false),
            ("i2", NpyDtype::I16, enc!(i16), true),
            ("u4", NpyDtype::U32, enc!(u32), false),
            ("i4", NpyDtype::I32, enc!(i32), true),
            ("u8", NpyDtype::U64, enc!(u64), false),
            ("i8", NpyDtype::I64, enc!(i64), true),
            ("f2", NpyDtype::F16, f16_enc, true),
            ("f4", NpyDtype::F32, enc!(f32), true),
            ("f8", NpyDtype::F64, enc!(f64), true),
            ("u1", NpyDtype::U8, enc!(u8), false),
        ];
        for (kind, dtype, enc, signed) in cases {
            let want: Vec<f64> = vals
                .iter()
                .map(|&v| if signed { v } else { v.abs() })
                .map(|v| if kind.starts_with('f') { v } else { v.trunc() })
                .collect();
            for big in [false, true] {
                let order = if dtype.size() == 1 {
                    '|'
                } else if big {
                    '>'
                } else {
                    '<'
                };
                let data: Vec<u8> = want.iter().flat_map(|&v| enc(v, big)).collect();
                let dict = format!(
                    "{{'descr': '{order}{kind}', 'fortran_order': False, 'shape': (5,), }}"
                );
                let (shape, got_dtype, got) = read_all(&npy_bytes(1, &dict, &data)).unwrap();
                assert_eq!((shape, got_dtype), (vec![5], dtype), "{kind}");
                assert_eq!(got, want, "{kind} big-endian {big}");
            }
        }
        // Large values keep their identity where f64 can hold them, not a wrapped pattern.
        let dict = "{'descr': '>i8', 'fortran_order': False, 'shape': (2,), }";
        let data: Vec<u8> = [-(1i64 << 40), i64::MAX]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        assert_eq!(
            read_all(&npy_bytes(1, dict, &data)).unwrap().2,
            vec![-(2f64.powi(40)), 2f64.powi(63)]
        );
        let dict = "{'descr': '|b1', 'fortran_order': False, 'shape': (4,), }";
        let (_, dtype, got) = read_all(&npy_bytes(1, dict, &[0, 1, 0, 7])).unwrap();
        assert_eq!((dtype, got), (NpyDtype::Bool, vec![0.0, 1.0, 0.0, 1.0]));
    }

    #[test]
    fn versions_two_and_three_and_loose_headers() {
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        for version in [2, 3] {
            let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }";
            let (shape, _, got) = read_all(&npy_bytes(version, dict, &data)).unwrap();
            assert_eq!((shape, got), (vec![1, 2], vec![1.5, -2.0]));
        }
        // Key order, double quotes, no trailing comma, Python 2 longs, padding spaces.
        let dict = "{\"shape\": (2L,), \"fortran_order\": False, \"descr\": \"<f4\"}      ";
        assert_eq!(
            read_all(&npy_bytes(1, dict, &data)).unwrap().2,
            vec![1.5, -2.0]
        );
        // A Fortran-ordered vector or column has the C layout and is accepted.
        let dict = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 1), }";
        assert_eq!(
            read_all(&npy_bytes(1, dict, &data)).unwrap().2,
            vec![1.5, -2.0]
        );
    }

    #[test]
    fn truncated_data_is_reported_with_sizes() {
        let dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 2), }";
        let bytes = npy_bytes(1, dict, &[0u8; 45]);
        let msg = err_text(&bytes);
        assert!(msg.contains("expected 48 bytes of data, found 45"), "{msg}");
        assert!(msg.starts_with("mem.npy:"), "{msg}");
        // Streaming: the elements before the cut are delivered, the read at the cut fails.
        let mut r = NpyReader::from_reader(&bytes[..], Path::new("mem.npy")).unwrap();
        let mut out = Vec::new();
        assert_eq!(r.read_f64(5, &mut out).unwrap(), 5);
        assert!(r.read_f64(1, &mut out).is_err());
        // From a file the cut is found when it is opened.
        let path = tmp("cut");
        std::fs::write(&path, &bytes).unwrap();
        let msg = NpyReader::open(&path).unwrap_err().to_string();
        assert!(msg.contains("expected 48 bytes of data, found 45"), "{msg}");
        assert!(msg.contains("cut.npy"), "{msg}");
        // A file cut inside the header.
        std::fs::write(&path, &bytes[..20]).unwrap();
        let msg = NpyReader::open(&path).unwrap_err().to_string();
        assert!(msg.contains("ends inside the header"), "{msg}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn bad_magic_version_and_headers() {
        let msg = err_text(b"PK\x03\x04 this is a zip file, not npy");
        assert!(msg.contains("bad magic"), "{msg}");
        let mut v9 = npy_bytes(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }",
            &[],
        );
        v9[6] = 9;
        assert!(err_text(&v9).contains("unsupported .npy format version 9.0"));
        for (dict, want) in [
            ("{'descr': '<f4', 'shape': (2,), }", "key 'fortran_order' is missing"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -1), }", "negative"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': 2, }", "'shape' is not a tuple"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)", "expected ',' or '}'"),
            ("['descr']", "expected a dictionary"),
            (
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }",
                "structured",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999, 9999999), }",
                "overflows",
            ),
        ] {
            let msg = err_text(&npy_bytes(1, dict, &[0u8; 8]));
            assert!(msg.contains(want), "{dict}: {msg}");
        }
    }

    #[test]
    fn hostile_headers_are_errors_not_crashes() {
        // 30,000 nested brackets in a version-2 header used to overflow the stack.
        let deep = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': {}{}, }}",
            "[".repeat(30_000),
            "]".repeat(30_000)
        );
        let msg = err_text(&npy_bytes(2, &deep, &[0u8; 4]));
        assert!(msg.contains("nested more than 16 deep"), "{msg}");
        // The quoted header is cut: the message stays short whatever the header's size.
        assert!(msg.len() < 400, "{} bytes: {msg}", msg.len());
        assert!(msg.contains("characters)"), "{msg}");
        // Duplicate keys say two things; the file is refused, not read with one of them.
        let dup = "{'descr': '<f4', 'descr': '<f8', 'fortran_order': False, 'shape': (1,), }";
        assert!(err_text(&npy_bytes(1, dup, &[0u8; 8])).contains("'descr' appears more than once"));
        // A zero among huge sizes hides nothing: the other sizes' product must fit too.
        let zero = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': (0, {0}, {0}), }}",
            1u64 << 40
        );
        assert!(err_text(&npy_bytes(1, &zero, &[])).contains("too large"));
        // A shape with many dimensions is shown cut in messages.
        assert_eq!(
            show_shape(&[2; 30]),
            "[2, 2, 2, 2, 2, 2, 2, 2, ... (30 dimensions)]"
        );
    }

    #[test]
    fn unsupported_dtypes_are_named() {
        for (descr, want) in [
            ("<c8", "complex"),
            ("|O", "Python objects"),
            ("<U5", "unicode strings"),
            ("|S3", "byte strings"),
            ("<M8[ns]", "datetimes"),
            ("<f16", "floats of this width"),
        ] {
            let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2,), }}");
            let msg = err_text(&npy_bytes(1, &dict, &[0u8; 64]));
            assert!(
                msg.contains(want) && msg.contains("unsupported dtype"),
                "{descr}: {msg}"
            );
        }
    }

    #[test]
    fn fortran_order_matrices_are_refused() {
        let dict = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }";
        let msg = err_text(&npy_bytes(1, dict, &[0u8; 24]));
        assert!(msg.contains("Fortran-ordered"), "{msg}");
    }

    #[test]
    fn long_headers_switch_to_version_two() {
        let shape = vec![1usize; 30000];
        let path = tmp("v2");
        write_f32(&path, &shape, &[3.25]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes[6], 2);
        assert_eq!((bytes.len() - 4) % 64, 0);
        let (got_shape, data) = read_f32(&path).unwrap();
        assert_eq!((got_shape.len(), data), (30000, vec![3.25]));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let err = NpyReader::open(Path::new("/nonexistent/gaussskip/x.npy")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }
}
