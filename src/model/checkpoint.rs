//! safetensors checkpoints: one file or sharded with `model.safetensors.index.json`, mmapped.
