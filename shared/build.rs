//! Rebuild when a migration changes: refinery embeds `migrations/*.sql` at compile time.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
