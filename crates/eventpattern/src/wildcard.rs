//! The `wildcard` operator: `*` matches any run of characters, `\*` a literal star and `\\` a
//! literal backslash.

use crate::{Path, PatternError, Problem};

/// The literal pieces between the stars of a wildcard pattern.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Wildcard {
    pieces: Vec<String>,
}

impl Wildcard {
    pub(crate) fn parse(text: &str, path: &Path) -> Result<Wildcard, PatternError> {
        let fail = |reason| path.error(Problem::Wildcard { reason });
        let mut pieces = Vec::new();
        let mut current = String::new();
        let mut chars = text.chars().peekable();
        let mut previous_star = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped @ ('*' | '\\')) => {
                        current.push(escaped);
                        previous_star = false;
                    }
                    _ => return Err(fail("'\\' may only escape '*' or '\\'")),
                },
                '*' => {
                    // EventBridge refuses "**": it adds matching cost and means the same as "*".
                    if previous_star {
                        return Err(fail("consecutive '*' are not allowed"));
                    }
                    pieces.push(std::mem::take(&mut current));
                    previous_star = true;
                }
                other => {
                    current.push(other);
                    previous_star = false;
                }
            }
        }
        pieces.push(current);
        Ok(Wildcard { pieces })
    }

    pub(crate) fn matches(&self, text: &str) -> bool {
        let Some((first, rest)) = self.pieces.split_first() else {
            return false;
        };
        if rest.is_empty() {
            return text == first;
        }
        let Some(mut remaining) = text.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return false;
        };
        // Taking each middle piece at its earliest occurrence leaves the most room for the
        // rest, so this greedy scan never misses a match.
        for piece in middle {
            match remaining.find(piece.as_str()) {
                Some(at) => remaining = &remaining[at + piece.len()..],
                None => return false,
            }
        }
        remaining.ends_with(last.as_str())
    }
}
