//! The `nst` binary: everything is in the library (`nst_cli`).

fn main() {
    nst_cli::main();
}
