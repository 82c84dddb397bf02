//! The PostgreSQL password file (`~/.pgpass` or `PGPASSFILE`), read as libpq reads it: lines
//! `hostname:port:database:username:password`, `*` as a whole field matches anything, `\` escapes
//! `:` and `\`, lines starting with `#` are comments, and the first matching line wins. A file
//! that group or others may access is ignored with a warning.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The connection a password is looked up for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    /// The host name as given, or for a Unix socket its directory.
    pub host: &'a str,
    pub is_unix_socket: bool,
    pub port: u16,
    pub dbname: &'a str,
    pub user: &'a str,
}

/// What reading the file gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The file does not exist, or no line matches.
    NotFound,
    Found(String),
    /// The file exists but may not be used; the message says why (it names the file only).
    Ignored(String),
}

/// Looks `target` up in the password file at `path`.
pub(crate) fn lookup(path: &Path, target: &Target<'_>) -> Lookup {
    let Ok(meta) = std::fs::metadata(path) else {
        return Lookup::NotFound;
    };
    let shown = path.display();
    if !meta.is_file() {
        return Lookup::Ignored(format!(
            "password file {shown} is not a plain file; ignored"
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Lookup::Ignored(format!(
            "password file {shown} has group or world access; permissions should be u=rw (0600) or less; ignored"
        ));
    }
    match std::fs::read_to_string(path) {
        Ok(text) => find(&text, target).map_or(Lookup::NotFound, Lookup::Found),
        Err(e) => Lookup::Ignored(format!(
            "password file {shown} cannot be read ({e}); ignored"
        )),
    }
}

/// The password of the first line matching `target`.
pub(crate) fn find(text: &str, target: &Target<'_>) -> Option<String> {
    let port = target.port.to_string();
    text.lines()
        .filter_map(Entry::parse)
        .find(|e| {
            let host = if target.is_unix_socket {
                // libpq looks a socket connection up as `localhost`; its directory is accepted too.
                e.host.matches("localhost") || e.host.matches(target.host)
            } else {
                e.host.matches(target.host)
            };
            host && e.port.matches(&port)
                && e.dbname.matches(target.dbname)
                && e.user.matches(target.user)
        })
        .map(|e| e.password)
}

/// One line of the file.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    host: Field,
    port: Field,
    dbname: Field,
    user: Field,
    password: String,
}

/// A key field: a bare `*` matches anything, otherwise the unescaped text must be equal.
#[derive(Debug, PartialEq, Eq)]
enum Field {
    Any,
    Text(String),
}

impl Field {
    fn matches(&self, value: &str) -> bool {
        match self {
            Field::Any => true,
            Field::Text(t) => t == value,
        }
    }
}

impl Entry {
    /// `None` for comments, blank lines and lines with fewer than five fields.
    fn parse(line: &str) -> Option<Entry> {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut keys = Vec::with_capacity(4);
        let mut text = String::new();
        // A field is the wildcard only when it is a bare `*`; `\*` is a literal star.
        let mut escaped = false;
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(next) => {
                        text.push(next);
                        escaped = true;
                    }
                    None => text.push('\\'),
                },
                ':' if keys.len() < 4 => {
                    let field = if text == "*" && !escaped {
                        Field::Any
                    } else {
                        Field::Text(std::mem::take(&mut text))
                    };
                    text.clear();
                    escaped = false;
                    keys.push(field);
                }
                // libpq ends the password at an unescaped `:`.
                ':' => break,
                c => text.push(c),
            }
        }
        let [host, port, dbname, user]: [Field; 4] = keys.try_into().ok()?;
        Some(Entry {
            host,
            port,
            dbname,
            user,
            password: text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp<'a>(host: &'a str, port: u16, dbname: &'a str, user: &'a str) -> Target<'a> {
        Target {
            host,
            is_unix_socket: false,
            port,
            dbname,
            user,
        }
    }

    #[test]
    fn lines_parse_with_wildcards_and_escapes() {
        let cases: &[(&str, Option<(&str, &str, &str)>)] = &[
            // (line, Some((host, user, password)))
            ("db:5432:kick:me:pw", Some(("db", "me", "pw"))),
            (r"db:5432:kick:me:p\:w\\x", Some(("db", "me", r"p:w\x"))),
            (r"db:5432:kick:me:pw:ignored", Some(("db", "me", "pw"))),
            (r"a\:b:5432:kick:me:pw", Some(("a:b", "me", "pw"))),
            ("db:5432:kick:me:", Some(("db", "me", ""))),
            ("db:5432:kick:me:pw\r", Some(("db", "me", "pw"))),
            ("db:5432:kick:me", None),
            ("# db:5432:kick:me:pw", None),
            ("", None),
        ];
        for (line, want) in cases {
            let got = Entry::parse(line);
            match (want, got) {
                (None, None) => {}
                (Some((host, user, pw)), Some(e)) => {
                    assert_eq!(e.host, Field::Text((*host).into()), "{line}");
                    assert_eq!(e.user, Field::Text((*user).into()), "{line}");
                    assert_eq!(e.password, *pw, "{line}");
                }
                (want, got) => panic!("{line}: want {want:?}, got {got:?}"),
            }
        }
        let e = Entry::parse("*:*:*:*:pw").unwrap();
        assert_eq!(
            [e.host, e.port, e.dbname, e.user],
            [Field::Any, Field::Any, Field::Any, Field::Any]
        );
        let e = Entry::parse(r"\*:5432:kick:me:pw").unwrap();
        assert_eq!(
            e.host,
            Field::Text("*".into()),
            "an escaped star is literal"
        );
    }

    #[test]
    fn first_matching_line_wins() {
        let file = "\
# comment
db.example:5432:kick:kick_writer:writer-pw
*:5432:kick:kick_collector:collector-pw
*:*:*:kick_collector:any-collector-pw
db.example:*:*:*:fallback-pw
";
        let cases: &[(Target<'_>, Option<&str>)] = &[
            (
                tcp("db.example", 5432, "kick", "kick_writer"),
                Some("writer-pw"),
            ),
            (
                tcp("other", 5432, "kick", "kick_collector"),
                Some("collector-pw"),
            ),
            (
                tcp("other", 6000, "x", "kick_collector"),
                Some("any-collector-pw"),
            ),
            (
                tcp("db.example", 6000, "kick", "kick_writer"),
                Some("fallback-pw"),
            ),
            (tcp("other", 5432, "kick", "kick_writer"), None),
            (tcp("DB.example", 5432, "kick", "kick_writer"), None),
        ];
        for (target, want) in cases {
            assert_eq!(find(file, target).as_deref(), *want, "{target:?}");
        }
    }

    #[test]
    fn unix_sockets_match_localhost_or_their_directory() {
        let socket = |dir| Target {
            host: dir,
            is_unix_socket: true,
            port: 5432,
            dbname: "kick",
            user: "me",
        };
        let file = "localhost:5432:kick:me:local-pw\n";
        assert_eq!(
            find(file, &socket("/var/run/postgresql")).as_deref(),
            Some("local-pw")
        );
        let file = "/srv/pg:5432:kick:me:dir-pw\n";
        assert_eq!(find(file, &socket("/srv/pg")).as_deref(), Some("dir-pw"));
        assert_eq!(find(file, &socket("/var/run/postgresql")), None);
        // `localhost` over TCP matches the name only.
        assert_eq!(
            find(
                "localhost:5432:kick:me:tcp-pw\n",
                &tcp("127.0.0.1", 5432, "kick", "me")
            ),
            None
        );
    }

    #[test]
    fn file_open_to_others_is_ignored_with_a_reason() {
        let dir = std::env::temp_dir().join(format!("kick-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgpass");
        std::fs::write(&path, "*:*:*:*:secret-pw\n").unwrap();
        let target = tcp("h", 5432, "d", "u");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let Lookup::Ignored(why) = lookup(&path, &target) else {
            panic!("a 0644 file must be ignored");
        };
        assert!(why.contains("group or world access"), "{why}");
        assert!(!why.contains("secret-pw"), "{why}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&path, &target), Lookup::Found("secret-pw".into()));
        assert_eq!(lookup(&dir.join("absent"), &target), Lookup::NotFound);
        assert!(matches!(lookup(&dir, &target), Lookup::Ignored(_)));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
