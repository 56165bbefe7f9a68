//! `messenger-bridge`: wires the XMPP sessions, the store and the Matrix appservice together.

fn main() -> anyhow::Result<()> {
    println!("messenger-bridge {}", env!("CARGO_PKG_VERSION"));
    Ok(())
}
