//! Every `kernels/*.cu` file compiles with NVRTC to PTX defining each of its entry points, for
//! the architectures we run on (A100 `compute_80`, H100/H200 `compute_90`). No GPU is needed,
//! only NVRTC: `eval "$(scripts/cuda-toolchain.sh --runtime-env)"` puts it and its builtins on
//! LD_LIBRARY_PATH.
#![cfg(feature = "cuda")]

use runner_kernels::cuda::ptx;
use runner_kernels::source::ALL;

#[test]
fn every_kernel_compiles_to_ptx() {
    let mut failures = Vec::new();
    for arch in ["compute_80", "compute_90"] {
        for file in ALL {
            match ptx(file, arch) {
                Err(e) => failures.push(e.to_string()),
                Ok(text) => {
                    for entry in file.entry_points {
                        if !text.contains(&format!(".entry {entry}(")) {
                            failures.push(format!(
                                "kernels/{}.cu ({arch}): no .entry {entry}",
                                file.name
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_compile_error_names_the_file_and_carries_nvrtc_log() {
    let broken = runner_kernels::source::KernelFile {
        name: "broken",
        code: "extern \"C\" __global__ void broken_f32(float *x) { x[0] = undefined_name; }",
        entry_points: &["broken_f32"],
    };
    let e = ptx(&broken, "compute_90").unwrap_err().to_string();
    assert!(
        e.starts_with("kernels/broken: NVRTC failed for compute_90"),
        "{e}"
    );
    assert!(e.contains("undefined_name"), "{e}");
}
