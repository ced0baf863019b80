//! Output text: how an action's output bytes travel as JSON strings and are shown by the API.
//!
//! An action may write any bytes: NUL, terminal escapes, invalid UTF-8, binary. JSON strings
//! (agent messages, API bodies) hold Unicode text, so output is carried as *output text*, a
//! lossless escape of the bytes:
//!
//! - every valid UTF-8 character is itself (NUL is U+0000, an escape is U+001B, and so on);
//! - every byte of an invalid UTF-8 sequence (always 0x80–0xFF) becomes the character
//!   U+10FF00 + byte, i.e. one of U+10FF80–U+10FFFF, the top of Supplementary Private Use
//!   Area-B;
//! - a character the output itself contains in U+10FF80–U+10FFFF is written the same way, byte
//!   by byte, so [`text_to_bytes`] never mistakes it for an escape.
//!
//! [`text_to_bytes`] turns any string back into bytes (each U+10FF80–U+10FFFF character into
//! its byte, every other character into its UTF-8), so `text_to_bytes(&bytes_to_text(b)) == b`
//! for all bytes `b`, however they are split into chunks. Output that is valid UTF-8 without
//! those characters (nearly all output) is its own output text.

/// The character standing for byte `b` (0x80–0xFF) is `ESCAPE_BASE + b`.
pub const ESCAPE_BASE: u32 = 0x10_FF00;
/// The first character that stands for a byte (byte 0x80).
pub const FIRST_ESCAPE: u32 = ESCAPE_BASE + 0x80;

fn escape_byte(text: &mut String, byte: u8) {
    debug_assert!(byte >= 0x80, "ASCII bytes are always valid UTF-8");
    let escape = char::from_u32(ESCAPE_BASE + u32::from(byte))
        .expect("U+10FF80..U+10FFFF are Unicode scalar values");
    text.push(escape);
}

fn is_escape(character: char) -> bool {
    u32::from(character) >= FIRST_ESCAPE
}

/// The output text of `bytes` (see the module documentation).
pub fn bytes_to_text(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        if valid.chars().any(is_escape) {
            for character in valid.chars() {
                if is_escape(character) {
                    let mut buffer = [0_u8; 4];
                    for byte in character.encode_utf8(&mut buffer).bytes() {
                        escape_byte(&mut text, byte);
                    }
                } else {
                    text.push(character);
                }
            }
        } else {
            text.push_str(valid);
        }
        for &byte in chunk.invalid() {
            escape_byte(&mut text, byte);
        }
    }
    text
}

/// [`bytes_to_text`] of owned bytes, without copying them when they are their own text.
pub fn bytes_into_text(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) if !text.chars().any(is_escape) => text,
        Ok(text) => bytes_to_text(text.as_bytes()),
        Err(error) => bytes_to_text(error.as_bytes()),
    }
}

/// The bytes an output text stands for (see the module documentation). Text from older
/// agents, which sent output as lossy UTF-8, reads as its own UTF-8.
pub fn text_to_bytes(text: &str) -> Vec<u8> {
    if !text.chars().any(is_escape) {
        return text.as_bytes().to_vec();
    }
    let mut bytes = Vec::with_capacity(text.len());
    for character in text.chars() {
        if is_escape(character) {
            bytes.push((u32::from(character) - ESCAPE_BASE) as u8);
        } else {
            let mut buffer = [0_u8; 4];
            bytes.extend_from_slice(character.encode_utf8(&mut buffer).as_bytes());
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(bytes: &[u8]) {
        let text = bytes_to_text(bytes);
        assert_eq!(text_to_bytes(&text), bytes, "{bytes:?} via {text:?}");
        assert_eq!(bytes_into_text(bytes.to_vec()), text);
    }

    #[test]
    fn valid_utf8_is_its_own_text_nul_and_escapes_included() {
        for text in [
            "",
            "hello\n",
            "a\0b",
            "\u{1b}[31mred\u{1b}[0m",
            "é€😀",
            "\u{10ff7f}",
        ] {
            assert_eq!(bytes_to_text(text.as_bytes()), text);
            assert_eq!(text_to_bytes(text), text.as_bytes());
        }
    }

    #[test]
    fn invalid_bytes_become_private_use_characters() {
        assert_eq!(bytes_to_text(b"a\xffb"), "a\u{10ffff}b");
        assert_eq!(bytes_to_text(b"\x80"), "\u{10ff80}");
        // A truncated three-byte character: each byte escaped.
        assert_eq!(bytes_to_text(b"\xe2\x82"), "\u{10ffe2}\u{10ff82}");
        assert_eq!(text_to_bytes("a\u{10ffff}b"), b"a\xffb");
    }

    #[test]
    fn a_literal_escape_character_survives() {
        let literal = "x\u{10ff80}y\u{10ffff}";
        let text = bytes_to_text(literal.as_bytes());
        assert_ne!(text, literal, "written byte by byte");
        assert_eq!(text_to_bytes(&text), literal.as_bytes());
    }

    #[test]
    fn every_byte_and_every_pair_round_trips() {
        for first in 0..=255_u8 {
            round_trip(&[first]);
            for second in 0..=255_u8 {
                round_trip(&[first, second]);
            }
        }
    }

    #[test]
    fn chunks_split_anywhere_concatenate_to_the_bytes() {
        let mut bytes = "é€😀\u{10ff90}".as_bytes().to_vec();
        bytes.extend_from_slice(b"\0\xff\xfe\xc3");
        round_trip(&bytes);
        for split in 0..=bytes.len() {
            let (head, tail) = bytes.split_at(split);
            let mut joined = text_to_bytes(&bytes_to_text(head));
            joined.extend(text_to_bytes(&bytes_to_text(tail)));
            assert_eq!(joined, bytes, "split at {split}");
        }
    }

    #[test]
    fn pseudo_random_binary_round_trips() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let bytes: Vec<u8> = (0..100_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        round_trip(&bytes);
    }
}
