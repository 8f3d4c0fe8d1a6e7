//! The CUDA C sources in `kernels/`, embedded at build time so a binary needs no source tree,
//! with the entry points each one must define.

/// Prepended to every file: bf16 conversions and block reductions.
pub const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// One `kernels/*.cu` file.
#[derive(Debug, Clone, Copy)]
pub struct KernelFile {
    /// The file stem, also the module name under which a device caches it.
    pub name: &'static str,
    pub code: &'static str,
    /// `{op}_{dtype}` functions it defines.
    pub entry_points: &'static [&'static str],
}

impl KernelFile {
    /// The text NVRTC compiles.
    pub fn full_source(&self) -> String {
        format!(
            "{COMMON}\n// ---- kernels/{}.cu ----\n{}",
            self.name, self.code
        )
    }
}

pub const RMS_NORM: KernelFile = KernelFile {
    name: "rms_norm",
    code: include_str!("../../../kernels/rms_norm.cu"),
    entry_points: &[
        "rms_norm_fwd_f32",
        "rms_norm_fwd_bf16",
        "rms_norm_bwd_f32",
        "rms_norm_bwd_bf16",
    ],
};

pub const ROPE: KernelFile = KernelFile {
    name: "rope",
    code: include_str!("../../../kernels/rope.cu"),
    entry_points: &["rope_f32", "rope_bf16"],
};

pub const SWIGLU: KernelFile = KernelFile {
    name: "swiglu",
    code: include_str!("../../../kernels/swiglu.cu"),
    entry_points: &[
        "swiglu_fwd_f32",
        "swiglu_fwd_bf16",
        "swiglu_bwd_f32",
        "swiglu_bwd_bf16",
    ],
};

pub const NF4: KernelFile = KernelFile {
    name: "nf4",
    code: include_str!("../../../kernels/nf4.cu"),
    entry_points: &["nf4_dequantize_f32", "nf4_dequantize_bf16"],
};

pub const CROSS_ENTROPY: KernelFile = KernelFile {
    name: "cross_entropy",
    code: include_str!("../../../kernels/cross_entropy.cu"),
    entry_points: &[
        "cross_entropy_fwd_f32",
        "cross_entropy_fwd_bf16",
        "cross_entropy_bwd_f32",
        "cross_entropy_bwd_bf16",
    ],
};

pub const DROPOUT: KernelFile = KernelFile {
    name: "dropout",
    code: include_str!("../../../kernels/dropout.cu"),
    entry_points: &[
        "dropout_mask_u32",
        "dropout_apply_f32",
        "dropout_apply_bf16",
    ],
};

/// Every kernel file (the PTX test compiles each).
pub const ALL: &[KernelFile] = &[RMS_NORM, ROPE, SWIGLU, NF4, CROSS_ENTROPY, DROPOUT];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every declared entry point is defined `extern "C"` in its file, and every `extern "C"`
    /// kernel of a file is declared (so the PTX test checks them all).
    #[test]
    fn entry_points_match_the_sources() {
        let kernel_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels");
        let mut on_disk: Vec<String> = std::fs::read_dir(&kernel_dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                (p.extension()? == "cu").then(|| p.file_stem().unwrap().to_string_lossy().into())
            })
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = ALL.iter().map(|k| k.name.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "kernels/*.cu and source::ALL differ");
        for k in ALL {
            let defined: Vec<&str> = k
                .code
                .split("extern \"C\" __global__ void ")
                .skip(1)
                .filter_map(|s| s.split('(').next())
                .collect();
            let mut want = k.entry_points.to_vec();
            want.sort();
            let mut got = defined.clone();
            got.sort();
            assert_eq!(got, want, "kernels/{}.cu", k.name);
        }
    }
}
