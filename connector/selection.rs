//! `--select`: which columns the user wants, as comma-separated patterns.
//!
//! A pattern names a column of `runs.parquet` (`name`, `config.lr`,
//! `summary.loss`) or a history key (`history.loss`); `*` matches any run of
//! characters, dots included (`config.*`, `history.train/*`, `*loss`). With no
//! `--select`, everything is selected: every run column and all history.
//! With a selection, history is exported only for keys a `history.` pattern
//! matches (a bare `*` matches everything).

use std::fmt;

use crate::run::IdentityColumn;

/// One glob pattern (only `*` is special).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
}

impl Pattern {
    pub fn new(text: &str) -> Pattern {
        Pattern { text: text.to_string() }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern matches the whole of `name`.
    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.text.as_bytes(), name.as_bytes())
    }

    /// Whether the pattern can match some name starting with `prefix`.
    pub fn can_match_prefix(&self, prefix: &str) -> bool {
        let literal = self.text.split('*').next().unwrap_or("");
        let has_star = self.text.contains('*');
        if has_star { literal.starts_with(prefix) || prefix.starts_with(literal) } else { literal.starts_with(prefix) }
    }

    pub fn is_literal(&self) -> bool {
        !self.text.contains('*')
    }
}

/// Iterative glob matching with backtracking over the last `*`.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error("--select has an empty item (check for a stray comma)")]
    Empty,
    #[error("--select item {0:?} is not a column: run columns are {1}; or use {2}history.<key>")]
    UnknownColumn(String, String, String),
}

/// The parsed `--select`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// `None` means everything.
    patterns: Option<Vec<Pattern>>,
}

impl Default for Selection {
    fn default() -> Self {
        Selection::all()
    }
}

impl Selection {
    pub fn all() -> Selection {
        Selection { patterns: None }
    }

    /// Parses comma-separated patterns. `identity_columns` are the source's
    /// plain column names; a literal item that is none of them and has no
    /// `config.`/`summary.`/`history.` (or source-specific) prefix is an error.
    pub fn parse(
        text: &str,
        identity_columns: &[IdentityColumn],
        prefixes: &[&str],
    ) -> Result<Selection, SelectionError> {
        let mut patterns = Vec::new();
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(SelectionError::Empty);
            }
            let p = Pattern::new(item);
            let known = identity_columns.iter().any(|c| p.matches(c.name))
                || prefixes.iter().any(|pre| p.can_match_prefix(pre))
                || p.can_match_prefix("history.");
            if !known {
                let groups: String = prefixes.iter().map(|p| format!("{p}<key>, ")).collect();
                let names: Vec<&str> = identity_columns.iter().map(|c| c.name).collect();
                return Err(SelectionError::UnknownColumn(item.to_string(), names.join(", "), groups));
            }
            patterns.push(p);
        }
        Ok(Selection { patterns: Some(patterns) })
    }

    pub fn is_all(&self) -> bool {
        self.patterns.is_none()
    }

    pub fn patterns(&self) -> &[Pattern] {
        self.patterns.as_deref().unwrap_or(&[])
    }

    /// Whether the column (or `history.<key>`) is selected.
    pub fn matches(&self, column: &str) -> bool {
        match &self.patterns {
            None => true,
            Some(ps) => ps.iter().any(|p| p.matches(column)),
        }
    }

    /// Whether any column starting with `prefix` (`config.`, `history.`) can be selected.
    pub fn wants_prefix(&self, prefix: &str) -> bool {
        match &self.patterns {
            None => true,
            Some(ps) => ps.iter().any(|p| p.can_match_prefix(prefix)),
        }
    }

    /// The exact names under `prefix` when every pattern that reaches it is
    /// literal (server-side key projection is possible), or `None`.
    pub fn literal_keys(&self, prefix: &str) -> Option<Vec<String>> {
        let ps = self.patterns.as_ref()?;
        let mut keys = Vec::new();
        for p in ps.iter().filter(|p| p.can_match_prefix(prefix)) {
            if !p.is_literal() {
                return None;
            }
            keys.push(p.as_str()[prefix.len()..].to_string());
        }
        Some(keys)
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.patterns {
            None => f.write_str("*"),
            Some(ps) => {
                let items: Vec<&str> = ps.iter().map(Pattern::as_str).collect();
                f.write_str(&items.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::run::IdentityKind::{Text, Timestamp};
    const IDS: &[IdentityColumn] = &[
        IdentityColumn::new("run_id", Text),
        IdentityColumn::new("name", Text),
        IdentityColumn::new("state", Text),
        IdentityColumn::new("created_at", Timestamp),
    ];
    const PRE: &[&str] = &["config.", "summary."];

    #[test]
    fn globs() {
        let p = Pattern::new("config.*");
        assert!(p.matches("config.lr"));
        assert!(p.matches("config.opt.lr"));
        assert!(!p.matches("summary.lr"));
        assert!(Pattern::new("*loss").matches("history.train/loss"));
        assert!(Pattern::new("a*b*c").matches("aXXbYYc"));
        assert!(!Pattern::new("a*b*c").matches("aXXbYY"));
        assert!(Pattern::new("*").matches(""));
        assert!(Pattern::new("name").matches("name"));
        assert!(!Pattern::new("name").matches("names"));
    }

    #[test]
    fn prefix_reachability() {
        assert!(Pattern::new("config.*").can_match_prefix("config."));
        assert!(Pattern::new("conf*").can_match_prefix("config."));
        assert!(Pattern::new("*").can_match_prefix("history."));
        assert!(Pattern::new("*.lr").can_match_prefix("summary."));
        assert!(!Pattern::new("summary.*").can_match_prefix("config."));
        assert!(!Pattern::new("name").can_match_prefix("config."));
        assert!(Pattern::new("config.lr").can_match_prefix("config."));
    }

    #[test]
    fn parse_and_match() {
        let s = Selection::parse("name, state,config.*,summary.loss,history.loss", IDS, PRE).unwrap();
        assert!(s.matches("name"));
        assert!(!s.matches("created_at"));
        assert!(s.matches("config.opt.lr"));
        assert!(s.matches("summary.loss"));
        assert!(!s.matches("summary.acc"));
        assert!(s.matches("history.loss"));
        assert!(!s.matches("history.acc"));
        assert!(s.wants_prefix("history."));
        assert_eq!(s.literal_keys("history."), Some(vec!["loss".to_string()]));
        assert_eq!(s.literal_keys("config."), None);
        assert_eq!(s.to_string(), "name,state,config.*,summary.loss,history.loss");

        let only = Selection::parse("name,state", IDS, PRE).unwrap();
        assert!(!only.wants_prefix("config."));
        assert!(!only.wants_prefix("summary."));
        assert!(!only.wants_prefix("history."));
        assert_eq!(only.literal_keys("history."), Some(vec![]));
    }

    #[test]
    fn bad_selections_are_rejected() {
        assert_eq!(Selection::parse("name,,state", IDS, PRE), Err(SelectionError::Empty));
        let err = Selection::parse("nmae", IDS, PRE).unwrap_err();
        assert!(err.to_string().contains("\"nmae\""), "{err}");
        assert!(err.to_string().contains("run_id, name"), "{err}");
        // A glob reaching an identity column is fine.
        assert!(Selection::parse("*_at", IDS, PRE).is_ok());
    }

    #[test]
    fn default_selects_everything() {
        let s = Selection::all();
        assert!(s.is_all());
        assert!(s.matches("anything"));
        assert!(s.wants_prefix("history."));
        assert_eq!(s.literal_keys("config."), None);
    }
}
