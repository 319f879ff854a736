// The migrations are embedded at compile time (sqlx::migrate!, #[sqlx::test]); without
// this, adding a migration file would not rebuild what embeds them.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
