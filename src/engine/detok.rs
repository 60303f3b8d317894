//! Incremental detokenization and stop strings.
//!
//! [`IncrementalDecoder`] turns one token at a time into text that is final: it decodes a short
//! window of ids (the prefix/read offsets of vLLM and TGI) and holds text back while the last
//! bytes are an incomplete UTF-8 character. [`StopMatcher`] finds stop strings across token
//! boundaries, cuts the text before them, and holds back a tail that could still become one.

use crate::error::Result;
use crate::tokenizer::TextTokenizer;

/// Ids → text (what the engine needs of a tokenizer).
pub trait Detokenize: Send + Sync {
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String>;
}

impl Detokenize for TextTokenizer {
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner()
            .decode(ids, skip_special_tokens)
            .map_err(|e| crate::error::Error::Tokenizer(e.to_string()))
    }
}

/// Prompt tokens kept as left context, so that decoders which treat a sequence's first token
/// specially (leading spaces) see the output in place.
const CONTEXT_TOKENS: usize = 5;

#[derive(Clone, Debug)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special: bool,
}

impl IncrementalDecoder {
    pub fn new(prompt: &[u32], skip_special: bool, d: &dyn Detokenize) -> IncrementalDecoder {
        let tail = &prompt[prompt.len().saturating_sub(CONTEXT_TOKENS)..];
        // A tail that ends inside a multi-byte character would misalign the offsets: drop it.
        let tail = match d.decode(tail, skip_special) {
            Ok(t) if !t.contains('\u{FFFD}') => tail,
            _ => &[],
        };
        IncrementalDecoder { ids: tail.to_vec(), prefix_offset: 0, read_offset: tail.len(), skip_special }
    }

    /// Adds one token; returns the text it makes final (often all of it, sometimes nothing).
    pub fn push(&mut self, token: u32, d: &dyn Detokenize) -> Result<String> {
        self.ids.push(token);
        let prefix = d.decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special)?;
        let full = d.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(prefix.as_str()) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            return Ok(delta);
        }
        Ok(String::new())
    }

    /// The text still held back (at the end of the request).
    pub fn flush(&mut self, d: &dyn Detokenize) -> Result<String> {
        if self.read_offset == self.ids.len() {
            return Ok(String::new());
        }
        let prefix = d.decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special)?;
        let full = d.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(match full.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_string(),
            None => String::new(),
        })
    }
}

/// Stop-string matching over streamed text.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received and not yet released.
    pending: String,
    /// Longest stop string, in bytes.
    max_len: usize,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.to_vec(),
            pending: String::new(),
            max_len: stops.iter().map(|s| s.len()).max().unwrap_or(0),
        }
    }

    /// Adds text; returns the text safe to release, and the stop string when one matched (the
    /// released text then ends right before it, and the rest is dropped).
    pub fn push(&mut self, text: &str) -> (String, Option<String>) {
        if self.stops.is_empty() {
            return (text.to_string(), None);
        }
        self.pending.push_str(text);
        // Earliest match in what is pending (everything before was checked and released).
        let mut best: Option<(usize, &String)> = None;
        for s in &self.stops {
            if let Some(i) = self.pending.find(s.as_str()) {
                if !matches!(best, Some((b, _)) if b <= i) {
                    best = Some((i, s));
                }
            }
        }
        if let Some((i, s)) = best {
            let out = self.pending[..i].to_string();
            let s = s.clone();
            self.pending.clear();
            return (out, Some(s));
        }
        // Hold back the longest tail that is a proper prefix of a stop string.
        let mut hold = 0;
        for s in &self.stops {
            for k in (1..s.len().min(self.pending.len() + 1)).rev() {
                if k <= hold {
                    break;
                }
                if s.is_char_boundary(k) && self.pending.ends_with(&s[..k]) {
                    hold = k;
                    break;
                }
            }
        }
        debug_assert!(hold < self.max_len.max(1));
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, None)
    }

    /// Releases whatever was held back (the request ended for another reason).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_across_pushes() {
        let mut m = StopMatcher::new(&["END".to_string(), "\n\n".to_string()]);
        assert_eq!(m.push("Hello E"), ("Hello ".to_string(), None));
        assert_eq!(m.push("N"), (String::new(), None));
        assert_eq!(m.push("Dx"), (String::new(), Some("END".to_string())));
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("a E"), ("a ".to_string(), None));
        assert_eq!(m.push("x"), ("Ex".to_string(), None));
        assert_eq!(m.push("E"), (String::new(), None));
        assert_eq!(m.finish(), "E");
    }

    #[test]
    fn stop_multibyte() {
        let mut m = StopMatcher::new(&["é!".to_string()]);
        assert_eq!(m.push("café"), ("caf".to_string(), None));
        assert_eq!(m.push("?"), ("é?".to_string(), None));
        assert_eq!(m.push("é!z"), (String::new(), Some("é!".to_string())));
    }

    #[test]
    fn no_stops_passes_through() {
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.push("abc"), ("abc".to_string(), None));
    }
}
