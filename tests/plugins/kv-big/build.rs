//! Generates `MIXERS`: many small functions that differ in their constants, so the compiler
//! can merge none of them, and the module has as much code as a large real store.

use std::fmt::Write as _;

/// Functions generated: enough for wasmtime to take seconds to compile the module.
const MIXERS: u64 = 12_000;

fn main() {
    let mut code = String::new();
    for i in 0..MIXERS {
        // Constants from a fixed sequence (splitmix64), different for every function.
        let c = |k: u64| {
            let mut z = (i * 8 + k).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z ^ (z >> 31)
        };
        writeln!(
            code,
            "#[inline(never)] fn m{i}(x: u64) -> u64 {{ let mut y = x ^ {}; \
             y = y.wrapping_mul({} | 1); y ^= y >> {}; y = y.wrapping_add({}); \
             y = y.rotate_left({}); y ^= y >> {}; y.wrapping_mul({} | 1) }}",
            c(0),
            c(1),
            c(2) % 63 + 1,
            c(3),
            c(4) % 63 + 1,
            c(5) % 63 + 1,
            c(6),
        )
        .unwrap();
    }
    write!(code, "pub static MIXERS: [fn(u64) -> u64; {MIXERS}] = [").unwrap();
    for i in 0..MIXERS {
        write!(code, "m{i},").unwrap();
    }
    code.push_str("];\n");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("mixers.rs");
    std::fs::write(out, code).unwrap();
}
