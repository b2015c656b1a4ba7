// `sqlx::migrate!` embeds ../migrations at compile time; without this, a
// migration added to an already built tree would be left out until some
// other change rebuilt the crate.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
