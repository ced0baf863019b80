//! Masking secret parameter values in an action's output before anything leaves the agent:
//! every occurrence of a secret's text in stdout and stderr (so in live chunks, the report and
//! the result parsed from stdout) becomes [`MASK`], also inside longer lines and across the
//! reads a stream arrives in.

/// What a secret value is replaced with.
pub const MASK: &[u8] = b"********";

/// The texts to mask of a job's secret parameters: a string as it is, any other value as its
/// JSON (`1234` for a number); empty values are not masked.
pub fn secret_texts(
    parameters: &serde_json::Map<String, serde_json::Value>,
    secret_names: &[String],
) -> Vec<Vec<u8>> {
    let mut texts: Vec<Vec<u8>> = secret_names
        .iter()
        .filter_map(|name| parameters.get(name))
        .map(|value| match value {
            serde_json::Value::String(text) => text.as_bytes().to_vec(),
            other => other.to_string().into_bytes(),
        })
        .filter(|text| !text.is_empty())
        .collect();
    // Longest first, so a secret that contains another is masked whole.
    texts.sort_by_key(|text| std::cmp::Reverse(text.len()));
    texts.dedup();
    texts
}

/// Masks one stream as it arrives: holds back the bytes that may be the start of a secret
/// until the next read (or the end) tells.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    secrets: Vec<Vec<u8>>,
    carry: Vec<u8>,
}

impl Masker {
    pub fn new(secrets: Vec<Vec<u8>>) -> Masker {
        Masker {
            secrets,
            carry: Vec::new(),
        }
    }

    /// Takes the next bytes of the stream; returns what can be passed on now, masked.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return data.to_vec();
        }
        self.carry.extend_from_slice(data);
        let (masked, consumed) = self.mask(false);
        self.carry.drain(..consumed);
        masked
    }

    /// The end of the stream: what was held back, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        let (masked, _) = self.mask(true);
        self.carry.clear();
        masked
    }

    /// Masks the carried bytes up to where a secret could still begin (all of them at the
    /// end); returns the output and how many carried bytes it covers.
    fn mask(&self, at_end: bool) -> (Vec<u8>, usize) {
        let bytes = &self.carry;
        let mut output = Vec::with_capacity(bytes.len());
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            // Could a secret begin here and continue in bytes not read yet? Then wait, even if
            // a shorter one matches already: the longer one must win.
            if !at_end
                && self
                    .secrets
                    .iter()
                    .any(|secret| secret.len() > rest.len() && secret.starts_with(rest))
            {
                break;
            }
            if let Some(secret) = self
                .secrets
                .iter()
                .filter(|secret| rest.starts_with(secret))
                .max_by_key(|secret| secret.len())
            {
                output.extend_from_slice(MASK);
                at += secret.len();
                continue;
            }
            output.push(bytes[at]);
            at += 1;
        }
        (output, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn masked_in_pieces(secrets: &[&str], text: &str, piece: usize) -> String {
        let mut masker = Masker::new(secrets.iter().map(|s| s.as_bytes().to_vec()).collect());
        let mut output = Vec::new();
        for chunk in text.as_bytes().chunks(piece) {
            output.extend(masker.push(chunk));
        }
        output.extend(masker.finish());
        String::from_utf8(output).unwrap()
    }

    #[test]
    fn a_secret_is_masked_wherever_the_stream_splits() {
        let text = "token=s3cr3t-value; again:s3cr3t-value!s3cr3t";
        let expected = "token=********; again:********!s3cr3t";
        for piece in 1..=text.len() {
            assert_eq!(
                masked_in_pieces(&["s3cr3t-value"], text, piece),
                expected,
                "in pieces of {piece}"
            );
        }
    }

    #[test]
    fn the_longest_secret_wins_and_no_secret_changes_nothing() {
        assert_eq!(
            masked_in_pieces(&["abcdef", "abc"], "xabcdefyabcz", 3),
            "x********y********z"
        );
        assert_eq!(masked_in_pieces(&[], "plain", 2), "plain");
        let texts = secret_texts(
            json!({"token": "abc", "pin": 1234, "empty": "", "name": "Ada"})
                .as_object()
                .unwrap(),
            &[
                "token".into(),
                "pin".into(),
                "empty".into(),
                "missing".into(),
            ],
        );
        assert_eq!(texts, vec![b"1234".to_vec(), b"abc".to_vec()]);
    }
}
