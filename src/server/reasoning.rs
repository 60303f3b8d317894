//! `--reasoning-parser deepseek-r1`: splits a DeepSeek-R1 completion into `reasoning_content` (the
//! text up to `</think>`) and `content` (the rest), also while streaming. R1 starts in reasoning
//! mode (its template may already have put `<think>` in the prompt); a leading `<think>` in the
//! output is dropped. A completion that never closes `</think>` is all reasoning (as SGLang's
//! DeepSeek-R1 detector does).

const START: &str = "<think>";
const END: &str = "</think>";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasoningParserKind {
    DeepSeekR1,
}

impl std::str::FromStr for ReasoningParserKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deepseek-r1" => Ok(ReasoningParserKind::DeepSeekR1),
            other => Err(format!("unknown reasoning parser `{other}` (this build knows: deepseek-r1)")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ReasoningParser {
    in_reasoning: bool,
    /// At the very start, until we know whether the output begins with `<think>`.
    at_start: bool,
    buf: String,
}

impl ReasoningParser {
    pub fn new(_kind: ReasoningParserKind) -> ReasoningParser {
        ReasoningParser { in_reasoning: true, at_start: true, buf: String::new() }
    }

    /// Feeds streamed text; returns (reasoning delta, content delta).
    pub fn push(&mut self, text: &str) -> (String, String) {
        if !self.in_reasoning {
            return (String::new(), text.to_string());
        }
        self.buf.push_str(text);
        if self.at_start {
            let trimmed = self.buf.trim_start();
            if trimmed.len() < START.len() && START.starts_with(trimmed) {
                return (String::new(), String::new());
            }
            if let Some(rest) = trimmed.strip_prefix(START) {
                self.buf = rest.to_string();
            }
            self.at_start = false;
        }
        if let Some(i) = self.buf.find(END) {
            let reasoning = self.buf[..i].to_string();
            let content = self.buf[i + END.len()..].to_string();
            self.buf.clear();
            self.in_reasoning = false;
            return (reasoning, content);
        }
        // Hold back a tail that may be the start of `</think>`.
        let hold = (1..END.len().min(self.buf.len() + 1))
            .rev()
            .find(|&k| self.buf.ends_with(&END[..k]))
            .unwrap_or(0);
        let cut = self.buf.len() - hold;
        let out = self.buf[..cut].to_string();
        self.buf.drain(..cut);
        (out, String::new())
    }

    /// End of the completion: whatever is held back.
    pub fn finish(&mut self) -> (String, String) {
        let rest = std::mem::take(&mut self.buf);
        if self.in_reasoning {
            (rest, String::new())
        } else {
            (String::new(), rest)
        }
    }

    /// Splits a whole completion.
    pub fn split(kind: ReasoningParserKind, text: &str) -> (String, String) {
        let mut p = ReasoningParser::new(kind);
        let (mut r, mut c) = p.push(text);
        let (r2, c2) = p.finish();
        r.push_str(&r2);
        c.push_str(&c2);
        (r, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_and_streamed_agree() {
        let text = "<think>\nLet me think. 2+2=4 </thin no</think>\n\nThe answer is 4.";
        let (r, c) = ReasoningParser::split(ReasoningParserKind::DeepSeekR1, text);
        assert_eq!(r, "\nLet me think. 2+2=4 </thin no");
        assert_eq!(c, "\n\nThe answer is 4.");
        for step in 1..6 {
            let mut p = ReasoningParser::new(ReasoningParserKind::DeepSeekR1);
            let (mut rs, mut cs) = (String::new(), String::new());
            let chars: Vec<char> = text.chars().collect();
            for chunk in chars.chunks(step) {
                let (a, b) = p.push(&chunk.iter().collect::<String>());
                rs.push_str(&a);
                cs.push_str(&b);
            }
            let (a, b) = p.finish();
            rs.push_str(&a);
            cs.push_str(&b);
            assert_eq!((rs, cs), (r.clone(), c.clone()), "chunks of {step}");
        }
    }

    #[test]
    fn without_tags() {
        // The prompt opened <think>: the output starts inside the reasoning.
        let (r, c) = ReasoningParser::split(ReasoningParserKind::DeepSeekR1, "hmm</think>ok");
        assert_eq!((r.as_str(), c.as_str()), ("hmm", "ok"));
        let (r, c) = ReasoningParser::split(ReasoningParserKind::DeepSeekR1, "never closed");
        assert_eq!((r.as_str(), c.as_str()), ("never closed", ""));
    }
}
