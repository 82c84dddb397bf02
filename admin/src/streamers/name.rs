//! Kick usernames and slugs. A username (`Some_User`, shown on the channel page) and its slug
//! (`some-user`, in URLs and in the API) are the same name under Kick's rules: lower case, `_`
//! written as `-`, at most [`MAX_SLUG`] characters. The operator may type either; the API is asked
//! for the slug, and `streamers.username` stores the slug Kick returns.

use kick_shared::exit::{Exit, ExitError};

/// Kick's longest username (and so slug).
pub const MAX_SLUG: usize = 25;

/// The slug for a typed username or slug: trimmed, lower case, `_` → `-`; 1 to [`MAX_SLUG`] of
/// `a-z`, `0-9` and `-`, not starting with `-`. Anything else is bad input (65) with a one-line
/// message that quotes at most 40 characters of it.
pub fn normalise(input: &str) -> Result<String, ExitError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(ExitError::new(Exit::DataErr, "invalid username: empty"));
    }
    let slug: String = trimmed
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let n_chars = trimmed.chars().count();
    if !slug
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(ExitError::new(
            Exit::DataErr,
            format!(
                "invalid username \"{}\": use letters, digits, '_' or '-'",
                shown(trimmed)
            ),
        ));
    }
    if slug.starts_with('-') {
        // The schema refuses such a slug (`streamers.username`'s CHECK).
        return Err(ExitError::new(
            Exit::DataErr,
            format!(
                "invalid username \"{}\": start with a letter or digit",
                shown(trimmed)
            ),
        ));
    }
    if n_chars > MAX_SLUG {
        return Err(ExitError::new(
            Exit::DataErr,
            format!(
                "invalid username \"{}\" ({n_chars} characters): a kick username has at most {MAX_SLUG}",
                shown(trimmed)
            ),
        ));
    }
    Ok(slug)
}

/// A slug as Kick returned it, if it can be stored (`streamers.username`'s CHECK: lower case,
/// `a-z 0-9 _ -`, not starting with `-`, at most 64 characters).
pub fn storable(kick_slug: &str) -> Option<String> {
    let slug = kick_slug.to_ascii_lowercase();
    let ok = !slug.is_empty()
        && slug.len() <= 64
        && slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && !slug.starts_with('-');
    ok.then_some(slug)
}

/// At most 40 characters of untrusted input, escaped, for a one-line message.
fn shown(input: &str) -> String {
    let head: String = input.chars().take(40).collect();
    let ellipsis = if input.chars().count() > 40 {
        "…"
    } else {
        ""
    };
    format!("{}{ellipsis}", head.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_slugs_normalise_to_the_slug() {
        for (input, want) in [
            (" XQc ", "xqc"),
            ("Some_User", "some-user"),
            ("some-user", "some-user"),
            ("SOME_USER", "some-user"),
            ("a_b-c9", "a-b-c9"),
            ("abcdefghijklmnopqrstuvwxy", "abcdefghijklmnopqrstuvwxy"),
            ("\tx_\n", "x-"),
        ] {
            assert_eq!(normalise(input).unwrap(), want, "{input:?}");
        }
    }

    #[test]
    fn hostile_or_impossible_names_are_bad_input_in_one_short_line() {
        let long = "a".repeat(1000);
        for bad in [
            "",
            "   ",
            "a'b",
            "x;drop table streamers",
            "naïve",
            "héllo",
            "İstanbul",
            "-x",
            "_x",
            "a b",
            "\"q\"",
            "a\nb",
            "abcdefghijklmnopqrstuvwxyz",
            long.as_str(),
        ] {
            let e = normalise(bad).unwrap_err();
            assert_eq!(e.exit, Exit::DataErr, "{bad:?}");
            assert!(!e.message.contains('\n'), "{bad:?}: {}", e.message);
            assert!(e.message.len() < 200, "{bad:?}: {}", e.message);
        }
        assert!(
            normalise(&long)
                .unwrap_err()
                .message
                .contains("1000 characters")
        );
    }

    #[test]
    fn kick_slugs_are_stored_only_when_the_schema_accepts_them() {
        assert_eq!(storable("Some-User").as_deref(), Some("some-user"));
        assert_eq!(storable("old_style").as_deref(), Some("old_style"));
        assert_eq!(storable(""), None);
        assert_eq!(storable("-x"), None);
        assert_eq!(storable("ünï"), None);
    }
}
