//! Export stage: PEFT adapter files, merged weights, GGUF and the run manifest.
