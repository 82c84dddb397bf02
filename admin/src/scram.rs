//! SCRAM-SHA-256 password verifiers computed on the client (RFC 5802, RFC 7677), in PostgreSQL's
//! stored format `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64).
//!
//! `ALTER ROLE … PASSWORD '<verifier>'` stores a verifier as it is, so the plaintext never reaches
//! the server, its log (`log_statement`) or `pg_stat_activity`. The password is prepared with
//! SASLprep when it is valid UTF-8 without prohibited characters, and used as raw bytes otherwise,
//! which is what the server and libpq's `PQencryptPasswordConn` do.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};

/// PostgreSQL's default (`scram_iterations`, and libpq's).
pub const ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;

/// A verifier for `password` with a fresh random 16-byte salt and [`ITERATIONS`] rounds.
pub fn verifier(password: &str) -> String {
    let salt: [u8; SALT_LEN] = rand::random();
    verifier_with(password, &salt, ITERATIONS)
}

/// True when `stored` (a `SCRAM-SHA-256$…` verifier, e.g. from `pg_authid.rolpassword`) was made
/// from `password`. Anything that is not a well-formed SCRAM verifier (an MD5 hash, NULL, junk)
/// does not match.
pub fn matches(password: &str, stored: &str) -> bool {
    let Some(rest) = stored.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((params, _keys)) = rest.split_once('$') else {
        return false;
    };
    let Some((iterations, salt)) = params.split_once(':') else {
        return false;
    };
    let (Ok(iterations), Ok(salt)) = (iterations.parse::<u32>(), B64.decode(salt)) else {
        return false;
    };
    if iterations == 0 {
        return false;
    }
    // Constant time does not matter here: the caller already holds the stored verifier.
    verifier_with(password, &salt, iterations) == stored
}

fn verifier_with(password: &str, salt: &[u8], iterations: u32) -> String {
    let prepared = match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    };
    let salted = hi(&prepared, salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// RFC 5802 `Hi()`: PBKDF2 with HMAC-SHA-256 and one 32-byte block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(password).expect("HMAC takes keys of any length");
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, b) in out.iter_mut().zip(u) {
            *o ^= b;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_postgres_stored_form() {
        let v = verifier("pencil");
        let parts: Vec<&str> = v.split(['$', ':']).collect();
        assert_eq!(parts.len(), 5, "{v}");
        assert_eq!(parts[0], "SCRAM-SHA-256");
        assert_eq!(parts[1], "4096");
        assert_eq!(B64.decode(parts[2]).unwrap().len(), 16);
        assert_eq!(B64.decode(parts[3]).unwrap().len(), 32);
        assert_eq!(B64.decode(parts[4]).unwrap().len(), 32);
        assert_ne!(v, verifier("pencil"), "each verifier has its own salt");
    }

    /// RFC 7677 section 3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096
    /// rounds. The exchange there ends with the server signature
    /// `v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=`, HMAC(ServerKey, AuthMessage).
    #[test]
    fn rfc7677_example() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = verifier_with("pencil", &salt, 4096);
        let server_key = B64.decode(v.rsplit(':').next().unwrap()).unwrap();
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
            c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let signature = hmac(&server_key, auth_message.as_bytes());
        assert_eq!(
            B64.encode(signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    /// The verifier libpq's Rust counterpart (postgres-protocol) makes is recognised, so the two
    /// implementations agree on SASLprep, Hi() and the encoding.
    #[test]
    fn agrees_with_postgres_protocol() {
        for pw in [
            "pencil",
            "s3cr3t with spaces",
            "pässwörd\u{00A0}",
            "'; DROP ROLE x; --",
        ] {
            let theirs = postgres_protocol::password::scram_sha_256(pw.as_bytes());
            assert!(matches(pw, &theirs), "{pw}: {theirs}");
            assert!(!matches("other", &theirs));
            assert!(matches(pw, &verifier(pw)));
        }
    }

    #[test]
    fn non_scram_never_matches() {
        for stored in [
            "",
            "md5aa3e1c5a4cd2d2ae1b9d20bd7c8f1d9b",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$0:AAAA$x:y",
            "SCRAM-SHA-256$x:AAAA$x:y",
        ] {
            assert!(!matches("pencil", stored), "{stored}");
        }
    }
}
