//! `target_expression`: which tables a target replicates.
//!
//! Teleport's form is `schema.table` where either part may use `*` (any run of characters)
//! and `?` (one character), e.g. `public.*` or `sales.order_*`. Several patterns may be given
//! separated by commas. Matching is exact on the (unquoted) names, case-sensitive, as
//! PostgreSQL stores them.

use serde::{Deserialize, Serialize};

/// A parsed `target_expression`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetExpression {
    source: String,
    patterns: Vec<(String, String)>,
}

/// Why a `target_expression` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExpressionError {
    #[error("is empty; write `schema.table` patterns such as `public.*`")]
    Empty,
    #[error("pattern `{0}` must have the form `schema.table` (e.g. `public.*`)")]
    NoSchema(String),
}

impl TargetExpression {
    /// Parses a comma-separated list of `schema.table` glob patterns.
    pub fn parse(text: &str) -> Result<Self, ExpressionError> {
        let mut patterns = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (schema, table) = part
                .split_once('.')
                .ok_or_else(|| ExpressionError::NoSchema(part.to_string()))?;
            if schema.is_empty() || table.is_empty() {
                return Err(ExpressionError::NoSchema(part.to_string()));
            }
            patterns.push((schema.to_string(), table.to_string()));
        }
        if patterns.is_empty() {
            return Err(ExpressionError::Empty);
        }
        Ok(Self {
            source: text.to_string(),
            patterns,
        })
    }

    /// The text as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the table `schema.table` is replicated.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        let chars = |s: &str| s.chars().collect::<Vec<char>>();
        let (schema, table) = (chars(schema), chars(table));
        self.patterns
            .iter()
            .any(|(s, t)| glob(&chars(s), &schema) && glob(&chars(t), &table))
    }

    /// The schema patterns, for a cheap catalog pre-filter.
    pub fn schema_patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|(s, _)| s.as_str())
    }

    /// A POSIX regular expression (PostgreSQL `~`) matching `schema.table` exactly as
    /// [`matches`](Self::matches) does. Recorded with each batch so a batch reads the same
    /// events whenever it is re-read, whatever the configuration says later.
    pub fn to_regex(&self) -> String {
        let alts: Vec<String> = self
            .patterns
            .iter()
            .map(|(s, t)| format!("{}\\.{}", glob_to_regex(s), glob_to_regex(t)))
            .collect();
        format!("^({})$", alts.join("|"))
    }
}

fn glob_to_regex(glob: &str) -> String {
    let mut out = String::new();
    for c in glob.chars() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            c if c.is_ascii_alphanumeric() || c == '_' || !c.is_ascii() => out.push(c),
            c => {
                out.push('\\');
                out.push(c);
            }
        }
    }
    out
}

/// Iterative glob match with backtracking over the last `*`, by characters (`?` is one
/// character, as `.` in the regular expression and `_` in LIKE).
fn glob(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == '*' {
        p += 1;
    }
    p == pattern.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_globs() {
        let e = TargetExpression::parse("public.*, sales.order_?").unwrap();
        assert!(e.matches("public", "anything"));
        assert!(e.matches("sales", "order_1"));
        assert!(!e.matches("sales", "order_12"));
        assert!(!e.matches("publicx", "t"));
        assert!(!e.matches("other", "t"));
        let e = TargetExpression::parse("a*b.*x*").unwrap();
        assert!(e.matches("ab", "x"));
        assert!(e.matches("aXXb", "yyxzz"));
        assert!(!e.matches("aXXc", "x"));
        let e = TargetExpression::parse("?.ü?").unwrap();
        assert!(e.matches("é", "üx"), "`?` is one character, not one byte");
        assert!(!e.matches("é", "ü"));
    }

    #[test]
    fn rejects_bad_patterns() {
        assert_eq!(TargetExpression::parse(" , "), Err(ExpressionError::Empty));
        assert!(matches!(
            TargetExpression::parse("public"),
            Err(ExpressionError::NoSchema(_))
        ));
        assert!(matches!(
            TargetExpression::parse(".t"),
            Err(ExpressionError::NoSchema(_))
        ));
    }

    #[test]
    fn regex_escapes_metacharacters() {
        let e = TargetExpression::parse("my$schema.t*").unwrap();
        assert_eq!(e.to_regex(), "^(my\\$schema\\.t.*)$");
    }
}
