//! Text ↔ token ids through a checkpoint's `tokenizer.json` (HF tokenizers) and the BOS rule of
//! its `tokenizer_config.json`.

use std::path::Path;

use crate::error::{Error, Result};

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json`; `None` when the checkpoint has none.
    pub fn load(dir: &Path, bos_token_id: Option<u32>) -> Result<Option<TextTokenizer>> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Ok(None);
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        // DeepSeek's tokenizer_config.json sets add_bos_token; the tokenizer.json itself does not add it.
        let add_bos = read_add_bos(&dir.join("tokenizer_config.json"))?;
        Ok(Some(TextTokenizer { inner, bos: if add_bos { bos_token_id } else { None } }))
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if let Some(bos) = self.bos {
            ids.push(bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// `add_bos_token` from tokenizer_config.json; true when the file or the key is absent (DeepSeek's default).
fn read_add_bos(path: &Path) -> Result<bool> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(true) };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
    Ok(json.get("add_bos_token").and_then(|v| v.as_bool()).unwrap_or(true))
}
