//! CTranslate2 Whisper → whisper.cpp ggml: the project's own converter. Pure
//! code: a parsed [`ct2::Model`] and the `tokenizer.json` in, the bytes of a
//! ggml model file written to any `Write`.
//!
//! The ggml file: i32 magic `0x67676d6c`; eleven i32 hyper-parameters
//! (n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
//! n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype 1 =
//! f16); the mel filter bank (i32 rows, i32 cols, f32 values); the
//! byte-level BPE tokens (i32 count, then i32 length + bytes each); then
//! every tensor: i32 n_dims, i32 name length, i32 type (0 f32, 1 f16), the
//! dims innermost first, the name, the data. 1-D tensors, conv biases
//! (reshaped to (n, 1)) and positional embeddings are f32; the rest f16.
//!
//! CTranslate2 fuses what openai-whisper keeps apart: self-attention's
//! `linear_0` is q, k, v stacked along dim 0 and cross-attention's
//! `linear_1` is k, v; whisper has no key bias, so that third is dropped.

use std::io::Write;

use super::ct2::{self, Variable};

const MAGIC: i32 = 0x6767_6d6c;
/// The byte-level BPE tokens a ggml file lists (the rest are special
/// tokens, which whisper.cpp names itself).
const N_TEXT_TOKENS: usize = 50_257;
const SAMPLE_RATE: f64 = 16_000.0;
const N_FFT: usize = 400;

/// The shape of the converted model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hparams {
    pub n_vocab: usize,
    pub n_audio_ctx: usize,
    pub n_audio_state: usize,
    pub n_audio_head: usize,
    pub n_audio_layer: usize,
    pub n_text_ctx: usize,
    pub n_text_state: usize,
    pub n_text_head: usize,
    pub n_text_layer: usize,
    pub n_mels: usize,
}

/// Why a model could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Parse(#[from] ct2::ParseError),
    #[error("not a Whisper model: {0}")]
    Model(String),
    #[error("tokenizer.json: {0}")]
    Tokenizer(String),
    #[error("writing the ggml file: {0}")]
    Io(#[from] std::io::Error),
}

fn missing(name: &str) -> ConvertError {
    ConvertError::Model(format!("no variable {name}"))
}

fn var<'m, 'a>(m: &'m ct2::Model<'a>, name: &str) -> Result<&'m Variable<'a>, ConvertError> {
    m.get(name).ok_or_else(|| missing(name))
}

fn dims2(m: &ct2::Model<'_>, name: &str) -> Result<(usize, usize), ConvertError> {
    match var(m, name)?.shape.as_slice() {
        &[a, b] => Ok((a, b)),
        other => Err(ConvertError::Model(format!("{name} has shape {other:?}, expected 2-D"))),
    }
}

fn layers(m: &ct2::Model<'_>, side: &str) -> usize {
    (0..).take_while(|i| m.get(&format!("{side}/layer_{i}/self_attention/linear_0/weight")).is_some()).count()
}

fn heads(m: &ct2::Model<'_>, side: &str, state: usize) -> usize {
    // Whisper's heads are 64 wide; the spec records the count, use it when there.
    m.get(&format!("{side}/num_heads")).and_then(Variable::scalar_int).map_or(state / 64, |h| h as usize)
}

/// Reads the hyper-parameters off the tensors' shapes.
pub fn hparams(m: &ct2::Model<'_>) -> Result<Hparams, ConvertError> {
    if m.spec != "WhisperSpec" {
        return Err(ConvertError::Model(format!("spec {}", m.spec)));
    }
    let (n_audio_ctx, n_audio_state) = dims2(m, "encoder/position_encodings/encodings")?;
    let (n_text_ctx, n_text_state) = dims2(m, "decoder/position_encodings/encodings")?;
    let (n_vocab, _) = dims2(m, "decoder/embeddings/weight")?;
    let n_mels = match var(m, "encoder/conv1/weight")?.shape.as_slice() {
        &[_, mels, 3] => mels,
        other => return Err(ConvertError::Model(format!("encoder/conv1/weight has shape {other:?}"))),
    };
    Ok(Hparams {
        n_vocab,
        n_audio_ctx,
        n_audio_state,
        n_audio_head: heads(m, "encoder", n_audio_state),
        n_audio_layer: layers(m, "encoder"),
        n_text_ctx,
        n_text_state,
        n_text_head: heads(m, "decoder", n_text_state),
        n_text_layer: layers(m, "decoder"),
        n_mels,
    })
}

/// One tensor of the output.
struct Tensor {
    name: String,
    /// numpy order (outermost first).
    shape: Vec<usize>,
    values: Vec<f32>,
    f16: bool,
}

/// The tensors of openai-whisper's naming, in whisper.cpp's order.
fn tensors(m: &ct2::Model<'_>, h: &Hparams) -> Result<Vec<Tensor>, ConvertError> {
    let mut out = Vec::new();
    // Copies `from` as `to`; 1-D tensors are f32.
    let put = |to: String, from: &str, out: &mut Vec<Tensor>| -> Result<(), ConvertError> {
        let v = var(m, from)?;
        let values = v.to_f32().ok_or_else(|| ConvertError::Model(format!("{from} is not a float tensor")))?;
        let f16 = v.shape.len() >= 2;
        out.push(Tensor { name: to, shape: v.shape.clone(), values, f16 });
        Ok(())
    };
    // Splits a tensor stacked along dim 0 into `parts`; `keep[i]` names part i (None: dropped).
    let split = |from: &str, keep: &[Option<String>], out: &mut Vec<Tensor>| -> Result<(), ConvertError> {
        let v = var(m, from)?;
        let values = v.to_f32().ok_or_else(|| ConvertError::Model(format!("{from} is not a float tensor")))?;
        let rows = *v.shape.first().ok_or_else(|| ConvertError::Model(format!("{from} is a scalar")))?;
        if rows % keep.len() != 0 {
            return Err(ConvertError::Model(format!("{from}: {rows} rows do not split in {}", keep.len())));
        }
        let part = values.len() / keep.len();
        let mut shape = v.shape.clone();
        shape[0] = rows / keep.len();
        for (i, name) in keep.iter().enumerate() {
            if let Some(name) = name {
                let f16 = shape.len() >= 2;
                out.push(Tensor { name: name.clone(), shape: shape.clone(), values: values[i * part..(i + 1) * part].to_vec(), f16 });
            }
        }
        Ok(())
    };
    let pair = |to: &str, from: &str| [(format!("{to}.weight"), format!("{from}/gamma")), (format!("{to}.bias"), format!("{from}/beta"))];
    let linear =
        |to: &str, from: &str| [(format!("{to}.weight"), format!("{from}/weight")), (format!("{to}.bias"), format!("{from}/bias"))];

    // Encoder.
    put("encoder.positional_embedding".into(), "encoder/position_encodings/encodings", &mut out)?;
    for conv in ["conv1", "conv2"] {
        put(format!("encoder.{conv}.weight"), &format!("encoder/{conv}/weight"), &mut out)?;
        put(format!("encoder.{conv}.bias"), &format!("encoder/{conv}/bias"), &mut out)?;
        let bias = out.last_mut().ok_or_else(|| missing("conv bias"))?;
        bias.shape = vec![bias.values.len(), 1];
        bias.f16 = false;
    }
    for (to, from) in pair("encoder.ln_post", "encoder/layer_norm") {
        put(to, &from, &mut out)?;
    }
    for i in 0..h.n_audio_layer {
        let b = format!("encoder.blocks.{i}");
        let l = format!("encoder/layer_{i}");
        let mut simple = Vec::new();
        simple.extend(pair(&format!("{b}.attn_ln"), &format!("{l}/self_attention/layer_norm")));
        simple.extend(linear(&format!("{b}.attn.out"), &format!("{l}/self_attention/linear_1")));
        simple.extend(pair(&format!("{b}.mlp_ln"), &format!("{l}/ffn/layer_norm")));
        simple.extend(linear(&format!("{b}.mlp.0"), &format!("{l}/ffn/linear_0")));
        simple.extend(linear(&format!("{b}.mlp.2"), &format!("{l}/ffn/linear_1")));
        for (to, from) in simple {
            put(to, &from, &mut out)?;
        }
        let qkv = format!("{l}/self_attention/linear_0");
        let w = |p: &str| Some(format!("{b}.attn.{p}.weight"));
        let bias = |p: &str| Some(format!("{b}.attn.{p}.bias"));
        split(&format!("{qkv}/weight"), &[w("query"), w("key"), w("value")], &mut out)?;
        split(&format!("{qkv}/bias"), &[bias("query"), None, bias("value")], &mut out)?;
    }

    // Decoder.
    put("decoder.positional_embedding".into(), "decoder/position_encodings/encodings", &mut out)?;
    put("decoder.token_embedding.weight".into(), "decoder/embeddings/weight", &mut out)?;
    for (to, from) in pair("decoder.ln", "decoder/layer_norm") {
        put(to, &from, &mut out)?;
    }
    for i in 0..h.n_text_layer {
        let b = format!("decoder.blocks.{i}");
        let l = format!("decoder/layer_{i}");
        let mut simple = Vec::new();
        simple.extend(pair(&format!("{b}.attn_ln"), &format!("{l}/self_attention/layer_norm")));
        simple.extend(linear(&format!("{b}.attn.out"), &format!("{l}/self_attention/linear_1")));
        simple.extend(pair(&format!("{b}.cross_attn_ln"), &format!("{l}/attention/layer_norm")));
        simple.extend(linear(&format!("{b}.cross_attn.query"), &format!("{l}/attention/linear_0")));
        simple.extend(linear(&format!("{b}.cross_attn.out"), &format!("{l}/attention/linear_2")));
        simple.extend(pair(&format!("{b}.mlp_ln"), &format!("{l}/ffn/layer_norm")));
        simple.extend(linear(&format!("{b}.mlp.0"), &format!("{l}/ffn/linear_0")));
        simple.extend(linear(&format!("{b}.mlp.2"), &format!("{l}/ffn/linear_1")));
        for (to, from) in simple {
            put(to, &from, &mut out)?;
        }
        let qkv = format!("{l}/self_attention/linear_0");
        let w = |p: &str| Some(format!("{b}.attn.{p}.weight"));
        let bias = |p: &str| Some(format!("{b}.attn.{p}.bias"));
        split(&format!("{qkv}/weight"), &[w("query"), w("key"), w("value")], &mut out)?;
        split(&format!("{qkv}/bias"), &[bias("query"), None, bias("value")], &mut out)?;
        let kv = format!("{l}/attention/linear_1");
        let w = |p: &str| Some(format!("{b}.cross_attn.{p}.weight"));
        let bias = |p: &str| Some(format!("{b}.cross_attn.{p}.bias"));
        split(&format!("{kv}/weight"), &[w("key"), w("value")], &mut out)?;
        split(&format!("{kv}/bias"), &[None, bias("value")], &mut out)?;
    }
    for t in &mut out {
        if t.name.ends_with("positional_embedding") {
            t.f16 = false;
        }
    }
    Ok(out)
}

/// librosa's `filters.mel(sr=16000, n_fft=400, n_mels)`: Slaney's mel scale
/// and area normalisation, computed in f64 as librosa does.
pub fn mel_filters(n_mels: usize) -> Vec<Vec<f32>> {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    let hz_to_mel = |f: f64| if f >= MIN_LOG_HZ { MIN_LOG_MEL + (f / MIN_LOG_HZ).ln() / logstep } else { f / F_SP };
    let mel_to_hz = |m: f64| if m >= MIN_LOG_MEL { MIN_LOG_HZ * (logstep * (m - MIN_LOG_MEL)).exp() } else { F_SP * m };
    let n_bins = 1 + N_FFT / 2;
    let fft_freqs: Vec<f64> = (0..n_bins).map(|i| i as f64 * (SAMPLE_RATE / 2.0) / (n_bins - 1) as f64).collect();
    let top = hz_to_mel(SAMPLE_RATE / 2.0);
    let mel_f: Vec<f64> = (0..n_mels + 2).map(|i| mel_to_hz(top * i as f64 / (n_mels + 1) as f64)).collect();
    (0..n_mels)
        .map(|i| {
            let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
            fft_freqs
                .iter()
                .map(|&f| {
                    let lower = (f - mel_f[i]) / (mel_f[i + 1] - mel_f[i]);
                    let upper = (mel_f[i + 2] - f) / (mel_f[i + 2] - mel_f[i + 1]);
                    (lower.min(upper).max(0.0) * enorm) as f32
                })
                .collect()
        })
        .collect()
}

/// GPT-2's byte ↔ printable-character table, inverted: char → byte.
fn unicode_to_byte() -> std::collections::HashMap<char, u8> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut map = std::collections::HashMap::new();
    let mut n = 0;
    for b in 0u32..256 {
        let c = if printable(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        if let Some(c) = char::from_u32(c) {
            map.insert(c, b as u8);
        }
    }
    map
}

/// The first [`N_TEXT_TOKENS`] tokens of a Hugging Face `tokenizer.json`, as bytes.
pub fn tokens(tokenizer_json: &[u8]) -> Result<Vec<Vec<u8>>, ConvertError> {
    let json: serde_json::Value = serde_json::from_slice(tokenizer_json).map_err(|e| ConvertError::Tokenizer(e.to_string()))?;
    let vocab = json.pointer("/model/vocab").and_then(|v| v.as_object()).ok_or_else(|| ConvertError::Tokenizer("no model.vocab".into()))?;
    let table = unicode_to_byte();
    let mut by_id: Vec<Option<Vec<u8>>> = vec![None; N_TEXT_TOKENS];
    for (token, id) in vocab {
        let Some(id) = id.as_u64().map(|i| i as usize).filter(|&i| i < N_TEXT_TOKENS) else { continue };
        let bytes = token.chars().map(|c| table.get(&c).copied()).collect::<Option<Vec<u8>>>();
        by_id[id] = Some(bytes.ok_or_else(|| ConvertError::Tokenizer(format!("token {id} is not byte-level BPE")))?);
    }
    by_id.into_iter().enumerate().map(|(i, t)| t.ok_or_else(|| ConvertError::Tokenizer(format!("token {i} missing")))).collect()
}

fn i32_of(n: usize, what: &str) -> Result<[u8; 4], ConvertError> {
    i32::try_from(n).map(i32::to_le_bytes).map_err(|_| ConvertError::Model(format!("{what} {n} does not fit an i32")))
}

/// Converts a CTranslate2 Whisper `model.bin` and its `tokenizer.json` into a
/// ggml file written to `out`.
pub fn convert(model_bin: &[u8], tokenizer_json: &[u8], out: &mut impl Write) -> Result<Hparams, ConvertError> {
    let model = ct2::parse(model_bin)?;
    let h = hparams(&model)?;
    let tokens = tokens(tokenizer_json)?;
    let tensors = tensors(&model, &h)?;
    out.write_all(&MAGIC.to_le_bytes())?;
    for (n, what) in [
        (h.n_vocab, "n_vocab"),
        (h.n_audio_ctx, "n_audio_ctx"),
        (h.n_audio_state, "n_audio_state"),
        (h.n_audio_head, "n_audio_head"),
        (h.n_audio_layer, "n_audio_layer"),
        (h.n_text_ctx, "n_text_ctx"),
        (h.n_text_state, "n_text_state"),
        (h.n_text_head, "n_text_head"),
        (h.n_text_layer, "n_text_layer"),
        (h.n_mels, "n_mels"),
        (1, "ftype"),
    ] {
        out.write_all(&i32_of(n, what)?)?;
    }
    let filters = mel_filters(h.n_mels);
    out.write_all(&i32_of(filters.len(), "mel rows")?)?;
    out.write_all(&i32_of(1 + N_FFT / 2, "mel cols")?)?;
    for v in filters.iter().flatten() {
        out.write_all(&v.to_le_bytes())?;
    }
    out.write_all(&i32_of(tokens.len(), "tokens")?)?;
    for t in &tokens {
        out.write_all(&i32_of(t.len(), "token length")?)?;
        out.write_all(t)?;
    }
    let mut buf = Vec::new();
    for t in &tensors {
        out.write_all(&i32_of(t.shape.len(), "n_dims")?)?;
        out.write_all(&i32_of(t.name.len(), "name length")?)?;
        out.write_all(&i32_of(usize::from(t.f16), "ftype")?)?;
        for &d in t.shape.iter().rev() {
            out.write_all(&i32_of(d, "dim")?)?;
        }
        out.write_all(t.name.as_bytes())?;
        buf.clear();
        if t.f16 {
            buf.extend(t.values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()));
        } else {
            buf.extend(t.values.iter().flat_map(|&v| v.to_le_bytes()));
        }
        out.write_all(&buf)?;
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Whisper-shaped CT2 model: state 4, one layer each side, vocab 6.
    fn tiny_model() -> Vec<u8> {
        let mut w = ct2::Writer::default();
        let seq = |n: usize, start: f32| (0..n).map(|i| start + i as f32).collect::<Vec<f32>>();
        let (d, ff) = (4, 8);
        w.f16("encoder/conv1/weight", &[d, 80, 3], &vec![0.5; d * 80 * 3]).f16("encoder/conv1/bias", &[d], &seq(d, 1.0));
        w.f16("encoder/conv2/weight", &[d, d, 3], &vec![0.25; d * d * 3]).f16("encoder/conv2/bias", &[d], &seq(d, 5.0));
        w.f16("encoder/position_encodings/encodings", &[10, d], &seq(10 * d, 0.0));
        w.f16("decoder/position_encodings/encodings", &[7, d], &seq(7 * d, 0.0));
        w.f16("decoder/embeddings/weight", &[6, d], &seq(6 * d, 0.0)).alias("decoder/projection/weight", "decoder/embeddings/weight");
        w.i16("encoder/num_heads", 2).i16("decoder/num_heads", 2);
        for side in ["encoder", "decoder"] {
            w.f16(&format!("{side}/layer_norm/gamma"), &[d], &[1.0; 4]).f16(&format!("{side}/layer_norm/beta"), &[d], &[0.0; 4]);
            let l = format!("{side}/layer_0");
            let mut norms = vec!["self_attention", "ffn"];
            if side == "decoder" {
                norms.push("attention");
            }
            for n in norms {
                w.f16(&format!("{l}/{n}/layer_norm/gamma"), &[d], &[1.0; 4]).f16(&format!("{l}/{n}/layer_norm/beta"), &[d], &[0.0; 4]);
            }
            // q rows 0–3 = 0.., k rows = 100.., v rows = 200..; biases likewise.
            let qkv: Vec<f32> = (0..3).flat_map(|p| seq(d * d, 100.0 * p as f32)).collect();
            w.f16(&format!("{l}/self_attention/linear_0/weight"), &[3 * d, d], &qkv);
            w.f16(&format!("{l}/self_attention/linear_0/bias"), &[3 * d], &[1., 1., 1., 1., 0., 0., 0., 0., 3., 3., 3., 3.]);
            w.f16(&format!("{l}/self_attention/linear_1/weight"), &[d, d], &[0.0; 16]).f16(
                &format!("{l}/self_attention/linear_1/bias"),
                &[d],
                &[0.0; 4],
            );
            w.f16(&format!("{l}/ffn/linear_0/weight"), &[ff, d], &[0.0; 32]).f16(&format!("{l}/ffn/linear_0/bias"), &[ff], &[0.0; 8]);
            w.f16(&format!("{l}/ffn/linear_1/weight"), &[d, ff], &[0.0; 32]).f16(&format!("{l}/ffn/linear_1/bias"), &[d], &[0.0; 4]);
            if side == "decoder" {
                for (n, rows) in [("linear_0", d), ("linear_1", 2 * d), ("linear_2", d)] {
                    let values: Vec<f32> = seq(rows * d, 0.0);
                    w.f16(&format!("{l}/attention/{n}/weight"), &[rows, d], &values).f16(
                        &format!("{l}/attention/{n}/bias"),
                        &[rows],
                        &seq(rows, 0.0),
                    );
                }
            }
        }
        w.finish("WhisperSpec")
    }

    fn tokenizer() -> Vec<u8> {
        // Every byte-level token id below N_TEXT_TOKENS: "Ġ" is the space byte.
        let mut vocab = serde_json::Map::new();
        for i in 0..N_TEXT_TOKENS {
            let token = match i {
                0 => "!".to_owned(),
                1 => "Ġthe".to_owned(),
                2 => "ä½ł".to_owned(), // 你 in GPT-2's byte table
                _ => format!("t{i}"),
            };
            vocab.insert(token, i.into());
        }
        vocab.insert("<|endoftext|>".into(), N_TEXT_TOKENS.into());
        serde_json::to_vec(&serde_json::json!({ "model": { "vocab": vocab } })).unwrap()
    }

    /// Reads a ggml file back: hparams, tokens, tensors (name → (dims, ftype, data)).
    type Tensors = std::collections::BTreeMap<String, (Vec<usize>, i32, Vec<u8>)>;
    type ReadBack = (Vec<i32>, Vec<Vec<f32>>, Vec<Vec<u8>>, Tensors);
    fn read_back(b: &[u8]) -> ReadBack {
        let mut at = 0;
        let mut i32_ = || {
            let v = i32::from_le_bytes(b[at..at + 4].try_into().unwrap());
            at += 4;
            v
        };
        let head: Vec<i32> = (0..12).map(|_| i32_()).collect();
        let (rows, cols) = (i32_() as usize, i32_() as usize);
        let mut mel = vec![vec![0.0; cols]; rows];
        for row in &mut mel {
            for v in row.iter_mut() {
                *v = f32::from_le_bytes(b[at..at + 4].try_into().unwrap());
                at += 4;
            }
        }
        let next = |at: &mut usize| {
            let v = i32::from_le_bytes(b[*at..*at + 4].try_into().unwrap());
            *at += 4;
            v
        };
        let n = next(&mut at) as usize;
        let mut toks = Vec::new();
        for _ in 0..n {
            let len = next(&mut at) as usize;
            toks.push(b[at..at + len].to_vec());
            at += len;
        }
        let mut tensors = Tensors::new();
        while at < b.len() {
            let (n_dims, name_len, ftype) = (next(&mut at) as usize, next(&mut at) as usize, next(&mut at));
            let dims: Vec<usize> = (0..n_dims).map(|_| next(&mut at) as usize).collect();
            let name = String::from_utf8(b[at..at + name_len].to_vec()).unwrap();
            at += name_len;
            let bytes = dims.iter().product::<usize>() * if ftype == 1 { 2 } else { 4 };
            tensors.insert(name, (dims, ftype, b[at..at + bytes].to_vec()));
            at += bytes;
        }
        (head, mel, toks, tensors)
    }

    fn f16s(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
    }
    fn f32s(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    #[test]
    fn a_whisper_model_converts_to_whisper_cpp_names_shapes_and_types() {
        let mut out = Vec::new();
        let h = convert(&tiny_model(), &tokenizer(), &mut out).unwrap();
        assert_eq!((h.n_vocab, h.n_audio_ctx, h.n_audio_state, h.n_audio_head, h.n_audio_layer), (6, 10, 4, 2, 1));
        assert_eq!((h.n_text_ctx, h.n_text_state, h.n_text_head, h.n_text_layer, h.n_mels), (7, 4, 2, 1, 80));
        let (head, mel, toks, t) = read_back(&out);
        assert_eq!(head, [MAGIC, 6, 10, 4, 2, 1, 7, 4, 2, 1, 80, 1]);
        assert_eq!((mel.len(), mel[0].len()), (80, 201));
        assert_eq!(toks.len(), N_TEXT_TOKENS);
        assert_eq!((toks[0].as_slice(), toks[1].as_slice(), toks[2].as_slice()), (&b"!"[..], &b" the"[..], "你".as_bytes()));
        // Exactly whisper.cpp's tensor set: 5 + 2 + 15 per encoder layer, 4 + 24 per decoder layer.
        assert_eq!(t.len(), 7 + 15 + 4 + 24);
        let (dims, ftype, data) = &t["encoder.conv1.bias"];
        assert_eq!((dims.as_slice(), *ftype, f32s(data)), (&[1, 4][..], 0, vec![1.0, 2.0, 3.0, 4.0]));
        assert_eq!((t["encoder.conv1.weight"].0.as_slice(), t["encoder.conv1.weight"].1), (&[3, 80, 4][..], 1));
        assert_eq!((t["encoder.positional_embedding"].0.as_slice(), t["encoder.positional_embedding"].1), (&[4, 10][..], 0));
        assert_eq!(t["decoder.ln.weight"].1, 0);
        // The fused q,k,v split in three; the key bias dropped.
        let key = &t["encoder.blocks.0.attn.key.weight"];
        assert_eq!((key.0.as_slice(), f16s(&key.2)[0]), (&[4, 4][..], 100.0));
        assert_eq!(f16s(&t["decoder.blocks.0.attn.value.weight"].2)[0], 200.0);
        assert_eq!(f32s(&t["encoder.blocks.0.attn.query.bias"].2), [1.0; 4]);
        assert_eq!(f32s(&t["encoder.blocks.0.attn.value.bias"].2), [3.0; 4]);
        assert!(!t.contains_key("encoder.blocks.0.attn.key.bias"));
        // Cross-attention's fused k,v: value is the second half.
        assert_eq!(f16s(&t["decoder.blocks.0.cross_attn.value.weight"].2)[0], 16.0);
        assert_eq!(f32s(&t["decoder.blocks.0.cross_attn.value.bias"].2), [4.0, 5.0, 6.0, 7.0]);
        assert!(t.contains_key("decoder.blocks.0.cross_attn_ln.bias") && !t.contains_key("decoder.blocks.0.cross_attn.key.bias"));
    }

    #[test]
    fn the_mel_bank_is_slaney_normalised_triangles() {
        let m = mel_filters(80);
        // Each filter is a triangle of area-normalised height: non-negative,
        // non-zero, peaks rising in frequency.
        let peaks: Vec<usize> = m
            .iter()
            .map(|row| row.iter().enumerate().fold((0, 0.0f32), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0)
            .collect();
        assert!(m.iter().flatten().all(|&v| v >= 0.0));
        assert!(peaks.windows(2).all(|w| w[0] <= w[1]), "{peaks:?}");
        // librosa's values (whisper's mel_filters.npz row 0 starts 0, 0.02486259).
        assert!((m[0][1] - 0.024_862_594).abs() < 1e-7, "{}", m[0][1]);
        assert!((m[79][199] - 0.000_448_759).abs() < 1e-8, "{}", m[79][199]);
        assert_eq!((m[79][200], m[40][60]), (0.0, 0.0));
        assert_eq!(m[0][0], 0.0);
    }

    #[test]
    fn what_is_not_whisper_is_refused() {
        let other = ct2::Writer::default().f16("x", &[1], &[0.0]).finish("TransformerSpec");
        assert!(convert(&other, &tokenizer(), &mut Vec::new()).unwrap_err().to_string().contains("TransformerSpec"));
        let mut out = Vec::new();
        assert!(matches!(convert(&tiny_model(), b"{}", &mut out), Err(ConvertError::Tokenizer(_))));
    }
}
