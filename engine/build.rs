//! With the `cuda` feature, compiles the SGMV kernels (`kernels/sgmv.cu`) to PTX with nvcc (see
//! `scripts/cuda-toolchain.sh` for a GPU-less machine). PTX for compute capability 8.0 (bf16 arithmetic) runs on
//! every newer GPU: the driver compiles it for the device when the module loads.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels/sgmv.cu");
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("sgmv.ptx");
    let nvcc = std::env::var("NVCC").ok().unwrap_or_else(|| match std::env::var("CUDA_HOME") {
        Ok(home) if PathBuf::from(&home).join("bin/nvcc").is_file() => format!("{home}/bin/nvcc"),
        _ => "nvcc".to_string(),
    });
    let status = Command::new(&nvcc)
        .args(["-ptx", "-arch=compute_80", "-O3", "-std=c++17", "kernels/sgmv.cu", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("running {nvcc}: {e} (run `make cuda-toolchain` and `eval \"$(scripts/cuda-toolchain.sh --env)\"`)")
        });
    assert!(status.success(), "nvcc failed to compile kernels/sgmv.cu");
}
