//! Diagnostics: what is wrong, where (recipe path, line:column, the source line) and what to do.

use crate::yaml::Origin;
use std::fmt::Write as _;

/// One problem found in a recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// The recipe path, e.g. `datasets[1].type`; empty for the whole file.
    pub path: String,
    pub origin: Option<Origin>,
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(
        path: impl Into<String>,
        origin: Option<Origin>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            path: path.into(),
            origin,
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// `file:line:col` or `--set #n`, for one-line listings and tests.
    pub fn location(&self, source: &Sources) -> String {
        match self.origin {
            Some(Origin::File { line, column }) => format!("{}:{line}:{column}", source.name),
            Some(Origin::Override { index, column }) => {
                format!("--set {}:{column}", source.override_text(index))
            }
            None => source.name.clone(),
        }
    }

    /// One line: `file:line:col: message [path]`, as the bad-recipe corpus records them.
    pub fn short(&self, source: &Sources) -> String {
        if self.path.is_empty() {
            format!("{}: {}", self.location(source), self.message)
        } else {
            format!(
                "{}: {} [{}]",
                self.location(source),
                self.message,
                self.path
            )
        }
    }

    /// Renders like a compiler diagnostic, with the offending source line and a caret.
    pub fn render(&self, source: &Sources, color: bool) -> String {
        let (red, blue, bold, reset) = if color {
            ("\x1b[31;1m", "\x1b[34;1m", "\x1b[1m", "\x1b[0m")
        } else {
            ("", "", "", "")
        };
        let mut out = String::new();
        let _ = writeln!(out, "{red}error{reset}{bold}: {}{reset}", self.message);
        let what = if self.path.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.path)
        };
        let _ = writeln!(out, "  {blue}-->{reset} {}{what}", self.location(source));
        let snippet = match self.origin {
            Some(Origin::File { line, column }) => source
                .text
                .lines()
                .nth(line.saturating_sub(1) as usize)
                .map(|l| (line.to_string(), l.to_string(), column)),
            Some(Origin::Override { index, column }) => Some((
                "--set".to_string(),
                source.override_text(index).to_string(),
                column,
            )),
            None => None,
        };
        if let Some((label, text, column)) = snippet {
            let pad = " ".repeat(label.len());
            let shown: String = text.chars().take(200).collect();
            let caret_at = column.saturating_sub(1) as usize;
            let indent: String = shown
                .chars()
                .take(caret_at)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let _ = writeln!(out, "  {pad} {blue}|{reset}");
            let _ = writeln!(out, "  {blue}{label} |{reset} {shown}");
            let _ = writeln!(out, "  {pad} {blue}|{reset} {indent}{red}^{reset}");
        }
        if let Some(help) = &self.help {
            let _ = writeln!(out, "  {blue}={reset} {bold}help{reset}: {help}");
        }
        out
    }
}

/// The texts diagnostics point into: the recipe and the command-line overrides.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Shown in locations: the recipe's path as given.
    pub name: String,
    pub text: String,
    pub overrides: Vec<String>,
}

impl Sources {
    pub fn override_text(&self, index: usize) -> &str {
        self.overrides.get(index).map(String::as_str).unwrap_or("")
    }
}
