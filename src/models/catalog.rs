//! The known models `concierge models list` shows and `concierge models
//! fetch NAME` downloads from the Hugging Face hub: bilingual (English and
//! Chinese) instruct models of the architectures the CPU engine runs, each
//! with its licence and approximate size. The hub reports the exact size and
//! sha256 at download time.

use serde::Serialize;

/// One downloadable model file.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct KnownModel {
    /// The name given to `concierge models fetch`.
    pub name: &'static str,
    /// Repository on the hub.
    pub repo: &'static str,
    /// File in the repository.
    pub file: &'static str,
    /// `general.architecture` of the file.
    pub architecture: &'static str,
    /// Weight quantisation.
    pub quantization: &'static str,
    /// Approximate download size, MB.
    pub approx_mb: u32,
    /// Licence of the weights.
    pub license: &'static str,
    /// What it is good for.
    pub note: &'static str,
}

/// The table.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "qwen2.5-0.5b-instruct-q8_0",
        repo: "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
        file: "qwen2.5-0.5b-instruct-q8_0.gguf",
        architecture: "qwen2",
        quantization: "Q8_0",
        approx_mb: 680,
        license: "Apache-2.0",
        note: "smallest bilingual model; fluent Chinese, fast on 2 cores",
    },
    KnownModel {
        name: "qwen2.5-0.5b-instruct-q4_0",
        repo: "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
        file: "qwen2.5-0.5b-instruct-q4_0.gguf",
        architecture: "qwen2",
        quantization: "Q4_0",
        approx_mb: 430,
        license: "Apache-2.0",
        note: "the same, 4-bit: less memory, faster decode",
    },
    KnownModel {
        name: "qwen2.5-1.5b-instruct-q8_0",
        repo: "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
        file: "qwen2.5-1.5b-instruct-q8_0.gguf",
        architecture: "qwen2",
        quantization: "Q8_0",
        approx_mb: 1900,
        license: "Apache-2.0",
        note: "better answers; needs about 2.5 GB of memory",
    },
    KnownModel {
        name: "qwen2.5-1.5b-instruct-q4_0",
        repo: "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
        file: "qwen2.5-1.5b-instruct-q4_0.gguf",
        architecture: "qwen2",
        quantization: "Q4_0",
        approx_mb: 1070,
        license: "Apache-2.0",
        note: "the same, 4-bit",
    },
    KnownModel {
        name: "qwen2.5-3b-instruct-q4_0",
        repo: "Qwen/Qwen2.5-3B-Instruct-GGUF",
        file: "qwen2.5-3b-instruct-q4_0.gguf",
        architecture: "qwen2",
        quantization: "Q4_0",
        approx_mb: 2000,
        license: "Qwen Research License (non-commercial; read it before use)",
        note: "the strongest here; slow on 2 cores",
    },
    KnownModel {
        name: "smollm2-360m-instruct-q8_0",
        repo: "HuggingFaceTB/SmolLM2-360M-Instruct-GGUF",
        file: "smollm2-360m-instruct-q8_0.gguf",
        architecture: "llama",
        quantization: "Q8_0",
        approx_mb: 390,
        license: "Apache-2.0",
        note: "English only; a step up from the default 135M",
    },
];

/// The entry named `name` (case-insensitive).
pub fn find(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS
        .iter()
        .find(|model| model.name.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_files_are_gguf_of_cpu_architectures() {
        let mut names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KNOWN_MODELS.len());
        for model in KNOWN_MODELS {
            assert!(model.file.ends_with(".gguf"));
            assert!(crate::engine::cpu::model::CPU_ARCHITECTURES.contains(&model.architecture));
            assert!(!model.license.is_empty() && model.approx_mb > 0);
        }
        assert!(find("QWEN2.5-0.5B-Instruct-Q8_0").is_some());
        assert!(find("gpt-5").is_none());
    }
}
