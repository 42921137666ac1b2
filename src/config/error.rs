//! What a failed load reports: every mistake, each with the YAML path that holds it.

/// One mistake in the config file, with the YAML path that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All mistakes found in one file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A parser's message without the value it quotes: serde names a mistyped or unknown
/// scalar by its text (`invalid type: string "sk-…", expected a map`, `unknown variant
/// `kgs_…``), and a secret in the wrong place would then be printed by `keygate check`, at
/// start, in a reload's log line and in an admin API refusal. The path and what was
/// expected stay.
pub fn without_values(message: &str) -> String {
    static QUOTED: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r#"(invalid (?:type|value|length): (?:string|integer|floating point|boolean|char|byte array)) (?:"(?:[^"\\]|\\.)*"|`[^`]*`|'(?:[^'\\]|\\.)*')|(unknown variant) `.*?`(, expected)"#,
        )
        .expect("a valid pattern")
    });
    QUOTED.replace_all(message, "$1$2$3").into_owned()
}

#[cfg(test)]
mod tests {
    use super::without_values;

    #[test]
    fn quoted_values_are_left_out_of_parser_messages() {
        for (before, after) in [
            (
                r#"invalid type: string "x-api-key=S3CRET", expected a map at line 2 column 5"#,
                "invalid type: string, expected a map at line 2 column 5",
            ),
            (
                r#"invalid type: string "a \"q\" sk-1", expected struct RawRedis"#,
                "invalid type: string, expected struct RawRedis",
            ),
            (
                "invalid type: integer `12345`, expected a string",
                "invalid type: integer, expected a string",
            ),
            (
                "unknown variant `kgs_s3cret`, expected one of `hmac`, `bearer`",
                "unknown variant, expected one of `hmac`, `bearer`",
            ),
            (
                "unknown field `colour`, expected one of `tier`, `keys`",
                "unknown field `colour`, expected one of `tier`, `keys`",
            ),
        ] {
            assert_eq!(without_values(before), after);
        }
    }
}
