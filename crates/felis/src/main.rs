//! The `felis` binary: CLI, node agent, CNI plugin and lab, thin over the libraries.

fn main() -> anyhow::Result<()> {
    println!("felis {}", env!("CARGO_PKG_VERSION"));
    Ok(())
}
