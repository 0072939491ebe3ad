//! Links the system's OpenBLAS (which carries LAPACK) when the `lapack` feature is on; the
//! default build links nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_LAPACK").is_some() {
        // ndarray-linalg is used without a LAPACK source crate (those download or build
        // OpenBLAS); the symbols come from the OS package instead.
        println!("cargo:rustc-link-lib=dylib=openblas");
    }
}
