//! `sqlx::migrate!` embeds the migration files at compile time; telling Cargo about the directory
//! makes a new or edited migration trigger a rebuild instead of shipping the stale set.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
