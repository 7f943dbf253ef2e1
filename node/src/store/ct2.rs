//! A reader of CTranslate2's `model.bin`: the spec name and every variable
//! (name, shape, type, raw little-endian data), aliases resolved. Pure code
//! over a byte slice; every length is checked, so a damaged file is an
//! error, never a panic or an over-read.
//!
//! Layout (binary version ≥ 5): u32 version; spec name (u16 length counting
//! its NUL, bytes); u32 revision; u32 variable count; per variable: name
//! (u16-prefixed, NUL-terminated), u8 rank, rank × u32 shape, u8 type (0 f32,
//! 1 i8, 2 i16, 3 i32, 4 f16), u32 byte count, data; then u32 alias count and
//! (alias, target) name pairs.

use std::collections::BTreeMap;

/// The element type of a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    I8,
    I16,
    I32,
    F16,
}

impl DType {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

/// One variable, borrowing its data from the file.
#[derive(Debug, Clone)]
pub struct Variable<'a> {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: &'a [u8],
}

impl Variable<'_> {
    /// The number of elements (1 for a scalar).
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32 (from f32 or f16); `None` for integer types.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match self.dtype {
            DType::F32 => Some(self.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
            DType::F16 => Some(self.data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
            _ => None,
        }
    }

    /// A scalar integer (or boolean) value.
    pub fn scalar_int(&self) -> Option<i64> {
        if self.len() != 1 {
            return None;
        }
        let d = self.data;
        Some(match self.dtype {
            DType::I8 => i64::from(i8::from_le_bytes([*d.first()?])),
            DType::I16 => i64::from(i16::from_le_bytes([*d.first()?, *d.get(1)?])),
            DType::I32 => i64::from(i32::from_le_bytes(d.get(..4)?.try_into().ok()?)),
            _ => return None,
        })
    }
}

/// A parsed model.
#[derive(Debug, Clone)]
pub struct Model<'a> {
    pub version: u32,
    pub spec: String,
    pub revision: u32,
    pub variables: BTreeMap<String, Variable<'a>>,
}

impl<'a> Model<'a> {
    pub fn get(&self, name: &str) -> Option<&Variable<'a>> {
        self.variables.get(name)
    }
}

/// Why a file is not a readable CTranslate2 model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CTranslate2 model: {0}")]
pub struct ParseError(pub String);

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ParseError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| ParseError(format!("truncated at byte {} reading {what}", self.at)))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self, what: &str) -> Result<u8, ParseError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, ParseError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, ParseError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self, what: &str) -> Result<String, ParseError> {
        let n = usize::from(self.u16(what)?);
        let raw = self.take(n, what)?;
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        String::from_utf8(raw.to_vec()).map_err(|_| ParseError(format!("{what} is not UTF-8")))
    }
}

/// Parses a whole `model.bin`.
pub fn parse(bytes: &[u8]) -> Result<Model<'_>, ParseError> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u32("version")?;
    if !(5..=6).contains(&version) {
        return Err(ParseError(format!("binary version {version}, this reader knows 5 and 6")));
    }
    let spec = r.string("spec name")?;
    let revision = r.u32("revision")?;
    let count = r.u32("variable count")?;
    let mut variables = BTreeMap::new();
    for _ in 0..count {
        let name = r.string("variable name")?;
        let rank = r.u8("rank")?;
        let shape = (0..rank).map(|_| r.u32("shape").map(|d| d as usize)).collect::<Result<Vec<_>, _>>()?;
        let code = r.u8("type")?;
        let dtype = DType::from_code(code).ok_or_else(|| ParseError(format!("{name}: unknown type {code}")))?;
        let n_bytes = r.u32("byte count")? as usize;
        let expected = shape.iter().try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
        if expected != Some(n_bytes) {
            return Err(ParseError(format!("{name}: {n_bytes} bytes for shape {shape:?} of {dtype:?}")));
        }
        let data = r.take(n_bytes, "variable data")?;
        variables.insert(name, Variable { shape, dtype, data });
    }
    let aliases = r.u32("alias count")?;
    for _ in 0..aliases {
        let alias = r.string("alias")?;
        let target = r.string("alias target")?;
        let var = variables.get(&target).cloned().ok_or_else(|| ParseError(format!("alias {alias} of unknown {target}")))?;
        variables.insert(alias, var);
    }
    Ok(Model { version, spec, revision, variables })
}

/// Builds a `model.bin` (the writer the tests and the converter's tests use).
#[derive(Debug, Default)]
pub struct Writer {
    vars: Vec<(String, Vec<usize>, u8, Vec<u8>)>,
    aliases: Vec<(String, String)>,
}

impl Writer {
    pub fn f16(&mut self, name: &str, shape: &[usize], values: &[f32]) -> &mut Self {
        let data = values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        self.vars.push((name.into(), shape.to_vec(), 4, data));
        self
    }
    pub fn f32(&mut self, name: &str, shape: &[usize], values: &[f32]) -> &mut Self {
        let data = values.iter().flat_map(|&v| v.to_le_bytes()).collect();
        self.vars.push((name.into(), shape.to_vec(), 0, data));
        self
    }
    pub fn i16(&mut self, name: &str, value: i16) -> &mut Self {
        self.vars.push((name.into(), Vec::new(), 2, value.to_le_bytes().to_vec()));
        self
    }
    pub fn alias(&mut self, alias: &str, target: &str) -> &mut Self {
        self.aliases.push((alias.into(), target.into()));
        self
    }
    pub fn finish(&self, spec: &str) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&6u32.to_le_bytes());
        string(&mut out, spec);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.vars.len() as u32).to_le_bytes());
        for (name, shape, code, data) in &self.vars {
            string(&mut out, name);
            out.push(shape.len() as u8);
            for &d in shape {
                out.extend_from_slice(&(d as u32).to_le_bytes());
            }
            out.push(*code);
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        out.extend_from_slice(&(self.aliases.len() as u32).to_le_bytes());
        for (a, t) in &self.aliases {
            string(&mut out, a);
            string(&mut out, t);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_model_reads_back_with_aliases() {
        let bytes = Writer::default()
            .f16("a/w", &[2, 3], &[1.0, -2.0, 0.5, 0.0, 3.0, 4.0])
            .f32("a/b", &[2], &[7.0, 8.0])
            .i16("a/num_heads", 6)
            .alias("a/proj", "a/w")
            .finish("WhisperSpec");
        let m = parse(&bytes).unwrap();
        assert_eq!((m.version, m.spec.as_str(), m.revision), (6, "WhisperSpec", 3));
        assert_eq!(m.get("a/w").unwrap().to_f32().unwrap(), [1.0, -2.0, 0.5, 0.0, 3.0, 4.0]);
        assert_eq!(m.get("a/proj").unwrap().shape, [2, 3]);
        assert_eq!(m.get("a/b").unwrap().to_f32().unwrap(), [7.0, 8.0]);
        assert_eq!(m.get("a/num_heads").unwrap().scalar_int(), Some(6));
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let bytes = Writer::default().f16("a/w", &[2, 3], &[0.0; 6]).alias("x", "a/w").finish("WhisperSpec");
        for cut in 0..bytes.len() {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_type = bytes.clone();
        let at = bytes.windows(4).position(|w| w == b"a/w\0").unwrap() + 4 + 1 + 8;
        bad_type[at] = 9;
        assert!(parse(&bad_type).unwrap_err().0.contains("unknown type 9"));
        let mut bad_len = bytes;
        bad_len[at + 1] = 11;
        assert!(parse(&bad_len).unwrap_err().0.contains("11 bytes"));
    }
}
